"""Scalar arithmetic on compute values and the math library, for one IRBuilder.

`ScalarMath` computes as numpy does on compute-type values (f32/f64 floats, i32/i64 ints, i1
bools; see abi.COMPUTE): its + on bools is `or`, its maximum lets NaN win, its conversions
truncate as astype. exp, expm1, log, log1p, tanh, sigmoid, erf and erfc in f32 are polynomials
LLVM vectorises (libm's are one scalar call per element, and so are the llvm.log / llvm.exp
intrinsics, which LLVM lowers to libm calls), each stating its measured error; other
functions call libm (`libm`) or an LLVM intrinsic (`intrinsic`).
Fast-math flags are the ones that keep numpy's results (see ScalarMath.__init__). A
KernelBuilder is a ScalarMath; a fused kernel hands it to each op's scalar rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llvmlite import ir

from .abi import COMPUTE, F16, F32, F64, I1, I8, I16, I32
from .vmath import VectorMath


class ScalarMath(VectorMath):
    """Arithmetic and math functions on compute values, emitted at the builder `b`."""

    def __init__(self, b: ir.IRBuilder, fast_math: bool = True):
        self.b = b
        # fast math that keeps numpy's results: reassociation (vectorised reductions) and FMA
        # contraction, but never nnan/ninf (NaN and inf propagate as in numpy), nsz (relu(-0.0)
        # is 0.0) or arcp/afn (divisions and libm functions round as numpy's do)
        self.flags = ("reassoc", "contract") if fast_math else ()

    # ------------------------------------------------------------------ storage and compute
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

    def const(self, value: float | int | bool, dtype: str) -> ir.Constant:
        return ir.Constant(COMPUTE[dtype], value)

    # ------------------------------------------------------------------ fast-math arithmetic
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
        """llvm.NAME on scalars or on vectors of f32 (the softmax rows' explicit vectors)."""
        ty = args[0].type
        fnty = ir.FunctionType(ty, [a.type for a in args])
        if isinstance(ty, ir.VectorType):  # llvmlite cannot mangle vector types itself
            symbol = f"llvm.{name}.v{ty.count}f32"
            fn = self.b.module.globals.get(symbol) or ir.Function(self.b.module, fnty, symbol)
            return self.b.call(fn, list(args), fastmath=self.flags)
        fn = self.b.module.declare_intrinsic(f"llvm.{name}", [ty], fnty)
        return self.b.call(fn, list(args), fastmath=self.flags if ty in (F32, F64) else ())

    @staticmethod
    def like(value: ir.Value, constant: float | int, element: ir.Type = F32) -> ir.Constant:
        """`constant` as an `element` scalar, or splat over as many lanes as `value` has."""
        ty = value.type
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ir.VectorType(element, ty.count), [constant] * ty.count)
        return ir.Constant(element, constant)

    @staticmethod
    def retyped(value: ir.Value, element: ir.Type) -> ir.Type:
        """`element`, or a vector of it as wide as `value`."""
        ty = value.type
        return ir.VectorType(element, ty.count) if isinstance(ty, ir.VectorType) else element

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
        fn = self.b.module.globals.get(symbol)
        if fn is None:
            fn = ir.Function(self.b.module, ir.FunctionType(ty, [a.type for a in args]), symbol)
        return self.b.call(fn, list(args))

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
        """e^a. f32 (a scalar, or a vector of f32 lanes) is computed here, in a form LLVM
        vectorises (libm's expf is one scalar call per element): a = k ln2 + r with
        |r| <= ln2/2 (Cody-Waite: ln2 in two parts), e^r by its Taylor series to r^7
        (truncation below 1e-8), times 2^k built from the exponent bits in two halves, so
        denormal results and results up to FLT_MAX come out right."""
        if a.type != F32 and not (isinstance(a.type, ir.VectorType) and a.type.element == F32):
            return self.intrinsic("exp", a)
        b = self.b

        def c(value, element=F32):
            return self.like(a, value, element)

        # an argument below the smallest denormal's log has the result 0 (selected below);
        # computing with 0 instead, not with a clamped -104, keeps the discarded lanes from
        # producing denormals, which cost a microcode assist each (a softmax's -inf mask)
        low = b.fcmp_ordered("<", a, c(-103.972))
        x = self.intrinsic("minnum", b.select(low, c(0.0), a), c(88.75))
        k = self.intrinsic("rint", self.fmul(x, c(1.4426950408889634)))
        r = self.fsub(self.fsub(x, self.fmul(k, c(0.693359375))), self.fmul(k, c(-2.12194440e-4)))
        p = c(1.0 / 5040)
        for coefficient in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
            p = self.fadd(self.fmul(p, r), c(coefficient))
        ki = b.fptosi(k, self.retyped(a, I32))
        half = b.ashr(ki, c(1, I32))

        def power_of_two(e):
            return b.bitcast(b.shl(b.add(e, c(127, I32)), c(23, I32)), a.type)

        value = self.fmul(self.fmul(p, power_of_two(half)), power_of_two(b.sub(ki, half)))
        value = b.select(b.fcmp_ordered(">", a, c(88.72283935546875)), c(float("inf")), value)
        value = b.select(low, c(0.0), value)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)  # NaN stays NaN

    def exp_of_shifted(self, a):
        """e^a for f32 a = x - max(x) (a scalar or vector): never above 0, NaN where x or the
        max is NaN or infinite (which must stay NaN). exp's reduction and polynomial with one
        guard instead of its four: below -87, where e^a is under 1.7e-38 (a denormal or 0),
        the result is 0, computed with 0 as exp does (no denormals on the way); NaN stays
        NaN. Against a softmax's sum of at least 1, a flushed denormal is invisible."""
        b = self.b
        low = b.fcmp_ordered("<", a, self.like(a, -87.0))
        value = self._exp_in_range(b.select(low, self.like(a, 0.0), a))
        value = b.select(b.fcmp_unordered("uno", a, a), a, value)  # (fptosi(NaN) is poison)
        return b.select(low, self.like(a, 0.0), value)

    # erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: the Chebyshev fit of Numerical
    # Recipes (erfcc, fractional error below 1.2e-7 for every z >= 0); P's coefficients from
    # the constant term up
    ERFC_FIT = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                -1.13520398, 1.48851587, -0.82215223, 0.17087277)

    def erfc(self, a):
        """The complementary error function. f32 (a scalar or a vector) is computed here, in a
        form LLVM vectorises (libm's erfcf is one scalar call per element, which also keeps a
        fused GEMM's epilogue scalar): the fit ERFC_FIT for |a|, and 2 - erfc(|a|) for
        negative a. Relative error (measured against scipy in f64): 2e-7 for a < 0.5, growing
        with a^2, which rounds in f32 inside the exp, to 7e-6 at a = 8 (erfc 1e-29); beyond
        10.05 the result is 0 (numpy's is below 3e-45). NaN stays NaN."""
        if not self._is_f32(a):
            return self.libm("erfc", a)
        b = self.b
        one = self.like(a, 1.0)
        z = self.intrinsic("fabs", a)
        t = self.fdiv(one, self.fadd(one, self.fmul(z, self.like(a, 0.5))))
        poly = self._polynomial(t, self.ERFC_FIT)
        value = self.fmul(t, self.exp(self.fsub(poly, self.fmul(z, z))))
        return b.select(b.fcmp_ordered("<", a, self.like(a, 0.0)),
                        self.fsub(self.like(a, 2.0), value), value)

    # erf(x) = x + x R(x^2) for |x| < 1: a minimax fit of R = erf(x)/x - 1 on [0, 1]
    # (relative error of the fit 1.2e-9), from the constant term up, as f32
    ERF_SMALL_FIT = (0.12837916612625122, -0.3761262595653534, 0.1128358542919159,
                     -0.026853810995817184, 0.005188325420022011, -0.000801017158664763,
                     7.853775605326518e-05)
    # erf(x) = 1 - e^L(x - 1) for x in [1, 3.925] (beyond, erf rounds to 1 in f32): a minimax
    # fit of L = log(erfc(x)) (absolute error of the fit 8.4e-9, so relative error of erfc),
    # from the constant term up, as f32
    ERF_LARGE_FIT = (-1.8496055603027344, -2.638967275619507, -0.8431065678596497,
                     -0.04157179594039917, 0.010073568671941757, -0.002051845658570528,
                     0.0003194687596987933, -3.2839856430655345e-05, 1.629990720175556e-06)

    def erf(self, a):
        """The error function. f32 (a scalar or a vector) is computed here, in a form LLVM
        vectorises (libm's erff is one scalar call per element), without a division:
        a + a R(a^2) (ERF_SMALL_FIT, ending in one fused multiply-add where the CPU has it)
        for |a| < 1, where 1 - erfc would lose relative accuracy near 0, and
        sign(a) (1 - e^L(|a| - 1)) (ERF_LARGE_FIT, |a| clamped to 3.925) beyond; +-0 and
        denormals keep their sign, +-inf gives +-1, NaN stays NaN. Measured against math.erf
        in f64 (benchmarks/erf.py --sweep, 2.8 million points over [-10, 10] and every
        magnitude): relative error at most 7e-8 for |a| < 1 (8.4e-8 without FMA, SSE2) and
        6.5e-8 beyond (absolute 5.7e-8); denormal results within half a denormal step."""
        if not self._is_f32(a):
            return self.libm("erf", a)
        b = self.b
        x = self.intrinsic("fabs", a)
        small = self._polynomial(self.fmul(a, a), self.ERF_SMALL_FIT)
        small = self.fadd(self.fmul(a, small), a)
        u = self.fsub(self.intrinsic("minnum", x, self.like(a, 3.925)), self.like(a, 1.0))
        tail = self._exp_in_range(self._polynomial(u, self.ERF_LARGE_FIT))
        large = self.intrinsic("copysign", self.fsub(self.like(a, 1.0), tail), a)
        value = b.select(b.fcmp_ordered("<", x, self.like(a, 1.0)), small, large)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)  # NaN stays NaN

    # log(1 + f) = f - f^2/2 + f^3 P(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1]: Cephes' logf
    # (S. L. Moshier), P's coefficients from the constant term up
    LOG_FIT = (3.3333331174e-1, -2.4999993993e-1, 2.0000714765e-1, -1.6668057665e-1,
               1.4249322787e-1, -1.2420140846e-1, 1.1676998740e-1, -1.1514610310e-1,
               7.0376836292e-2)

    def log(self, a):
        """The natural logarithm. f32 (a scalar or a vector) is computed here, in a form LLVM
        vectorises (llvm.log is libm's logf, one scalar call per element): a = m 2^e with m
        in [sqrt(1/2), sqrt(2)) read from the bits (a denormal scaled by 2^23 first),
        log(m) = LOG_FIT's polynomial in f = m - 1, plus e ln2 in two parts. log(0) = -inf,
        log(+inf) = +inf, NaN for a < 0 and NaN. Measured against numpy's f64 log over every
        magnitude (every 7th f32): within 1.61 ulp, relative error at most 1.24e-7."""
        if not self._is_f32(a):
            return self.intrinsic("log", a)
        b = self.b

        def c(value, element=F32):
            return self.like(a, value, element)

        denormal = b.fcmp_ordered("<", a, c(1.1754943508222875e-38))
        x = b.select(denormal, self.fmul(a, c(8388608.0)), a)  # * 2^23: a normal float
        bits = b.bitcast(x, self.retyped(a, I32))
        # m in [sqrt(1/2), sqrt(2)): the exponent counted from 0x3f3504f3 = sqrt(1/2)'s bits
        shifted = b.sub(bits, c(0x3F3504F3, I32))
        e = b.ashr(shifted, c(23, I32))
        m = b.bitcast(b.add(b.and_(shifted, c(0x007FFFFF, I32)), c(0x3F3504F3, I32)), a.type)
        e = b.sitofp(b.sub(e, b.select(denormal, c(23, I32), c(0, I32))), a.type)
        f = self.fsub(m, c(1.0))
        f2 = self.fmul(f, f)
        tail = self.fmul(self.fmul(self._polynomial(f, self.LOG_FIT), f), f2)
        tail = self.fsub(self.fadd(tail, self.fmul(e, c(-2.12194440e-4))), self.fmul(f2, c(0.5)))
        value = self.fadd(self.fadd(f, tail), self.fmul(e, c(0.693359375)))
        value = b.select(b.fcmp_ordered("==", a, c(0.0)), c(float("-inf")), value)
        value = b.select(b.fcmp_ordered("==", a, c(float("inf"))), a, value)
        # NaN below 0 and for NaN
        return b.select(b.fcmp_unordered("ult", a, c(0.0)), c(float("nan")), value)

    def log1p(self, a):
        """log(1 + a). f32 (a scalar or a vector) through `log`, in a form LLVM vectorises
        (libm's log1pf is one scalar call per element): log(w) a / (w - 1) with w = 1 + a
        rounded (Goldberg's correction for w's rounding, in IEEE arithmetic: reassociation
        would cancel it), and a itself where w rounds to 1; +inf at +inf, -inf at -1, NaN
        below -1 and for NaN. Measured against numpy's f64 log1p from -1 + 1e-8 to FLT_MAX:
        relative error at most 2.1e-7 (tests/test_native_ops.py)."""
        if not self._is_f32(a):
            return self.libm("log1p", a)
        b = self.b
        one = self.like(a, 1.0)
        with self.strict():
            w = self.fadd(one, a)
            rounded = self.fsub(w, one)
        scaled = self.fmul(self.log(w), self.fdiv(a, rounded))
        value = b.select(b.fcmp_ordered("==", w, one), a, scaled)
        return b.select(b.fcmp_ordered("==", a, self.like(a, float("inf"))), a, value)

    # e^x - 1 = x + x^2 Q(x) for |x| < ln2: a minimax fit of Q on [-ln2, ln2] (relative error
    # of the fit 1.3e-9), from the constant term up, as f32
    EXPM1_FIT = (0.5, 0.16666671633720398, 0.04166662320494652, 0.008332629688084126,
                 0.0013890423579141498, 0.0002009551681112498, 2.4781083993730135e-05)

    def expm1(self, a):
        """e^a - 1. f32 (a scalar or a vector) is computed here, in a form LLVM vectorises
        (libm's expm1f is one scalar call per element): a + a (a Q(a)) (EXPM1_FIT) for
        |a| < ln2, where e^a - 1 would cancel, and `exp`(a) - 1 beyond; -0.0 kept, -1 at
        -inf, +inf past 88.72, NaN kept. Measured against numpy's f64 expm1 over [-100, 88.7]
        and every magnitude: relative error at most 1.2e-7 (tests/test_native_ops.py)."""
        if not self._is_f32(a):
            return self.libm("expm1", a)
        b = self.b
        small = self.fadd(self.fmul(a, self.fmul(a, self._polynomial(a, self.EXPM1_FIT))), a)
        large = self.fsub(self.exp(a), self.like(a, 1.0))
        x = self.intrinsic("fabs", a)
        value = b.select(b.fcmp_ordered("<", x, self.like(a, 0.6931471805599453)), small, large)
        return b.select(b.fcmp_ordered("==", a, self.like(a, 0.0)), a, value)  # -0.0 kept

    def _polynomial(self, x, coefficients):
        """sum coefficients[k] x^k by Horner's rule, for x an f32 or f64 scalar or a vector
        of f32 lanes (the constants splat to its lanes)."""
        element = x.type.element if isinstance(x.type, ir.VectorType) else x.type
        value = self.like(x, coefficients[-1], element)
        for coefficient in reversed(coefficients[:-1]):
            value = self.fadd(self.fmul(value, x), self.like(x, coefficient, element))
        return value

    @staticmethod
    def _is_f32(a: ir.Value) -> bool:
        """a is an f32 scalar or a vector of f32 lanes."""
        return a.type == F32 or (isinstance(a.type, ir.VectorType) and a.type.element == F32)

    def _exp_in_range(self, x):
        """e^x for f32 x (a scalar or a vector) already within [-87, 88], where e^x is a
        normal float: exp's reduction and polynomial without its guards for denormal,
        overflowing and NaN results (the callers clamp x and keep NaN themselves), so fewer
        instructions per element."""
        b = self.b

        def c(value, element=F32):
            return self.like(x, value, element)

        k = self.intrinsic("rint", self.fmul(x, c(1.4426950408889634)))
        r = self.fsub(self.fsub(x, self.fmul(k, c(0.693359375))), self.fmul(k, c(-2.12194440e-4)))
        p = c(1.0 / 5040)
        for coefficient in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
            p = self.fadd(self.fmul(p, r), c(coefficient))
        scale = b.shl(b.add(b.fptosi(k, self.retyped(x, I32)), c(127, I32)), c(23, I32))
        return self.fmul(p, b.bitcast(scale, x.type))

    def _clamp(self, x, low: float, high: float):
        """x within [low, high]; a NaN x gives one of the two (callers select NaN back)."""
        return self.intrinsic("maxnum", self.intrinsic("minnum", x, self.like(x, high)),
                              self.like(x, low))

    def tanh(self, a):
        """tanh(a); f32 without a libm call: an odd Taylor polynomial to a^13 for |a| < 0.4
        (error below 2e-9), else 1 - 2 / (e^(2|a|) + 1) with |a| clamped to 10 (beyond it
        tanh rounds to 1 in f32); the sign of a restored, NaN kept."""
        if a.type != F32 and not (isinstance(a.type, ir.VectorType) and a.type.element == F32):
            return self.libm("tanh", a)
        b = self.b
        x = self.intrinsic("fabs", a)
        x2 = self.fmul(x, x)
        poly = self.like(a, 21844.0 / 6081075)
        for c in (-1382.0 / 155925, 62.0 / 2835, -17.0 / 315, 2.0 / 15, -1.0 / 3, 1.0):
            poly = self.fadd(self.fmul(poly, x2), self.like(a, c))
        small = self.fmul(poly, a)  # odd: the sign (and -0.0) of a
        one = self.like(a, 1.0)
        twice = self.fmul(self.intrinsic("minnum", x, self.like(a, 10.0)), self.like(a, 2.0))
        large = self.fsub(one, self.fdiv(self.like(a, 2.0),
                                         self.fadd(self._exp_in_range(twice), one)))
        large = self.intrinsic("copysign", large, a)
        value = b.select(b.fcmp_ordered("<", x, self.like(a, 0.4)), small, large)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)

    def sigmoid(self, a):
        """1 / (1 + e^-a). In f32, e^-a with -a clamped to [-87, 88]: below -87 the result
        rounds to 1 anyway; for a in [-88.72, -88) the result is a denormal, given as
        1 / (1 + e^88) = 6.05e-39 (the true value is 3.0e-39 to 6.05e-39); below -88.72,
        where e^-a overflows, it is 0. NaN stays NaN."""
        one = self.lit(a, 1.0)
        if a.type != F32 and not (isinstance(a.type, ir.VectorType) and a.type.element == F32):
            return self.fdiv(one, self.fadd(one, self.exp(self.neg(a))))
        b = self.b
        e = self._exp_in_range(self._clamp(self.neg(a), -87.0, 88.0))
        value = self.fdiv(one, self.fadd(one, e))
        # 0 where e^-a overflows, as 1 / (1 + inf) (-inf included)
        value = b.select(b.fcmp_ordered("<", a, self.like(a, -88.72283935546875)),
                         self.like(a, 0.0), value)
        return b.select(b.fcmp_unordered("uno", a, a), a, value)
