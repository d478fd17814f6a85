"""Neural-network ops with PyTorch semantics in NC(L)/NCHW layout: normalization, convolution,
transposed convolution, pooling, resize and dropout.

conv, conv_transpose and the pools share one piece of window arithmetic (`_common.window_count`)
for their symbolic output sizes; their references slide one strided view (`_common.windows`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    BF16_UP,
    FLOATS,
    NUMERIC,
    as_dtype,
    attr_error,
    attrs,
    chain,
    check_dtype,
    check_positive,
    check_rank,
    check_same_dtype,
    check_shape,
    choice,
    compute_dtype,
    divides,
    dtype_name,
    full_of,
    identity,
    is_list,
    number,
    one,
    onnx_pads,
    optional,
    pad_or_crop,
    prod,
    spatial,
    tensors,
    to_dims,
    to_int,
    transposed_count,
    trimmed,
    unary,
    upcast,
    widened,
    window_count,
    windows,
)
from .registry import OpError, OpRecord, register


def _native(family: str):
    """The native kernels of one family, codegen/llvm/<family>.py (imported when a lowering
    runs: they need llvmlite, the ops do not)."""
    return importlib.import_module(f"..codegen.llvm.{family}", __package__)


# normalization ----------------------------------------------------------------------------
def _check_affine(x: TensorType, params: list[TensorType | None], names: list[str],
                  shape: tuple[Dim, ...], what: str) -> None:
    """Optional per-feature tensors (weight, bias, running stats) must match `shape` and x's
    dtype."""
    for t, name in zip(params, names, strict=False):
        if t is not None:
            check_shape(t, shape, name, what)
            check_same_dtype([x, t], ["x", name])


def _training_off(a: dict) -> None:
    if a["training"]:
        raise attr_error("training", "training-mode is not supported yet")


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


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _check_channels_first(x: TensorType, minimum_rank: int) -> None:
    check_dtype(x, FLOATS, "x")
    if x.rank < minimum_rank:
        raise OpError(f"x must have rank {minimum_rank} or more ([N, C, ...]), got "
                      f"{shape_str(x.shape)}", arg="x")


def norm_record(name: str, doc: str, leading: tuple, param_shape, normalize,
                onnx, llvm) -> OpRecord:
    """A norm op (x, *leading attrs, weight?, bias?, eps): normalize, then scale and shift.

    param_shape(x, attrs) -> (the shape weight and bias must have, what that shape means);
    normalize(x, attrs) -> (normalized x, the shape weight and bias broadcast as); onnx is the
    emitter, run in f32 for half floats as the reference; llvm the native lowering.
    """

    def infer(types, a):
        x, weight, bias = types
        check_dtype(x, FLOATS, "x")
        shape, what = param_shape(x, a)
        _check_affine(x, [weight, bias], ["weight", "bias"], shape, what)
        return [x]

    def reference(env, inputs, a):
        x, weight, bias = inputs
        y, shape = normalize(upcast(x), a)
        return [_affine(y, weight, bias, shape).astype(x.dtype)]

    args = tensors("x") + attrs(*leading) + optional("weight", "bias") + attrs(("eps", 1e-5))
    return OpRecord(name, args, infer, reference, doc, onnx=widened(onnx), llvm=llvm)


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
    _check_channels_first(x, 2)
    groups = to_int(a["num_groups"], "num_groups")
    if groups < 1:
        raise attr_error("num_groups", f"num_groups must be positive, got {groups}")
    if not divides(x.shape[1], groups):
        raise OpError(f"{x.shape[1]} channels of {shape_str(x.shape)} do not split into "
                      f"{groups} groups", arg="num_groups")
    return (x.shape[1],), "one value per channel"


def _group_normalize(x: np.ndarray, a):
    grouped = x.reshape(x.shape[0], to_int(a["num_groups"], "num_groups"), -1)
    return _normalize(grouped, 2, a["eps"]).reshape(x.shape), _channel_shape(x)


def _instance_params(x: TensorType, a):
    _check_channels_first(x, 3)
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
    _native("norm").normalize(kb, n, one, one, size, _eps(n), by_position=True)


def _grouped_llvm(groups):
    """The lowering of a norm over groups(n) groups of channels (instance norm: one each)."""

    def lower(kb, n):
        x = n.in_types[0]
        count = groups(n)
        _native("norm").normalize(kb, n, kb.dim(count), kb.dim(x.shape[1] // count),
                                  kb.numel(x.shape[2:]), _eps(n), by_position=False)

    return lower


# ops whose every sample is computed from the same sample of the input alone: the native
# backend may split a batch across threads (module._batch_split)
SAMPLEWISE = frozenset({"batch_parallel"})


register(norm_record(
    "layer_norm", "Normalize over the trailing normalized_shape axes, then scale and shift.",
    ("normalized_shape",), _layer_params, _layer_normalize, _layer_norm_onnx, _layer_norm_llvm))
register(norm_record(
    "group_norm", "Normalize each group of channels over the group and the spatial axes.",
    ("num_groups",), _group_params, _group_normalize, _group_norm_onnx,
    _grouped_llvm(lambda n: to_int(n.attrs["num_groups"], "num_groups"))))
register(norm_record(
    "instance_norm", "Normalize each channel of each sample over its spatial axes.", (),
    _instance_params,
    lambda x, a: (_normalize(x, tuple(range(2, x.ndim)), a["eps"]), _channel_shape(x)),
    _instance_norm_onnx, _grouped_llvm(lambda n: n.in_types[0].shape[1])))


def _batch_norm_infer(types, a):
    x, mean, var, weight, bias = types
    _training_off(a)
    _check_channels_first(x, 2)
    _check_affine(x, [mean, var, weight, bias], ["running_mean", "running_var", "weight", "bias"],
                  (x.shape[1],), "one value per channel")
    return [x]


def _batch_norm_reference(env, inputs, a):
    x, mean, var, weight, bias = inputs
    shape = _channel_shape(x)
    y = (upcast(x) - upcast(mean).reshape(shape)) / np.sqrt(upcast(var).reshape(shape) + a["eps"])
    return [_affine(y, weight, bias, shape).astype(x.dtype)]


def _batch_norm_onnx(b, n):
    """BatchNormalization in inference mode; a missing weight is ones, a missing bias zeros."""
    x, mean, var, weight, bias = n.inputs
    b.node("BatchNormalization", [x, _per_channel(b, n, weight, 1.0),
                                  _per_channel(b, n, bias, 0.0), mean, var], n.outputs,
           epsilon=_eps(n), training_mode=0)


register(OpRecord(
    "batch_norm",
    tensors("x", "running_mean", "running_var") + optional("weight", "bias")
    + attrs(("training", False), ("momentum", 0.1), ("eps", 1e-5)),
    _batch_norm_infer, _batch_norm_reference,
    "Normalize each channel (axis 1) with running statistics, then scale and shift.",
    onnx=widened(_batch_norm_onnx), llvm=lambda kb, n: _native("norm").batch_norm(kb, n, _eps(n))))


def _dropout_check(a: dict) -> None:
    p = number(a["p"], "p")
    if not 0 <= p <= 1:
        raise attr_error("p", f"p must be in [0, 1], got {p}")
    if a["training"]:
        raise attr_error("training", "training-mode dropout is not supported yet")


register(unary("dropout", lambda x, p, training: x,
               "Identity outside training (training-mode dropout comes with training).",
               extra=(("p", 0.5), ("training", False)), check=_dropout_check, onnx=identity,
               llvm=lambda kb, attrs, x: x))


# convolution ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv:
    """The geometry of one convolution or pooling call (spatial axes only)."""

    kernel: tuple[Dim, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[Dim, Dim], ...]  # (before, after) per spatial axis
    out: tuple[Dim, ...]

    def concrete(self, env):
        """(kernel, pads, out) as ints for the reference."""
        kernel = tuple(env.eval_dim(k) for k in self.kernel)
        pads = [(env.eval_dim(lo), env.eval_dim(hi)) for lo, hi in self.pads]
        return kernel, pads, tuple(env.eval_dim(o) for o in self.out)


def _spatial_rank(x: TensorType) -> int:
    check_rank(x, (3, 4), "x", "[N, C, L] or [N, C, H, W]")
    return x.rank - 2


def _conv_pads(padding, kernel, stride, dilation) -> tuple[tuple[Dim, Dim], ...]:
    """Explicit padding, "valid", or "same" (PyTorch: the odd extra unit goes after)."""
    n = len(kernel)
    if padding == "valid":
        return ((Dim.of(0), Dim.of(0)),) * n
    if padding == "same":
        if any(s != 1 for s in stride):
            raise attr_error("padding", "padding='same' needs stride 1")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=False)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, str):
        raise attr_error("padding", f"padding must be a size, 'same' or 'valid', got {padding!r}")
    return tuple((Dim.of(p), Dim.of(p)) for p in spatial(padding, n, "padding", minimum=0))


def _conv_geometry(x: TensorType, w: TensorType, a: dict) -> Conv:
    n = _spatial_rank(x)
    check_rank(w, (x.rank,), "weight", f"rank {x.rank} like x")
    kernel = w.shape[2:]
    stride = spatial(a["stride"], n, "stride")
    dilation = spatial(a["dilation"], n, "dilation")
    pads = _conv_pads(a["padding"], kernel, stride, dilation)
    out = tuple(window_count(size, k, s, lo, hi, d) for size, k, s, (lo, hi), d
                in zip(x.shape[2:], kernel, stride, pads, dilation, strict=False))
    check_positive(out, x, "the convolution output")
    return Conv(kernel, stride, dilation, pads, out)


def _check_groups(a: dict, channels: Dim, x: TensorType, w: TensorType) -> int:
    groups = to_int(a["groups"], "groups")
    if groups < 1:
        raise attr_error("groups", f"groups must be positive, got {groups}")
    if not divides(channels, groups):
        raise OpError(f"{channels} channels of weight {shape_str(w.shape)} do not split into "
                      f"{groups} groups", arg="groups")
    return groups


def _conv_infer(types, a):
    x, w, bias = types
    check_dtype(x, FLOATS, "x")
    check_same_dtype([x, w], ["x", "weight"])
    geo = _conv_geometry(x, w, a)
    groups = _check_groups(a, w.shape[0], x, w)
    if w.shape[1] * groups != x.shape[1]:
        raise OpError(f"weight {shape_str(w.shape)} with groups={groups} expects "
                      f"{w.shape[1] * groups} input channels, x is {shape_str(x.shape)}",
                      arg="weight")
    _check_affine(x, [bias], ["bias"], (w.shape[0],), "one value per output channel")
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + geo.out)]


def conv_nd(x: np.ndarray, w: np.ndarray, stride, pads, dilation, groups: int) -> np.ndarray:
    """Cross-correlation of x [N, C, *S] with w [O, C/groups, *K]; pads are (before, after)."""
    n = w.ndim - 2
    kernel = w.shape[2:]
    xp = pad_or_crop(x, [(0, 0), (0, 0)] + list(pads))
    counts = tuple((size - d * (k - 1) - 1) // s + 1
                   for size, k, s, d in zip(xp.shape[2:], kernel, stride, dilation, strict=False))
    win = windows(xp, kernel, stride, dilation, counts)  # [N, C, *out, *K]
    if groups == 1:
        out = np.tensordot(win, w, axes=([1, *range(2 + n, 2 + 2 * n)], [1, *range(2, 2 + n)]))
        return np.moveaxis(out, -1, 1)
    batch, cin, cout = x.shape[0], x.shape[1], w.shape[0]
    win = win.reshape(batch, groups, cin // groups, *win.shape[2:])
    wg = w.reshape(groups, cout // groups, cin // groups, *kernel)
    o, k = "xyz"[:n], "uvw"[:n]
    out = np.einsum(f"ngc{o}{k},gdc{k}->ngd{o}", win, wg, optimize=True)
    return out.reshape(batch, cout, *counts)


def _add_bias(y: np.ndarray, bias) -> np.ndarray:
    return y if bias is None else y + upcast(bias).reshape(_channel_shape(y))


def _conv_reference(env, inputs, a):
    x, w, bias = inputs
    xt = TensorType(dtype_name(x), x.shape)
    geo = _conv_geometry(xt, TensorType(dtype_name(w), w.shape), a)
    _, pads, _ = geo.concrete(env)
    y = conv_nd(upcast(x), upcast(w), geo.stride, pads, geo.dilation, to_int(a["groups"], "groups"))
    return [_add_bias(y, bias).astype(x.dtype)]


def _conv_onnx(b, n):
    """Conv with the record's own padding ("same" and "valid" resolved), begins then ends."""
    x, w, _bias = n.in_types
    geo = _conv_geometry(x, w, n.attrs)
    b.node("Conv", trimmed(n.inputs), n.outputs, strides=list(geo.stride),
           dilations=list(geo.dilation), pads=onnx_pads(b, geo.pads),
           group=to_int(n.attrs["groups"], "groups"))


def _window(x: TensorType, geo: Conv):
    """The native kernels' view of a conv or pool geometry."""
    return _native("spatial").Window.of(x.shape[2:], geo.kernel, geo.stride, geo.dilation,
                                        [lo for lo, _ in geo.pads], geo.out)


def _conv_llvm(kb, n):
    x, w, _bias = n.in_types
    geo = _conv_geometry(x, w, n.attrs)
    _native("conv").conv(kb, n, _window(x, geo), to_int(n.attrs["groups"], "groups"))


def _conv_macs(input_types, output_types, a) -> Dim:
    _x, w, _b = input_types
    (y,) = output_types
    return prod(y.shape) * prod(w.shape[1:])


register(OpRecord(
    "conv",
    tensors("x", "weight") + optional("bias")
    + attrs(("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    _conv_infer, _conv_reference,
    "1-D or 2-D convolution (cross-correlation), PyTorch's conv1d/conv2d.", macs=_conv_macs,
    onnx=widened(_conv_onnx), llvm=_conv_llvm,
    tags=SAMPLEWISE))


def _conv_transpose_geometry(x: TensorType, w: TensorType, a: dict):
    n = _spatial_rank(x)
    check_rank(w, (x.rank,), "weight", f"rank {x.rank} like x")
    stride = spatial(a["stride"], n, "stride")
    dilation = spatial(a["dilation"], n, "dilation")
    padding = spatial(a["padding"], n, "padding", minimum=0)
    output_padding = spatial(a["output_padding"], n, "output_padding", minimum=0)
    for op, s, d in zip(output_padding, stride, dilation, strict=False):
        if op >= max(s, d):
            raise attr_error("output_padding", f"output_padding {op} must be smaller than "
                             f"stride or dilation")
    out = tuple(transposed_count(size, k, s, p, d, op) for size, k, s, p, d, op
                in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, output_padding,
                       strict=False))
    check_positive(out, x, "the transposed convolution output")
    return stride, dilation, padding, output_padding, out


def _conv_transpose_infer(types, a):
    x, w, bias = types
    check_dtype(x, FLOATS, "x")
    check_same_dtype([x, w], ["x", "weight"])
    *_, out = _conv_transpose_geometry(x, w, a)
    groups = _check_groups(a, w.shape[0], x, w)
    if w.shape[0] != x.shape[1]:
        raise OpError(f"weight {shape_str(w.shape)} expects {w.shape[0]} input channels, "
                      f"x is {shape_str(x.shape)}", arg="weight")
    channels = w.shape[1] * groups
    _check_affine(x, [bias], ["bias"], (channels,), "one value per output channel")
    return [TensorType(x.dtype, (x.shape[0], channels) + out)]


def _conv_transpose_reference(env, inputs, a):
    """Dilate x by the stride, pad by d*(k-1)-p, and convolve with the flipped kernel."""
    x, w, bias = inputs
    xt, wt = TensorType(dtype_name(x), x.shape), TensorType(dtype_name(w), w.shape)
    stride, dilation, padding, output_padding, _ = _conv_transpose_geometry(xt, wt, a)
    groups = to_int(a["groups"], "groups")
    n, kernel = x.ndim - 2, w.shape[2:]
    spread_shape = tuple((s - 1) * st + 1 for s, st in zip(x.shape[2:], stride, strict=False))
    spread = np.zeros(x.shape[:2] + spread_shape, dtype=compute_dtype(x.dtype))
    spread[(..., *(slice(None, None, st) for st in stride))] = x
    cin, cout_g = w.shape[0], w.shape[1]
    wg = upcast(w).reshape(groups, cin // groups, cout_g, *kernel).swapaxes(1, 2)
    wf = np.flip(wg.reshape(groups * cout_g, cin // groups, *kernel), axis=tuple(range(2, 2 + n)))
    pads = [(d * (k - 1) - p, d * (k - 1) - p + op)
            for k, p, d, op in zip(kernel, padding, dilation, output_padding, strict=False)]
    y = conv_nd(spread, wf, (1,) * n, pads, dilation, groups)
    return [_add_bias(y, bias).astype(x.dtype)]


def _conv_transpose_onnx(b, n):
    """ConvTranspose. PyTorch's output is the full one cropped by p at each end, then extended
    by output_padding: that is end padding p - op, and what op exceeds p by an output_padding,
    or, past the stride, where onnxruntime refuses one (PyTorch allows up to the dilation),
    zeros padded on after the convolution and before the bias."""
    x, w, _bias = n.in_types
    stride, dilation, padding, output_padding, _ = _conv_transpose_geometry(x, w, n.attrs)
    beyond = [max(op - p, 0) for p, op in zip(padding, output_padding, strict=True)]
    late = [e if e >= s else 0 for e, s in zip(beyond, stride, strict=True)]
    ends = [max(p - op, 0) for p, op in zip(padding, output_padding, strict=True)]
    attrs = {"strides": list(stride), "dilations": list(dilation),
             "pads": onnx_pads(b, zip(padding, ends, strict=True)),
             "output_padding": [e - d for e, d in zip(beyond, late, strict=True)],
             "group": to_int(n.attrs["groups"], "groups")}
    if not any(late):
        b.node("ConvTranspose", trimmed(n.inputs), n.outputs, **attrs)
        return
    data, weight, bias = n.inputs
    steps = [("Pad", [b.ints([0] * (2 + len(late)) + [0, 0] + late)])]
    if bias is not None:
        steps.append(("Add", [one(b, "Reshape", bias, b.ints([-1] + [1] * len(late)))]))
    chain(b, one(b, "ConvTranspose", data, weight, **attrs), steps, n.outputs)


def _conv_transpose_llvm(kb, n):
    x, w, _bias = n.in_types
    stride, dilation, padding, _, out = _conv_transpose_geometry(x, w, n.attrs)
    window = _native("spatial").Window.of(x.shape[2:], w.shape[2:], stride, dilation, padding, out)
    _native("conv").conv_transpose(kb, n, window, to_int(n.attrs["groups"], "groups"))


def _conv_transpose_macs(input_types, _output_types, _a) -> Dim:
    x, w, _b = input_types
    return prod(x.shape) * prod(w.shape[1:])


register(OpRecord(
    "conv_transpose",
    tensors("x", "weight") + optional("bias")
    + attrs(("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)),
    _conv_transpose_infer, _conv_transpose_reference,
    "1-D or 2-D transposed convolution, weight [C_in, C_out/groups, *k] (PyTorch's layout).",
    macs=_conv_transpose_macs, onnx=widened(_conv_transpose_onnx), llvm=_conv_transpose_llvm,
    tags=SAMPLEWISE))


# pooling ----------------------------------------------------------------------------------
def _pool_geometry(x: TensorType, a: dict) -> Conv:
    n = _spatial_rank(x)
    kernel = spatial(a["kernel_size"], n, "kernel_size")
    stride = kernel if a["stride"] is None else spatial(a["stride"], n, "stride")
    padding = spatial(a["padding"], n, "padding", minimum=0)
    dilation = spatial(a.get("dilation", 1), n, "dilation")
    if any(2 * p > k for p, k in zip(padding, kernel, strict=False)):
        raise attr_error("padding", f"padding {list(padding)} must be at most half of "
                         f"kernel_size {list(kernel)}")
    out = tuple(window_count(size, k, s, p, p, d, bool(a["ceil_mode"]))
                for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation,
                                            strict=False))
    check_positive(out, x, "the pooling output")
    # ceil mode may need room after the right padding for the last window
    pads = tuple((Dim.of(p), Dim.of(p) + _extra(size, k, s, p, d, o))
                 for size, k, s, p, d, o in zip(x.shape[2:], kernel, stride, padding, dilation, out,
                                                strict=False))
    return Conv(tuple(map(Dim.of, kernel)), stride, dilation, pads, out)


def _extra(size: Dim, k: int, s: int, p: int, d: int, out: Dim) -> Dim:
    """Padding beyond the right edge that the last ceil-mode window reaches (0 if none)."""
    need = (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p)
    return need if need.is_const and need.value > 0 else Dim.of(0)


def _pool_infer(dtypes):
    def infer(types, a):
        (x,) = types
        check_dtype(x, dtypes, "x")
        geo = _pool_geometry(x, a)
        return [TensorType(x.dtype, x.shape[:2] + geo.out)]

    return infer


def _pool_windows(env, x: np.ndarray, a: dict, fill):
    geo = _pool_geometry(TensorType(dtype_name(x), x.shape), a)
    kernel, pads, out = geo.concrete(env)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
    return windows(xp, kernel, geo.stride, geo.dilation, out), geo, (kernel, pads, out)


def _lowest(dtype: np.dtype):
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf  # bf16's kind is "V"


def _max_pool_reference(env, inputs, a):
    (x,) = inputs
    win, _, (kernel, _, _) = _pool_windows(env, x, a, _lowest(x.dtype))
    return [win.max(axis=tuple(range(-len(kernel), 0)))]


def _avg_pool_reference(env, inputs, a):
    """Window sums over zero padding, divided by how many window cells PyTorch counts."""
    (x,) = inputs
    win, geo, (kernel, pads, out) = _pool_windows(env, upcast(x), a, 0)
    total = win.sum(axis=tuple(range(-len(kernel), 0)))
    divisor = np.ones(out)
    axes = zip(x.shape[2:], pads, kernel, geo.stride, strict=False)
    for i, (size, (p, hi), k, s) in enumerate(axes):
        # count_include_pad counts the padding cells but never ceil mode's overhang beyond it
        counted = np.zeros(size + p + hi)
        counted[slice(0, size + 2 * p) if a["count_include_pad"] else slice(p, p + size)] = 1
        counts = windows(counted, (k,), (s,), (1,), (out[i],)).sum(axis=-1)
        divisor = divisor * counts.reshape([-1 if j == i else 1 for j in range(len(out))])
    return [as_dtype(total / divisor, dtype_name(x))]


def _pool_window(b, n) -> tuple[Conv, dict]:
    """The geometry, and MaxPool/AveragePool's window attributes. onnxruntime's kernels drop a
    last ceil-mode window that starts in the right padding, as PyTorch; onnx's shape inference
    lacks that rule. So with constant sizes the geometry's overhang padding is written out and
    ceil_mode is 0; with symbolic sizes, where the overhang is known only at run time, ceil_mode
    is 1."""
    x, a = n.in_types[0], n.attrs
    geo = _pool_geometry(x, a)
    ceil = bool(a["ceil_mode"]) and not all(d.is_const for d in x.shape[2:])
    pads = [(lo, lo) for lo, _ in geo.pads] if ceil else geo.pads
    return geo, {"kernel_shape": [k.value for k in geo.kernel], "strides": list(geo.stride),
                 "pads": onnx_pads(b, pads), "ceil_mode": int(ceil)}


def _max_pool_onnx(b, n):
    geo, window = _pool_window(b, n)
    b.node("MaxPool", n.inputs, n.outputs, dilations=list(geo.dilation), **window)


def _avg_pool_onnx(b, n):
    """AveragePool. Counted padding is made real zeros first, so that AveragePool then counts
    the padded input's cells but never ceil mode's overhang beyond them, as PyTorch."""
    (x,), counted = n.inputs, bool(n.attrs["count_include_pad"])
    geo, window = _pool_window(b, n)
    if counted and not window["ceil_mode"]:
        if any(lo != 0 for lo, _ in geo.pads):
            pads = [(0, 0)] * 2 + [(lo, lo) for lo, _ in geo.pads]
            x = one(b, "Pad", x, b.ints(onnx_pads(b, pads)))
        window["pads"] = onnx_pads(b, [(0, hi - lo) for lo, hi in geo.pads])
        counted = False
    b.node("AveragePool", [x], n.outputs, count_include_pad=int(counted), **window)


def _max_pool_llvm(kb, n):
    x = n.in_types[0]
    _native("pool").max_pool(kb, n, _window(x, _pool_geometry(x, n.attrs)))


def _avg_pool_llvm(kb, n):
    x = n.in_types[0]
    _native("pool").avg_pool(kb, n, _window(x, _pool_geometry(x, n.attrs)),
                             bool(n.attrs["count_include_pad"]))


# max_pool of integers runs in f64 (exact for i32): onnxruntime's MaxPool has no int32 kernel
register(OpRecord(
    "max_pool",
    tensors("x") + attrs("kernel_size", ("stride", None), ("padding", 0), ("dilation", 1),
                         ("ceil_mode", False)),
    _pool_infer(NUMERIC), _max_pool_reference,
    "1-D or 2-D max pooling (padding counts as -inf), PyTorch's max_pool1d/2d.",
    onnx=widened(_max_pool_onnx, {**BF16_UP, "i32": "f64", "i64": "f64"}), llvm=_max_pool_llvm,
    tags=SAMPLEWISE))
register(OpRecord(
    "avg_pool",
    tensors("x") + attrs("kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                         ("count_include_pad", True)),
    _pool_infer(FLOATS), _avg_pool_reference,
    "1-D or 2-D average pooling, PyTorch's avg_pool1d/2d.", onnx=widened(_avg_pool_onnx),
    llvm=_avg_pool_llvm,
    tags=SAMPLEWISE))


def _global_avg_pool_onnx(b, n):
    """GlobalAveragePool, which onnxruntime refuses over empty spatial axes (only N may be 0):
    there the mean of nothing, NaN (as the reference, numpy and native code)."""
    (x,), (out,) = n.in_types, n.out_types
    b.if_positive(prod(x.shape[2:]), n.outputs, n.out_types,
                  lambda outs: b.node("GlobalAveragePool", n.inputs, outs),
                  lambda outs: b.node("Identity", [full_of(b, out.shape, np.nan, out.dtype)],
                                      outs))


def _global_avg_pool_infer(types, _a):
    (x,) = types
    _check_channels_first(x, 3)
    return [TensorType(x.dtype, x.shape[:2] + (Dim.of(1),) * (x.rank - 2))]


register(OpRecord(
    "global_avg_pool", tensors("x"), _global_avg_pool_infer,
    lambda env, inputs, a: [np.mean(upcast(inputs[0]), axis=tuple(range(2, inputs[0].ndim)),
                                    keepdims=True).astype(inputs[0].dtype)],
    "Mean over every spatial axis, kept as size 1 (ONNX GlobalAveragePool).",
    onnx=widened(_global_avg_pool_onnx), llvm=lambda kb, n: _native("pool").global_avg_pool(kb, n),
    tags=SAMPLEWISE))


# resize -----------------------------------------------------------------------------------
def _resize_sizes(x: TensorType, a: dict) -> tuple[Dim, ...]:
    """Output spatial sizes from `size` or `scale_factor` (floor(in * scale), as PyTorch)."""
    _check_channels_first(x, 3)
    n = x.rank - 2
    mode = choice(a["mode"], "mode", ("nearest", "bilinear"))
    if a["align_corners"] and mode == "nearest":
        raise attr_error("align_corners", "align_corners only applies to bilinear resize")
    if (a["size"] is None) == (a["scale_factor"] is None):
        raise attr_error("size", "give exactly one of size and scale_factor")
    if a["size"] is not None:
        sizes = to_dims(a["size"], "size")
        if len(sizes) == 1:
            sizes = sizes * n
        if len(sizes) != n:
            raise attr_error("size", f"size needs 1 or {n} values, got {len(sizes)}")
        return sizes
    scales = _scales(a, n)
    out = []
    for size, scale in zip(x.shape[2:], scales, strict=False):
        if float(scale).is_integer():
            out.append(size * int(scale))
        elif size.is_const:
            out.append(Dim.of(math.floor(size.value * scale)))
        else:
            raise OpError(f"floor({size} * {scale}) is not a symbolic size; give size instead")
    return tuple(out)


def _scales(a: dict, n: int) -> tuple[float, ...]:
    values = a["scale_factor"] if is_list(a["scale_factor"]) else [a["scale_factor"]]
    scales = tuple(number(v, "scale_factor") for v in values)
    if len(scales) == 1:
        scales = scales * n
    if len(scales) != n or any(s <= 0 for s in scales):
        raise attr_error("scale_factor", f"scale_factor needs 1 or {n} positive values")
    return scales


def _resize_infer(types, a):
    (x,) = types
    return [TensorType(x.dtype, x.shape[:2] + _resize_sizes(x, a))]


def _source_ratio(a, i: int, size: int, out: int, n: int, for_corners: bool) -> np.float32:
    """PyTorch's area_pixel_compute_scale: 1/scale_factor when given, else in/out."""
    if for_corners:
        return np.float32((size - 1) / (out - 1) if out > 1 else 0)
    if a["scale_factor"] is not None:
        return np.float32(1 / _scales(a, n)[i])
    return np.float32(size / out)


def _resize_reference(env, inputs, a):
    """Separable: along each spatial axis take the nearest, or blend the two nearest, rows."""
    (x,) = inputs
    y = upcast(x)
    n = x.ndim - 2
    corners = bool(a["align_corners"])
    sizes = [env.eval_dim(d) for d in _resize_sizes(TensorType(dtype_name(x), x.shape), a)]
    for i, out in enumerate(sizes):
        size, axis = x.shape[2 + i], 2 + i
        ratio = _source_ratio(a, i, size, out, n, corners)
        dst = np.arange(out, dtype=np.float32)
        if a["mode"] == "nearest":
            y = np.take(y, np.minimum(np.floor(dst * ratio).astype(np.int64), size - 1), axis=axis)
            continue
        src = dst * ratio if corners else np.maximum(ratio * (dst + 0.5) - 0.5, 0)
        lo = src.astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        lam = (src - lo).astype(y.dtype).reshape([-1] + [1] * (n - 1 - i))
        y = np.take(y, lo, axis=axis) * (1 - lam) + np.take(y, hi, axis=axis) * lam
    return [y.astype(x.dtype)]


def _onnx_scale(size: Dim, scale: float, out: Dim) -> np.float32:
    """The f32 scale ONNX reads `scale` as, nudged up where onnx's shape inference would floor
    size * that f32 one below Python's floor of size * scale (10 * 1.3)."""
    s = np.float32(scale)
    if size.is_const and math.floor(size.value * float(s)) < out.value:
        s = np.nextafter(s, np.float32(np.inf))
    return s


def _resize_onnx(b, n):
    """Resize. nearest: PyTorch's legacy nearest (asymmetric, floor); bilinear: half_pixel,
    whose negative source coordinates linear mode clamps to 0 as PyTorch, or align_corners.
    With scale_factor the scales go in, as PyTorch reads source dst / scale, not dst * in / out."""
    (x,), t, a = n.inputs, n.in_types[0], n.attrs
    scales, sizes = None, b.shape(n.out_types[0].shape)
    if a["scale_factor"] is not None:
        spatial_out = zip(t.shape[2:], _scales(a, t.rank - 2), n.out_types[0].shape[2:],
                          strict=True)
        scales = b.const(np.array([1, 1, *(_onnx_scale(*s) for s in spatial_out)], np.float32))
        sizes = None
    if a["mode"] == "nearest":
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    else:
        corners = "align_corners" if a["align_corners"] else "half_pixel"
        mode = {"mode": "linear", "coordinate_transformation_mode": corners}
    b.node("Resize", trimmed([x, None, scales, sizes]), n.outputs, **mode)


def _resize_llvm(kb, n):
    """Source ratios known at compile time are computed as the reference does; the others
    (symbolic sizes) at run time."""
    x, y, a = n.in_types[0], n.out_types[0], n.attrs
    corners = bool(a["align_corners"])
    ratios = []
    for i, (size, out) in enumerate(zip(x.shape[2:], y.shape[2:], strict=True)):
        known = (size.is_const and out.is_const) or (a["scale_factor"] is not None
                                                     and not corners)
        ratios.append(_source_ratio(a, i, size.value if size.is_const else 0,
                                    out.value if out.is_const else 1, x.rank - 2, corners)
                      if known else None)
    _native("resize").resize(kb, n, ratios, a["mode"] == "nearest", corners)


register(OpRecord(
    "resize",
    tensors("x") + attrs(("size", None), ("scale_factor", None), ("mode", "nearest"),
                         ("align_corners", False)),
    _resize_infer, _resize_reference,
    "Resize the spatial axes, nearest or (bi)linear, as PyTorch's F.interpolate.",
    onnx=widened(_resize_onnx), llvm=_resize_llvm))
