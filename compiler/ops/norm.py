"""Normalization ops with PyTorch semantics in NC(L)/NCHW layout (layer_norm, batch_norm,
group_norm, instance_norm).

batch_norm in training mode (`training = true`) normalizes with the batch's statistics (mean
and biased variance of each channel over the batch and spatial axes); a call whose running
statistics are buffers of the model also updates them, as torch.nn.BatchNorm does:
running = (1 - momentum) * running + momentum * batch statistic, the variance unbiased
(times n / (n - 1)), and the block's `num_batches_tracked` counts the call. The updates are
the model's extra results (compiler/elaborate/training.py).
"""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..types import NUMPY_DTYPES, TensorType, shape_str
from ._common import (
    FLOATS,
    attr_error,
    attrs,
    channel_shape,
    check_affine,
    check_channels_first,
    check_dtype,
    check_same_dtype,
    divides,
    flag,
    nn_native,
    number,
    optional,
    prod,
    tensors,
    to_dims,
    to_int,
    upcast,
)
from ._emit import chain, full_of, one, trimmed, widened
from ._grad import like_scalar, size_value, unbroadcast
from .registry import OpError, OpRecord, internal, register


# normalization ----------------------------------------------------------------------------
def _normalize(x: np.ndarray, axes, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over `axes`, with the biased variance as PyTorch."""
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def _affine(y: np.ndarray, weight, bias, shape) -> np.ndarray:
    """y * weight + bias, each reshaped to `shape` for broadcasting (absent ones skipped)."""
    if weight is not None:
        y = y * upcast(weight).reshape(shape)
    if bias is not None:
        y = y + upcast(bias).reshape(shape)
    return y


def _norm_vjp(view):
    """The rule of a norm op whose statistics run over `axes` of x viewed in `shape`, with
    view(x_type, attrs) -> (shape, axes, the shape weight and bias broadcast as against x).

    PyTorch's fused form: with xhat the normalized x, g = dy * weight and rstd = 1/sqrt(var +
    eps), dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), the two means over the same axes
    in one pass; dweight = sum(dy * xhat), dbias = sum(dy) over the axes they broadcast along.
    The statistics are recomputed from x (a mean and a variance per group), not saved."""

    def vjp(gb, node, cts):
        (ct,), (x, weight, bias) = cts, node.inputs
        t = x.type
        shape, axes, affine = view(t, node.attrs)

        def viewed(v):
            return v if tuple(shape) == t.shape else gb.reshape(v, list(shape))

        def unviewed(v):
            return v if tuple(shape) == t.shape else gb.reshape(v, list(t.shape))

        def mean(v):
            return gb.op("mean", v, axis=list(axes), keepdims=True)

        xv = viewed(x)
        centered = gb.sub(xv, mean(xv))
        var = mean(gb.mul(centered, centered))
        rstd = gb.op("rsqrt", gb.add(var, like_scalar(gb, _eps(node), x)))
        xhat = gb.mul(centered, rstd)
        g = ct if weight is None else gb.mul(ct, gb.reshape(weight, list(affine)))
        gv = viewed(g)
        inner = gb.sub(gb.sub(gv, mean(gv)), gb.mul(xhat, mean(gb.mul(gv, xhat))))
        dx = unviewed(gb.mul(rstd, inner))

        def param_grad(param, v):
            if param is None:
                return None
            summed = unbroadcast(gb, v, TensorType(t.dtype, tuple(affine)))
            return gb.reshape(summed, list(param.type.shape))

        return [dx, param_grad(weight, gb.mul(ct, unviewed(xhat))), param_grad(bias, ct)]

    return vjp


def norm_record(name: str, doc: str, leading: tuple, param_shape, normalize,
                onnx, llvm, view) -> OpRecord:
    """A norm op (x, *leading attrs, weight?, bias?, eps): normalize, then scale and shift.

    param_shape(x, attrs) -> (the shape weight and bias must have, what that shape means);
    normalize(x, attrs) -> (normalized x, the shape weight and bias broadcast as); onnx is the
    emitter, run in f32 for half floats as the reference; llvm the native lowering; view the
    statistics' view of x for the gradient rule (_norm_vjp).
    """

    def infer(types, a):
        x, weight, bias = types
        check_dtype(x, FLOATS, "x")
        shape, what = param_shape(x, a)
        check_affine(x, [weight, bias], ["weight", "bias"], shape, what)
        return [x]

    def reference(env, inputs, a):
        x, weight, bias = inputs
        y, shape = normalize(upcast(x), a)
        return [_affine(y, weight, bias, shape).astype(x.dtype)]

    args = tensors("x") + attrs(*leading) + optional("weight", "bias") + attrs(("eps", 1e-5))
    return OpRecord(name, args, infer, reference, doc, onnx=widened(onnx), llvm=llvm,
                    vjp=_norm_vjp(view))


def _layer_params(x: TensorType, a):
    ns = to_dims(a["normalized_shape"], "normalized_shape")
    if len(ns) > x.rank or x.shape[x.rank - len(ns):] != ns:
        raise OpError(f"normalized_shape {shape_str(ns)} does not match the last axes of "
                      f"{shape_str(x.shape)}", arg="normalized_shape")
    return ns, "normalized_shape"


def _layer_normalize(x: np.ndarray, a):
    k = len(to_dims(a["normalized_shape"], "normalized_shape"))
    return _normalize(x, tuple(range(x.ndim - k, x.ndim)), a["eps"]), x.shape[x.ndim - k:]


def _group_params(x: TensorType, a):
    check_channels_first(x, 2)
    groups = to_int(a["num_groups"], "num_groups")
    if groups < 1:
        raise attr_error("num_groups", f"num_groups must be positive, got {groups}")
    if not divides(x.shape[1], groups):
        raise OpError(f"{x.shape[1]} channels of {shape_str(x.shape)} do not split into "
                      f"{groups} groups", arg="num_groups")
    return (x.shape[1],), "one value per channel"


def _group_normalize(x: np.ndarray, a):
    grouped = x.reshape(x.shape[0], to_int(a["num_groups"], "num_groups"), -1)
    return _normalize(grouped, 2, a["eps"]).reshape(x.shape), channel_shape(x)


def _instance_params(x: TensorType, a):
    check_channels_first(x, 3)
    return (x.shape[1],), "one value per channel"


def _eps(n) -> float:
    return float(number(n.attrs["eps"], "eps"))


def _normalized_onnx(b, x: str, axes: list[int], eps: float, dtype: str) -> str:
    """(x - mean) / sqrt(var + eps) over `axes` with the biased variance, as `_normalize`."""
    axes_input = b.ints(axes)
    mean = one(b, "ReduceMean", x, axes_input, keepdims=1, noop_with_empty_axes=1)
    centered = one(b, "Sub", x, mean)
    var = one(b, "ReduceMean", one(b, "Mul", centered, centered), axes_input, keepdims=1,
              noop_with_empty_axes=1)
    return one(b, "Div", centered, one(b, "Sqrt", one(b, "Add", var, b.const(eps, dtype))))


def _affine_onnx(b, y: str, weight: str | None, bias: str | None, shape: list[int],
                 outputs: list[str]) -> None:
    """outputs = y * weight + bias, each reshaped to `shape` (absent ones skipped)."""
    chain(b, y, [(op, [one(b, "Reshape", p, b.ints(shape))])
                 for op, p in (("Mul", weight), ("Add", bias)) if p is not None], outputs)


def _per_channel(b, n, p: str | None, value: float) -> str:
    """A per-channel input, or `value` for every channel when it is absent."""
    x = n.in_types[0]
    return p if p is not None else full_of(b, x.shape[1:2], value, x.dtype)


def _layer_norm_onnx(b, n):
    """LayerNormalization (opset 17) over the trailing axes; a missing weight is ones."""
    x, weight, bias = n.inputs
    t = n.in_types[0]
    shape = to_dims(n.attrs["normalized_shape"], "normalized_shape")
    if not shape:  # no axes to normalize over, which LayerNormalization cannot say
        _affine_onnx(b, _normalized_onnx(b, x, [], _eps(n), t.dtype), weight, bias, [],
                     n.outputs)
        return
    weight = weight if weight is not None else full_of(b, shape, 1.0, t.dtype)
    # onnxruntime refuses LayerNormalization over no element; x is then empty, and so is
    # the result (as the reference and native code): x itself
    b.if_positive(prod(shape), n.outputs, n.out_types,
                  lambda outs: b.node("LayerNormalization", trimmed([x, weight, bias]), outs,
                                      axis=-len(shape), epsilon=_eps(n)),
                  lambda outs: b.node("Identity", [x], outs))


def _group_norm_onnx(b, n):
    """By hand over x viewed as [N, G, -1]: opset 18's GroupNormalization scales per group,
    not per channel."""
    x, weight, bias = n.inputs
    t = n.in_types[0]
    groups = to_int(n.attrs["num_groups"], "num_groups")
    # [N, G, C * spatial // G], spelled out: onnxruntime cannot infer a -1 for an empty x,
    # and a computed 0 there is a size (allowzero), not "as the input"
    rest = one(b, "ReduceProd", one(b, "Shape", x, start=1), keepdims=1)
    grouped = one(b, "Reshape", x, one(b, "Concat", one(b, "Shape", x, start=0, end=1),
                                       b.ints([groups]), one(b, "Div", rest, b.ints([groups])),
                                       axis=0), allowzero=1)
    y = one(b, "Reshape", _normalized_onnx(b, grouped, [2], _eps(n), t.dtype), one(b, "Shape", x),
            allowzero=1)
    _affine_onnx(b, y, weight, bias, [-1] + [1] * (t.rank - 2), n.outputs)


def _instance_norm_onnx(b, n):
    """InstanceNormalization, which needs scale and bias: ones and zeros when absent."""
    x, weight, bias = n.inputs
    b.node("InstanceNormalization", [x, _per_channel(b, n, weight, 1.0),
                                     _per_channel(b, n, bias, 0.0)], n.outputs, epsilon=_eps(n))


def _layer_norm_llvm(kb, n):
    """Segments of the normalized_shape's size; weight and bias follow the position."""
    size = kb.numel(to_dims(n.attrs["normalized_shape"], "normalized_shape"))
    one = kb.dim(1)
    if not nn_native("norm").layer_norm_rows(kb, n, size, _eps(n)):
        nn_native("norm").normalize(kb, n, one, one, size, _eps(n), by_position=True)


def _grouped_llvm(groups):
    """The lowering of a norm over groups(n) groups of channels (instance norm: one each)."""

    def lower(kb, n):
        x = n.in_types[0]
        count = groups(n)
        nn_native("norm").normalize(kb, n, kb.dim(count), kb.dim(x.shape[1] // count),
                            kb.numel(x.shape[2:]), _eps(n), by_position=False)

    return lower


def _per_channel_shape(t: TensorType) -> list[Dim]:
    """[C, 1, ...]: a per-channel parameter broadcast against x [N, C, *S]."""
    return [t.shape[1]] + [Dim.of(1)] * (t.rank - 2)


def _layer_view(t: TensorType, a: dict):
    k = len(to_dims(a["normalized_shape"], "normalized_shape"))
    return t.shape, range(t.rank - k, t.rank), t.shape[t.rank - k:]


def _group_view(t: TensorType, a: dict):
    groups = to_int(a["num_groups"], "num_groups")
    rest = Dim.of(1)
    for d in t.shape[1:]:
        rest = rest * d
    return (t.shape[0], Dim.of(groups), rest // groups), (2,), _per_channel_shape(t)


def _instance_view(t: TensorType, a: dict):
    return t.shape, range(2, t.rank), _per_channel_shape(t)


register(norm_record(
    "layer_norm", "Normalize over the trailing normalized_shape axes, then scale and shift.",
    ("normalized_shape",), _layer_params, _layer_normalize, _layer_norm_onnx, _layer_norm_llvm,
    _layer_view))
register(norm_record(
    "group_norm", "Normalize each group of channels over the group and the spatial axes.",
    ("num_groups",), _group_params, _group_normalize, _group_norm_onnx,
    _grouped_llvm(lambda n: to_int(n.attrs["num_groups"], "num_groups")), _group_view))
register(norm_record(
    "instance_norm", "Normalize each channel of each sample over its spatial axes.", (),
    _instance_params,
    lambda x, a: (_normalize(x, tuple(range(2, x.ndim)), a["eps"]), channel_shape(x)),
    _instance_norm_onnx, _grouped_llvm(lambda n: n.in_types[0].shape[1]), _instance_view))


def _batch_norm_infer(types, a):
    x, mean, var, weight, bias = types
    check_channels_first(x, 2)
    check_affine(x, [mean, var, weight, bias], ["running_mean", "running_var", "weight", "bias"],
                  (x.shape[1],), "one value per channel")
    number(a["momentum"], "momentum")
    flag(a["training"], "training")
    return [x]


def _batch_axes(rank: int) -> tuple[int, ...]:
    """The axes batch statistics are taken over: all but the channels (axis 1)."""
    return (0, *range(2, rank))


def _batch_norm_reference(env, inputs, a):
    x, mean, var, weight, bias = inputs
    shape = channel_shape(x)
    if a["training"]:
        y = _normalize(upcast(x), _batch_axes(x.ndim), a["eps"])
    else:
        y = ((upcast(x) - upcast(mean).reshape(shape))
             / np.sqrt(upcast(var).reshape(shape) + a["eps"]))
    return [_affine(y, weight, bias, shape).astype(x.dtype)]


def _batch_norm_onnx(b, n):
    """BatchNormalization in inference mode (a missing weight is ones, a missing bias zeros);
    in training mode by hand over the batch axes, as the reference: ONNX's training mode
    returns the running statistics updated with the biased variance, not PyTorch's."""
    x, mean, var, weight, bias = n.inputs
    t = n.in_types[0]
    if n.attrs["training"]:
        y = _normalized_onnx(b, x, list(_batch_axes(t.rank)), _eps(n), t.dtype)
        _affine_onnx(b, y, weight, bias, [-1] + [1] * (t.rank - 2), n.outputs)
        return
    b.node("BatchNormalization", [x, _per_channel(b, n, weight, 1.0),
                                  _per_channel(b, n, bias, 0.0), mean, var], n.outputs,
           epsilon=_eps(n), training_mode=0)


def _batch_norm_training(ctx, operands: list, a: dict) -> list:
    """batch_norm(..., training = true): the node in training mode, and the new running
    statistics of buffer operands (with the block's num_batches_tracked) as model updates."""
    x, running_mean, running_var, _weight, _bias = operands
    gb = ctx.gb
    results = gb.results("batch_norm", *operands, **a)
    paths = [ctx.buffer_path(v) for v in (running_mean, running_var)]
    if paths == [None, None]:  # statistics that are no buffer of the model: nothing to keep
        return results
    dtype = x.type.dtype
    axes = list(_batch_axes(x.type.rank))
    count = prod(x.type.shape[k] for k in axes)
    if count.is_const and count.value < 2:
        raise OpError(f"batch_norm in training mode needs more than one value per channel "
                      f"to update the running variance, got {shape_str(x.type.shape)}", arg="x")

    def const(value: float):
        return gb.constant(np.asarray(value, NUMPY_DTYPES[dtype]))

    momentum = const(number(a["momentum"], "momentum"))
    keep = const(1 - number(a["momentum"], "momentum"))
    # the batch's mean and biased variance: the first two rows of batch_norm_stats (one
    # kernel reading x twice per channel, the second time from cache; its dy rows unused),
    # not a mean, a centred square and another mean (three passes over x)
    from .views import range_on  # views imports this module's neighbours: not at the top

    stats = gb.op("batch_norm_stats", x, x)
    mean, var = (gb.reshape(gb.op("slice", stats, items=range_on(0, k, k + 1)),
                            [x.type.shape[1]]) for k in range(2))
    n = gb.cast(gb.op("dim_value", dim=count), dtype)
    unbiased = gb.div(gb.mul(var, n), gb.sub(n, const(1)))
    batch_stats = (mean, unbiased)
    for path, stat in zip(paths, batch_stats, strict=True):
        if path is not None:  # PyTorch's order: momentum * batch + (1 - momentum) * running
            ctx.update(path, lambda old, stat=stat: gb.add(gb.mul(momentum, stat),
                                                           gb.mul(keep, old)))
    counter = ctx.sibling(paths[0] or paths[1], "num_batches_tracked")
    if counter is not None:
        ctx.update(counter, lambda old: gb.add(old, gb.constant(np.ones((), "int64"))))
    return results


def _batch_norm_vjp(gb, node, cts):
    """PyTorch's fused form. x̂ = (x - mean) * rstd, g = dy * weight; training mode (the
    batch's statistics, which depend on x): dx = (g - mean(g) - x̂ * mean(g * x̂)) * rstd, the
    means over the batch axes, and the running statistics take no gradient
    (`_batch_norm_training_vjp`); eval mode: dx = g * rstd, and the running statistics are
    inputs like any other. Both modes: dweight = sum(dy * x̂), dbias = sum(dy)."""
    x, running_mean, running_var, weight, bias = node.inputs
    (dy,) = cts
    if dy is None:
        return [None] * 5
    if node.attrs["training"]:
        return _batch_norm_training_vjp(gb, node, dy)
    t = x.type
    axes = list(_batch_axes(t.rank))

    def channel_sum(v):  # over the batch axes -> [C]
        return gb.reshape(gb.op("sum", v, axis=axes), [t.shape[1]])

    centered = gb.sub(x, _broadcast_channels(gb, running_mean, t))
    eps = gb.constant(np.asarray(_eps(node), NUMPY_DTYPES[t.dtype]))
    rstd = gb.op("rsqrt", gb.add(_broadcast_channels(gb, running_var, t), eps))
    normalized = gb.mul(centered, rstd)
    g = dy if weight is None else gb.mul(dy, _broadcast_channels(gb, weight, t))
    dx = gb.mul(g, rstd)
    d_mean = gb.neg(channel_sum(dx))
    # d/dvar of (x - mean) * (var + eps)^-1/2 = -(x - mean) * rstd^3 / 2
    half = gb.constant(np.asarray(-0.5, NUMPY_DTYPES[t.dtype]))
    d_var = channel_sum(gb.mul(gb.mul(dx, normalized), gb.mul(rstd, half)))
    d_weight = None if weight is None else channel_sum(gb.mul(dy, normalized))
    d_bias = None if bias is None else channel_sum(dy)
    return [dx, d_mean, d_var, d_weight, d_bias]


def _broadcast_channels(gb, v, t: TensorType):
    """A per-channel value ([C], or [1, C] rows) as [1, C, 1, ...], broadcasting against x."""
    return gb.reshape(v, [1, t.shape[1]] + [1] * (t.rank - 2))


def _batch_norm_training_vjp(gb, node, dy) -> list:
    """Training mode's rule over the batch's statistics. The per-channel sums come from one
    `batch_norm_stats` node (one kernel reading x and dy twice per channel, the second time
    from cache), not from reductions over materialised products; then, with n the values per
    channel, S0 = sum(dy) and S1 = sum(dy * x̂),
    dx = weight * rstd * (dy - S0 / n - (x - mean) * rstd * S1 / n): one elementwise pass (the
    fusion pass makes it one kernel). dweight = S1, dbias = S0."""
    from .views import range_on  # views imports this module's neighbours: not at the top

    x, _running_mean, _running_var, weight, bias = node.inputs
    t = x.type
    dtype = t.dtype
    stats = gb.op("batch_norm_stats", x, dy)

    def row(k):  # statistic k of every channel, [1, C]
        return gb.op("slice", stats, items=range_on(0, k, k + 1))

    mean, var, dy_sum, dy_centered = (_broadcast_channels(gb, row(k), t) for k in range(4))
    eps = gb.constant(np.asarray(_eps(node), NUMPY_DTYPES[dtype]))
    rstd = gb.op("rsqrt", gb.add(var, eps))
    dy_xhat = gb.mul(dy_centered, rstd)  # S1
    count = size_value(gb, prod(t.shape[k] for k in _batch_axes(t.rank)), dtype)
    scale = rstd if weight is None else gb.mul(_broadcast_channels(gb, weight, t), rstd)
    dx = gb.mul(gb.sub(gb.sub(dy, gb.div(dy_sum, count)),
                       gb.mul(gb.sub(x, mean), gb.div(gb.mul(rstd, dy_xhat), count))), scale)
    channels = [t.shape[1]]
    d_weight = None if weight is None else gb.reshape(dy_xhat, channels)
    d_bias = None if bias is None else gb.reshape(dy_sum, channels)
    return [dx, None, None, d_weight, d_bias]


# batch_norm_stats: training mode's per-channel statistics for its gradient ------------------
def _batch_norm_stats_infer(types, a):
    x, dy = types
    check_channels_first(x, 2)
    check_dtype(x, FLOATS, "x")
    check_same_dtype([x, dy], ["x", "dy"])
    if dy.shape != x.shape:
        raise OpError(f"dy {shape_str(dy.shape)} is not x's shape {shape_str(x.shape)}",
                      arg="dy")
    return [TensorType(x.dtype, (Dim.of(4), x.shape[1]))]


def _batch_norm_stats_reference(env, inputs, a):
    x, dy = inputs
    axes = _batch_axes(x.ndim)
    xs, g = upcast(x), upcast(dy)
    mean = np.mean(xs, axis=axes)
    centered = xs - mean.reshape(channel_shape(x))
    rows = [mean, np.mean(centered * centered, axis=axes), np.sum(g, axis=axes),
            np.sum(g * centered, axis=axes)]
    return [np.stack(rows).astype(x.dtype)]


def _batch_norm_stats_onnx(b, n):
    """The four statistics by ReduceMean/ReduceSum over the batch axes, as rows of one tensor."""
    x, dy = n.inputs
    axes = b.ints(list(_batch_axes(n.in_types[0].rank)))
    mean = one(b, "ReduceMean", x, axes, keepdims=1)
    centered = one(b, "Sub", x, mean)
    rows = [mean, one(b, "ReduceMean", one(b, "Mul", centered, centered), axes, keepdims=1),
            one(b, "ReduceSum", dy, axes, keepdims=1),
            one(b, "ReduceSum", one(b, "Mul", dy, centered), axes, keepdims=1)]
    flat = b.ints([1, -1])
    b.node("Concat", [one(b, "Reshape", r, flat) for r in rows], n.outputs, axis=0)


def _batch_norm_stats_vjp(gb, node, cts):
    """With n values per channel, m = mean(x) and g_k the cotangent of row k (per channel,
    broadcast over the batch axes): dx = g_0 / n + g_1 * 2 (x - m) / n + g_3 * (dy -
    sum(dy) / n) (the mean's own change cancels in the variance and, summed, in row 3),
    ddy = g_2 + g_3 * (x - m). batch_norm's running statistics read rows 0 and 1 of it
    (of x and x), which a cotangent of the model's updates may reach."""
    from .views import range_on  # views imports this module's neighbours: not at the top

    (ct,), (x, dy) = cts, node.inputs
    if ct is None:
        return [None, None]
    t = x.type
    (stats,) = node.outputs

    def row(v, k):  # row k of a [4, C] value, as [1, C, 1, ...]
        return _broadcast_channels(gb, gb.op("slice", v, items=range_on(0, k, k + 1)), t)

    g0, g1, g2, g3 = (row(ct, k) for k in range(4))
    count = size_value(gb, prod(t.shape[k] for k in _batch_axes(t.rank)), t.dtype)
    centered = gb.sub(x, row(stats, 0))
    two = gb.constant(np.asarray(2.0, NUMPY_DTYPES[t.dtype]))
    dx = gb.add(gb.div(gb.add(g0, gb.mul(gb.mul(g1, two), centered)), count),
                gb.mul(g3, gb.sub(dy, gb.div(row(stats, 2), count))))
    ddy = gb.add(gb.mul(g3, centered), g2)
    return [dx, ddy]


register(internal(OpRecord(
    "batch_norm_stats",
    tensors("x", "dy"),
    _batch_norm_stats_infer, _batch_norm_stats_reference,
    "batch_norm's training-mode gradient statistics per channel c, over the batch axes: rows "
    "mean(x), mean((x - mean)^2), sum(dy), sum(dy * (x - mean)).",
    onnx=widened(_batch_norm_stats_onnx),
    llvm=lambda kb, n: nn_native("norm").batch_norm_stats(kb, n),
    vjp=_batch_norm_stats_vjp)))


register(OpRecord(
    "batch_norm",
    tensors("x", "running_mean", "running_var") + optional("weight", "bias")
    + attrs(("training", False), ("momentum", 0.1), ("eps", 1e-5)),
    _batch_norm_infer, _batch_norm_reference,
    "Normalize each channel (axis 1) with running statistics (with the batch's in training "
    "mode, updating the running ones), then scale and shift.",
    onnx=widened(_batch_norm_onnx),
    llvm=lambda kb, n: nn_native("norm").batch_norm(kb, n, _eps(n)),
    vjp=_batch_norm_vjp, training=_batch_norm_training))
