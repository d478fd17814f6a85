"""f32 sin, cos, atan and pow in forms LLVM's loop vectoriser turns into vector code.

libm's sinf, cosf, atanf and powf (and the llvm.sin / llvm.cos / llvm.pow intrinsics, which LLVM
lowers to them) are one scalar call per element. Here each is straight-line IR on one f32
scalar: range reduction by integer and bit arithmetic, a polynomial, and `select`s for the
special values, so a kernel's loop over elements becomes AVX2 / AVX-512 code. Each computes in
f64 (half as many lanes, but one rounding to f32 at the end) and states its error, measured
against numpy's float64 functions (benchmarks/vmath.py --sweep and --exhaustive). `VectorMath`
is a mixin of mathlib.ScalarMath, whose arithmetic (fast-math `fadd`, `intrinsic`, `like`, ...)
it uses; f64 arguments keep the libm path.
"""

from __future__ import annotations

import math

from llvmlite import ir

from .abi import F32, F64, I32, I64

INF = float("inf")


def _two_over_pi(bits: int) -> int:
    """floor(2/pi 2^bits), from Machin's formula pi = 16 atan(1/5) - 4 atan(1/239) in
    integers (64 guard bits)."""
    guard = bits + 64

    def arctan_of_inverse(n: int) -> int:  # atan(1/n) 2^guard
        power, total, i = (1 << guard) // n, 0, 0
        while power:
            total += (-1) ** i * (power // (2 * i + 1))
            power //= n * n
            i += 1
        return total

    pi = 16 * arctan_of_inverse(5) - 4 * arctan_of_inverse(239)
    return (1 << (bits + guard + 1)) // pi


# 2/pi's bits from 2^63 down to 2^-256 (the first 64 are 0) in five 64-bit words, the most
# significant first: for x = m 2^s (m < 2^24 an integer), x 2/pi mod 4 needs the bits from
# 2^-(s-1) on (the ones before contribute multiples of 4), and 84 of them carry it to 2^-58
TWO_OVER_PI_WORDS = tuple((_two_over_pi(256) >> (64 * (4 - i))) & ((1 << 64) - 1)
                          for i in range(5))
# pi/2 in two f64 parts (fdlibm's pio2_1 and pio2_1t), the first with 33 significant bits,
# so k times it is exact for |k| < 2^20: the Cody-Waite reduction x = k pi/2 + r in f64.
# Measured on the f32 nearest k pi/2 and every 13th f32 beyond (the long reduction switched
# off): sin within 0.563 ulp for k to 2^22 without FMA (SSE2; 65535 ulp from 2^23 on) and to
# 2^25 with it. Every element computes both reductions, so SINE_LIMIT (k < 2^19) costs nothing
PIO2_PARTS = (1.57079632673412561417e00, 6.07710050650619224932e-11)
SINE_LIMIT = 524288.0  # 2^19
# minimax polynomials on [-pi/4, pi/4] (Cephes' sinf and cosf, S. L. Moshier):
# sin r = r + r z S(z), cos r = 1 - z/2 + z^2 C(z), z = r^2; from the constant term up
SIN_FIT = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)
COS_FIT = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)
# atan x = x + x z A(z), z = x^2, for |x| <= tan(pi/8): a minimax fit of A by Lawson's
# iteration (benchmarks/erf.py's _minimax), relative error of atan 6.8e-10; constant term first
ATAN_FIT = (-0.3333331521828093, 0.19998473352330035, -0.14243567614201025,
            0.10594056434335226, -0.060788032357385474)
# log(m) = 2 atanh(s) = 2s + 2s s^2 L(s^2), s = (m - 1) / (m + 1), for m in [sqrt(1/2), sqrt(2))
# (|s| < 0.172: truncated after s^13, relative error below 2e-12)
LOG_SERIES = tuple(1.0 / n for n in (3, 5, 7, 9, 11, 13))
EXP_SERIES = tuple(1.0 / math.factorial(n) for n in range(11))  # |r| <= ln2/2: below 3e-13


class VectorMath:
    """sin, cos, atan and pow of f32 scalars as vectorisable IR (a mixin of ScalarMath)."""

    def sin(self, a):
        """sin(a). f32 in f64 (one rounding at the end): `_quadrant_and_rest`, then Cephes'
        polynomials; -0 kept, NaN at +-inf and NaN. Error against numpy's f64 sin over every
        finite f32: at most 0.5631 ulp (benchmarks/vmath.py --exhaustive; --sweep by range)."""
        if a.type != F32:
            return self.intrinsic("sin", a)
        value = self._sine_of_quadrant(a, 0)
        return self.b.select(self.b.fcmp_ordered("==", a, self.like(a, 0.0)), a, value)

    def cos(self, a):
        """cos(a) = sin(a + pi/2): `sin`'s reduction with the quadrant one further; NaN at
        +-inf and NaN. Error measured as sin's: at most 0.5631 ulp."""
        if a.type != F32:
            return self.intrinsic("cos", a)
        return self._sine_of_quadrant(a, 1)

    def _sine_of_quadrant(self, a, offset: int):
        """sin(k pi/2 + r) with the quadrant k + offset: +-sin r or +-cos r, in f64 (r rounded
        to f32 before the polynomial would cost up to 1 ulp more)."""
        b = self.b
        k, r = self._quadrant_and_rest(a)
        z = self.fmul(r, r)
        sine = self.fadd(self.fmul(self.fmul(r, z), self._polynomial(z, SIN_FIT)), r)
        cosine = self.fsub(self.fmul(self.fmul(z, z), self._polynomial(z, COS_FIT)),
                           self.fmul(z, ir.Constant(F64, 0.5)))
        cosine = self.fadd(cosine, ir.Constant(F64, 1.0))
        k = b.add(k, ir.Constant(I32, offset))
        odd = b.trunc(k, ir.IntType(1))
        value = b.fptrunc(b.select(odd, cosine, sine), F32)
        upper = b.icmp_unsigned("!=", b.and_(k, ir.Constant(I32, 2)), ir.Constant(I32, 0))
        value = b.select(upper, b.fneg(value), value)
        finite = b.fcmp_ordered("<", self.intrinsic("fabs", a), ir.Constant(F32, INF))
        return b.select(finite, value, ir.Constant(F32, float("nan")))

    def _quadrant_and_rest(self, a):
        """a = k pi/2 + r, |r| <= pi/4 (to rounding): k (i32, only its last two bits matter)
        and r (f64). |a| < SINE_LIMIT: Cody-Waite in f64 with PIO2_PARTS (the first product
        exact, the differences fused into FMAs where the CPU has them). Beyond (computed for
        every element, selected where needed): Payne-Hanek, `_payne_hanek`, so r is right for
        every finite f32."""
        b = self.b
        magnitude = self.intrinsic("fabs", a)
        near = b.fcmp_ordered("<", magnitude, ir.Constant(F32, SINE_LIMIT))
        x = b.fpext(b.select(near, a, ir.Constant(F32, 0.0)), F64)
        k = self.intrinsic("rint", self.fmul(x, ir.Constant(F64, 2 / math.pi)))
        r = x
        for part in PIO2_PARTS:
            r = self.fsub(r, self.fmul(k, ir.Constant(F64, part)))
        # the long reduction of SINE_LIMIT where a is near, infinite or NaN (no poison from
        # converting NaN to an integer, even in lanes the selects drop)
        far = b.and_(b.not_(near), b.fcmp_ordered("<", magnitude, ir.Constant(F32, INF)))
        far_k, far_r = self._payne_hanek(b.select(far, magnitude, ir.Constant(F32, SINE_LIMIT)))
        negative = b.fcmp_ordered("<", a, ir.Constant(F32, 0.0))
        far_k = b.select(negative, b.neg(far_k), far_k)
        far_r = b.select(negative, b.fneg(far_r), far_r)
        return b.select(near, b.fptosi(k, I32), far_k), b.select(near, r, far_r)

    def _payne_hanek(self, x):
        """x = k pi/2 + r for a finite f32 x >= SINE_LIMIT: k (i32, mod 4) and r (f64, from
        x 2/pi mod 4 within 2^-58).
        The 84 bits of 2/pi that matter for x's exponent, shifted out of TWO_OVER_PI_WORDS
        (selects and shifts, no table: a gather would keep AVX2 loops scalar), as three
        28-bit pieces; x times each is exact in f64."""
        b = self.b

        def i64(value):
            return ir.Constant(I64, value)

        exponent = b.zext(b.lshr(b.bitcast(x, I32), ir.Constant(I32, 23)), I64)
        first = b.sub(exponent, i64(151))  # x = m 2^s, s = exponent - 150: from 2^-(s-1)
        at = b.add(first, i64(63))  # counted from the words' first bit, 2^63
        word, shift = b.lshr(at, i64(6)), b.and_(at, i64(63))
        words = [i64(w) for w in TWO_OVER_PI_WORDS]

        def pick(offset):  # words[word + offset], word in 0..2
            return b.select(b.icmp_unsigned("==", word, i64(0)), words[offset],
                            b.select(b.icmp_unsigned("==", word, i64(1)), words[offset + 1],
                                     words[offset + 2]))

        def window(offset):  # 64 bits from `at`, shift 0 included
            spill = b.lshr(b.lshr(pick(offset + 1), i64(1)), b.sub(i64(63), shift))
            return b.or_(b.shl(pick(offset), shift), spill)

        high, low = window(0), window(1)
        mask = i64((1 << 28) - 1)
        pieces = (b.lshr(high, i64(36)), b.and_(b.lshr(high, i64(8)), mask),
                  b.or_(b.shl(b.and_(high, i64(0xFF)), i64(20)), b.lshr(low, i64(44))))
        wide = b.fpext(x, F64)

        def product(n):  # x times piece n, 2^-(first + 27 + 28n) its last bit's weight w
            # the piece p as a double: (2^52 + p) w, from the bits, less 2^52 w (exact)
            offset = b.shl(b.sub(i64(1075 - 27 - 28 * n), first), i64(52))
            piece = self.fsub(b.bitcast(b.or_(offset, pieces[n]), F64), b.bitcast(offset, F64))
            return self.fmul(wide, piece)

        with self.strict():  # each step exact or rounded once, in this order
            high = product(0)
            quarter = self.intrinsic("floor", self.fmul(high, ir.Constant(F64, 0.25)))
            high = self.fsub(high, self.fmul(quarter, ir.Constant(F64, 4.0)))  # mod 4, exact
            middle, low = product(1), product(2)
            k = self.intrinsic("rint", self.fadd(high, middle))
            turns = self.fadd(self.fadd(self.fsub(high, k), middle), low)
        return b.fptosi(k, I32), self.fmul(turns, ir.Constant(F64, math.pi / 2))

    def atan(self, a):
        """atan(a). f32 in f64 (one rounding at the end): |a| reduced to [0, tan(pi/8)] by
        atan x = pi/2 - atan(1/x) above tan(3pi/8) and pi/4 + atan((x-1)/(x+1)) above
        tan(pi/8) (one division either way), then ATAN_FIT's odd polynomial; the sign of a
        restored (-0 kept), +-pi/2 at +-inf, NaN kept. Error against numpy's f64 arctan over
        every finite f32: at most 0.5090 ulp (benchmarks/vmath.py --exhaustive)."""
        if a.type != F32:
            return self.libm("atan", a)
        b = self.b

        def c(value):
            return ir.Constant(F64, value)

        x = b.fpext(self.intrinsic("fabs", a), F64)
        above = b.fcmp_ordered(">", x, c(2.414213562373095))
        middle = b.fcmp_ordered(">", x, c(0.4142135623730950))
        numerator = b.select(above, c(-1.0), b.select(middle, self.fsub(x, c(1.0)), x))
        denominator = b.select(above, x, b.select(middle, self.fadd(x, c(1.0)), c(1.0)))
        t = self.fdiv(numerator, denominator)
        z = self.fmul(t, t)
        base = b.select(above, c(math.pi / 2), b.select(middle, c(math.pi / 4), c(0.0)))
        small = self.fadd(self.fmul(self.fmul(t, z), self._polynomial(z, ATAN_FIT)), t)
        value = b.fptrunc(self.fadd(base, small), F32)
        return self.intrinsic("copysign", value, a)

    def pow(self, x, y):
        """x ** y as C's powf, which numpy's float32 power calls. f32: e^(y ln|x|) in f64
        (`_log_f64`, `_exp_f64`; y ln|x| clamped to +-200, where the f32 result is 0 or inf)
        rounded to f32 once, so within 0.51 ulp of numpy's f64 power wherever f32's result is
        finite and nonzero (measured); then C99's special cases: the sign for negative x and
        an odd integer y, NaN for finite x < 0 and a non-integer y, 1 for y = +-0, x = 1 and
        x = -1 with y = +-inf, and those of 0 and inf through ln 0 = -inf, ln inf = inf."""
        if x.type != F32:
            return self.intrinsic("pow", x, y)
        b = self.b

        def c(value, ty=F32):
            return ir.Constant(ty, value)

        magnitude = self.intrinsic("fabs", x)
        regular = b.and_(b.fcmp_ordered(">", magnitude, c(0.0)),
                         b.fcmp_ordered("<", magnitude, c(INF)))
        log = self._log_f64(b.fpext(b.select(regular, magnitude, c(1.0)), F64))
        log = b.select(b.fcmp_ordered("==", magnitude, c(0.0)), c(-INF, F64),
                       b.select(b.fcmp_ordered("==", magnitude, c(INF)), c(INF, F64), log))
        t = self.fmul(b.fpext(y, F64), log)
        unordered = b.or_(b.fcmp_unordered("uno", t, t), b.fcmp_unordered("uno", x, x))
        t = b.select(b.fcmp_ordered(">", t, c(200.0, F64)), c(200.0, F64), t)
        t = b.select(b.fcmp_ordered("<", t, c(-200.0, F64)), c(-200.0, F64), t)
        power = b.fptrunc(self._exp_f64(b.select(unordered, c(0.0, F64), t)), F32)
        power = b.select(unordered, c(float("nan")), power)
        integer = b.fcmp_ordered("==", y, self.intrinsic("rint", y))
        exact = b.fcmp_ordered("<", self.intrinsic("fabs", y), c(16777216.0))  # 2^24
        bit = b.trunc(b.fptosi(b.select(exact, y, c(0.0)), I32), ir.IntType(1))
        odd = b.and_(b.and_(integer, exact), bit)
        signed = b.icmp_signed("<", b.bitcast(x, I32), c(0, I32))
        power = b.select(b.and_(signed, odd), b.fneg(power), power)
        finite_negative = b.and_(b.fcmp_ordered("<", x, c(0.0)),
                                 b.fcmp_ordered(">", x, c(-INF)))
        power = b.select(b.and_(finite_negative, b.not_(integer)), c(float("nan")), power)
        one = b.or_(b.fcmp_ordered("==", y, c(0.0)), b.fcmp_ordered("==", x, c(1.0)))
        minus_one = b.and_(b.fcmp_ordered("==", x, c(-1.0)),
                           b.fcmp_ordered("==", self.intrinsic("fabs", y), c(INF)))
        return b.select(b.or_(one, minus_one), c(1.0), power)

    def _log_f64(self, x):
        """ln x for a positive normal f64 x: x = m 2^e with m in [sqrt(1/2), sqrt(2)) from
        the bits, 2 atanh((m - 1) / (m + 1)) by LOG_SERIES, plus e ln2."""
        b = self.b
        root_half = 0x3FE6A09E667F3BCD  # sqrt(1/2)'s bits
        shifted = b.sub(b.bitcast(x, I64), ir.Constant(I64, root_half))
        # (i32 conversions: AVX2 has none between i64 and f64)
        e = b.sitofp(b.trunc(b.ashr(shifted, ir.Constant(I64, 52)), I32), F64)
        mantissa = b.and_(shifted, ir.Constant(I64, (1 << 52) - 1))
        m = b.bitcast(b.add(mantissa, ir.Constant(I64, root_half)), F64)
        one = ir.Constant(F64, 1.0)
        s = self.fdiv(self.fsub(m, one), self.fadd(m, one))
        s2 = self.fmul(s, s)
        twice = self.fadd(s, s)
        log_m = self.fadd(self.fmul(self.fmul(twice, s2), self._polynomial(s2, LOG_SERIES)),
                          twice)
        return self.fadd(log_m, self.fmul(e, ir.Constant(F64, math.log(2))))

    def _exp_f64(self, t):
        """e^t for an f64 t in [-200, 200]: t = k ln2 + r, |r| <= ln2/2 (fdlibm's ln2 in two
        parts, k ln2_hi exact), e^r by EXP_SERIES, times 2^k from the exponent bits."""
        b = self.b
        k = self.intrinsic("rint", self.fmul(t, ir.Constant(F64, 1 / math.log(2))))
        r = self.fsub(self.fsub(t, self.fmul(k, ir.Constant(F64, 6.93147180369123816490e-01))),
                      self.fmul(k, ir.Constant(F64, 1.90821492927058770002e-10)))
        exponent = b.sext(b.fptosi(k, I32), I64)  # (AVX2 converts f64 to i32, not to i64)
        scale = b.shl(b.add(exponent, ir.Constant(I64, 1023)), ir.Constant(I64, 52))
        return self.fmul(self._polynomial(r, EXP_SERIES), b.bitcast(scale, F64))
