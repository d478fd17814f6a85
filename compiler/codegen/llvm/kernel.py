"""Small helpers that let a kernel read like its math (after numba's cgutils).

Every kernel has one signature, `void kernel(i8** args, i64* dims)`: `args` holds the node's
input buffers then its output buffers; `dims` holds the run-time value of each symbolic size,
in the model's symbol order. A kernel is written against `KernelBuilder`:

    with kb.for_range(kb.numel(out_type.shape)) as i:
        kb.store(out, i, kb.relu(kb.load(x, i)))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llvmlite import ir

from ...dims import Dim

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
VOID = ir.VoidType()
PTR = I8.as_pointer()

# storage type of each kiln dtype; bf16 is stored as i16 and computed in f32
STORAGE = {"f32": F32, "f16": F16, "bf16": I16, "f64": F64, "i32": I32, "i64": I64, "bool": I8}
# the type a kernel computes in
COMPUTE = {"f32": F32, "f16": F32, "bf16": F32, "f64": F64, "i32": I32, "i64": I64, "bool": I1}
FLOATS = ("f32", "f16", "bf16", "f64")

KERNEL_TYPE = ir.FunctionType(VOID, [PTR.as_pointer(), I64.as_pointer()])


class KernelBuilder:
    """An IRBuilder for one kernel function, with loops, typed buffers and sizes."""

    def __init__(self, module: ir.Module, name: str, symbols: list[str], fast_math: bool = True):
        self.module = module
        self.symbols = symbols
        self.function = ir.Function(module, KERNEL_TYPE, name)
        self.function.attributes.add("nounwind")
        self.args_ptr, self.dims_ptr = self.function.args
        self.args_ptr.add_attribute("noalias")
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        self.flags = ("fast",) if fast_math else ()
        self._dims: dict[Dim, ir.Value] = {}

    # ------------------------------------------------------------------ buffers
    def buffer(self, index: int, dtype: str) -> ir.Value:
        """Argument `index` as a typed pointer."""
        raw = self.b.load(self.b.gep(self.args_ptr, [ir.Constant(I64, index)]))
        return self.b.bitcast(raw, STORAGE[dtype].as_pointer(), name=f"arg{index}")

    def load(self, ptr: ir.Value, index: ir.Value, dtype: str) -> ir.Value:
        """Element `index` of a buffer, converted to its compute type."""
        value = self.b.load(self.b.gep(ptr, [index]))
        return self.to_compute(value, dtype)

    def store(self, ptr: ir.Value, index: ir.Value, value: ir.Value, dtype: str) -> None:
        self.b.store(self.to_storage(value, dtype), self.b.gep(ptr, [index]))

    def to_compute(self, value: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype == "f16":
            return b.fpext(value, F32)
        if dtype == "bf16":  # bf16 is the high half of an f32
            return b.bitcast(b.shl(b.zext(value, I32), ir.Constant(I32, 16)), F32)
        if dtype == "bool":
            return b.icmp_unsigned("!=", value, ir.Constant(I8, 0))
        return value

    def to_storage(self, value: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype == "f16":
            return b.fptrunc(value, F16)
        if dtype == "bf16":  # round to nearest even, as ml_dtypes does
            bits = b.bitcast(value, I32)
            lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
            rounded = b.add(bits, b.add(ir.Constant(I32, 0x7FFF), lsb))
            return b.trunc(b.lshr(rounded, ir.Constant(I32, 16)), I16)
        if dtype == "bool":
            return b.zext(value, I8)
        return value

    # ------------------------------------------------------------------ sizes
    def dim(self, d: Dim | int) -> ir.Value:
        """The run-time value of a size, as i64."""
        d = Dim.of(d)
        if d.is_const:
            return ir.Constant(I64, d.value)
        if d in self._dims:
            return self._dims[d]
        with self.b.goto_entry_block():  # sizes are computed once, at the top
            value = self._dim_value(d)
        self._dims[d] = value
        return value

    def _dim_value(self, d: Dim) -> ir.Value:
        b = self.b
        total: ir.Value | None = None
        for mono, coeff in d.terms:
            term: ir.Value = ir.Constant(I64, coeff)
            for atom, power in mono:
                if isinstance(atom, str):
                    index = ir.Constant(I64, self.symbols.index(atom))
                    base = b.load(b.gep(self.dims_ptr, [index]), name=atom)
                else:  # sizes are non-negative: signed division is the floor
                    num = self._dim_value(atom.num)
                    den = ir.Constant(I64, atom.den)
                    base = b.sdiv(num, den) if atom.kind == "//" else b.srem(num, den)
                for _ in range(power):
                    term = b.mul(term, base)
            total = term if total is None else b.add(total, term)
        return total if total is not None else ir.Constant(I64, 0)

    def numel(self, shape) -> ir.Value:
        total = Dim.of(1)
        for d in shape:
            total = total * d
        return self.dim(total)

    # ------------------------------------------------------------------ control flow
    @contextlib.contextmanager
    def for_range(self, stop: ir.Value, start: ir.Value | None = None,
                  step: int = 1) -> Iterator[ir.Value]:
        """`for i in range(start, stop, step)` (step > 0); yields i inside the loop body."""
        b = self.b
        start = start if start is not None else ir.Constant(I64, 0)
        pre = b.block
        head = b.append_basic_block("loop.head")
        body = b.append_basic_block("loop.body")
        done = b.append_basic_block("loop.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name="i")
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        yield i
        nxt = b.add(i, ir.Constant(I64, step), flags=("nsw",))
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)

    def finish(self) -> ir.Function:
        self.b.ret_void()
        return self.function

    # ------------------------------------------------------------------ math
    def const(self, value: float | int | bool, dtype: str) -> ir.Constant:
        return ir.Constant(COMPUTE[dtype], value)

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        ty = args[0].type
        fn = self.module.declare_intrinsic(f"llvm.{name}", [ty])
        return self.b.call(fn, list(args), fastmath=self.flags if ty in (F32, F64) else ())

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=self.flags)

    def fsub(self, a, b):
        return self.b.fsub(a, b, flags=self.flags)

    def fmul(self, a, b):
        return self.b.fmul(a, b, flags=self.flags)

    def fdiv(self, a, b):
        return self.b.fdiv(a, b, flags=self.flags)
