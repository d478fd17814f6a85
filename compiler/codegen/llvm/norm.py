"""Normalization kernels: layer, group and instance norm (`normalize`: two passes, sums in
f64) and batch norm, with running statistics or (in training mode) the batch's.
"""

from __future__ import annotations

import math

from llvmlite import ir

from ...dims import Dim
from .abi import F32, F64, I64
from .microkernels import tiling
from .reductions import RowVectors
from .spatial import ZERO, mean_of


def normalize(kb, n, groups: ir.Value, per_group: ir.Value, spatial: ir.Value, eps: float,
              by_position: bool) -> None:
    """(x - mean) / sqrt(var + eps) * weight + bias, x seen as [segments, per_group, spatial]
    with each segment normalized on its own (biased variance, two passes, sums in f64);
    segment s is group s % groups. weight and bias are indexed by channel
    (s % groups) * per_group + c (group and instance norm), or by position in the segment
    (layer norm). Every step rounds as the reference: mean, var and the quotient in the compute
    type; eps is added in it."""
    x_t, w_t, bias_t = n.in_types
    dtype = x_t.dtype
    b = kb.b
    x, y = kb.input("x"), kb.output()
    weight, bias = kb.input("weight"), kb.input("bias")
    length = b.mul(per_group, spatial)
    # an empty segment (normalized axes of size 0) leaves nothing to do, but dividing by its
    # length would trap (SIGFPE): divide by 1 then, the count being 0 anyway
    nonzero = kb.select(kb.compare("==", length, kb.const(0, "i64")), kb.const(1, "i64"), length)
    segments = b.sdiv(kb.numel(x_t.shape), nonzero)
    with kb.for_range(segments) as s:
        base = b.mul(s, length)
        mean = mean_of(kb, x, base, length, dtype)
        def square(value):
            centered = kb.fsub(value, mean)
            return kb.fmul(centered, centered)

        var = mean_of(kb, x, base, length, dtype, square)
        root = kb.intrinsic("sqrt", kb.fadd(var, kb.const(eps, dtype)))
        with kb.for_range(per_group) as c:
            channel = b.add(b.mul(b.srem(s, groups), per_group), c)
            with kb.for_range(spatial) as i:
                position = b.add(b.mul(c, spatial), i)
                at = b.add(base, position)
                value = kb.fdiv(kb.fsub(kb.load(x, at, dtype), mean), root)
                kb.store(y, at, _affine(kb, value, weight, bias,
                                        position if by_position else channel, dtype), dtype)


def layer_norm_rows(kb, n, length: ir.Value, eps: float) -> bool:
    """Layer norm of f32 rows (`normalize`'s arithmetic, but for a multiplication by the
    reciprocal of the root in place of the division) as explicit vectors, rows shared by
    the module's threads; False (nothing emitted) for other dtypes. Rows of a few hundred
    features are short: LLVM's own vectorised loops would pay a scalar remainder and a
    reduction epilogue per pass, three passes per row."""
    if any(t is not None and t.dtype != "f32" for t in n.in_types):
        return False
    x_t = n.in_types[0]
    present = [kb.input(name) for name in ("weight", "bias")]
    buffers = [kb.input("x"), kb.output(), *(p for p in present if p is not None)]
    width = kb.vector_width or tiling().width

    def emit(rkb, ptrs, start, count, size):
        x, y, rest = ptrs[0], ptrs[1], iter(ptrs[2:])
        weight, bias = (next(rest) if p is not None else None for p in present)
        _layer_norm_row_range(rkb, x, y, weight, bias, start, count, size, width, eps)

    rows = kb.b.sdiv(kb.numel(x_t.shape), kb.select(
        kb.compare("==", length, kb.const(0, "i64")), kb.const(1, "i64"), length))
    kb.over_rows("rows", buffers, rows, length, emit)
    return True


def _layer_norm_row_range(kb, x, y, weight, bias, start, count, length, width: int,
                          eps: float) -> None:
    """Rows start .. start + count: mean and biased variance summed in f64 vectors (the
    centred squares in f32 first, as `normalize`), then (x - mean) * (1 / sqrt(var + eps))
    * weight + bias per vector: one division per row, not one per element (a vector
    division costs as much as a dozen multiplications; the product is within an ulp or two
    of the quotient)."""
    b = kb.b
    rows = RowVectors(kb, length, width)
    wide = rows.splat(0.0, F64)
    count_f64 = b.sitofp(length, F64)

    def mean(total):  # f64 sum -> f32 mean, as mean_of rounds it
        return b.fptrunc(b.fdiv(rows.across(total, kb.fadd), count_f64), F32)

    with kb.for_range(count) as r:
        base = b.mul(b.add(start, r), length)

        def at(j):
            return b.add(base, j)

        mu = rows.vec.splat(mean(rows.sweep(wide, lambda j, tail, acc: kb.fadd(
            acc, b.fpext(rows.load(x, at(j), tail), wide.type)))))

        def add_square(j, tail, acc):
            centred = kb.fsub(rows.load(x, at(j), tail), mu)
            square = kb.fmul(centred, centred)
            if tail is not None:
                square = b.select(tail, square, rows.splat(0.0))
            return kb.fadd(acc, b.fpext(square, wide.type))

        var = mean(rows.sweep(wide, add_square))
        root = kb.intrinsic("sqrt", kb.fadd(var, ir.Constant(F32, eps)))
        scale = rows.vec.splat(kb.fdiv(ir.Constant(F32, 1.0), root))

        def normalise(j, tail, carried):
            value = kb.fmul(kb.fsub(rows.load(x, at(j), tail), mu), scale)
            if weight is not None:
                value = kb.fmul(value, rows.load(weight, j, tail))
            if bias is not None:
                value = kb.fadd(value, rows.load(bias, j, tail))
            rows.store(value, y, at(j), tail)
            return carried

        rows.sweep(wide, normalise)


def _affine(kb, value, weight, bias, index, dtype: str) -> ir.Value:
    """value * weight[index] + bias[index] (absent ones skipped)."""
    if weight is not None:
        value = kb.fmul(value, kb.load(weight, index, dtype))
    if bias is not None:
        value = kb.fadd(value, kb.load(bias, index, dtype))
    return value


def batch_norm(kb, n, eps: float) -> None:
    """(x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c], with the running statistics,
    or in training mode the batch's: mean and biased variance of channel c over the batch and
    spatial axes (two passes, sums in f64, as `normalize`). Channels are independent: in f32
    the module's threads share them (`over_channels`)."""
    x_t = n.in_types[0]
    dtype = x_t.dtype
    training = n.attrs["training"]
    names = ["x", "weight", "bias"] + ([] if training else ["running_mean", "running_var"])
    given = [name for name in names if kb.input(name) is not None]

    def emit(kb, ptrs, first, count, batch, channels, spatial):
        p = dict(zip(given, ptrs[:-1], strict=True))
        x, y, weight, bias = p["x"], ptrs[-1], p.get("weight"), p.get("bias")
        b = kb.b

        def start(s, c):  # where sample s's channel c begins
            return b.mul(b.add(b.mul(s, channels), c), spatial)

        if training:
            def statistics(c):
                mean = _channel_mean(kb, x, batch, spatial, lambda s: start(s, c), dtype)

                def square(value):
                    centered = kb.fsub(value, mean)
                    return kb.fmul(centered, centered)

                return mean, _channel_mean(kb, x, batch, spatial, lambda s: start(s, c),
                                           dtype, square)
        else:
            def statistics(c):
                return (kb.load(p["running_mean"], c, dtype),
                        kb.load(p["running_var"], c, dtype))

        with kb.for_range(count) as j:
            c = b.add(first, j)
            mean, var = statistics(c)
            root = kb.intrinsic("sqrt", kb.fadd(var, kb.const(eps, dtype)))
            with kb.for_range(batch) as s, kb.for_range(spatial) as i:
                at = b.add(start(s, c), i)
                value = kb.fdiv(kb.fsub(kb.load(x, at, dtype), mean), root)
                kb.store(y, at, _affine(kb, value, weight, bias, c, dtype), dtype)

    over_channels(kb, n, [kb.input(name) for name in given] + [kb.output()], emit)


def over_channels(kb, n, buffers: list[ir.Value], emit) -> None:
    """emit(kb, buffers, first, count, batch, channels, spatial) computes channels first ..
    first + count of x [batch, channels, *spatial] (n's input 0): in f32 on channels the
    module's threads share (kb.over_rows, each channel a row of batch * spatial elements),
    other dtypes on this thread."""
    x_t = n.in_types[0]
    b = kb.b
    batch, channels = kb.dim(x_t.shape[0]), kb.dim(x_t.shape[1])
    spatial = kb.numel(x_t.shape[2:])
    if x_t.dtype != "f32":
        emit(kb, buffers, ZERO, channels, batch, channels, spatial)
        return

    # sizes known at compile time stay constants in the range function (known trip counts)
    dims = [x_t.shape[0], x_t.shape[1], math.prod(x_t.shape[2:], start=Dim.of(1))]

    def rows(rkb, ptrs, first, count, _length, *sizes):
        emit(rkb, ptrs, first, count, *(ir.Constant(I64, d.value) if d.is_const else size
                                         for d, size in zip(dims, sizes, strict=True)))

    kb.over_rows("channels", buffers, channels, b.mul(batch, spatial), rows,
                 extra=(batch, channels, spatial))


def _channel_mean(kb, x, batch: ir.Value, spatial: ir.Value, start, dtype: str,
                  term=None) -> ir.Value:
    """mean of term(x[start(s) + i]) over samples s < batch and i < spatial, summed in f64;
    in the compute type of dtype (NaN for no element, as numpy's mean)."""
    b = kb.b

    def sample(acc, s):
        base = start(s)

        def step(inner, i):
            value = kb.load(x, b.add(base, i), dtype)
            return kb.fadd(inner, kb.convert(term(value) if term else value, "f64"))

        return kb.accumulate(ZERO, spatial, acc, step)

    total = kb.accumulate(ZERO, batch, ir.Constant(ir.DoubleType(), 0.0), sample)
    return kb.convert(b.fdiv(total, b.sitofp(b.mul(batch, spatial), ir.DoubleType())), dtype)


def batch_norm_stats(kb, n) -> None:
    """Rows mean(x), mean((x - mean)^2), sum(dy), sum(dy * (x - mean)) of each channel c over
    the batch and spatial axes (ops/norm.py's batch_norm_stats): per channel, one pass
    summing x and dy, then one summing the centered terms (sums in f64, reassociated as the
    reductions' are, so vectorised; the mean rounded to the compute type first, as the
    forward kernel's). A channel's values are read twice in a row, the second time from
    cache; channels are shared by threads as batch_norm's are."""
    dtype = n.in_types[0].dtype
    f64 = ir.DoubleType()
    zero = ir.Constant(f64, 0.0)

    def emit(kb, ptrs, first, count_c, batch, channels, spatial):
        x, dy, out = ptrs
        b = kb.b
        count = b.sitofp(b.mul(batch, spatial), f64)
        with kb.for_range(count_c) as j:
            c = b.add(first, j)

            def fold(step):  # step(accs, x value, dy value) over channel c's values, in f64
                def sample(accs, s):
                    base = b.mul(b.add(b.mul(s, channels), c), spatial)

                    def each(inner, i):
                        at = b.add(base, i)
                        return step(inner, kb.load(x, at, dtype), kb.load(dy, at, dtype))

                    return kb.accumulate(ZERO, spatial, accs, each)

                return kb.accumulate(ZERO, batch, (zero, zero), sample)

            def wide(v):
                return kb.convert(v, "f64")

            x_sum, dy_sum = fold(lambda accs, v, g: (kb.fadd(accs[0], wide(v)),
                                                     kb.fadd(accs[1], wide(g))))
            mean = kb.convert(b.fdiv(x_sum, count), dtype)

            def centered_terms(accs, v, g):
                centered = kb.fsub(v, mean)
                return (kb.fadd(accs[0], wide(kb.fmul(centered, centered))),
                        kb.fadd(accs[1], wide(kb.fmul(g, centered))))

            squares, products = fold(centered_terms)
            rows = (mean, kb.convert(b.fdiv(squares, count), dtype), kb.convert(dy_sum, dtype),
                    kb.convert(products, dtype))
            for k, value in enumerate(rows):
                kb.store(out, b.add(b.mul(ir.Constant(c.type, k), channels), c), value, dtype)

    over_channels(kb, n, [kb.input("x"), kb.input("dy"), kb.output()], emit)
