"""Converters of ONNX's neural-network ops: Conv, ConvTranspose, pooling, normalizations,
Gemm/MatMul, Softmax/LogSoftmax/Hardmax, reductions, ArgMax/ArgMin and Resize.

kiln's conv and pools take PyTorch's symmetric padding; ONNX's auto_pad and asymmetric pads
become an explicit pad (zeros, or -inf for max pooling) in front of them.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Value
from ..types import NUMPY_DTYPES
from .convert_base import (
    FLOAT_TYPES,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    axis_of,
    choose,
    const_ints,
    const_like,
    converter_table,
    dtype_of,
    index_relation,
    ints,
    known,
    need,
    require_dtype,
    required_sizes,
)
from .sizes import sizes_of

CONVERTERS, converter = converter_table()


# windows: conv and pooling geometry -------------------------------------------------------
def _window(node: OnnxNode, x: Value, kernel: list[int]) -> tuple[list, list, list, list]:
    """(strides, dilations, pads before, pads after) per spatial axis, auto_pad resolved
    (SAME_UPPER puts the odd extra unit of padding after, SAME_LOWER before)."""
    n = x.type.rank - 2
    strides = ints(node, "strides", [1] * n)
    dilations = ints(node, "dilations", [1] * n)
    auto_pad = choose(node, "auto_pad", "NOTSET", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"))
    if auto_pad in ("NOTSET", "VALID"):
        pads = ints(node, "pads", [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n
        return strides, dilations, pads[:n], pads[n:]
    before, after = [], []
    for size, k, s, d in zip(x.type.shape[2:], kernel, strides, dilations, strict=True):
        if s == 1:  # out = size: (size - 1) + (k - 1) * d + 1 - size, whatever the size
            total = (k - 1) * d
        elif not size.is_const:
            raise Unsupported(f"auto_pad={auto_pad} with a stride other than 1 needs constant "
                              "spatial sizes")
        else:
            out = -(-size.value // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size.value, 0)
        small = total // 2
        before.append(small if auto_pad == "SAME_UPPER" else total - small)
        after.append(total - before[-1])
    return strides, dilations, before, after


def _spatial_rank(x: Value, op: str) -> int:
    n = x.type.rank - 2
    if n not in (1, 2):
        raise Unsupported(f"{op} of a {x.type.rank}-D input (kiln's are 1-D and 2-D)")
    return n


def _explicit_pad(gb: GraphBuilder, x: Value, before: list[int], after: list[int],
                  value: float = 0.0) -> Value:
    """x padded on its spatial axes (F.pad order: last axis first)."""
    if not any(before) and not any(after):
        return x
    flat = [p for b, a in reversed(list(zip(before, after, strict=True))) for p in (b, a)]
    return gb.op("pad", x, pads=flat, value=value)


def _symmetric(before: list[int], after: list[int], kernel: list[int] | None = None) -> bool:
    """Pads kiln's ops take as they are: the same on both sides (and, for pools, at most half
    the window, PyTorch's limit)."""
    if before != after:
        return False
    return kernel is None or all(2 * p <= k for p, k in zip(before, kernel, strict=True))


@converter("Conv")
def _conv(gb, node):
    """kiln's conv (1-D, 2-D); with more spatial axes, a 2-D conv over the last two for each
    kernel offset along the others (below)."""
    x, w, bias = need(node, 0, "X"), need(node, 1, "W"), arg(node, 2)
    n = x.type.rank - 2
    if n < 1:
        raise Unsupported(f"Conv of a {x.type.rank}-D input")
    kernel = ints(node, "kernel_shape") or [d.value for d in w.type.shape[2:]]
    strides, dilations, before, after = _window(node, x, kernel)
    groups = int(attr(node, "group", 1))
    if n > 2:  # the leading spatial axes padded here, the last two by the 2-D conv
        lead = n - 2
        x = _explicit_pad(gb, x, before[:lead] + [0, 0], after[:lead] + [0, 0])
        before, after = [0] * lead + before[lead:], [0] * lead + after[lead:]
    if not _symmetric(before, after):
        x, before = _explicit_pad(gb, x, before, after), [0] * len(before)
    if n <= 2:
        return [gb.op("conv", x, w, bias, stride=strides, padding=before, dilation=dilations,
                      groups=groups)]
    return [_leading_axes_conv(gb, x, w, bias, kernel, strides, dilations, before[-2:],
                               groups)]


def _leading_axes_conv(gb: GraphBuilder, x: Value, w: Value, bias: Value | None,
                       kernel: list[int], strides: list[int], dilations: list[int],
                       padding: list[int], groups: int) -> Value:
    """An N-D conv (N > 2, its leading spatial axes padded already) as a sum over the kernel
    offsets k of those axes: the input at out * stride + k * dilation along each (a gather),
    those axes moved into the batch, convolved in 2-D with the kernel's slice at k."""
    lead = x.type.rank - 4
    sizes = x.type.shape[2:2 + lead]
    if not all(d.is_const for d in sizes):
        raise Unsupported("Conv of more than 2 spatial axes needs their sizes as constants")
    outs = [(d.value - (k - 1) * dl - 1) // s + 1
            for d, k, s, dl in zip(sizes, kernel, strides, dilations, strict=False)]
    total = None
    for offsets in itertools.product(*(range(k) for k in kernel[:lead])):
        part, weight = x, w
        for a, (o, k, s, dl) in enumerate(zip(outs, offsets, strides, dilations, strict=False)):
            index = np.arange(o, dtype=np.int64) * s + k * dl
            part = gb.op("gather", part, gb.constant(index), axis=2 + a)
            weight = gb.op("gather", weight, gb.constant(np.array(k, np.int64)), axis=2)
        y = _in_batch(gb, part, lead, lambda v, weight=weight, first=total is None: gb.op(
            "conv", v, weight, bias if first else None, stride=strides[lead:],
            padding=padding, dilation=dilations[lead:], groups=groups))
        total = y if total is None else gb.add(total, y)
    return total


def _in_batch(gb: GraphBuilder, x: Value, lead: int, op) -> Value:
    """op (a 2-D conv) applied to x [N, C, *L, H, W] with its lead axes L moved into the batch,
    then moved back: [N, C', *L, H', W']."""
    rank = x.type.rank
    perm = [0, *range(2, 2 + lead), 1, rank - 2, rank - 1]
    moved = gb.permute(x, perm)
    batch = functools.reduce(operator.mul, moved.type.shape[:1 + lead])
    y = op(gb.reshape(moved, [batch, *moved.type.shape[1 + lead:]]))
    y = gb.reshape(y, [*moved.type.shape[:1 + lead], *y.type.shape[1:]])
    return gb.permute(y, [0, 1 + lead, *range(1, 1 + lead), rank - 2, rank - 1])


@converter("ConvTranspose")
def _conv_transpose(gb, node):
    """kiln's conv_transpose with no padding gives the full output; ONNX's pads crop it and
    output_padding extends it at the end (where only the bias reaches)."""
    x, w, bias = need(node, 0, "X"), need(node, 1, "W"), arg(node, 2)
    n = x.type.rank - 2
    if n < 1:
        raise Unsupported(f"ConvTranspose of a {x.type.rank}-D input")
    kernel = ints(node, "kernel_shape") or [d.value for d in w.type.shape[2:]]
    strides = ints(node, "strides", [1] * n)
    dilations = ints(node, "dilations", [1] * n)
    extra = ints(node, "output_padding", [0] * n)
    groups = int(attr(node, "group", 1))
    auto_pad = choose(node, "auto_pad", "NOTSET", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"))
    sizes = [d for d in x.type.shape[2:]]
    full = [s * (i - 1) + (k - 1) * d + 1 + e
            for s, i, k, d, e in zip(strides, sizes, kernel, dilations, extra, strict=True)]
    output_shape = ints(node, "output_shape")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if not all(d.is_const for d in sizes):
            raise Unsupported("ConvTranspose output_shape/auto_pad needs constant spatial sizes")
        want = output_shape[-n:] if output_shape is not None else \
            [s * i.value for s, i in zip(strides, sizes, strict=True)]
        total = [f.value - o for f, o in zip((Dim.of(f) for f in full), want, strict=True)]
        # the spec's rule: SAME_UPPER puts the smaller half before
        upper = auto_pad == "SAME_UPPER"
        before = [t // 2 if upper else t - t // 2 for t in total]
        after = [t - b for t, b in zip(total, before, strict=True)]
    elif auto_pad == "VALID":
        before, after = [0] * n, [0] * n
    else:
        pads = ints(node, "pads", [0] * 2 * n)
        before, after = pads[:n], pads[n:]
    if n <= 2 and before == after and all(0 <= e < max(s, d) for e, s, d in
                                          zip(extra, strides, dilations, strict=True)):
        return [gb.op("conv_transpose", x, w, bias, stride=strides, padding=before,
                      output_padding=extra, groups=groups, dilation=dilations)]
    if n <= 2:
        y = gb.op("conv_transpose", x, w, stride=strides, groups=groups, dilation=dilations)
    else:
        y = _leading_axes_conv_transpose(gb, x, w, kernel, strides, dilations, groups)
    crop_after = [e - a for e, a in zip(extra, after, strict=True)]
    y = _explicit_pad(gb, y, [-b for b in before], crop_after)
    if bias is not None:
        y = gb.add(y, gb.reshape(bias, [bias.type.shape[0]] + [1] * n))
    return [y]


def _leading_axes_conv_transpose(gb: GraphBuilder, x: Value, w: Value, kernel: list[int],
                                 strides: list[int], dilations: list[int], groups: int
                                 ) -> Value:
    """The full (unpadded) N-D ConvTranspose (N > 2) as a sum over the kernel offsets k of
    the leading spatial axes: a 2-D conv_transpose of the input (those axes in the batch)
    with the kernel's slice at k, each input position i placed at i * stride + k * dilation
    along each of those axes (a product with a 0/1 matrix)."""
    lead = x.type.rank - 4
    sizes = x.type.shape[2:2 + lead]
    if not all(d.is_const for d in sizes):
        raise Unsupported("ConvTranspose of more than 2 spatial axes needs their sizes as "
                          "constants")
    total = None
    for offsets in itertools.product(*(range(k) for k in kernel[:lead])):
        weight = w
        for k in offsets:
            weight = gb.op("gather", weight, gb.constant(np.array(k, np.int64)), axis=2)
        y = _in_batch(gb, x, lead, lambda v, weight=weight: gb.op(
            "conv_transpose", v, weight, stride=strides[lead:], groups=groups,
            dilation=dilations[lead:]))
        for a, (d, k, kk, s, dl) in enumerate(zip(sizes, kernel, offsets, strides, dilations,
                                                  strict=False)):
            full = s * (d.value - 1) + (k - 1) * dl + 1
            place = np.zeros((d.value, full), x.type.np_dtype)
            place[np.arange(d.value), np.arange(d.value) * s + kk * dl] = 1
            y = _along(gb, y, 2 + a, lambda v, place=place: gb.matmul(v, gb.constant(place)))
        total = y if total is None else gb.add(total, y)
    return total


def _along(gb: GraphBuilder, x: Value, axis: int, op) -> Value:
    """op (acting on the last axis) applied along `axis`: that axis swapped last and back."""
    last = x.type.rank - 1
    if axis == last:
        return op(x)
    perm = list(range(x.type.rank))
    perm[axis], perm[last] = last, axis
    return gb.permute(op(gb.permute(x, perm)), perm)


# pools kiln's pool ops do not take (3-D and more, or an average with dilations) ---------
def _pool_length(size: int, k: int, s: int, d: int, before: int, after: int,
                 ceil_mode: bool) -> tuple[int, int]:
    """(output length, padding beyond `after` the last window reaches) of one axis, by the
    ONNX reference's rule: a ceil_mode window must start inside the input or its pads."""
    span = (k - 1) * d + 1
    padded = size + before + after
    out = (padded - span) // s + 1
    if ceil_mode:
        out = -(-(padded - span) // s) + 1
        if (out - 1) * s >= size + before:
            out -= 1
    return out, max((out - 1) * s + span - padded, 0)


def _along_axis(gb: GraphBuilder, x: Value, axis: int, pool_1d) -> Value:
    """pool_1d (on an [M, 1, L] tensor) applied along `axis` of x: the axis is moved last and
    the others folded into M, then unfolded and moved back."""
    rank = x.type.rank
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = gb.permute(x, perm)
    lead = list(moved.type.shape[:-1])
    m = lead[0]
    for size in lead[1:]:
        m = m * size
    y = pool_1d(gb.reshape(moved, [m, 1, moved.type.shape[-1]]))
    y = gb.reshape(y, [*lead, y.type.shape[-1]])
    return gb.permute(y, [perm.index(a) for a in range(rank)])


def _separable_pool(gb: GraphBuilder, node: OnnxNode, x: Value, kind: str, kernel: list[int],
                    window: tuple[list, list, list, list], ceil_mode: bool,
                    include_pad: bool = False) -> Value:
    """A max, average or sum pool over a box window as one 1-D pass per spatial axis: the box
    is a product of intervals, so its max is the max of per-axis maxes, its sum the per-axis
    sums in turn, and its average (the count of cells it holds is the product of per-axis
    counts, as in ONNX's reference) the per-axis averages in turn. A max pass is kiln's 1-D
    max_pool on explicitly padded input (-inf); an average pass sums with a 1-D conv of ones
    (which takes dilation) and divides by the same conv of a mask of the cells it counts."""
    strides, dilations, before, after = window
    dtype = dtype_of(x)
    for i, (k, s, d, b, a) in enumerate(zip(kernel, strides, dilations, before, after,
                                            strict=True)):
        size = x.type.shape[2 + i]
        if not size.is_const:
            raise Unsupported(f"{node.op_type} of a {x.type.rank}-D input needs constant "
                              "spatial sizes")
        _, extra = _pool_length(size.value, k, s, d, b, a, ceil_mode)
        pads = ([b], [a + extra])
        if kind == "max":
            def one(v, k=k, s=s, d=d, pads=pads):
                return gb.op("max_pool", _explicit_pad(gb, v, *pads, -math.inf),
                             kernel_size=[k], stride=[s], dilation=[d])
        else:
            ones = gb.constant(np.ones([1, 1, k], NUMPY_DTYPES[dtype]))
            edge = 1.0 if include_pad else 0.0
            mask = np.concatenate([np.full(b, edge), np.ones(size.value), np.full(a, edge),
                                   np.zeros(extra)]).astype(NUMPY_DTYPES[dtype])
            conv = dict(stride=[s], dilation=[d])
            count = gb.op("conv", gb.constant(mask.reshape(1, 1, -1)), ones, **conv)

            def one(v, pads=pads, ones=ones, count=count, conv=conv):
                total = gb.op("conv", _explicit_pad(gb, v, *pads), ones, **conv)
                return total if kind == "sum" else gb.div(total, count)
        x = _along_axis(gb, x, 2 + i, one)
    return x


def _max_pool_with_indices(gb: GraphBuilder, x: Value, kernel: list[int],
                           window: tuple[list, list, list, list], ceil_mode: bool,
                           column_major: bool) -> list:
    """MaxPool's values and Indices (each maximum's position in x flattened, its spatial
    axes column-major with storage_order=1; the first in the window's row-major order where
    several are equal): a running maximum over the window's offsets, each a strided slice
    of x padded with -inf, beside the same slices of the spatial positions (a constant),
    offset by each (n, c)'s start."""
    strides, dilations, before, after = window
    spatial = x.type.shape[2:]
    if not all(d.is_const for d in spatial):
        raise Unsupported("MaxPool's Indices output needs constant spatial sizes")
    sizes = [d.value for d in spatial]
    geometry = [_pool_length(n, k, s, d, b, a, ceil_mode) for n, k, s, d, b, a in
                zip(sizes, kernel, strides, dilations, before, after, strict=True)]
    ends = [a + extra for a, (_, extra) in zip(after, geometry, strict=True)]
    padded = _explicit_pad(gb, x, before, ends, -math.inf)
    flat = np.arange(int(np.prod(sizes)), dtype=np.int64)
    where_in = np.pad(flat.reshape(sizes, order="F" if column_major else "C"),
                      list(zip(before, ends, strict=True)), constant_values=-1)
    positions = gb.constant(where_in.reshape(1, 1, *where_in.shape))
    best = index = None
    whole = ("range", None, None, 1)
    for offset in itertools.product(*(range(k) for k in kernel)):
        items = [whole, whole] + [
            ("range", o * d, o * d + (out - 1) * s + 1, s)
            for o, d, s, (out, _) in zip(offset, dilations, strides, geometry, strict=True)]
        value, at = gb.op("slice", padded, items=items), gb.op("slice", positions, items=items)
        if best is None:
            best, index = value, at
            continue
        larger = gb.op("greater", value, best)  # strictly: the first maximum is kept
        best, index = gb.op("where", larger, value, best), gb.op("where", larger, at, index)
    n, c = x.type.shape[:2]
    planes = gb.reshape(gb.op("arange", n * c), [n, c] + [1] * len(sizes))
    start = gb.mul(planes, gb.constant(np.array(int(np.prod(sizes)), np.int64)))
    return [best, gb.add(index, start)]


@converter("MaxPool")
def _max_pool(gb, node):
    x = need(node, 0, "X")
    require_dtype(x, (*FLOAT_TYPES, "i8", "u8"), "MaxPool input")  # ONNX's types
    if x.type.dtype not in FLOAT_TYPES and (x.type.rank > 4 or len(node.outputs) > 1):
        raise Unsupported("MaxPool of integers over more than 2 axes or with Indices")
    kernel = ints(node, "kernel_shape")
    window = _window(node, x, kernel)
    strides, dilations, before, after = window
    ceil_mode = bool(attr(node, "ceil_mode", 0))
    if len(node.outputs) > 1 and node.outputs[1]:
        column_major = bool(attr(node, "storage_order", 0))
        if column_major and x.type.rank != 4:
            raise Unsupported("MaxPool's Indices in column-major order (storage_order=1) "
                              "but of a 2-D pool")
        return _max_pool_with_indices(gb, x, kernel, window, ceil_mode, column_major)
    if x.type.rank > 4:
        return [_separable_pool(gb, node, x, "max", kernel, window, ceil_mode)]
    _spatial_rank(x, "MaxPool")
    if not _symmetric(before, after, kernel):
        if ceil_mode:
            raise Unsupported("MaxPool with ceil_mode and asymmetric pads")
        lowest = -math.inf if x.type.dtype in FLOAT_TYPES else int(
            np.iinfo(NUMPY_DTYPES[x.type.dtype]).min)
        x, before = _explicit_pad(gb, x, before, after, lowest), [0] * len(before)
    return [gb.op("max_pool", x, kernel_size=kernel, stride=strides, padding=before,
                  dilation=dilations, ceil_mode=ceil_mode)]


@converter("AveragePool")
def _avg_pool(gb, node):
    """Pads kiln's avg_pool cannot take are made explicit: with count_include_pad the window
    averages the zeros; without, the sum over the window is divided by its count of real
    cells (the average of a padded mask of ones)."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "AveragePool input")
    kernel = ints(node, "kernel_shape")
    window = _window(node, x, kernel)
    strides, dilations, before, after = window
    ceil_mode = bool(attr(node, "ceil_mode", 0))
    include = bool(attr(node, "count_include_pad", 0))
    if x.type.rank > 4 or any(d != 1 for d in dilations):
        return [_separable_pool(gb, node, x, "avg", kernel, window, ceil_mode, include)]
    _spatial_rank(x, "AveragePool")
    if _symmetric(before, after, kernel):
        return [gb.op("avg_pool", x, kernel_size=kernel, stride=strides, padding=before,
                      ceil_mode=ceil_mode, count_include_pad=include)]
    if ceil_mode:
        raise Unsupported("AveragePool with ceil_mode and asymmetric pads")
    pool = dict(kernel_size=kernel, stride=strides)
    y = gb.op("avg_pool", _explicit_pad(gb, x, before, after), **pool)
    if include:
        return [y]
    spatial = [d.value for d in x.type.shape[2:]]
    mask = gb.constant(np.ones([1, 1, *spatial], x.type.np_dtype))
    return [gb.div(y, gb.op("avg_pool", _explicit_pad(gb, mask, before, after), **pool))]


@converter("LpPool")
def _lp_pool(gb, node):
    """(sum of |x|^p over each window)^(1/p): the window sums are averages over the
    zero-padded input times the window's size."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "LpPool input")
    kernel = ints(node, "kernel_shape")
    window = _window(node, x, kernel)
    strides, dilations, before, after = window
    ceil_mode = bool(attr(node, "ceil_mode", 0))
    p = float(attr(node, "p", 2))
    dtype = dtype_of(x)
    powered = gb.mul(x, x) if p == 2 else gb.op("pow", gb.op("abs", x), const_like(gb, p, dtype))
    if x.type.rank > 4 or ceil_mode or any(d != 1 for d in dilations):
        total = _separable_pool(gb, node, powered, "sum", kernel, window, ceil_mode)
    else:
        _spatial_rank(x, "LpPool")
        mean = gb.op("avg_pool", _explicit_pad(gb, powered, before, after), kernel_size=kernel,
                     stride=strides)
        total = gb.mul(mean, const_like(gb, float(np.prod(kernel)), dtype))
    if p == 2:
        return [gb.op("sqrt", total)]
    return [gb.op("pow", total, const_like(gb, 1 / p, dtype))]


@converter("LRN")
def _lrn(gb, node):
    """x / (bias + alpha / size * (sum of x^2 over the channels c - (size-1)//2 .. c +
    ceil((size-1)/2)))^beta: the window sum a 1-D conv of ones along the channel axis."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "LRN input")
    if x.type.rank < 3:
        raise Unsupported(f"LRN of a {x.type.rank}-D input (ONNX's are [N, C, ...])")
    size = int(attr(node, "size"))
    alpha, beta = float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75))
    bias = float(attr(node, "bias", 1.0))
    dtype = dtype_of(x)
    ones = gb.constant(np.ones([1, 1, size], NUMPY_DTYPES[dtype]))
    low = (size - 1) // 2
    total = _along_axis(gb, gb.mul(x, x), 1, lambda v: gb.op(
        "conv", _explicit_pad(gb, v, [low], [size - 1 - low]), ones))
    scaled = gb.add(const_like(gb, bias, dtype), gb.mul(total, const_like(gb, alpha / size,
                                                                           dtype)))
    return [gb.div(x, gb.op("pow", scaled, const_like(gb, beta, dtype)))]


@converter("GlobalAveragePool")
def _global_avg_pool(gb, node):
    return [gb.op("global_avg_pool", need(node, 0, "X"))]


@converter("GlobalMaxPool")
def _global_max_pool(gb, node):
    x = need(node, 0, "X")
    return [gb.op("max", x, axis=list(range(2, x.type.rank)), keepdims=True)]


# normalizations ---------------------------------------------------------------------------
def _like(gb: GraphBuilder, value: Value | None, dtype: str) -> Value | None:
    """`value` in element type `dtype` (ONNX lets scales and statistics differ from X's)."""
    if value is None or dtype_of(value) == dtype:
        return value
    return gb.cast(value, dtype)


@converter("BatchNormalization")
def _batch_norm(gb, node):
    x = need(node, 0, "X")
    dtype = dtype_of(x)
    scale, bias, mean, var = (_like(gb, need(node, i, name), dtype) for i, name in
                              ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")))
    eps = float(attr(node, "epsilon", 1e-5))
    if attr(node, "training_mode", 0):
        return _batch_norm_training(gb, node, x, scale, bias, mean, var, eps)
    attr(node, "momentum")  # it updates the running statistics: a training mode's only
    if any(name for name in node.outputs[1:]):
        raise Unsupported("BatchNormalization's running statistics outputs")
    return [gb.op("batch_norm", x, mean, var, scale, bias, eps=eps)]


def _batch_norm_training(gb: GraphBuilder, node: OnnxNode, x: Value, scale: Value,
                         bias: Value, mean: Value, var: Value, eps: float) -> list:
    """training_mode = 1: normalized by the batch's own mean and (biased) variance over every
    axis but the channels; the running statistics outputs are input * momentum + the
    batch's * (1 - momentum)."""
    require_dtype(x, FLOAT_TYPES, "BatchNormalization input")
    if x.type.rank < 2:
        raise Unsupported(f"BatchNormalization of a {x.type.rank}-D input")
    axes = [a for a in range(x.type.rank) if a != 1]
    dtype = dtype_of(x)
    batch_mean, batch_var = _moments(gb, x, axes)
    inv = gb.op("rsqrt", gb.add(batch_var, const_like(gb, eps, dtype)))
    per_channel = [x.type.shape[1]] + [1] * (x.type.rank - 2)
    y = gb.add(gb.mul(gb.mul(gb.sub(x, batch_mean), inv), gb.reshape(scale, per_channel)),
               gb.reshape(bias, per_channel))
    momentum = float(attr(node, "momentum", 0.9))
    keep, new = const_like(gb, momentum, dtype), const_like(gb, 1 - momentum, dtype)
    channels = [x.type.shape[1]]
    running = [gb.add(gb.mul(old, keep), gb.mul(gb.reshape(batch, channels), new))
               for old, batch in ((mean, batch_mean), (var, batch_var))]
    return [y, *running][:len(node.outputs)]


@converter("InstanceNormalization")
def _instance_norm(gb, node):
    x = need(node, 0, "input")
    return [gb.op("instance_norm", x, _like(gb, need(node, 1, "scale"), dtype_of(x)),
                  _like(gb, need(node, 2, "B"), dtype_of(x)),
                  eps=float(attr(node, "epsilon", 1e-5)))]


def _moments(gb: GraphBuilder, x: Value, axes: list[int]) -> tuple[Value, Value]:
    """(mean, biased variance) over `axes`, kept as size 1."""
    mean = gb.op("mean", x, axis=axes, keepdims=True)
    centered = gb.sub(x, mean)
    return mean, gb.op("mean", gb.mul(centered, centered), axis=axes, keepdims=True)


def _stats(gb: GraphBuilder, x: Value, axes: list[int], eps: float) -> tuple[Value, Value]:
    """(mean, 1 / sqrt(variance + eps)) over `axes`, kept as size 1 (biased variance)."""
    mean, var = _moments(gb, x, axes)
    return mean, gb.op("rsqrt", gb.add(var, const_like(gb, eps, dtype_of(x))))


@converter("LayerNormalization")
def _layer_norm(gb, node):
    """Normalize over axes axis..; Mean and InvStdDev outputs when asked for. Half floats are
    computed in f32 (stash_type 1, the default) by kiln's layer_norm itself."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "LayerNormalization input")
    axis = axis_of(int(attr(node, "axis", -1)), x.type.rank)
    normalized = list(x.type.shape[axis:])
    scale, bias = need(node, 1, "Scale"), arg(node, 2)
    scale = _to_shape(gb, _like(gb, scale, dtype_of(x)), normalized)
    bias = None if bias is None else _to_shape(gb, _like(gb, bias, dtype_of(x)), normalized)
    eps = float(attr(node, "epsilon", 1e-5))
    wants_stats = any(name for name in node.outputs[1:])
    if not wants_stats:
        return [gb.op("layer_norm", x, normalized_shape=normalized, weight=scale, bias=bias,
                      eps=eps)]
    if dtype_of(x) != "f32":
        raise Unsupported("LayerNormalization's Mean/InvStdDev outputs of a half-float input")
    mean, inv = _stats(gb, x, list(range(axis, x.type.rank)), eps)
    y = gb.mul(gb.mul(gb.sub(x, mean), inv), scale)
    if bias is not None:
        y = gb.add(y, bias)
    return [y, mean, inv][:len(node.outputs)]


def _to_shape(gb: GraphBuilder, value: Value, shape: list) -> Value:
    """`value` broadcast to `shape` (a no-op when it has it)."""
    if list(value.type.shape) == [Dim.of(d) for d in shape]:
        return value
    if value.type.rank > len(shape):
        value = gb.reshape(value, list(value.type.shape[value.type.rank - len(shape):]))
    return gb.op("broadcast_to", value, shape=shape)


@converter("GroupNormalization")
def _group_norm(gb, node):
    """Opset 21: scale and bias per channel, as kiln's group_norm; opset 18: per group, so
    each is repeated over its group's channels."""
    x = need(node, 0, "X")
    groups = int(attr(node, "num_groups"))
    scale = _like(gb, need(node, 1, "scale"), dtype_of(x))
    bias = _like(gb, need(node, 2, "bias"), dtype_of(x))
    channels = x.type.shape[1]
    if node.opset < 21 and groups != channels:
        if not channels.is_const or channels.value % groups:
            raise Unsupported("GroupNormalization-18 needs constant channels divisible by groups")
        per = channels.value // groups
        index = gb.constant(np.repeat(np.arange(groups, dtype=np.int64), per))
        scale, bias = (gb.op("gather", v, index, axis=0) for v in (scale, bias))
    return [gb.op("group_norm", x, num_groups=groups, weight=scale, bias=bias,
                  eps=float(attr(node, "epsilon", 1e-5)))]


@converter("LpNormalization")
def _lp_norm(gb, node):
    """x / ||x||_p along axis (p 1 or 2); a zero norm gives 0."""
    x = need(node, 0, "input")
    require_dtype(x, FLOAT_TYPES, "LpNormalization input")
    axis = axis_of(int(attr(node, "axis", -1)), x.type.rank)
    p = int(attr(node, "p", 2))
    if p not in (1, 2):
        raise Unsupported(f"LpNormalization with p={p}")
    if p == 1:
        norm = gb.op("sum", gb.op("abs", x), axis=axis, keepdims=True)
    else:
        norm = gb.op("sqrt", gb.op("sum", gb.mul(x, x), axis=axis, keepdims=True))
    zero = const_like(gb, 0.0, dtype_of(x))
    return [gb.op("where", gb.op("equal", norm, zero), zero, gb.div(x, norm))]


@converter("RMSNormalization")
def _rms_norm(gb, node):
    """x / sqrt(mean(x^2 over axes axis..) + epsilon) * scale, in f32 for half floats."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "RMSNormalization input")
    if int(attr(node, "stash_type", 1)) != 1:
        raise Unsupported("RMSNormalization with stash_type other than 1 (f32)")
    dtype = dtype_of(x)
    wide = x if dtype == "f32" else gb.cast(x, "f32")
    axis = axis_of(int(attr(node, "axis", -1)), x.type.rank)
    square = gb.op("mean", gb.mul(wide, wide), axis=list(range(axis, x.type.rank)), keepdims=True)
    eps = const_like(gb, float(attr(node, "epsilon", 1e-5)), "f32")
    y = gb.mul(wide, gb.op("rsqrt", gb.add(square, eps)))
    y = y if dtype == "f32" else gb.cast(y, dtype)
    return [gb.mul(y, _like(gb, need(node, 1, "scale"), dtype))]


# products ---------------------------------------------------------------------------------
@converter("MatMul")
def _matmul(gb, node):
    return [gb.matmul(need(node, 0, "A"), need(node, 1, "B"))]


@converter("Gemm")
def _gemm(gb, node):
    """alpha * A' @ B' + beta * C, A' and B' transposed as transA/transB say."""
    a, b, c = need(node, 0, "A"), need(node, 1, "B"), arg(node, 2)
    if attr(node, "transA", 0):
        a = gb.permute(a, [1, 0])
    if attr(node, "transB", 0):
        b = gb.permute(b, [1, 0])
    y = gb.matmul(a, b)
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    if alpha != 1.0:
        y = gb.mul(y, const_like(gb, alpha, dtype_of(y)))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = gb.mul(c, const_like(gb, beta, dtype_of(c)))
        y = gb.add(y, c)
    return [y]


# softmax and reductions -------------------------------------------------------------------
@converter("Softmax", "LogSoftmax")
def _softmax(gb, node):
    x = need(node, 0, "input")
    axis = axis_of(int(attr(node, "axis", -1)), x.type.rank)
    return [gb.op("softmax" if node.op_type == "Softmax" else "log_softmax", x, axis=axis)]


@converter("Hardmax")
def _hardmax(gb, node):
    """1 at the first maximum along axis, else 0."""
    x = need(node, 0, "input")
    axis = axis_of(int(attr(node, "axis", -1)), x.type.rank)
    size = x.type.shape[axis]
    if not size.is_const:
        raise Unsupported("Hardmax along a symbolic axis")
    first = gb.op("argmax", x, axis=axis, keepdims=True)
    positions = np.arange(size.value, dtype=np.int64).reshape([-1] + [1] * (x.type.rank - 1 - axis))
    hot = gb.op("equal", first, gb.constant(positions))
    return [gb.cast(hot, dtype_of(x))]


def _reduce_axes(gb, node: OnnxNode, rank: int) -> list[int] | None:
    """The reduced axes (None: all, or nothing to reduce with noop_with_empty_axes)."""
    from_input = node.opset >= 18 or (node.op_type == "ReduceSum" and node.opset >= 13)
    axes = const_ints(gb, node, 1, "axes") if from_input else ints(node, "axes")
    if not axes:
        return None
    return sorted({axis_of(a, rank) for a in axes})


def _reduce(kind: str):
    """A Reduce* op: its kiln reduction, with the elementwise steps around it."""

    def convert(gb, node):
        x = need(node, 0, "data")
        keep = bool(attr(node, "keepdims", 1))
        axes = _reduce_axes(gb, node, x.type.rank)
        noop = attr(node, "noop_with_empty_axes", 0)  # (it matters only without axes)
        if axes is None and noop:
            return [x]
        over = list(range(x.type.rank)) if axes is None else axes
        if any(x.type.shape[a] == 0 for a in over) and kind in ("max", "min", "logsumexp"):
            return [_empty_reduction(gb, x, over, keep, kind)]
        if kind in ("l2", "log_sum"):
            require_dtype(x, FLOAT_TYPES, f"{node.op_type} input")
        source = {"l1": lambda: gb.op("abs", x), "l2": lambda: gb.mul(x, x),
                  "sum_square": lambda: gb.mul(x, x)}.get(kind, lambda: x)()
        op = {"l1": "sum", "l2": "sum", "sum_square": "sum", "log_sum": "sum"}.get(kind, kind)
        y = gb.op(op, source, axis=over, keepdims=keep)
        if kind == "l2":
            y = gb.op("sqrt", y)
        elif kind == "log_sum":
            y = gb.op("log", y)
        return [y]

    return convert


def _empty_reduction(gb, x: Value, axes: list[int], keep: bool, kind: str) -> Value:
    """A max, min or log-sum-exp over no elements: the identity of the reduction, the
    lowest value of the element type (max, logsumexp: -inf, false, the integer minimum) or
    the highest (min)."""
    dtype = dtype_of(x)
    if kind == "logsumexp":
        require_dtype(x, FLOAT_TYPES, "an empty ReduceLogSumExp's input")
    shape = [1 if i in axes else d for i, d in enumerate(x.type.shape) if keep or i not in axes]
    if dtype == "bool":
        fill: object = kind == "min"
    elif dtype in FLOAT_TYPES:
        fill = math.inf if kind == "min" else -math.inf
    else:
        info = np.iinfo(NUMPY_DTYPES[dtype])
        fill = int(info.max if kind == "min" else info.min)
    return gb.op("full", shape=shape, value=fill, dtype=dtype)


for _op_type, _kind in {
    "ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
    "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sum_square",
    "ReduceLogSum": "log_sum", "ReduceLogSumExp": "logsumexp",
}.items():
    CONVERTERS[_op_type] = _reduce(_kind)


@converter("ArgMax", "ArgMin")
def _arg_extreme(gb, node):
    """kiln's argmax/argmin take the first extreme; select_last_index takes it in the
    reversed axis and counts back."""
    x = need(node, 0, "data")
    axis = axis_of(int(attr(node, "axis", 0)), x.type.rank)
    keep = bool(attr(node, "keepdims", 1))
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    if not attr(node, "select_last_index", 0):
        return [gb.op(op, x, axis=axis, keepdims=keep)]
    size = x.type.shape[axis]
    if not size.is_const:
        raise Unsupported("select_last_index along a symbolic axis")
    index = gb.op(op, gb.op("flip", x, axis=axis), axis=axis, keepdims=keep)
    return [gb.sub(gb.constant(np.array(size.value - 1, np.int64)), index)]


# resize -----------------------------------------------------------------------------------
def _first(gb: GraphBuilder, v: Value, k: Dim) -> Value:
    """v[:k] (v one-dimensional): a slice where v's size is symbolic, which every target
    refuses at run time (K0505) when k is past it, as onnxruntime refuses a TopK whose K is
    past its axis; else v itself (k is its size)."""
    return v if v.type.shape[0] == k else gb.op("slice", v, items=[("range", 0, k, 1)])


@converter("Resize")
def _resize(gb, node):
    """Resize on constant scales or sizes (and roi): kiln's resize where it computes the same
    (nearest with asymmetric coordinates and floor rounding; linear with half_pixel,
    align_corners to sizes or by whole scales, or pytorch_half_pixel where no axis becomes 1,
    on [N, C, ...] spatial axes); any other mode axis by axis, as the weights ONNX's own
    reference gives (below)."""
    x = need(node, 0, "X")
    mode = choose(node, "mode", "nearest", ("nearest", "linear", "cubic"))
    for other, name, default in (("nearest", "nearest_mode", "round_prefer_floor"),
                                 ("cubic", "cubic_coeff_a", -0.75)):
        if mode != other:  # another mode's attribute (PyTorch's bilinear interpolate writes
            attr(node, name, default)  # nearest_mode="floor"): it concerns nothing here
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
    policy = choose(node, "keep_aspect_ratio_policy", "stretch",
                    ("stretch", "not_larger", "not_smaller"))
    rank = x.type.rank
    axes = [axis_of(a, rank) for a in (ints(node, "axes") or list(range(rank)))]
    scales, sizes = (known(gb, node, i) if arg(node, i) is not None else None for i in (2, 3))
    same: set[int] = set()  # axes whose wanted size is the input's own symbolic size
    if arg(node, 3) is not None and sizes is None:
        sizes, same = _sizes_from_shapes(gb, node, x, axes)
    if any(arg(node, i) is not None and v is None for i, v in ((2, scales), (3, sizes))):
        raise Unsupported("Resize's scales and sizes must be constants")
    if scales is not None and scales.size == 0:
        scales = None
    if sizes is not None and sizes.size == 0:
        sizes = None
    if (scales is None) == (sizes is None):
        raise Unsupported("Resize needs one of scales and sizes")
    given = (scales if scales is not None else sizes).reshape(-1).tolist()
    if len(given) != len(axes):
        raise Unsupported(f"Resize: {len(given)} scales or sizes for {len(axes)} axes")
    per_axis = dict(zip(axes, given, strict=True))
    run_time = same or any(isinstance(v, Dim) for v in per_axis.values())
    if run_time and (ctm == "tf_crop_and_resize" or policy != "stretch"):
        raise Unsupported(f"Resize with {ctm} and {policy} to sizes known only at run time")
    for axis in same:  # resized to its own size: the identity, in every other mode
        del per_axis[axis]
    if scales is not None and ctm not in ("tf_crop_and_resize", "tf_half_pixel_for_nn"):
        for axis in [a for a, v in per_axis.items() if v == 1.0 and not x.type.shape[a].is_const]:
            del per_axis[axis]  # a scale of 1 (a dynamic batch's): the identity here too
    if not per_axis:
        return [x]
    roi = _resize_roi(gb, node, axes) if ctm == "tf_crop_and_resize" else {}
    partner = None
    if policy != "stretch" and sizes is not None:
        if roi:
            raise Unsupported("Resize with keep_aspect_ratio_policy and tf_crop_and_resize")
        partner = _aspect_axis(x, per_axis, policy)
    kiln = None if roi or partner else _kiln_resize(node, x, mode, ctm, per_axis,
                                                    scales is not None)
    if kiln is not None:
        return [gb.op("resize", x, **kiln)]
    symbolic = [(a, v) for a, v in per_axis.items() if isinstance(v, Dim)]
    if symbolic:  # the weights per axis below need the sizes as numbers
        axis, size = symbolic[0]
        raise Unsupported(f"Resize of axis {axis} to the size {size}, known only at run time, "
                          f"with mode {mode} and {ctm}: kiln resizes to such a size in mode "
                          "nearest with asymmetric and floor, or linear with half_pixel or "
                          "align_corners (on the spatial axes of [N, C, ...])")
    steps = [(axis, _axis_response(node, x, axis, value, scales is not None,
                                   roi.get(axis), partner)) for axis, value in per_axis.items()]
    for axis, response in steps:
        x = _resize_axis(gb, x, axis, *response)
    return [x]


def _sizes_from_shapes(gb: GraphBuilder, node: OnnxNode, x: Value, axes: list[int]
                       ) -> tuple[np.ndarray | None, set[int]]:
    """Resize's sizes computed from the inputs' shapes (PyTorch's `interpolate(x,
    size=(h, w))` of a dynamic batch: `Concat(Shape(x)[:2], [h, w])`), as numbers (a
    symbolic size of another input as its Dim), and the axes whose wanted size is the
    input's own symbolic one (their number a placeholder); (None, {}) when they are not
    sizes kiln knows at import time."""
    wanted = sizes_of(gb.graph, node.inputs[3])
    if wanted is None or len(wanted) != len(axes):
        return None, set()
    numbers: list = []
    same = set()
    for axis, size in zip(axes, wanted, strict=True):
        if size.is_const:
            numbers.append(size.value)
        elif size == x.type.shape[axis]:
            numbers.append(0)
            same.add(axis)
        else:  # another input's size (U-Net's `interpolate(x, size=skip.shape[2:])`)
            numbers.append(size)
    if all(isinstance(v, int) for v in numbers):
        return np.array(numbers, np.int64), same
    return np.array(numbers, object), same


def _resize_roi(gb: GraphBuilder, node: OnnxNode, axes: list[int]) -> dict[int, list[float]]:
    """tf_crop_and_resize's region per resized axis: [start, end] (input 1, a constant)."""
    roi = known(gb, node, 1) if arg(node, 1) is not None else None
    if roi is None or roi.size != 2 * len(axes):
        raise Unsupported("Resize with tf_crop_and_resize needs a constant roi of "
                          f"{2 * len(axes)} values")
    flat = [float(v) for v in roi.reshape(-1)]
    return {a: [flat[i], flat[len(axes) + i]] for i, a in enumerate(axes)}


def _aspect_axis(x: Value, per_axis: dict, policy: str) -> tuple[int, int]:
    """keep_aspect_ratio_policy's one scale for every axis: the (input size, wanted size) of
    the axis whose ratio is the smallest (not_larger) or the largest (not_smaller)."""
    shape = x.type.shape
    if any(not shape[a].is_const for a in per_axis):
        raise Unsupported("Resize with keep_aspect_ratio_policy along a symbolic axis")
    ratios = {a: int(v) / shape[a].value for a, v in per_axis.items()}
    pick = (min if policy == "not_larger" else max)(ratios, key=ratios.get)
    return shape[pick].value, int(per_axis[pick])


def _kiln_resize(node: OnnxNode, x: Value, mode: str, ctm: str, per_axis: dict,
                 by_scale: bool) -> dict | None:
    """kiln resize's attributes for the same result, or None where it computes another."""
    shape = x.type.shape
    if attr(node, "antialias", 0) or x.type.rank < 3 or x.type.dtype not in FLOAT_TYPES:
        return None
    if any(a in per_axis and per_axis[a] != (1.0 if by_scale else shape[a]) for a in (0, 1)):
        return None  # kiln resizes the spatial axes of [N, C, ...] only
    if mode == "nearest":
        if ctm != "asymmetric" or attr(node, "nearest_mode", "round_prefer_floor") != "floor":
            return None
        out: dict = {"mode": "nearest"}
    elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        out = {"mode": "bilinear", "align_corners": ctm == "align_corners"}
    else:
        return None
    spatial = range(2, x.type.rank)
    if by_scale:
        out["scale_factor"] = [float(per_axis.get(a, 1.0)) for a in spatial]
        sizes = [Dim.of(math.floor(shape[a].value * f)) if shape[a].is_const else None
                 for a, f in zip(spatial, out["scale_factor"], strict=True)]
    else:
        sizes = out["size"] = [(per_axis[a] if isinstance(per_axis[a], Dim)
                                else Dim.of(int(per_axis[a]))) if a in per_axis else shape[a]
                               for a in spatial]
    if ctm == "pytorch_half_pixel" and any(
            d is None or not d.is_const or d.value <= 1 for d in sizes):
        return None  # it special-cases an output size of 1, kiln's bilinear does not
    if ctm == "align_corners" and any(
            d is None and not float(f).is_integer() or d is not None and d.is_const
            and d.value <= 1 for d, f in zip(sizes, out.get("scale_factor", sizes), strict=True)):
        # (size - 1) / (out - 1), 0 for an output of 1, as kiln's, but ONNX's out is
        # scale * size unrounded: the same where a scale is whole, or sizes are given
        return None
    return out


def _resize_axis(gb: GraphBuilder, x: Value, axis: int, weights: np.ndarray,
                 bias: np.ndarray) -> Value:
    """x resized along one axis. ONNX's Resize is separable, and along one axis affine in the
    input (linear but for tf_crop_and_resize's extrapolation_value outside the region): the
    weights are what ONNX's reference Resize makes of the unit impulses (the identity
    matrix) less what it makes of zeros (the bias), so every mode and coordinate rule is the
    standard's. Nearest modes take the one source each output reads (a gather, exact); the
    others are a product with the weight matrix (0 * inf in an input is NaN there, as it is
    not in ONNX)."""
    size = weights.shape[0]
    if not bias.any() and weights.shape[1] == size and np.array_equal(weights, np.eye(size)):
        return x
    one_hot = np.isin(weights, (0.0, 1.0)).all() and (weights.sum(axis=0) == 1).all()
    if one_hot and not bias.any():
        index = np.argmax(weights, axis=0).astype(np.int64)
        return gb.op("gather", x, gb.constant(index), axis=axis)
    require_dtype(x, FLOAT_TYPES, "an interpolating Resize's input")

    def apply(v: Value) -> Value:
        y = gb.matmul(v, gb.constant(weights.astype(x.type.np_dtype)))
        return gb.add(y, gb.constant(bias.astype(x.type.np_dtype))) if bias.any() else y

    return _along(gb, x, axis, apply)


def _axis_response(node: OnnxNode, x: Value, axis: int, value: float, by_scale: bool,
                   roi: list[float] | None, partner: tuple[int, int] | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """([in, out] weights, [out] bias): ONNX's reference Resize of the identity along one
    axis. With `roi`, that axis's region; with `partner` (keep_aspect_ratio_policy: the
    deciding axis's input and wanted size), the impulses are resized together with a second
    axis of ones of the partner's sizes, so that the reference takes the policy's one scale,
    and the first of that axis's outputs is read (an interpolation's weights sum to 1)."""
    size = x.type.shape[axis]
    if not size.is_const:
        raise Unsupported("Resize along an axis of symbolic size")
    size = size.value
    keep = {k: v for k, v in node.attrs.items() if k not in ("axes", "keep_aspect_ratio_policy")}
    if by_scale:
        extra = {"scales": np.array([1.0, value], np.float32)}
        slots = ["roi", "scales", ""]
    elif partner is None:
        # (the leading axis stacks the impulses and the zeros: affine_response)
        extra = {"sizes": np.array([size + 1, int(value)], np.int64)}
        slots = ["roi", "", "sizes"]
    else:
        keep["keep_aspect_ratio_policy"] = node.attrs["keep_aspect_ratio_policy"]
        keep["axes"] = [1, 2]
        extra = {"sizes": np.array([int(value), partner[1]], np.int64)}
        slots = ["", "", "sizes"]
    if roi is not None:
        extra["roi"] = np.array([0.0, roi[0], 1.0, roi[1]], np.float32)
    else:
        slots[0] = ""
    if partner is None:
        return affine_response(node, "Resize", keep, (size,), slots, extra)
    weights, bias = affine_response(node, "Resize", keep, (size,), slots, extra,
                                    trailing=partner[0])
    out = weights.shape[1] // max(partner[1], 1)  # the partner axis keeps its wanted size
    return weights.reshape(size, out, -1)[:, :, 0], bias.reshape(out, -1)[:, 0]


def linear_response(node: OnnxNode, op_type: str, attrs: dict, unit: tuple[int, ...],
                    slots: list[str], extra: dict[str, np.ndarray]) -> np.ndarray:
    """[m, k]: what ONNX's reference `op_type` makes of each of the m unit impulses of shape
    `unit` (stacked on a leading axis the op leaves alone), flattened: the matrix of an op
    that is linear in its first input. `slots` name the op's other inputs (constants in
    `extra`, '' for absent ones)."""
    return affine_response(node, op_type, attrs, unit, slots, extra)[0]


def affine_response(node: OnnxNode, op_type: str, attrs: dict, unit: tuple[int, ...],
                    slots: list[str], extra: dict[str, np.ndarray], trailing: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """linear_response of an op affine in its first input: ([m, k] weights, [k] bias), the
    bias what the op makes of zeros, the weights what it makes of each impulse less the
    bias. With `trailing`, each impulse has a last axis of that many ones."""
    from onnx.reference import ReferenceEvaluator  # loaded only when a converter needs it

    m = int(np.prod(unit))
    trail = (trailing,) if trailing else ()
    op = helper.make_node(op_type, ["X", *slots], ["Y"], **attrs)
    graph = helper.make_graph(
        [op], "impulse",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m + 1, *unit, *trail])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in extra.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])
    impulses = np.concatenate([np.eye(m, dtype=np.float32), np.zeros((1, m), np.float32)])
    impulses = impulses.reshape(m + 1, *unit, *([1] * len(trail))) * np.ones(trail, np.float32)
    try:
        (out,) = ReferenceEvaluator(model).run(None, {"X": impulses})
    except Exception as exc:  # the reference refuses what the standard does not define
        raise Unsupported(f"{op_type} with these attributes: {exc}") from None
    out = np.asarray(out, np.float64).reshape(m + 1, -1)
    return out[:m] - out[m], out[m]


@converter("TopK")
def _top_k(gb, node):
    """The k largest (or smallest) elements along axis, sorted, ties to the lower index.
    Each element's place in that order is counted: the elements that come before it (larger,
    or equal at a lower index); the element at place r is the one whose count is r. Exact
    for every value but NaN, whose order ONNX leaves open."""
    x = need(node, 0, "X")
    attr(node, "sorted")  # sorted=0 leaves the order open: sorted is one of its answers
    # K may be computed from a shape: PyTorch's sort and argsort are a TopK of the axis's
    # size, a symbolic one in pack_padded_sequence's sort of a dynamic batch's lengths
    (k,) = required_sizes(gb, node, 1, "K")
    rank = x.type.rank
    axis = axis_of(int(attr(node, "axis", -1)), rank)
    size = x.type.shape[axis]
    if k != size and (not k.is_const or k.value < 0 or size.is_const and k.value > size.value):
        raise Unsupported("TopK with K known only at run time (other than its axis's size), "
                          "or past its axis's size")
    # (along a symbolic axis, onnxruntime fails a call where a constant K is past its size)
    last = rank - 1
    perm = list(range(rank))
    perm[axis], perm[last] = last, axis
    moved = x if axis == last else gb.permute(x, perm)
    this = gb.op("unsqueeze", moved, axis=-1)  # [..., i, 1]
    other = gb.op("unsqueeze", moved, axis=-2)  # [..., 1, j]
    ahead = gb.op("greater" if attr(node, "largest", 1) else "less", other, this)
    lower = index_relation(gb, size, "greater")  # [i, j]: j < i
    tied = gb.op("logical_and", gb.op("equal", other, this), lower)
    place = gb.op("sum", gb.cast(gb.op("logical_or", ahead, tied), "i64"), axis=-1)  # [..., n]
    at = gb.op("equal", gb.op("unsqueeze", place, axis=-1),
               _first(gb, gb.op("arange", 0, end=size), k))  # [..., n, k]
    positions = gb.reshape(gb.op("arange", 0, end=size), [size, 1])
    index = gb.op("sum", gb.op("where", at, positions, gb.constant(np.array(0, np.int64))),
                  axis=-2)  # [..., k]
    values = gb.op("take_along_axis", moved, index, axis=-1)
    if axis != last:
        values, index = gb.permute(values, perm), gb.permute(index, perm)
    return [values, index]


# linear algebra ---------------------------------------------------------------------------
MAX_DET_SIZE = 5  # Leibniz's formula: n! products of n entries (120 for 5)


@converter("Det")
def _det(gb, node):
    """det of [..., n, n] by Leibniz's formula, sum over permutations p of sign(p) *
    prod_i x[i, p(i)]: one gather of every permutation's entries, a product and a signed sum
    (no pivoting: fine for the small n it takes, at most 5)."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES, "Det input")
    if x.type.rank < 2 or not x.type.shape[-1].is_const or x.type.shape[-1] != x.type.shape[-2]:
        raise Unsupported(f"Det of {x.type} (square matrices of constant size only)")
    n = x.type.shape[-1].value
    if n > MAX_DET_SIZE:
        raise Unsupported(f"Det of {n}x{n} matrices (kiln's Leibniz formula: at most "
                          f"{MAX_DET_SIZE}x{MAX_DET_SIZE})")
    perms = list(itertools.permutations(range(n)))
    index = np.array(perms, np.int64).T.reshape([1] * (x.type.rank - 2) + [n, len(perms)])
    signs = np.array([_sign(p) for p in perms], x.type.np_dtype)
    entries = gb.op("take_along_axis", x, gb.constant(index), axis=x.type.rank - 1)
    terms = gb.op("prod", entries, axis=[x.type.rank - 2], keepdims=False)
    return [gb.op("sum", gb.mul(terms, gb.constant(signs)), axis=[x.type.rank - 2],
                  keepdims=False)]


def _sign(perm: tuple[int, ...]) -> int:
    """+1 for an even permutation, -1 for an odd one (by its inversions)."""
    inversions = sum(a > b for i, a in enumerate(perm) for b in perm[i + 1:])
    return -1 if inversions % 2 else 1
