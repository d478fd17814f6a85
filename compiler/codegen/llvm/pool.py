"""Pooling kernels: max pooling in two separable passes (a window's rows, then its columns),
average pooling row by row (the taps of a window fold whole rows of outputs, a loop LLVM
vectorises), and global average pooling.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...dims import Dim
from ...types import INT_DTYPES, NUMPY_DTYPES
from . import irgen
from .irgen import i64, larger, smaller
from .microkernels import tiling
from .spatial import ZERO, Window, inside, mean_of, plane_dims


def _pool_rows(kb, n, win: Window, compute: str, init, fold, finish=None) -> None:
    """A pooling op row by row: for each plane and output row, a row of `compute` values
    starts at `init`; each tap (i, j) of the window folds its input row in, acc =
    fold(acc, x), over the outputs whose tap lands inside the input (a loop over consecutive
    outputs with no bounds test, which LLVM vectorises); then finish(oh, ow, acc) gives each
    output (default: acc itself). The row is the output row when `compute` is the output's
    dtype, else one scratch row."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    dtype = x_t.dtype
    x, y = kb.input("x"), kb.output()
    b = kb.b
    planes, h, w = plane_dims(kb, x_t)
    _, out_h, out_w = plane_dims(kb, y_t)
    kh, kw = (kb.dim(k) for k in win.kernel)
    sw = i64(win.stride[1])
    dh, dw = (i64(d) for d in win.dilation)
    pw = kb.dim(win.pad[1])
    scratch = kb.scratch(out_w, compute) if compute != y_t.dtype else None

    def row(index):
        p, oh = index
        plane = b.gep(x, [b.mul(p, b.mul(h, w))])
        out = b.gep(y, [b.mul(b.add(b.mul(p, out_h), oh), out_w)])
        acc = scratch if scratch is not None else out
        with kb.for_range(out_w) as ow:
            kb.store(acc, ow, init, compute)
        top = win.origin(kb, oh, 0)
        with kb.for_range(kh) as i:
            yy = b.add(top, b.mul(i, dh))
            with b.if_then(inside(kb, yy, h)):
                line = b.gep(plane, [b.mul(yy, w)])
                with kb.for_range(kw) as j:
                    shift = b.sub(b.mul(j, dw), pw)  # x = ow * sw + shift
                    first, stop = _inside_range(kb, shift, sw, w, out_w)
                    with kb.for_range(stop, start=first) as ow:
                        value = kb.load(line, b.add(b.mul(ow, sw), shift), dtype)
                        kb.store(acc, ow, fold(kb.load(acc, ow, compute), value), compute)
        if finish is not None or scratch is not None:
            with kb.for_range(out_w) as ow:
                value = kb.load(acc, ow, compute)
                kb.store(out, ow, finish(oh, ow, value) if finish else value, y_t.dtype)

    with kb.allocated([scratch] if scratch is not None else [], "a pooling row"):
        kb.loop_nest([planes, out_h], row)


def _inside_range(kb, shift: ir.Value, stride: ir.Value, size: ir.Value, count: ir.Value):
    """[first, stop): the outputs o < count with 0 <= o * stride + shift < size."""
    b = kb.b
    need = b.sub(ZERO, shift)  # o * stride >= -shift
    first = b.select(b.icmp_signed(">", need, ZERO),
                     b.sdiv(b.add(need, b.sub(stride, i64(1))), stride), ZERO)
    room = b.sub(b.sub(size, i64(1)), shift)  # o * stride <= size - 1 - shift
    last = b.select(b.icmp_signed(">=", room, ZERO), b.add(b.sdiv(room, stride), i64(1)), ZERO)
    stop = smaller(b, last, count)
    return first, b.select(b.icmp_signed("<", stop, first), first, stop)


def max_pool(kb, n, win: Window) -> None:
    """The largest input in each window (padding never wins; NaN does, as numpy's max),
    plane by plane (`_max_pool_planes`); in f32 the module's threads share the planes."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    planes, h, w = plane_dims(kb, x_t)
    _, out_h, out_w = plane_dims(kb, y_t)
    sizes = (h, w, out_h, out_w)
    constant = all(d.is_const for d in (*win.kernel, *win.pad))
    if x_t.dtype != "f32" or not constant:
        _max_pool_planes(kb, kb.input("x"), kb.output(), ZERO, planes, sizes, win, x_t.dtype)
        return
    _over_planes(kb, n, lambda rkb, x, y, first, count, sizes: _max_pool_planes(
        rkb, x, y, first, count, sizes, win, "f32"))


def _over_planes(kb, n, emit) -> None:
    """emit(kb, x, y, first, count, (h, w, out_h, out_w)) over blocks of an f32 pooling's
    planes, which the module's threads share; sizes known at compile time stay constants in
    the range function (known trip counts)."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    planes, h, w = plane_dims(kb, x_t)
    _, out_h, out_w = plane_dims(kb, y_t)
    known = [_spatial(t)[k] for t in (x_t, y_t) for k in (0, 1)]

    def emit_range(rkb, ptrs, first, count, _length, *given):
        sizes = tuple(i64(d.value) if d.is_const else size
                      for d, size in zip(known, given, strict=True))
        emit(rkb, *ptrs, first, count, sizes)

    kb.over_rows("planes", [kb.input("x"), kb.output()], planes, kb.b.mul(h, w), emit_range,
                 extra=(h, w, out_h, out_w))


def _spatial(t) -> tuple[Dim, Dim]:
    """(H, W) of an NCHW or NCL tensor type (H is 1 for NCL), as plane_dims gives them."""
    spatial = t.shape[2:]
    return (spatial[0] if len(spatial) == 2 else Dim.of(1)), spatial[-1]


def _max_pool_planes(kb, x, y, first, count, sizes, win: Window, dtype: str) -> None:
    """max_pool of planes first .. first + count, sizes = (h, w, out_h, out_w), in two
    separable passes per output row: the window's rows inside the input folded into one
    row (the max down each column: a contiguous loop LLVM vectorises), then each output the
    max across its window's columns of that row. The row lies in a scratch row padded with
    the lowest value left and right, so that no column tap is tested for the bounds: a
    strided loop LLVM vectorises, or in f32 at stride 1 or 2 explicit vectors
    (`_vector_columns`)."""
    b = kb.b
    h, w, out_h, out_w = sizes
    if dtype in INT_DTYPES:
        lowest = kb.const(int(np.iinfo(NUMPY_DTYPES[dtype]).min), dtype)
    else:
        lowest = kb.const(float("-inf"), dtype)
    kh, kw = (kb.dim(k) for k in win.kernel)
    sw, dh, dw = (i64(s) for s in (win.stride[1], *win.dilation))
    pw = kb.dim(win.pad[1])
    # the padded row: pw lowest values, the row's w, then what the last window reaches
    reach = b.add(b.mul(b.sub(out_w, i64(1)), sw), b.add(b.mul(b.sub(kw, i64(1)), dw), i64(1)))
    span = larger(b, b.add(pw, w), reach)
    # f32 at stride 1 or 2: the column taps as explicit vectors (LLVM's own interleaved loop
    # does half a vector at a time, its last vector's outputs one by one), which may read up
    # to two vectors past the span: room for them
    vectors = None
    if dtype == "f32" and win.stride[1] in (1, 2):
        vectors = irgen.Vectors(b, kb.vector_width or tiling().width)
        span = b.add(span, i64(2 * vectors.width))
    row = kb.scratch(span, dtype, zeroed=False)

    def fill(start, stop):
        with kb.for_range(stop, start=start) as j:
            b.store(lowest, b.gep(row, [j]))

    def output_row(index):
        k, oh = index
        p = b.add(first, k)
        plane = b.gep(x, [b.mul(p, b.mul(h, w))])
        out = b.gep(y, [b.mul(b.add(b.mul(p, out_h), oh), out_w)])
        middle = b.gep(row, [pw])
        top = win.origin(kb, oh, 0)
        low, stop = _inside_range(kb, top, dh, h, kh)  # the window's rows in the input

        def line(i):
            return b.gep(plane, [b.mul(b.add(top, b.mul(i, dh)), w)])

        with b.if_else(b.icmp_signed("<", low, stop)) as (some, none):
            with some:
                head = line(low)
                with kb.for_range(w) as j:
                    b.store(kb.load(head, j, dtype), b.gep(middle, [j]))
                with kb.for_range(stop, start=b.add(low, i64(1))) as i:
                    taps = line(i)
                    with kb.for_range(w) as j:
                        at = b.gep(middle, [j])
                        b.store(_max(kb, b.load(at), kb.load(taps, j, dtype)), at)
            with none:  # (dilated, ceil mode) a window entirely in the padding rows
                fill(pw, b.add(pw, w))
        if vectors is not None:
            _vector_columns(kb, vectors, row, out, out_w, win)
            return
        with kb.for_range(out_w) as ow:
            start = b.mul(ow, sw)
            kb.store(out, ow, _fold_taps(kb, win, lambda j: b.load(b.gep(
                row, [b.add(start, b.mul(j, dw))]))), dtype)

    with kb.allocated([row], "a pooling row"):
        fill(i64(0), pw)
        fill(b.add(pw, w), span)
        kb.loop_nest([count, out_h], output_row)


UNROLLED_TAPS = 8  # a window this wide or narrower has its column taps written out


def _fold_taps(kb, win: Window, tap) -> ir.Value:
    """The max of tap(j) over the window's columns j (written out when few)."""
    kw = win.kernel[1]
    if kw.is_const and kw.value <= UNROLLED_TAPS:
        best = tap(i64(0))
        for j in range(1, kw.value):
            best = _max(kb, best, tap(i64(j)))
        return best
    return kb.accumulate(i64(1), kb.dim(kw), tap(i64(0)), lambda m, j: _max(kb, m, tap(j)))


def _vector_columns(kb, vec: irgen.Vectors, row, out, out_w, win: Window) -> None:
    """out[ow] = max over j of row[ow * stride + j * dilation], `vec.width` outputs at a time
    (the last vector's lanes masked), for stride 1 (a load per tap) or 2 (the even lanes of
    two loads)."""
    b, width = kb.b, vec.width
    stride, dw = win.stride[1], i64(win.dilation[1])
    even = ir.Constant(ir.VectorType(ir.IntType(32), width), [2 * k for k in range(width)])

    def outputs(ow, mask):
        start = b.mul(ow, i64(stride))

        def tap(j):
            at = b.add(start, b.mul(j, dw))
            if stride == 1:
                return vec.load(row, at)
            return b.shuffle_vector(vec.load(row, at), vec.load(row, b.add(at, i64(width))),
                                    even)

        best = _fold_taps(kb, win, tap)
        if mask is None:
            vec.store(best, out, ow)
        else:
            vec.masked_store(best, out, ow, mask)

    whole = b.mul(b.sdiv(out_w, i64(width)), i64(width))
    with kb.for_range(whole, step=width) as ow:
        outputs(ow, None)
    with b.if_then(b.icmp_signed("<", whole, out_w)):
        outputs(whole, vec.mask(b.sub(out_w, whole), 0))


def _max(kb, acc, value):
    """numpy's maximum of a running max and a value, NaN winning from either side: a compare
    and select LLVM makes one max instruction (x86's returns acc when either is NaN: a NaN
    acc stays), and a select of a NaN value. Cheaper than llvm.maximum, whose lowering also
    orders -0.0 below 0.0, which numpy's max leaves open (tests/_tolerance.py)."""
    b = kb.b
    if isinstance(acc.type, ir.IntType):
        return kb.maximum(acc, value)
    best = b.select(b.fcmp_ordered(">", value, acc), value, acc)
    return b.select(b.fcmp_unordered("uno", value, value), value, best)


def avg_pool(kb, n, win: Window, count_include_pad: bool) -> None:
    """Window sums over zero padding, divided by the window cells PyTorch counts: those in the
    padded input with count_include_pad, else those in the input; never ceil mode's overhang.
    Row by row (_pool_rows): sums in the compute type (f32 for half floats, rounded once)."""
    dtype = n.in_types[0].dtype
    compute = "f32" if dtype in ("f16", "bf16") else dtype
    b = kb.b

    def counted(o, axis):  # cells of the window along one axis that the divisor counts
        start = win.origin(kb, o, axis)
        pad = kb.dim(win.pad[axis]) if count_include_pad else ZERO
        lo, hi = b.sub(ZERO, pad), b.add(kb.dim(win.size[axis]), pad)
        end = b.add(start, kb.dim(win.kernel[axis]))
        first = b.select(b.icmp_signed(">", start, lo), start, lo)
        last = smaller(b, end, hi)
        return b.sub(last, first)

    def mean(oh, ow, total):
        return kb.fdiv(total, kb.convert(b.mul(counted(oh, 0), counted(ow, 1)), compute))

    def by_rows():
        _pool_rows(kb, n, win, compute, kb.const(0.0, compute), lambda acc, x: kb.add(acc, x),
                   mean)

    if (dtype != "f32" or not all(d.is_const for d in (*win.kernel, *win.pad))
            or any(p.value for p in win.pad) or win.stride[1] not in (1, 2)
            or win.dilation != (1, 1) or win.kernel[0].value * win.kernel[1].value > VECTOR_TAPS):
        by_rows()
        return
    # without padding, every window inside the input (no ceil mode overhang): each divides
    # its sum by its kh x kw cells, a vector of outputs at a time (`_vector_windows`)
    x_t, y_t = n.in_types[0], n.out_types[0]
    _, h, w = plane_dims(kb, x_t)
    _, out_h, out_w = plane_dims(kb, y_t)
    inside_all = ir.Constant(ir.IntType(1), 1)
    for size, out, k, s in zip((h, w), (out_h, out_w), win.kernel, win.stride, strict=True):
        reach = b.add(b.mul(b.sub(out, i64(1)), i64(s)), i64(k.value))
        inside_all = b.and_(inside_all, b.icmp_signed("<=", reach, size))
    with b.if_else(inside_all) as (windows, overhang):
        with windows:
            _over_planes(kb, n, lambda rkb, x, y, first, count, sizes: _vector_windows(
                rkb, x, y, first, count, sizes, win))
        with overhang:
            by_rows()


VECTOR_TAPS = 64  # taps of a window `_vector_windows` writes out (a larger one: row by row)


def _vector_windows(kb, x, y, first, count, sizes, win: Window) -> None:
    """avg_pool of f32 planes first .. first + count whose windows all lie inside the input
    (no padding, stride 1 or 2 along a row): `width` outputs of a row at a time, each the sum
    of its window's taps (a tap: one load at stride 1, the even lanes of two at stride 2,
    masked to the row), over kh x kw; the last vector of a row masked."""
    b = kb.b
    h, w, out_h, out_w = sizes
    vec = irgen.Vectors(b, kb.vector_width or tiling().width)
    width, stride = vec.width, win.stride[1]
    kh, kw = (k.value for k in win.kernel)
    cells = vec.splat(kb.const(float(kh * kw), "f32"))
    even = ir.Constant(ir.VectorType(ir.IntType(32), width), [2 * k for k in range(width)])

    def tap(line, at):
        if stride == 1:
            return vec.masked_load(line, at, vec.mask(b.sub(w, at), 0))
        low = vec.masked_load(line, at, vec.mask(b.sub(w, at), 0))
        high = vec.masked_load(line, b.add(at, i64(width)), vec.mask(b.sub(w, at), width))
        return b.shuffle_vector(low, high, even)

    def output_row(index):
        k, oh = index
        plane = b.gep(x, [b.mul(b.add(first, k), b.mul(h, w))])
        out = b.gep(y, [b.mul(b.add(b.mul(b.add(first, k), out_h), oh), out_w)])
        top = b.mul(oh, i64(win.stride[0]))
        with kb.for_range(out_w, step=width) as ow:
            total = None
            for i in range(kh):
                line = b.gep(plane, [b.mul(b.add(top, i64(i)), w)])
                for j in range(kw):
                    value = tap(line, b.add(b.mul(ow, i64(stride)), i64(j)))
                    total = value if total is None else kb.fadd(total, value)
            vec.masked_store(kb.fdiv(total, cells), out, ow, vec.mask(b.sub(out_w, ow), 0))

    kb.loop_nest([count, out_h], output_row)


def global_avg_pool(kb, n) -> None:
    """The mean of each plane."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    x, y = kb.input("x"), kb.output()
    planes, h, w = plane_dims(kb, x_t)
    size = kb.b.mul(h, w)
    with kb.for_range(planes) as p:
        kb.store(y, p, mean_of(kb, x, kb.b.mul(p, size), size, x_t.dtype), y_t.dtype)


def max_pool_grad(kb, n, win: Window) -> None:
    """dx of max_pool: zeros, then each window's grad added at its chosen input cell, window by
    window in order (overlapping windows add up). The choice is PyTorch's: a later cell wins
    when it is greater or NaN, the first input cell of the window when none is (padding never
    takes part); a cell outside the input is read clamped, then ignored."""
    x_t, g_t = n.in_types
    dtype = x_t.dtype
    x, grad, dx = kb.input("x"), kb.input("grad"), kb.output()
    b = kb.b
    planes, h, w = plane_dims(kb, x_t)
    _, out_h, out_w = plane_dims(kb, g_t)
    kh, kw = (kb.dim(k) for k in win.kernel)
    dh, dw = (i64(d) for d in win.dilation)
    plane = b.mul(h, w)
    kb.zero_elements(dx, ZERO, kb.numel(x_t.shape), dtype)

    def window(index):
        p, oh, ow = index
        base = b.mul(p, plane)
        top, left = win.origin(kb, oh, 0), win.origin(kb, ow, 1)

        def tap(acc, yy, xx):
            best, at = acc
            ok = b.and_(inside(kb, yy, h), inside(kb, xx, w))
            cell = b.select(ok, b.add(b.mul(yy, w), xx), ZERO)
            value = kb.load(x, b.add(base, cell), dtype)
            wins = b.or_(b.or_(b.icmp_signed("<", at, ZERO), b.fcmp_ordered(">", value, best)),
                         b.fcmp_unordered("uno", value, value))
            take = b.and_(ok, wins)
            return b.select(take, value, best), b.select(take, cell, at)

        def row(acc, i):
            yy = b.add(top, b.mul(i, dh))
            return kb.accumulate(ZERO, kw, acc, lambda a, j: tap(a, yy, b.add(left, b.mul(j, dw))))

        _, at = kb.accumulate(ZERO, kh, (kb.const(float("-inf"), dtype), i64(-1)), row)
        with b.if_then(b.icmp_signed(">=", at, ZERO)):
            g = kb.load(grad, b.add(b.mul(b.add(b.mul(p, out_h), oh), out_w), ow), dtype)
            target = b.add(base, at)
            kb.store(dx, target, kb.add(kb.load(dx, target, dtype), g), dtype)

    kb.loop_nest([planes, out_h, out_w], window)
