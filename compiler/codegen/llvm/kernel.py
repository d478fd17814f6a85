"""KernelBuilder: the function of one kernel, with typed buffers, sizes, loops and the checks
that report bad input values (after numba's cgutils).

Every kernel has the signature of abi.KERNEL_TYPE. A kernel is written against
`KernelBuilder`:

    with kb.for_range(kb.numel(out_type.shape)) as i:
        kb.store(out, i, kb.relu(kb.load(x, i)))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from llvmlite import ir

from ...dims import Dim
from ...types import NUMPY_DTYPES
from .abi import (
    BYTES,
    COMPUTE,
    DTYPE_OF,
    F16,
    F32,
    F64,
    I1,
    I8,
    I16,
    I32,
    I64,
    KERNEL_TYPE,
    PTR,
    STORAGE,
    VOID,
    declare,
)
from .threads import parallel_rows

FLAT_BLOCK = 1 << 12  # elements: the smallest block of an elementwise loop a thread takes
FLAT_PARALLEL = 1 << 16  # elements below which an elementwise loop runs on one thread


class KernelBuilder:
    """An IRBuilder for one kernel function, with loops, typed buffers and sizes."""

    def __init__(self, module: ir.Module, name: str, symbols: list[str], fast_math: bool = True):
        self.module = module
        self.symbols = symbols
        self.function = ir.Function(module, KERNEL_TYPE, name)
        self.function.attributes.add("nounwind")
        self.args_ptr, self.dims_ptr, self.status_ptr = self.function.args
        self.failures: list | None = None  # (message, span) per failure code, from the module
        self.span = None
        self.args_ptr.add_attribute("noalias")
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        # fast math that keeps numpy's results: reassociation (vectorised reductions) and FMA
        # contraction, but never nnan/ninf (NaN and inf propagate as in numpy), nsz (relu(-0.0)
        # is 0.0) or arcp/afn (divisions and libm functions round as numpy's do)
        self.flags = ("reassoc", "contract") if fast_math else ()
        self._dims: dict[Dim, ir.Value] = {}
        self.vector_width: int | None = None  # f32 lanes of the target (None: the host's)
        self.serial = False  # True in a kernel whose callers run it on several threads

    def check(self, ok: ir.Value, message: str) -> None:
        """Report `message` (as K0505, at the node's source) when the i1 `ok` is false. Kernels
        cannot raise: the runtime reads the status after the call; the kernel must go on
        without reading or writing outside its buffers (clamp, or skip)."""
        if self.failures is None:  # a kernel built outside a model (tests, helpers)
            return
        self.failures.append((message, self.span))
        code = ir.Constant(I64, len(self.failures))
        with self.b.if_then(self.b.not_(ok), likely=False):
            self.b.store(code, self.status_ptr)

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
        """A compute value (or an f64 one, rounded once as numpy's astype) in storage form."""
        b = self.b
        if dtype == "f16" and value.type == F64:  # numpy rounds f64 to f16 once
            return b.fptrunc(self._to_f32_odd(value), F16)
        if dtype == "f16":
            return b.fptrunc(value, F16)
        if value.type == F64 and dtype != "f64":  # ml_dtypes' bf16 goes through f32 too
            value = self.convert(value, dtype)
        if dtype == "bf16":  # round to nearest even, as ml_dtypes does; NaN stays a quiet NaN
            bits = b.bitcast(value, I32)
            high = b.lshr(bits, ir.Constant(I32, 16))
            lsb = b.and_(high, ir.Constant(I32, 1))
            rounded = b.lshr(b.add(bits, b.add(ir.Constant(I32, 0x7FFF), lsb)),
                             ir.Constant(I32, 16))
            nan = b.fcmp_unordered("uno", value, value)
            quiet = b.or_(high, ir.Constant(I32, 0x40))
            return b.trunc(b.select(nan, quiet, rounded), I16)
        if dtype == "bool":
            return b.zext(value, I8)
        return value

    def _to_f32_odd(self, value: ir.Value) -> ir.Value:
        """f64 -> f32 rounded to odd: an inexact result gets an odd last bit, so rounding it on
        to f16 (11 bits) rounds as f64 -> f16 directly would (LLVM's direct fptrunc is a
        compiler-rt call the JIT cannot resolve)."""
        b = self.b
        nearest = b.fptrunc(value, F32)
        back = b.fpext(nearest, F64)
        bits = b.bitcast(nearest, I32)
        even = b.icmp_unsigned("==", b.and_(bits, ir.Constant(I32, 1)), ir.Constant(I32, 0))
        inexact = b.fcmp_ordered("!=", back, value)
        above = b.fcmp_ordered(">", self.intrinsic("fabs", back), self.intrinsic("fabs", value))
        toward = b.select(above, ir.Constant(I32, -1), ir.Constant(I32, 1))
        odd = b.add(bits, toward)  # the neighbour on value's side: magnitude is bits' order
        return b.select(b.and_(even, inexact), b.bitcast(odd, F32), nearest)

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
        return self.dim(_product(shape))

    # ------------------------------------------------------------------ control flow
    @contextlib.contextmanager
    def for_range(self, stop: ir.Value, start: ir.Value | None = None,
                  step: int = 1) -> Iterator[ir.Value]:
        """`for i in range(start, stop, step)` (step > 0); yields i inside the loop body."""
        with self._loop(start, stop, step, ()) as (i, _values, _carry):
            yield i

    @contextlib.contextmanager
    def _loop(self, start, stop, step: int, inits: tuple):
        """A counted loop with loop-carried values (SSA phis): yields (i, values, carry) in the
        body, where carry(new_values) gives the next iteration (and the exit) its values."""
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
        values = tuple(b.phi(v.type) for v in inits)
        for phi, v in zip(values, inits, strict=True):
            phi.add_incoming(v, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        carried = list(values)

        def carry(new) -> None:
            carried[:] = new

        yield i, values, carry
        for phi, v in zip(values, carried, strict=True):
            phi.add_incoming(v, b.block)
        i.add_incoming(b.add(i, ir.Constant(I64, step), flags=("nsw",)), b.block)
        b.branch(head)
        b.position_at_end(done)

    def finish(self) -> ir.Function:
        self.b.ret_void()
        return self.function

    # ------------------------------------------------------------------ math
    def const(self, value: float | int | bool, dtype: str) -> ir.Constant:
        return ir.Constant(COMPUTE[dtype], value)

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

    @contextlib.contextmanager
    def strict(self) -> Iterator[None]:
        """IEEE arithmetic without fast-math flags inside the block (for formulas that mirror
        numpy's rounding step by step, such as its floor division)."""
        flags, self.flags = self.flags, ()
        try:
            yield
        finally:
            self.flags = flags

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        ty = args[0].type
        fn = self.module.declare_intrinsic(
            f"llvm.{name}", [ty], ir.FunctionType(ty, [a.type for a in args])
        )
        return self.b.call(fn, list(args), fastmath=self.flags if ty in (F32, F64) else ())

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=self.flags)

    def fsub(self, a, b):
        return self.b.fsub(a, b, flags=self.flags)

    def fmul(self, a, b):
        return self.b.fmul(a, b, flags=self.flags)

    def fdiv(self, a, b):
        return self.b.fdiv(a, b, flags=self.flags)

    def libm(self, name: str, *args: ir.Value) -> ir.Value:
        """A C math library function (tanhf, erff, ...) on f32 or f64 scalars."""
        ty = args[0].type
        symbol = name + ("f" if ty == F32 else "")
        fn = self.module.globals.get(symbol)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [a.type for a in args]), symbol)
        return self.b.call(fn, list(args))

    # ------------------------------------------------------------------ loop nests
    def elementwise(self, n, scalar) -> None:
        """out[i...] = scalar(kb, *inputs[i...]) with numpy broadcasting; the inner loop runs
        over contiguous memory so LLVM vectorises it."""
        out_t = n.out_types[0]
        ins = [(self.buffer(i, t.dtype), t) for i, t in enumerate(n.in_types)]
        self.elementwise_over(self.buffer(len(ins), out_t.dtype), out_t, ins, scalar)

    def elementwise_over(self, out: ir.Value, out_t, ins: list, scalar) -> None:
        """out[i...] = scalar(kb, *values) where the values are each (pointer, type) of `ins`
        at i, broadcast (numpy's rules) to `out_t`. An input may be `out` itself: each element
        is read before it is written."""
        if all(t.shape == out_t.shape or t.rank == 0 for _, t in ins):  # no broadcasting
            self._flat(out, out_t, ins, scalar)
            return
        strides = [self.broadcast_strides(t, out_t) for _, t in ins]
        self._nest(0, out_t, ins, strides, [ir.Constant(I64, 0)] * len(ins),
                   ir.Constant(I64, 0), out, scalar)

    def _flat(self, out: ir.Value, out_t, ins: list, scalar) -> None:
        """The elementwise loop over flat indices, as a range function the module's threads
        share when the tensor is large enough (see threads.parallel_rows); inside a kernel
        that already runs on several threads (`serial`), the loop itself."""
        total = self.numel(out_t.shape)
        if self.serial:
            self._flat_range(self, out, out_t, ins, scalar, ir.Constant(I64, 0), total)
            return
        inner = self.helper("range")
        # each distinct buffer once: an input that is `out` itself (a fused epilogue reads
        # the anchor's result in place) must be the same pointer in the range function too,
        # or LLVM cannot prove the in-place loop safe to vectorise
        unique: list[ir.Value] = [out]
        for p, _t in ins:
            if all(p is not q for q in unique):
                unique.append(p)
        slot_of = {id(p): k for k, p in enumerate(unique)}
        typed: dict[tuple[int, str], ir.Value] = {}

        def pointer(k: int, dtype: str) -> ir.Value:
            if (k, dtype) not in typed:
                typed[(k, dtype)] = inner.buffer(k, dtype)
            return typed[(k, dtype)]

        target = pointer(0, out_t.dtype)
        pointers = [(pointer(slot_of[id(p)], t.dtype), t) for p, t in ins]
        start, count = (inner.b.load(inner.b.gep(inner.dims_ptr, [ir.Constant(I64, i)]))
                        for i in range(2))
        self._flat_range(inner, target, out_t, pointers, scalar, start, count)
        fn = parallel_rows(self.module, inner.finish(), len(unique), 2,
                           lambda b, ptrs, sizes, row0: (list(ptrs), [b.add(sizes[0], row0),
                                                                      sizes[1]]),
                           min_rows=FLAT_BLOCK, min_work=FLAT_PARALLEL, rows_index=1,
                           work=lambda b, sizes: sizes[1], oversplit=4)
        self.call_kernel(fn, unique, [ir.Constant(I64, 0), total], "flat")

    @staticmethod
    def _flat_range(kb, out, out_t, ins, scalar, start, count) -> None:
        zero = ir.Constant(I64, 0)
        with kb.for_range(count) as j:
            i = kb.b.add(start, j)
            vals = [kb.load(p, i if t.rank else zero, t.dtype) for p, t in ins]
            kb.store(out, i, scalar(kb, *vals), out_t.dtype)

    def broadcast_strides(self, t, out_t) -> list[ir.Value]:
        """Element strides of `t` along each axis of the output (0 where it broadcasts)."""
        pad = out_t.rank - t.rank
        strides: list[ir.Value] = [ir.Constant(I64, 0)] * out_t.rank
        step: ir.Value = ir.Constant(I64, 1)
        for axis in range(t.rank - 1, -1, -1):
            d = t.shape[axis]
            if not (d.is_const and d.value == 1 and not (out_t.shape[axis + pad] == 1)):
                strides[axis + pad] = step
            step = self.b.mul(step, self.dim(d))
        return strides

    _broadcast_strides = broadcast_strides  # the name linalg.py knows

    def _nest(self, axis, out_t, ins, strides, offsets, out_offset, out, scalar) -> None:
        if axis == out_t.rank:
            vals = [self.load(p, o, t.dtype) for (p, t), o in zip(ins, offsets, strict=True)]
            self.store(out, out_offset, scalar(self, *vals), out_t.dtype)
            return
        inner = self.numel(out_t.shape[axis + 1:])
        with self.for_range(self.dim(out_t.shape[axis])) as i:
            new = [self.b.add(o, self.b.mul(i, s[axis])) for o, s in zip(offsets, strides,
                                                                         strict=True)]
            self._nest(axis + 1, out_t, ins, strides, new,
                       self.b.add(out_offset, self.b.mul(i, inner)), out, scalar)

    # ------------------------------------------------------------------ scalar arithmetic
    # on compute-type values: f32/f64 floats, i32/i64 ints, i1 bools
    @staticmethod
    def is_float(v: ir.Value) -> bool:
        return isinstance(v.type, (ir.FloatType, ir.DoubleType))

    def add(self, a, b):  # on bools numpy's + is `or`, * is `and`
        if a.type == I1:
            return self.b.or_(a, b)
        return self.fadd(a, b) if self.is_float(a) else self.b.add(a, b)

    def sub(self, a, b):
        return self.fsub(a, b) if self.is_float(a) else self.b.sub(a, b)

    def mul(self, a, b):
        if a.type == I1:
            return self.b.and_(a, b)
        return self.fmul(a, b) if self.is_float(a) else self.b.mul(a, b)

    def neg(self, a):
        return self.b.fneg(a, flags=self.flags) if self.is_float(a) else self.b.neg(a)

    def lit(self, like: ir.Value, value: float) -> ir.Constant:
        return ir.Constant(like.type, value if self.is_float(like) else int(value))

    def compare(self, op: str, a, b) -> ir.Value:
        if self.is_float(a):  # ordered: a comparison with NaN is false (but != is true)
            return (self.b.fcmp_unordered(op, a, b) if op == "!="
                    else self.b.fcmp_ordered(op, a, b))
        if a.type == I1:  # False < True
            return self.b.icmp_unsigned(op, a, b)
        return self.b.icmp_signed(op, a, b)

    def select(self, cond, a, b):
        return self.b.select(cond, a, b)

    def maximum(self, a, b):
        """numpy's maximum: NaN wins."""
        if a.type == I1:
            return self.b.or_(a, b)
        return self.intrinsic("maximum", a, b) if self.is_float(a) else self.select(
            self.compare(">", a, b), a, b)

    def minimum(self, a, b):
        if a.type == I1:
            return self.b.and_(a, b)
        return self.intrinsic("minimum", a, b) if self.is_float(a) else self.select(
            self.compare("<", a, b), a, b)

    def convert(self, v: ir.Value, dtype: str) -> ir.Value:
        """A compute value as the compute type of `dtype` (numpy's astype: floats truncate
        toward zero into ints; anything nonzero is true)."""
        to = COMPUTE[dtype]
        b = self.b
        if v.type == to:
            return v
        if to == I1:
            zero = ir.Constant(v.type, 0.0 if self.is_float(v) else 0)
            return self.compare("!=", v, zero)
        if v.type == I1:
            floating = isinstance(to, (ir.FloatType, ir.DoubleType))
            return b.uitofp(v, to) if floating else b.zext(v, to)
        if self.is_float(v):
            if isinstance(to, (ir.FloatType, ir.DoubleType)):
                return b.fpext(v, to) if to == F64 else b.fptrunc(v, to)
            return b.fptosi(v, to)
        if isinstance(to, (ir.FloatType, ir.DoubleType)):
            return b.sitofp(v, to)
        return b.sext(v, to) if to.width > v.type.width else b.trunc(v, to)

    def exp(self, a):
        """e^a. f32 is computed here, in a form LLVM vectorises (libm's expf is one scalar call
        per element): a = k ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 in two parts), e^r by
        its Taylor series to r^7 (truncation below 1e-8), times 2^k built from the exponent
        bits in two halves, so denormal results and results up to FLT_MAX come out right."""
        if a.type != F32:
            return self.intrinsic("exp", a)
        b = self.b
        x = self.intrinsic("minnum", self.intrinsic("maxnum", a, ir.Constant(F32, -104.0)),
                           ir.Constant(F32, 88.75))
        k = self.intrinsic("rint", self.fmul(x, ir.Constant(F32, 1.4426950408889634)))
        r = self.fsub(self.fsub(x, self.fmul(k, ir.Constant(F32, 0.693359375))),
                      self.fmul(k, ir.Constant(F32, -2.12194440e-4)))
        p = ir.Constant(F32, 1.0 / 5040)
        for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
            p = self.fadd(self.fmul(p, r), ir.Constant(F32, c))
        ki = b.fptosi(k, I32)
        half = b.ashr(ki, ir.Constant(I32, 1))

        def power_of_two(e):
            return b.bitcast(b.shl(b.add(e, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)

        value = self.fmul(self.fmul(p, power_of_two(half)), power_of_two(b.sub(ki, half)))
        inf = ir.Constant(F32, float("inf"))
        value = b.select(b.fcmp_ordered(">", a, ir.Constant(F32, 88.72283935546875)), inf, value)
        value = b.select(b.fcmp_ordered("<", a, ir.Constant(F32, -103.972)),
                         ir.Constant(F32, 0.0), value)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)  # NaN stays NaN

    def tanh(self, a):
        """tanh(a); f32 without a libm call: an odd Taylor polynomial to a^13 for |a| < 0.4
        (error below 2e-9), else 1 - 2 / (e^(2|a|) + 1); the sign of a restored."""
        if a.type != F32:
            return self.libm("tanh", a)
        b = self.b
        x = self.intrinsic("fabs", a)
        x2 = self.fmul(x, x)
        poly = ir.Constant(F32, 21844.0 / 6081075)
        for c in (-1382.0 / 155925, 62.0 / 2835, -17.0 / 315, 2.0 / 15, -1.0 / 3, 1.0):
            poly = self.fadd(self.fmul(poly, x2), ir.Constant(F32, c))
        small = self.fmul(poly, x)
        one = ir.Constant(F32, 1.0)
        large = self.fsub(one, self.fdiv(ir.Constant(F32, 2.0),
                                         self.fadd(self.exp(self.fadd(x, x)), one)))
        value = b.select(b.fcmp_ordered("<", x, ir.Constant(F32, 0.4)), small, large)
        value = self.intrinsic("copysign", value, a)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)

    def sigmoid(self, a):
        one = self.lit(a, 1.0)
        return self.fdiv(one, self.fadd(one, self.exp(self.neg(a))))

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
        with self._loop(start, stop, 1, init if carried else (init,)) as (i, accs, carry):
            new = step(accs if carried else accs[0], i)
            carry(new if carried else (new,))
        return accs if carried else accs[0]

    # ------------------------------------------------------------------ data movement
    def copy_all(self, n) -> None:
        """Output 0 is input 0's bytes (reshape, flatten, squeeze): one memcpy."""
        t, zero = n.in_types[0], ir.Constant(I64, 0)
        self.copy_elements(self.buffer(1, t.dtype), zero, self.buffer(0, t.dtype), zero,
                           self.numel(t.shape), t.dtype)

    def permute(self, n, perm) -> None:
        """out[i0, i1, ...] = x[..., i_k at axis perm[k], ...] (transpose, permute)."""
        x_strides = self.strides(n.in_types[0].shape)
        self.view_copy(n, ir.Constant(I64, 0), [x_strides[p] for p in perm])

    def view_copy(self, n, base: ir.Value, strides: list[ir.Value]) -> None:
        """out[i0, i1, ...] = x[base + i0 * strides[0] + i1 * strides[1] + ...]: a strided view
        of input 0 (strides may be negative or 0) copied out element by element, as stored."""
        x_t, out_t = n.in_types[0], n.out_types[0]
        x, out = self.buffer(0, x_t.dtype), self.buffer(len(n.in_types), out_t.dtype)
        out_strides = self.strides(out_t.shape)

        def body(index):
            self.move(out, self.dot(index, out_strides), x,
                      self.b.add(base, self.dot(index, strides)))

        self.loop_nest([self.dim(d) for d in out_t.shape], body)

    def move(self, dst: ir.Value, dst_at: ir.Value, src: ir.Value, src_at: ir.Value) -> None:
        """dst[dst_at] = src[src_at], as stored (no conversion)."""
        self.b.store(self.b.load(self.b.gep(src, [src_at])), self.b.gep(dst, [dst_at]))

    def copy_elements(self, dst: ir.Value, dst_at: ir.Value, src: ir.Value, src_at: ir.Value,
                      count: ir.Value, dtype: str) -> None:
        """dst[dst_at : dst_at + count] = src[src_at : src_at + count] (one memcpy)."""
        size = self.b.mul(count, ir.Constant(I64, NUMPY_DTYPES[dtype].itemsize))
        to, source = (self.b.bitcast(self.b.gep(p, [i]), PTR) for p, i in ((dst, dst_at),
                                                                          (src, src_at)))
        memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        self.b.call(memcpy, [to, source, size, ir.Constant(I1, 0)])

    def zero_elements(self, dst: ir.Value, dst_at: ir.Value, count: ir.Value,
                      dtype: str) -> None:
        """dst[dst_at : dst_at + count] = 0 (one memset)."""
        size = self.b.mul(count, ir.Constant(I64, NUMPY_DTYPES[dtype].itemsize))
        memset = self.module.declare_intrinsic("llvm.memset", [PTR, I64])
        self.b.call(memset, [self.b.bitcast(self.b.gep(dst, [dst_at]), PTR),
                             ir.Constant(I8, 0), size, ir.Constant(I1, 0)])

    def join(self, n, axis: int, sizes: list, split: bool = False) -> None:
        """Copy between pieces and the whole they make side by side along `axis`, pieces of
        extent sizes[k] (Dims) along it: the inputs into the output (concat, stack), or with
        `split` the input into the outputs."""
        whole_t, piece_ts = (n.in_types[0], n.out_types) if split else (n.out_types[0],
                                                                         n.in_types)
        whole = self.buffer(0 if split else len(piece_ts), whole_t.dtype)
        pieces = [self.buffer(k + split, t.dtype) for k, t in enumerate(piece_ts)]
        inner = whole_t.shape[axis + 1:]
        row = self.numel(whole_t.shape[axis:])
        with self.for_range(self.numel(whole_t.shape[:axis])) as o:
            offset = Dim.of(0)
            for piece, size in zip(pieces, sizes, strict=True):
                count = self.numel((size, *inner))
                at_whole = self.b.add(self.b.mul(o, row), self.numel((offset, *inner)))
                at_piece = self.b.mul(o, count)
                if split:
                    self.copy_elements(piece, at_piece, whole, at_whole, count, whole_t.dtype)
                else:
                    self.copy_elements(whole, at_whole, piece, at_piece, count, whole_t.dtype)
                offset = offset + size

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

    # ------------------------------------------------------------------ reductions
    def reduce(self, n, axes: tuple[int, ...], folds: list, finish=None) -> None:
        """Output 0 = input 0 reduced over `axes`. For each output element, the folds run in
        turn over the elements reduced into it, in order: folds[k] = (init, step), a constant
        start and step(acc, value, position, earlier) -> acc, where value is an element (a
        compute value), position its row-major index among the reduced elements, and earlier
        the results of the folds before. The output element is finish(results) (by default
        the last result).

        Adjacent axes both reduced (or both kept) are one loop. Reducing the last axes, a fold
        is one tight loop over contiguous memory; reducing leading axes, a fold runs over whole
        rows of the kept last axes at once (its accumulators in a scratch row): the inner loop
        is contiguous either way, and LLVM vectorises it."""
        finish = finish or (lambda results: results[-1])
        t, out_t = n.in_types[0], n.out_types[0]
        x, out = self.buffer(0, t.dtype), self.buffer(1, out_t.dtype)
        runs: list[tuple[bool, Dim, Dim]] = []  # (reduced, size, stride) of merged axes
        for axis, d in enumerate(t.shape):
            stride = _product(t.shape[axis + 1:])
            if runs and runs[-1][0] == (axis in axes):
                runs[-1] = (axis in axes, runs[-1][1] * d, stride)
            else:
                runs.append((axis in axes, d, stride))
        kept = [(self.dim(size), self.dim(stride)) for r, size, stride in runs if not r]
        reduced = [(self.dim(size), self.dim(stride)) for r, size, stride in runs if r]
        positions = self.strides([size for r, size, _ in runs if r])
        out_strides = self.strides([size for r, size, _ in runs if not r])
        zero = ir.Constant(I64, 0)

        def value(offset):
            return self.load(x, offset, t.dtype)

        if not reduced or runs[-1][0] or runs[-1][1] == 1:  # a fold per output element
            def each(index):
                results: list[ir.Value] = []
                for init, step in folds:
                    def level(k, offset, position, acc, step=step, earlier=tuple(results)):
                        if k == len(reduced):
                            return step(acc, value(offset), position, earlier)
                        size, stride = reduced[k]
                        return self.accumulate(zero, size, acc, lambda a, i: level(
                            k + 1, self.b.add(offset, self.b.mul(i, stride)),
                            self.b.add(position, self.b.mul(i, positions[k])), a))

                    results.append(level(0, self.dot(index, [s for _, s in kept]), zero, init))
                self.store(out, self.dot(index, out_strides), finish(results), out_t.dtype)

            self.loop_nest([size for size, _ in kept], each)
            return

        (width, _), outer = kept[-1], kept[:-1]  # folds over rows of `width` kept elements
        rows = [self.scratch(width, init.type) for init, _ in folds]

        def row_of(k, j):
            return self.b.gep(rows[k], [j])

        def each_row(index):
            base = self.dot(index, [s for _, s in outer])
            for k, (init, step) in enumerate(folds):
                with self.for_range(width) as j:
                    self.b.store(init, row_of(k, j))

                def fold_in(at, k=k, step=step):
                    offset = self.b.add(base, self.dot(at, [s for _, s in reduced]))
                    with self.for_range(width) as j:
                        earlier = [self.b.load(row_of(e, j)) for e in range(k)]
                        acc = self.b.load(row_of(k, j))
                        new = step(acc, value(self.b.add(offset, j)), self.dot(at, positions),
                                   earlier)
                        self.b.store(new, row_of(k, j))

                self.loop_nest([size for size, _ in reduced], fold_in)
            at = self.dot(index, out_strides[:-1])
            with self.for_range(width) as j:
                results = [self.b.load(row_of(k, j)) for k in range(len(folds))]
                self.store(out, self.b.add(at, j), finish(results), out_t.dtype)

        with self.allocated(rows, "a reduction's rows"):
            self.loop_nest([size for size, _ in outer], each_row)

    def along_axis(self, n, axis: int):
        """(x, out, outer, length, inner, each) for an op reading x along one axis: `each(body)`
        calls body(offset_of(j)) once per line, where offset_of(j) is the j-th element's index."""
        t = n.in_types[0]
        x, out = self.buffer(0, t.dtype), self.buffer(1, n.out_types[0].dtype)
        shape = t.shape or (Dim.of(1),)
        outer = self.numel(shape[:axis])
        length = self.dim(shape[axis])
        inner = self.numel(shape[axis + 1 :])

        def each(body):
            with self.for_range(outer) as o:
                with self.for_range(inner) as i:
                    base = self.b.add(self.b.mul(o, self.b.mul(length, inner)), i)
                    body(lambda j: self.b.add(base, self.b.mul(j, inner)))

        return x, out, length, each

    def softmax(self, n, axis: int, log: bool = False) -> None:
        """Stable softmax (or log_softmax) along `axis`: max, then sum of exp(x - max)."""
        dtype = n.in_types[0].dtype
        x, out, length, each = self.along_axis(n, axis)
        zero = ir.Constant(I64, 0)

        def line(at):
            def load(j):
                return self.load(x, at(j), dtype)

            top = self.accumulate(zero, length, self.const(float("-inf"), dtype),
                                  lambda m, j: self.maximum(m, load(j)))
            total = self.accumulate(zero, length, self.const(0.0, dtype),
                                    lambda s, j: self.fadd(s, self.exp(self.fsub(load(j), top))))
            log_total = self.intrinsic("log", total) if log else None
            with self.for_range(length) as j:
                shifted = self.fsub(load(j), top)
                value = (self.fsub(shifted, log_total) if log
                         else self.fdiv(self.exp(shifted), total))
                self.store(out, at(j), value, dtype)

        each(line)


def _product(dims) -> Dim:
    total = Dim.of(1)
    for d in dims:
        total = total * d
    return total
