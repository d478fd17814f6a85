"""KernelBuilder: the function of one kernel, with typed buffers, sizes, loops and the checks
that report bad input values (after numba's cgutils).

Every kernel has the signature of abi.KERNEL_TYPE. An op's native lowering is written against
`KernelBuilder`, its operands named as in the op's record:

    x, out, t = kb.input("x"), kb.output(), n.in_types[0]
    with kb.for_range(kb.numel(t.shape)) as i:
        kb.store(out, i, kb.exp(kb.load(x, i, t.dtype)), t.dtype)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...dims import Dim
from ...types import NARROW_INTS, NUMPY_DTYPES, TensorType
from . import irgen
from .abi import (
    BYTES,
    COMPUTE,
    DTYPE_OF,
    I1,
    I16,
    I64,
    KERNEL_TYPE,
    PTR,
    STORAGE,
    UNSIGNED,
    VOID,
    declare,
)
from .elementwise import ElementwiseKernels
from .mathlib import ScalarMath
from .movement import MovementKernels
from .reductions import ReductionKernels


@dataclass
class NativeNode:
    """What an op's native lowering sees: the node's types and attributes, and the name of
    each input slot (its argument in the op's record)."""

    in_types: list[TensorType | None]
    out_types: list[TensorType]
    attrs: dict
    span: object
    prepacked: frozenset[int] = frozenset()  # input slots holding a weight gemm.prepack_a laid out
    names: tuple[str, ...] = ()  # ops.signature.tensor_slot_names


class KernelBuilder(ScalarMath, ElementwiseKernels, MovementKernels, ReductionKernels):
    """One kernel function: its operands, sizes, loops, scratch memory and status checks (the
    kernel ABI), with the scalar math of mathlib.ScalarMath and the kernel families shared by
    many ops (elementwise.py, movement.py, reductions.py) as methods."""

    def __init__(self, module: ir.Module, name: str, symbols: list[str], fast_math: bool = True):
        self.module = module
        self.symbols = symbols
        self.function = ir.Function(module, KERNEL_TYPE, name)
        self.function.attributes.add("nounwind")
        self.args_ptr, self.dims_ptr, self.status_ptr = self.function.args
        self.failures: list | None = None  # (message, span) per failure code, from the module
        self.span = None
        self.args_ptr.add_attribute("noalias")
        ScalarMath.__init__(self, ir.IRBuilder(self.function.append_basic_block("entry")),
                            fast_math)
        self._dims: dict[Dim, ir.Value] = {}
        self.vector_width: int | None = None  # f32 lanes of the target (None: the host's)
        self.precision = "f32"  # of the GEMM's products: "bf16" (bf16.py) when asked
        self.serial = False  # True in a kernel whose callers run it on several threads
        self.node: NativeNode | None = None  # the op node whose kernel this is
        # a fused node's elementwise chain after its anchor (fused.Epilogue), for an anchor
        # that applies it itself, block by block (a convolution's GEMM: finish.py)
        self.epilogue = None

    def check(self, ok: ir.Value, message: str) -> None:
        """Report `message` (as K0505, at the node's source) when the i1 `ok` is false. Kernels
        cannot raise: the runtime reads the status after the call; the kernel must go on
        without reading or writing outside its buffers (clamp, or skip)."""
        if self.failures is None:  # a kernel built outside a model (tests, helpers)
            return
        self.failures.append((message, self.span))
        code = ir.Constant(I64, len(self.failures))
        with self.b.if_then(self.b.not_(ok), likely=False):
            # the first failure stays: a later op meeting the same bad value (a gradient's
            # scatter-add of a lookup's ids) would name itself rather than the cause
            first = self.b.icmp_signed("==", self.b.load(self.status_ptr), ir.Constant(I64, 0))
            with self.b.if_then(first):
                self.b.store(code, self.status_ptr)

    # ------------------------------------------------------------------ narrow integers
    def to_compute(self, value: ir.Value, dtype: str) -> ir.Value:
        """A stored value in its compute type; a narrow integer (abi.COMPUTE) widened, by its
        sign or with zeros."""
        if dtype in NARROW_INTS:
            widen = self.b.zext if dtype in UNSIGNED else self.b.sext
            return widen(value, COMPUTE[dtype])
        return ScalarMath.to_compute(self, value, dtype)

    def to_storage(self, value: ir.Value, dtype: str) -> ir.Value:
        """A compute value in storage form; a narrow integer keeps its low bits (wraps)."""
        if dtype in NARROW_INTS:
            value = self.convert(value, dtype)
            return self.b.trunc(value, STORAGE[dtype]) if value.type != STORAGE[dtype] else value
        return ScalarMath.to_storage(self, value, dtype)

    # ------------------------------------------------------------------ operands
    def input(self, name: str | int) -> ir.Value | None:
        """The op's input `name` (its argument's name in the op's record), or, for a kernel
        that serves many ops (elementwise, movement, reductions), its input at position
        `name`, as a pointer to its dtype's storage; None for an absent optional input."""
        slot = name if isinstance(name, int) else self.node.names.index(name)
        t = self.node.in_types[slot]
        return None if t is None else self.buffer(slot, t.dtype)

    def inputs(self, name: str | None = None) -> list[ir.Value | None]:
        """The op's inputs in order (those of the tensor-list argument `name`, such as concat's
        xs, when given), as `input` gives each."""
        slots = range(len(self.node.in_types))
        return [self.input(k) for k in slots if name is None or self.node.names[k] == name]

    def output(self, index: int = 0) -> ir.Value:
        """The op's output `index` as a pointer to its dtype's storage."""
        return self.buffer(len(self.node.in_types) + index, self.node.out_types[index].dtype)

    def buffer(self, index: int, dtype: str) -> ir.Value:
        """Argument `index` of the kernel's argument array as a pointer to `dtype`'s storage:
        for kernel-shaped functions whose arguments are no op's (a GEMM, a range function);
        an op's kernel names its operands (`input`, `output`)."""
        raw = irgen.element(self.b, self.args_ptr, index)
        return self.b.bitcast(raw, STORAGE[dtype].as_pointer(), name=f"arg{index}")

    def load(self, ptr: ir.Value, index: ir.Value, dtype: str) -> ir.Value:
        """Element `index` of a buffer, converted to its compute type."""
        value = self.b.load(self.b.gep(ptr, [index]))
        return self.to_compute(value, dtype)

    def store(self, ptr: ir.Value, index: ir.Value, value: ir.Value, dtype: str) -> None:
        self.b.store(self.to_storage(value, dtype), self.b.gep(ptr, [index]))

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
        """The element count of a shape, as i64."""
        return self.dim(irgen.product(shape))

    def nbytes(self, shape, dtype: str) -> ir.Value:
        """The bytes of a tensor of `shape` and `dtype`, as i64."""
        return self.b.mul(self.numel(shape), ir.Constant(I64, NUMPY_DTYPES[dtype].itemsize))

    # ------------------------------------------------------------------ control flow
    def for_range(self, stop: ir.Value, start: ir.Value | None = None,
                  step: int = 1) -> contextlib.AbstractContextManager[ir.Value]:
        """`for i in range(start, stop, step)` (step > 0); yields i inside the loop body."""
        return irgen.for_range(self.b, stop, start, step)

    def finish(self) -> ir.Function:
        self.b.ret_void()
        return self.function

    # ------------------------------------------------------------------ math
    def number(self, value, like: ir.Value) -> ir.Value:
        """A numeric attribute (a number, or a Dim known at run time) in `like`'s type."""
        if isinstance(value, Dim) and not value.is_const:
            return self.convert(self.dim(value), DTYPE_OF[like.type])
        return self.lit(like, Dim.of(value).value if isinstance(value, Dim) else value)

    def stored(self, value, dtype: str) -> ir.Value:
        """`value` (a number, or a Dim known at run time) in `dtype`'s storage form, converted
        as numpy's astype converts it (floats truncate into ints, bf16 rounds to nearest)."""
        if isinstance(value, Dim) and not value.is_const:
            return self.to_storage(self.convert(self.dim(value), dtype), dtype)
        value = Dim.of(value).value if isinstance(value, Dim) else value
        array = np.asarray(value).astype(NUMPY_DTYPES[dtype])
        if dtype == "bf16":
            return ir.Constant(I16, int(array.view(np.uint16)))
        return ir.Constant(STORAGE[dtype], int(array) if dtype == "bool" else array.item())

    # ------------------------------------------------------------------ strided tensors
    def strides(self, shape) -> list[ir.Value]:
        """Row-major element strides of a shape."""
        out: list[ir.Value] = []
        step: ir.Value = ir.Constant(I64, 1)
        for d in reversed(shape):
            out.append(step)
            step = self.b.mul(step, self.dim(d))
        return out[::-1]

    def loop_nest(self, sizes: list[ir.Value], body) -> None:
        """for i0 in range(sizes[0]): for i1 ...: body([i0, i1, ...])."""

        def level(k: int, index: list[ir.Value]) -> None:
            if k == len(sizes):
                body(index)
                return
            with self.for_range(sizes[k]) as i:
                level(k + 1, [*index, i])

        level(0, [])

    def dot(self, index: list[ir.Value], strides: list[ir.Value]) -> ir.Value:
        total: ir.Value = ir.Constant(I64, 0)
        for i, s in zip(index, strides, strict=True):
            total = self.b.add(total, self.b.mul(i, s))
        return total

    def accumulate(self, start: ir.Value, stop: ir.Value, init, step):
        """fold(step, range(start, stop), init): a loop-carried scalar, as an SSA phi. `init`
        may be a tuple of scalars (carried together: step takes and returns the tuple)."""
        carried = isinstance(init, tuple)

        def each(i, accs):
            new = step(accs if carried else accs[0], i)
            return new if carried else (new,)

        accs = irgen.fold(self.b, stop, init if carried else (init,), each, start=start)
        return accs if carried else accs[0]

    def copy_elements(self, dst: ir.Value, dst_at: ir.Value, src: ir.Value, src_at: ir.Value,
                      count: ir.Value, dtype: str) -> None:
        """dst[dst_at : dst_at + count] = src[src_at : src_at + count] (one memcpy)."""
        size = self.b.mul(count, ir.Constant(I64, NUMPY_DTYPES[dtype].itemsize))
        to, source = (self.b.bitcast(self.b.gep(p, [i]), PTR) for p, i in ((dst, dst_at),
                                                                          (src, src_at)))
        irgen.memcpy(self.b, to, source, size)

    def zero_elements(self, dst: ir.Value, dst_at: ir.Value, count: ir.Value,
                      dtype: str) -> None:
        """dst[dst_at : dst_at + count] = 0 (one memset)."""
        size = self.b.mul(count, ir.Constant(I64, NUMPY_DTYPES[dtype].itemsize))
        irgen.memset(self.b, self.b.bitcast(self.b.gep(dst, [dst_at]), PTR), size)

    def scratch(self, count: ir.Value, ty: ir.Type | str, zeroed: bool = True) -> ir.Value:
        """A heap array of `count` values of type `ty` (or of a dtype's compute type), for a
        kernel's own state: zeroed (calloc), or, when the kernel writes all of it first, not
        (malloc). Give it back with `release`; it is null when memory ran out."""
        ty = COMPUTE[ty] if isinstance(ty, str) else ty
        size = ir.Constant(I64, BYTES[ty])
        if zeroed:
            block = self.b.call(declare(self.module, "calloc", PTR, [I64, I64]), [count, size])
        else:
            block = self.b.call(declare(self.module, "malloc", PTR, [I64]),
                                [self.b.mul(count, size)])
        return self.b.bitcast(block, ty.as_pointer())

    def release(self, ptr: ir.Value) -> None:
        self.b.call(declare(self.module, "free", VOID, [PTR]), [self.b.bitcast(ptr, PTR)])

    @contextlib.contextmanager
    def allocated(self, blocks: list[ir.Value], what: str) -> Iterator[None]:
        """Run the body only when every heap block in `blocks` (`scratch`, malloc) was
        allocated, else report that memory ran out for `what` (K0505) and skip it: a kernel
        never writes through a null pointer. The blocks are given back after it."""
        b = self.b
        ok = ir.Constant(I1, 1)
        for block in blocks:
            ok = b.and_(ok, b.icmp_unsigned("!=", block, ir.Constant(block.type, None)))
        self.check(ok, f"out of memory for {what}")
        with b.if_then(ok):
            yield
        for block in blocks:  # free(NULL) does nothing: the ones that were allocated
            self.release(block)

    def helper(self, suffix: str) -> KernelBuilder:
        """A kernel-shaped function of this kernel's own (internal, `name_suffix`), for work
        the module's threads share: it targets the same vectors and reports failures at the
        same source."""
        inner = KernelBuilder(self.module, f"{self.function.name}_{suffix}", [])
        inner.function.linkage = "internal"
        inner.vector_width, inner.failures, inner.span = self.vector_width, self.failures, \
            self.span
        inner.precision = self.precision
        return inner

    def shared_helper(self, name: str) -> KernelBuilder:
        """A kernel-shaped function of the module (internal, `name`), for work whose code
        depends on nothing of this kernel but its vector width (every size a run-time
        argument): the kernels that need it call one function. It must report no failure
        (it would be told at the first caller's source)."""
        inner = KernelBuilder(self.module, name, [])
        inner.function.linkage = "internal"
        inner.vector_width, inner.failures, inner.span = self.vector_width, self.failures, \
            self.span
        inner.precision = self.precision
        return inner

    def call_kernel(self, fn: ir.Function, pointers: list[ir.Value], sizes: list[ir.Value],
                    name: str = "call") -> None:
        """fn(args, sizes, status) for a kernel-shaped `fn`, its pointers and i64 sizes passed
        in arrays of this function's entry block."""
        b = self.b
        with b.goto_entry_block():
            args = b.alloca(PTR, max(1, len(pointers)), name=f"{name}_args")
            dims = b.alloca(I64, max(1, len(sizes)), name=f"{name}_sizes")
        for i, p in enumerate(pointers):
            b.store(b.bitcast(p, PTR), b.gep(args, [ir.Constant(I64, i)]))
        for i, value in enumerate(sizes):
            b.store(value, b.gep(dims, [ir.Constant(I64, i)]))
        b.call(fn, [args, dims, self.status_ptr])
