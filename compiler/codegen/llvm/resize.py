"""The resize kernel: nearest, linear or cubic interpolation, separable over the spatial axes,
with PyTorch's coordinate conventions.
"""

from __future__ import annotations

from llvmlite import ir

from .abi import F32, F64, I64
from .irgen import i64, larger, smaller
from .spatial import ZERO


def resize(kb, n, ratios: list, mode: str, corners: bool, cubic_weights=None) -> None:
    """Separable, as the reference: along each spatial axis in turn take the nearest row
    (mode nearest: floor(dst * ratio); nearest-exact: floor((dst + 0.5) * ratio)), or blend
    the two nearest (bilinear), a * (1 - lam) + b * lam, or the four nearest (bicubic,
    weighted by the op's `cubic_weights(t)`, its polynomials built here on f32 values). The
    coordinate math is plain IEEE f32 (no fast-math), as numpy's. ratios[i] is an f32 number,
    or None for in/out computed at run time (PyTorch's area_pixel_compute_scale;
    (in - 1)/(out - 1) with align_corners)."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    dtype = x_t.dtype
    b = kb.b
    x, y = kb.input("x"), kb.output()
    ins = [kb.dim(d) for d in x_t.shape[2:]]
    outs = [kb.dim(d) for d in y_t.shape[2:]]
    in_strides = kb.strides(x_t.shape[2:])
    out_strides = [kb.numel(y_t.shape[2:]), *kb.strides(y_t.shape[2:])]
    one = ir.Constant(F32, 1.0)
    nearest = mode in ("nearest", "nearest-exact")

    def ratio(axis):
        if ratios[axis] is not None:
            return ir.Constant(F32, float(ratios[axis]))
        size, out = ins[axis], outs[axis]
        if corners:  # (in - 1) / (out - 1), 0 for one output
            size, out = b.sub(size, i64(1)), b.sub(out, i64(1))
            safe = b.select(b.icmp_signed(">", out, ZERO), out, i64(1))
            value = b.fdiv(b.sitofp(size, F64), b.sitofp(safe, F64))
            return b.select(b.icmp_signed(">", out, ZERO), b.fptrunc(value, F32),
                            ir.Constant(F32, 0.0))
        return b.fptrunc(b.fdiv(b.sitofp(size, F64), b.sitofp(out, F64)), F32)

    def source(o, axis):
        """[(input index, weight)] of output o along axis: one for nearest, two for
        bilinear, four for bicubic."""
        last = b.sub(ins[axis], i64(1))
        dst = b.sitofp(o, F32)
        r = ratio(axis)
        if nearest:
            if mode == "nearest-exact":
                dst = b.fadd(dst, ir.Constant(F32, 0.5))
            index = b.fptosi(kb.intrinsic("floor", b.fmul(dst, r)), I64)
            return [(smaller(b, index, last), None)]
        if corners:
            src = b.fmul(dst, r)
        else:
            half = ir.Constant(F32, 0.5)
            src = b.fsub(b.fmul(r, b.fadd(dst, half)), half)
        if mode == "bicubic":  # PyTorch: the source is not clamped, the four reads are
            return cubic_taps(src, last)
        if not corners:  # linear: a source left of the first input reads the first
            src = b.select(b.fcmp_ordered(">", src, ir.Constant(F32, 0.0)), src,
                           ir.Constant(F32, 0.0))
        lo = b.fptosi(src, I64)
        hi = b.add(lo, i64(1))
        hi = smaller(b, hi, last)
        lam = kb.convert(b.fsub(src, b.sitofp(lo, F32)), dtype)
        return [(lo, b.fsub(kb.convert(one, dtype), lam)), (hi, lam)]

    def cubic_taps(src, last):
        """Inputs lo - 1 .. lo + 2 (clamped into the axis), lo = floor(src), weighted."""
        floor = kb.intrinsic("floor", src)
        lo = b.fptosi(floor, I64)
        weights = cubic_weights(_F32Math(b, b.fsub(src, floor)))
        return [(smaller(b, larger(b, b.add(lo, i64(k - 1)), ZERO), last),
                 kb.convert(w.value, dtype)) for k, w in enumerate(weights)]

    def body(index):
        plane, spatial = index[0], index[1:]
        axes = [source(o, axis) for axis, o in enumerate(spatial)]
        base = b.mul(plane, kb.numel(x_t.shape[2:]))

        def blend(axis, offset):  # interpolate axis `axis` last: the first axis goes first
            if axis < 0:
                return kb.load(x, b.add(base, offset), dtype)
            terms = [(blend(axis - 1, b.add(offset, b.mul(i, in_strides[axis]))), wt)
                     for i, wt in axes[axis]]
            if nearest:
                return terms[0][0]
            total = b.fmul(*terms[0])
            for v, w in terms[1:]:
                total = b.fadd(total, b.fmul(v, w))
            return total

        kb.store(y, kb.dot(index, out_strides), blend(len(spatial) - 1, ZERO), dtype)

    kb.loop_nest([kb.numel(y_t.shape[:2]), *outs], body)


class _F32Math:
    """An f32 IR value with + - * by numbers and by each other, so that cubic_weights'
    polynomials build the same f32 arithmetic the reference does."""

    def __init__(self, b: ir.IRBuilder, value: ir.Value):
        self.b, self.value = b, value

    def _other(self, o) -> ir.Value:
        return o.value if isinstance(o, _F32Math) else ir.Constant(F32, float(o))

    def __add__(self, o):
        return _F32Math(self.b, self.b.fadd(self.value, self._other(o)))

    def __radd__(self, o):
        return _F32Math(self.b, self.b.fadd(self._other(o), self.value))

    def __sub__(self, o):
        return _F32Math(self.b, self.b.fsub(self.value, self._other(o)))

    def __rsub__(self, o):
        return _F32Math(self.b, self.b.fsub(self._other(o), self.value))

    def __mul__(self, o):
        return _F32Math(self.b, self.b.fmul(self.value, self._other(o)))

    def __rmul__(self, o):
        return _F32Math(self.b, self.b.fmul(self._other(o), self.value))
