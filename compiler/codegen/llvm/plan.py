"""`kiln_plan`: a library's memory plan as a C function, for callers without kiln.

    int64_t kiln_plan(const int64_t *dims, int64_t *offsets)

It first checks what kiln's runtime checks in Python before every call (compiler/sizes.py's
SizeCheck): with these sizes every size of every tensor of the model (inputs, outputs,
intermediates, the buffers of scan bodies) is non-negative and every tensor spans less than
MAX_TENSOR_BYTES, in int64 arithmetic that reports overflow instead of wrapping. If one does
not hold it returns -1. Otherwise it gives every intermediate its own aligned region (no
reuse; kiln's own runtime reuses memory: passes/memory.place), writes their offsets and returns
the workspace size (-1 too if that sum overflows).
"""

from __future__ import annotations

from llvmlite import ir

from ...dims import Dim, DivAtom
from ...ir import Graph
from ...passes.memory import ALIGN
from ...sizes import SizeCheck
from ...types import MAX_TENSOR_BYTES, TensorType
from .abi import I1, I64


class _Checked:
    """int64 arithmetic on sizes that remembers, in `bad`, whether any step overflowed or
    any size came out negative."""

    def __init__(self, b: ir.IRBuilder, dims_p: ir.Value, symbols: list[str]):
        self.b, self.dims_p, self.symbols = b, dims_p, symbols
        self.bad: ir.Value = ir.Constant(I1, 0)

    def flag(self, condition: ir.Value) -> None:
        self.bad = self.b.or_(self.bad, condition)

    def negative(self, x: ir.Value) -> ir.Value:
        return self.b.icmp_signed("<", x, ir.Constant(I64, 0))

    def _with_flag(self, result: ir.Value) -> ir.Value:
        self.flag(self.b.extract_value(result, 1))
        return self.b.extract_value(result, 0)

    def mul(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._with_flag(self.b.smul_with_overflow(x, y))

    def add(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._with_flag(self.b.sadd_with_overflow(x, y))

    def dim(self, d: Dim) -> ir.Value:
        """The value of a size at these dims, as Dim.evaluate computes it (floor division)."""
        total: ir.Value = ir.Constant(I64, 0)
        for mono, coeff in d.terms:
            term: ir.Value = ir.Constant(I64, coeff)
            for atom, power in mono:
                base = self._atom(atom)
                for _ in range(power):
                    term = self.mul(term, base)
            total = self.add(total, term)
        return total

    def _atom(self, atom: str | DivAtom) -> ir.Value:
        b = self.b
        if isinstance(atom, str):
            index = ir.Constant(I64, self.symbols.index(atom))
            value = b.load(b.gep(self.dims_p, [index]), name=atom)
            self.flag(self.negative(value))
            return value
        num, den = self.dim(atom.num), ir.Constant(I64, atom.den)
        rest = b.srem(num, den)  # C truncates; a size divides with the floor, as Python
        below = b.icmp_signed("<", rest, ir.Constant(I64, 0))
        if atom.kind == "%":
            return b.select(below, b.add(rest, den), rest)
        return b.select(below, b.sub(b.sdiv(num, den), ir.Constant(I64, 1)), b.sdiv(num, den))

    def span_bytes(self, t: TensorType) -> ir.Value:
        """types.span_bytes at these dims, flagging a negative size."""
        b, one = self.b, ir.Constant(I64, 1)
        total: ir.Value = ir.Constant(I64, t.np_dtype.itemsize)
        for d in t.shape:
            n = self.dim(Dim.of(d))
            self.flag(self.negative(n))
            total = self.mul(total, b.select(b.icmp_signed("<", n, one), one, n))
        return total


def plan_function(module: ir.Module, graph: Graph, symbols: list[str],
                  slots: list[tuple[TensorType, int, int]]) -> None:
    """Add `kiln_plan` for `graph`, whose intermediates are `slots` (ModuleLayout.slots)."""
    fn = ir.Function(module, ir.FunctionType(I64, [I64.as_pointer(), I64.as_pointer()]),
                     "kiln_plan")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    checked = _Checked(b, fn.args[0], symbols)
    limit = ir.Constant(I64, MAX_TENSOR_BYTES)
    for t, _span in SizeCheck.of(graph, [t for t, _born, _dies in slots]).tensors:
        checked.flag(b.icmp_signed(">=", checked.span_bytes(t), limit))
    total: ir.Value = ir.Constant(I64, 0)
    align = ir.Constant(I64, ALIGN)
    for slot, (t, _born, _dies) in enumerate(slots):
        b.store(total, b.gep(fn.args[1], [ir.Constant(I64, slot)]))
        size = ir.Constant(I64, t.np_dtype.itemsize)
        for d in t.shape:
            size = checked.mul(size, checked.dim(Dim.of(d)))
        aligned = b.mul(b.sdiv(checked.add(size, ir.Constant(I64, ALIGN - 1)), align), align)
        total = checked.add(total, aligned)
    b.ret(b.select(checked.bad, ir.Constant(I64, -1), total))
