"""GridSample and RoiAlign, bilinear sampling at computed points.

GridSample: X [N, C, *spatial] sampled at the points grid [N, *out, r] gives, normalised to
[-1, 1] (component 0 the last spatial axis), as ONNX's definition (and its reference) does:

    p = ((g + 1) * size - 1) / 2     or, align_corners, (g + 1) / 2 * (size - 1)
    p outside [lo, hi] (the borders: -1/2 and size - 1/2, or 0 and size - 1) is clamped to
    the pixels (border) or reflected at the borders (reflection) first;
    nearest: p rounded half to even; linear: floor(p) and floor(p) + 1 weighted 1 - t and t
    (t = p - floor(p)); cubic (2-D only): floor(p) - 1 .. floor(p) + 2 with Keys' weights
    (a = -0.75); each pixel index outside the axis is 0 (zeros), clamped (border) or
    reflected (reflection).

Every corner of the interpolation is one gather from X flattened over its spatial axes, at
the index each point computes, times the product of its per-axis weights; the per-axis
coordinates are elementwise ops on the grid. Spatial sizes must be known at import time.
"""

from __future__ import annotations

import functools
import itertools
import operator

import numpy as np

from ..builder import GraphBuilder
from ..ir import Value
from .convert_base import (
    FLOAT_TYPES,
    Unsupported,
    arg,
    attr,
    choose,
    const_like,
    converter_table,
    known,
    need,
    require_dtype,
)
from .convert_elementwise import round_half_even

CONVERTERS, converter = converter_table()

CUBIC_A = -0.75  # ONNX's GridSample (PyTorch's): Keys' cubic convolution with a = -0.75


@converter("GridSample")
def _grid_sample(gb, node):
    x, grid = need(node, 0, "X"), need(node, 1, "grid")
    require_dtype(x, FLOAT_TYPES, "GridSample's X")
    require_dtype(grid, FLOAT_TYPES, "GridSample's grid")
    # opset 16 spells the modes bilinear and bicubic, 20 (with N-D inputs) linear and cubic
    modes = ("linear", "nearest", "cubic") if node.opset >= 20 else \
        ("bilinear", "nearest", "bicubic")
    mode = choose(node, "mode", modes[0], modes).removeprefix("bi")
    padding = choose(node, "padding_mode", "zeros", ("zeros", "border", "reflection"))
    align = bool(attr(node, "align_corners", 0))
    rank = x.type.rank - 2
    if rank < 1 or grid.type.rank != rank + 2:
        raise Unsupported(f"GridSample of a rank-{x.type.rank} X with a rank-{grid.type.rank} "
                          "grid")
    if node.opset < 20 and rank != 2:
        raise Unsupported(f"GridSample-16 of a {x.type.rank}-D input (only 4-D)")
    if mode == "cubic" and rank != 2:
        raise Unsupported(f"cubic GridSample of a {x.type.rank}-D input (only 4-D)")
    spatial = x.type.shape[2:]
    if not all(d.is_const for d in spatial) or not grid.type.shape[-1].is_const:
        raise Unsupported("GridSample needs X's spatial sizes and grid's last axis as constants")
    sizes = [d.value for d in spatial]
    if grid.type.shape[-1].value != rank:
        raise Unsupported(f"GridSample's grid gives {grid.type.shape[-1].value} coordinates "
                          f"for {rank} spatial axes")
    if 0 in sizes:
        raise Unsupported("GridSample of an empty spatial axis")
    dtype = x.type.dtype
    xf, gf = (v if v.type.dtype == "f32" else gb.cast(v, "f32") for v in (x, grid))
    batch, channels, out = x.type.shape[0], x.type.shape[1], list(grid.type.shape[1:-1])
    points = functools.reduce(operator.mul, out)
    flat = gb.reshape(xf, [batch, channels, int(np.prod(sizes))])
    axes = [_axis(gb, gf, rank - 1 - a, sizes[a], mode, padding, align) for a in range(rank)]
    strides = [int(np.prod(sizes[a + 1:])) for a in range(rank)]
    total = None
    for corner in itertools.product(*(range(len(taps)) for taps in axes)):
        taps = [axes[a][k] for a, k in enumerate(corner)]
        index = _sum(gb, [_times(gb, t.index, s) for t, s in zip(taps, strides, strict=True)])
        index = gb.reshape(gb.cast(index, "i64"), [batch, 1, points])
        sample = gb.op("take_along_axis", flat, index, axis=2)
        valid = [t.valid for t in taps if t.valid is not None]
        if valid:
            inside = functools.reduce(lambda a, b: gb.op("logical_and", a, b), valid)
            sample = gb.op("where", gb.reshape(inside, [batch, 1, points]), sample,
                           const_like(gb, 0.0, "f32"))
        weights = [t.weight for t in taps if t.weight is not None]
        if weights:
            sample = gb.mul(sample, gb.reshape(_product(gb, weights), [batch, 1, points]))
        total = sample if total is None else gb.add(total, sample)
    y = gb.reshape(total, [batch, channels, *out])
    return [y if dtype == "f32" else gb.cast(y, dtype)]


class _Tap:
    """One of an axis's interpolation taps at every point: the pixel index (float, integral),
    its weight (None: 1), and whether it is inside the axis (None: always, or not asked)."""

    def __init__(self, index: Value, weight: Value | None, valid: Value | None):
        self.index, self.weight, self.valid = index, weight, valid


def _axis(gb: GraphBuilder, grid: Value, component: int, size: int, mode: str, padding: str,
          align: bool) -> list[_Tap]:
    """The taps of one spatial axis, read from grid component `component` ([N, *out])."""
    g = gb.op("gather", grid, gb.constant(np.array(component, np.int64)),
              axis=grid.type.rank - 1)
    c = functools.partial(const_like, gb, dtype="f32")
    one = c(1.0)
    if align:
        p = gb.mul(gb.div(gb.add(g, one), c(2.0)), c(size - 1.0))
        lo, hi = 0.0, size - 1.0
    else:
        p = gb.div(gb.sub(gb.mul(gb.add(g, one), c(float(size))), one), c(2.0))
        lo, hi = -0.5, size - 0.5
    if mode == "nearest":
        p = round_half_even(gb, p)
    outside = gb.op("logical_or", gb.op("less", p, c(lo)), gb.op("greater", p, c(hi)))
    if padding == "border":
        p = gb.op("where", outside, gb.op("clip", p, min=0.0, max=size - 1.0), p)
    elif padding == "reflection":
        p = _reflect(gb, p, lo, hi)
    return _taps(gb, p, size, mode, padding, lo, hi)


def _taps(gb: GraphBuilder, p: Value, size: int, mode: str, padding: str, lo: float,
          hi: float) -> list[_Tap]:
    """The taps of pixel coordinates p (f32) along an axis of `size`: the pixel itself
    (nearest: p is rounded already), its two neighbours (linear) or four (cubic)."""
    if mode == "nearest":
        return [_pixel(gb, p, None, size, padding, lo, hi)]
    c = functools.partial(const_like, gb, dtype="f32")
    base = gb.op("floor", p)
    t = gb.sub(p, base)
    if mode == "linear":
        weights, offsets = [gb.sub(c(1.0), t), t], [0, 1]
    else:
        weights, offsets = _cubic_weights(gb, t), [-1, 0, 1, 2]
    return [_pixel(gb, base if k == 0 else gb.add(base, c(float(k))), w, size, padding, lo, hi)
            for k, w in zip(offsets, weights, strict=True)]


def _pixel(gb: GraphBuilder, i: Value, weight: Value | None, size: int, padding: str,
           lo: float, hi: float) -> _Tap:
    """A tap at pixel index i (integral floats) under the padding mode: outside the axis, 0
    (zeros), the nearest pixel (border), or the reflected one, truncated (reflection)."""
    c = functools.partial(const_like, gb, dtype="f32")
    valid = None
    if padding == "zeros":
        valid = gb.op("logical_and", gb.op("greater_equal", i, c(0.0)),
                      gb.op("less", i, c(float(size))))
    if padding == "reflection":
        i = _reflect(gb, i, lo, hi)
        i = gb.cast(gb.cast(i, "i64"), "f32")  # C's int(): toward zero
    i = gb.op("clip", i, min=0.0, max=size - 1.0)  # (zeros: a safe index, masked out)
    return _Tap(i, weight, valid)


def _reflect(gb: GraphBuilder, v: Value, lo: float, hi: float) -> Value:
    """v reflected at lo and hi until inside [lo, hi] (ONNX's _gs_reflect): the distance past
    the border, less whole spans, from that border (an even count) or the other one."""
    c = functools.partial(const_like, gb, dtype="f32")
    span = hi - lo
    if span == 0:  # one pixel under align_corners: every point is that pixel
        return gb.add(gb.mul(v, c(0.0)), c(lo))
    below, above = gb.op("less", v, c(lo)), gb.op("greater", v, c(hi))
    past = gb.op("where", below, gb.sub(c(lo), v), gb.sub(v, c(hi)))
    spans = gb.op("floor", gb.div(past, c(span)))
    rest = gb.sub(past, gb.mul(spans, c(span)))
    half = gb.mul(spans, c(0.5))
    even = gb.op("equal", gb.op("floor", half), half)
    near_lo, near_hi = gb.add(c(lo), rest), gb.sub(c(hi), rest)
    return gb.op("where", below, gb.op("where", even, near_lo, near_hi),
                 gb.op("where", above, gb.op("where", even, near_hi, near_lo), v))


def _cubic_weights(gb: GraphBuilder, t: Value) -> list[Value]:
    """Keys' weights of the taps at -1, 0, 1, 2 for a fraction t in [0, 1) (the reference's
    _gs_get_cubic_coeffs, in its order of operations)."""
    c = functools.partial(const_like, gb, dtype="f32")
    a = CUBIC_A

    def far(s: Value) -> Value:  # ((a s - 5a) s + 8a) s - 4a, for 1 < s < 2
        return gb.sub(gb.mul(gb.add(gb.mul(gb.sub(gb.mul(c(a), s), c(5 * a)), s), c(8 * a)),
                             s), c(4 * a))

    def near(s: Value) -> Value:  # ((a + 2) s - (a + 3)) s s + 1, for 0 <= s <= 1
        return gb.add(gb.mul(gb.mul(gb.sub(gb.mul(c(a + 2), s), c(a + 3)), s), s), c(1.0))

    one_minus = gb.sub(c(1.0), t)
    return [far(gb.add(t, c(1.0))), near(t), near(one_minus), far(gb.sub(c(2.0), t))]


def _times(gb: GraphBuilder, v: Value, k: int) -> Value:
    return v if k == 1 else gb.mul(v, const_like(gb, float(k), "f32"))


def _sum(gb: GraphBuilder, values: list[Value]) -> Value:
    return functools.reduce(gb.add, values)


def _product(gb: GraphBuilder, values: list[Value]) -> Value:
    return functools.reduce(gb.mul, values)


@converter("RoiAlign")
def _roi_align(gb, node):
    """Each region of interest [x1, y1, x2, y2] (times spatial_scale, less 1/2 with
    half_pixel) of its batch entry's X cut into output_height x output_width bins, each
    the average (or max) of sampling_ratio^2 bilinear samples at the centres of a regular
    grid in the bin, as ONNX's reference computes them: a sample beyond a pixel past the
    border is 0, one within it is clamped to the border pixels; max mode takes the largest
    of each sample's four weighted corners. The grid must be fixed: sampling_ratio > 0, or
    regions known at import time that give every one the same adaptive grid."""
    x, rois, batch = need(node, 0, "X"), need(node, 1, "rois"), need(node, 2, "batch_indices")
    require_dtype(x, FLOAT_TYPES, "RoiAlign's X")
    require_dtype(rois, FLOAT_TYPES, "RoiAlign's rois")
    mode = choose(node, "mode", "avg", ("avg", "max"))
    half_pixel = choose(node, "coordinate_transformation_mode", "half_pixel",
                        ("half_pixel", "output_half_pixel")) == "half_pixel"
    out_h, out_w = int(attr(node, "output_height", 1)), int(attr(node, "output_width", 1))
    scale = float(attr(node, "spatial_scale", 1.0))
    if x.type.rank != 4 or not (x.type.shape[2].is_const and x.type.shape[3].is_const):
        raise Unsupported(f"RoiAlign of X {x.type} (only [N, C, H, W] of constant H, W)")
    height, width = x.type.shape[2].value, x.type.shape[3].value
    grid = _roi_grid(gb, node, int(attr(node, "sampling_ratio", 0)), scale, half_pixel,
                     out_h, out_w)
    c = functools.partial(const_like, gb, dtype="f32")
    boxes = rois if rois.type.dtype == "f32" else gb.cast(rois, "f32")
    corner = [gb.op("gather", boxes, gb.constant(np.array(k, np.int64)), axis=1)
              for k in range(4)]  # x1, y1, x2, y2: [R]
    offset = c(0.5 if half_pixel else 0.0)
    start_w, start_h, end_w, end_h = (gb.sub(gb.mul(v, c(scale)), offset) for v in corner)
    span_w, span_h = gb.sub(end_w, start_w), gb.sub(end_h, start_h)
    if not half_pixel:  # the legacy mode makes every region at least a pixel wide
        span_w, span_h = (gb.op("maximum", v, c(1.0)) for v in (span_w, span_h))
    count = rois.type.shape[0]
    ys = _roi_samples(gb, start_h, span_h, out_h, grid[0], count)  # [R, oh, gh]
    xs = _roi_samples(gb, start_w, span_w, out_w, grid[1], count)  # [R, ow, gw]
    y = gb.reshape(ys, [count, out_h, 1, grid[0], 1])
    xw = gb.reshape(xs, [count, 1, out_w, 1, grid[1]])
    outside = gb.op("logical_or",
                    gb.op("logical_or", gb.op("less", y, c(-1.0)), gb.op("greater", y, c(height))),
                    gb.op("logical_or", gb.op("less", xw, c(-1.0)),
                          gb.op("greater", xw, c(width))))
    (y_lo, y_hi, ly), (x_lo, x_hi, lx) = (_roi_axis(gb, v, size) for v, size in
                                          ((y, height), (xw, width)))
    hy, hx = gb.sub(c(1.0), ly), gb.sub(c(1.0), lx)
    inside = gb.op("logical_not", outside)
    zero = c(0.0)
    points = out_h * out_w * grid[0] * grid[1]
    source = gb.op("gather", x if x.type.dtype == "f32" else gb.cast(x, "f32"), batch, axis=0)
    flat = gb.reshape(source, [count, x.type.shape[1], height * width])
    products = []
    for row, col, weight in ((y_lo, x_lo, gb.mul(hy, hx)), (y_lo, x_hi, gb.mul(hy, lx)),
                             (y_hi, x_lo, gb.mul(ly, hx)), (y_hi, x_hi, gb.mul(ly, lx))):
        # (a sample outside reads pixel 0 with weight 0, as the reference does)
        at = gb.op("where", inside, gb.add(gb.mul(row, c(float(width))), col), zero)
        at = gb.reshape(gb.cast(at, "i64"), [count, 1, points])
        weight = gb.reshape(gb.op("where", inside, weight, zero), [count, 1, points])
        products.append(gb.mul(gb.op("take_along_axis", flat, at, axis=2), weight))
    if mode == "avg":
        value = _sum(gb, products)
    else:
        value = functools.reduce(lambda a, b: gb.op("maximum", a, b), products)
    value = gb.reshape(value, [count, x.type.shape[1], out_h, out_w, grid[0], 1, grid[1]])
    value = gb.reshape(gb.permute(value, [0, 1, 2, 3, 4, 6, 5]),
                       [count, x.type.shape[1], out_h, out_w, grid[0] * grid[1]])
    if mode == "avg":
        y_out = gb.div(gb.op("sum", value, axis=[4], keepdims=False), c(float(max(
            grid[0] * grid[1], 1))))
    else:
        y_out = gb.op("max", value, axis=[4], keepdims=False)
    return [y_out if x.type.dtype == "f32" else gb.cast(y_out, x.type.dtype)]


def _roi_grid(gb: GraphBuilder, node, ratio: int, scale: float, half_pixel: bool,
              out_h: int, out_w: int) -> tuple[int, int]:
    """The samples per bin along y and x: sampling_ratio, or the adaptive ceil(span / bins)
    where the regions are known now and give each the same."""
    if ratio > 0:
        return ratio, ratio
    boxes = known(gb, node, 1)
    if boxes is None:
        raise Unsupported("RoiAlign with sampling_ratio=0 (a grid adapted to each region) "
                          "needs the regions at import time")
    boxes = boxes.astype(np.float64) * scale - (0.5 if half_pixel else 0.0)
    spans = [boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]]
    if not half_pixel:
        spans = [np.maximum(s, 1.0) for s in spans]
    grids = [set(np.ceil(s / n).astype(int).tolist()) for s, n in zip(spans, (out_h, out_w),
                                                                       strict=True)]
    if any(len(g) != 1 for g in grids):
        raise Unsupported("RoiAlign with sampling_ratio=0 over regions of different grids")
    return grids[0].pop(), grids[1].pop()


def _roi_samples(gb: GraphBuilder, start: Value, span: Value, bins: int, grid: int,
                 count) -> Value:
    """[R, bins, grid]: start + b * bin + (i + 1/2) * bin / grid, bin = span / bins."""
    c = functools.partial(const_like, gb, dtype="f32")
    size = gb.div(span, c(float(bins)))
    steps = np.arange(bins, dtype=np.float32).reshape(1, bins, 1)
    within = (np.arange(grid, dtype=np.float32) + 0.5).reshape(1, 1, grid)
    start, size = (gb.reshape(v, [count, 1, 1]) for v in (start, size))
    return gb.add(gb.add(start, gb.mul(gb.constant(steps), size)),
                  gb.div(gb.mul(gb.constant(within), size), c(float(grid))))


def _roi_axis(gb: GraphBuilder, v: Value, size: int) -> tuple[Value, Value, Value]:
    """(low pixel, high pixel, fraction) of sample coordinates v along an axis of `size`:
    v clamped at 0, both pixels the last one from it on (fraction 0 there)."""
    c = functools.partial(const_like, gb, dtype="f32")
    v = gb.op("maximum", v, c(0.0))
    low = gb.op("floor", v)
    last = gb.op("greater_equal", low, c(size - 1.0))
    low = gb.op("where", last, c(size - 1.0), low)
    high = gb.op("where", last, c(size - 1.0), gb.add(low, c(1.0)))
    v = gb.op("where", last, low, v)
    return low, high, gb.sub(v, low)


@converter("DeformConv")
def _deform_conv(gb, node):
    """A 2-D conv whose every kernel tap reads X at its place plus the tap's offset (per
    offset group, output position and axis), bilinearly with zeros outside (ONNX's
    reference: GridSample with align_corners), times the mask if given: the samples are
    gathered as GridSample's corners, then contracted with the weights as an im2col
    product per group."""
    x, w, offset = need(node, 0, "X"), need(node, 1, "W"), need(node, 2, "offset")
    bias, mask = arg(node, 3), arg(node, 4)
    for v, what in ((x, "X"), (w, "W"), (offset, "offset")):
        require_dtype(v, FLOAT_TYPES, f"DeformConv's {what}")
    if x.type.rank != 4:
        raise Unsupported(f"DeformConv of a {x.type.rank}-D input (only 4-D)")
    if not all(d.is_const for d in (*x.type.shape[1:], *w.type.shape, *offset.type.shape[1:])):
        raise Unsupported("DeformConv needs constant sizes but the batch")
    n = x.type.shape[0]
    channels, height, width = (d.value for d in x.type.shape[1:])
    out_ch, group_ch = w.type.shape[0].value, w.type.shape[1].value
    kernel = [int(k) for k in (attr(node, "kernel_shape") or [d.value for d in
                                                              w.type.shape[2:]])]
    strides = [int(v) for v in (attr(node, "strides") or [1, 1])]
    dilations = [int(v) for v in (attr(node, "dilations") or [1, 1])]
    pads = [int(v) for v in (attr(node, "pads") or [0, 0, 0, 0])]
    groups, offset_groups = int(attr(node, "group", 1)), int(attr(node, "offset_group", 1))
    taps = kernel[0] * kernel[1]
    out_h, out_w = offset.type.shape[2].value, offset.type.shape[3].value
    if channels != group_ch * groups or out_ch % groups or channels % offset_groups or \
            offset.type.shape[1].value != offset_groups * taps * 2 or 1 in (height, width):
        raise Unsupported(f"DeformConv of X {x.type}, W {w.type}, offset {offset.type} "
                          f"with group {groups} and offset_group {offset_groups}")
    f32 = [v if v.type.dtype == "f32" else gb.cast(v, "f32") for v in (x, offset)]
    xf, off = f32
    off = gb.reshape(off, [n, offset_groups, kernel[0], kernel[1], 2, out_h, out_w])
    coords = []
    for axis in (0, 1):  # y, then x: the place of each tap, plus its offset
        start = -pads[axis] + strides[axis] * np.arange((out_h, out_w)[axis])
        place = start + dilations[axis] * np.arange(kernel[axis])[:, None]  # [k, out]
        shape = [1, 1, 1, 1, 1, 1]
        shape[2 + axis], shape[4 + axis] = kernel[axis], (out_h, out_w)[axis]
        delta = gb.op("gather", off, gb.constant(np.array(axis, np.int64)), axis=4)
        coords.append(gb.add(gb.constant(place.astype(np.float32).reshape(shape)), delta))
    points = taps * out_h * out_w
    flat = gb.reshape(xf, [n, offset_groups, channels // offset_groups, height * width])
    rows, cols = (_taps(gb, p, size, "linear", "zeros", 0.0, size - 1.0)
                  for p, size in zip(coords, (height, width), strict=True))
    total = None
    for row, col in itertools.product(rows, cols):
        index = gb.add(gb.mul(row.index, const_like(gb, float(width), "f32")), col.index)
        index = gb.reshape(gb.cast(index, "i64"), [n, offset_groups, 1, points])
        sample = gb.op("take_along_axis", flat, index, axis=3)
        inside = gb.op("logical_and", row.valid, col.valid)
        weight = gb.op("where", inside, gb.mul(row.weight, col.weight),
                       const_like(gb, 0.0, "f32"))
        sample = gb.mul(sample, gb.reshape(weight, [n, offset_groups, 1, points]))
        total = sample if total is None else gb.add(total, sample)
    if mask is not None:
        require_dtype(mask, FLOAT_TYPES, "DeformConv's mask")
        scale = mask if mask.type.dtype == "f32" else gb.cast(mask, "f32")
        total = gb.mul(total, gb.reshape(scale, [n, offset_groups, 1, points]))
    # columns [N, groups, C/groups * taps, positions] against W [groups, O/groups, ...]
    columns = gb.reshape(total, [n, groups, group_ch * taps, out_h * out_w])
    weights = gb.reshape(w if w.type.dtype == "f32" else gb.cast(w, "f32"),
                         [1, groups, out_ch // groups, group_ch * taps])
    y = gb.reshape(gb.matmul(weights, columns), [n, out_ch, out_h, out_w])
    if bias is not None:
        b = bias if bias.type.dtype == "f32" else gb.cast(bias, "f32")
        y = gb.add(y, gb.reshape(b, [1, out_ch, 1, 1]))
    return [y if x.type.dtype == "f32" else gb.cast(y, x.type.dtype)]
