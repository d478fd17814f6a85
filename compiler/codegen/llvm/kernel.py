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
        out = self.buffer(len(ins), out_t.dtype)
        if all(t.shape == out_t.shape or t.rank == 0 for _, t in ins):  # no broadcasting
            zero = ir.Constant(I64, 0)
            with self.for_range(self.numel(out_t.shape)) as i:
                vals = [self.load(p, i if t.rank else zero, t.dtype) for p, t in ins]
                self.store(out, i, scalar(self, *vals), out_t.dtype)
            return
        strides = [self._broadcast_strides(t, out_t) for _, t in ins]
        self._nest(0, out_t, ins, strides, [ir.Constant(I64, 0)] * len(ins),
                   ir.Constant(I64, 0), out, scalar)

    def _broadcast_strides(self, t, out_t) -> list[ir.Value]:
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
        return self.intrinsic("exp", a)

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

    def accumulate(self, start: ir.Value, stop: ir.Value, init: ir.Value, step) -> ir.Value:
        """fold(step, range(start, stop), init): a loop-carried scalar, as an SSA phi."""
        b = self.b
        pre = b.block
        head = b.append_basic_block("acc.head")
        body = b.append_basic_block("acc.body")
        done = b.append_basic_block("acc.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64)
        acc = b.phi(init.type)
        i.add_incoming(start, pre)
        acc.add_incoming(init, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        new = step(acc, i)
        acc.add_incoming(new, b.block)
        i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
        b.branch(head)
        b.position_at_end(done)
        return acc

    # ------------------------------------------------------------------ data movement
    def copy_all(self, n) -> None:
        """Output 0 is input 0's bytes (reshape, flatten): one memcpy."""
        t = n.in_types[0]
        size = self.b.mul(self.numel(t.shape), ir.Constant(I64, t.np_dtype.itemsize))
        src, dst = (self.b.load(self.b.gep(self.args_ptr, [ir.Constant(I64, i)])) for i in (0, 1))
        memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        self.b.call(memcpy, [dst, src, size, ir.Constant(I1, 0)])

    def permute(self, n, perm) -> None:
        """out[i0, i1, ...] = x[..., i_k at axis perm[k], ...] (transpose, permute)."""
        x_t, out_t = n.in_types[0], n.out_types[0]
        x, out = self.buffer(0, x_t.dtype), self.buffer(1, out_t.dtype)
        x_strides = self.strides(x_t.shape)
        gather = [x_strides[p] for p in perm]
        out_strides = self.strides(out_t.shape)

        def body(index):
            value = self.b.load(self.b.gep(x, [self.dot(index, gather)]))
            self.b.store(value, self.b.gep(out, [self.dot(index, out_strides)]))

        self.loop_nest([self.dim(d) for d in out_t.shape], body)

    # ------------------------------------------------------------------ reductions
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
