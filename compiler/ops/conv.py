"""Convolution, transposed convolution and pooling with PyTorch semantics in NC(L)/NCHW layout.

conv, conv_transpose and the pools share one piece of window arithmetic (`_common.window_count`)
for their symbolic output sizes; their references slide one strided view (`_common.windows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dims import Dim
from ..errors import KilnError
from ..types import TensorType, shape_str
from ._common import (
    FLOATS,
    NUMERIC,
    as_dtype,
    attr_error,
    attrs,
    channel_shape,
    check_affine,
    check_channels_first,
    check_dtype,
    check_positive,
    check_rank,
    check_same_dtype,
    compute_dtype,
    divides,
    dtype_name,
    nn_native,
    optional,
    pad_or_crop,
    prod,
    spatial,
    tensors,
    to_int,
    transposed_count,
    upcast,
    window_count,
    windows,
)
from ._conv_grad import (
    bias_grad,
    conv_input_grad,
    conv_transpose_input_grad,
    conv_weight_grad,
    spatial_pads,
)
from ._emit import BF16_UP, chain, full_of, one, onnx_pads, trimmed, widened
from ._grad import expand_to, float_only, scalar, size_value
from .registry import OpError, OpRecord, Prop, internal, register

# the native backend splits a batch of these across threads (module._batch_split)
SAMPLEWISE = frozenset({Prop.SAMPLEWISE})


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
    check_affine(x, [bias], ["bias"], (w.shape[0],), "one value per output channel")
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
    return y if bias is None else y + upcast(bias).reshape(channel_shape(y))


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
    return nn_native("spatial").Window.of(x.shape[2:], geo.kernel, geo.stride, geo.dilation,
                               [lo for lo, _ in geo.pads], geo.out)


def _winograd_layout(kb, n) -> str | None:
    """The Winograd weight layout the layout pass chose for an f32 conv or conv_transpose
    (codegen/llvm/layout.py: "winograd", "winograd_or_packed", "winograd_lazy_or_packed")
    where its kernel takes that path: the weight is prepacked for it, and the GEMM is not the
    faster one (bf16 on AMX); else None."""
    layout = n.attrs.get("weight_layout")
    if (n.in_types[0].dtype == "f32" and layout is not None and layout.startswith("winograd")
            and 1 in n.prepacked
            and not nn_native("bf16").gemm_over_winograd(kb.module, kb.precision)):
        return layout
    return None


def _conv_llvm(kb, n):
    x, w, _bias = n.in_types
    window = _window(x, _conv_geometry(x, w, n.attrs))
    groups = to_int(n.attrs["groups"], "groups")
    layout = _winograd_layout(kb, n)
    if layout == "winograd":  # F(4, 3), the weight its transformed panels (winograd_b)
        nn_native("winograd").conv_winograd(kb, n, window)
    elif layout == "winograd_lazy_or_packed":
        # too large a U to keep: made during a call with enough samples, else the GEMM
        nn_native("winograd").conv_lazy(kb, n, window, lambda weight: nn_native(
            "conv").conv(kb, n, window, groups, weight))
    else:  # the im2col GEMM may apply a fused node's epilogue block by block (finish.py)
        nn_native("conv").conv(kb, n, window, groups, epilogue=kb.epilogue)


def _conv_macs(input_types, output_types, a) -> Dim:
    _x, w, _b = input_types
    (y,) = output_types
    return prod(y.shape) * prod(w.shape[1:])


def _conv_vjp(gb, node, cts):
    """dx a transposed convolution of the cotangent, dw a convolution of x and the cotangent
    (_conv_grad.py), the bias the cotangent's sum per channel."""
    (ct,), (x, w, bias) = cts, node.inputs
    geo = _conv_geometry(x.type, w.type, node.attrs)
    groups = to_int(node.attrs["groups"], "groups")
    pads = list(geo.pads)
    return [conv_input_grad(gb, ct, w, x.type.shape[2:], geo.stride, geo.dilation, pads, groups),
            conv_weight_grad(gb, x, ct, w.type.shape[2:], geo.stride, geo.dilation, pads,
                             groups),
            None if bias is None else bias_grad(gb, ct)]


register(OpRecord(
    "conv",
    tensors("x", "weight") + optional("bias")
    + attrs(("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    _conv_infer, _conv_reference,
    "1-D or 2-D convolution (cross-correlation), PyTorch's conv1d/conv2d.", macs=_conv_macs,
    onnx=widened(_conv_onnx), llvm=_conv_llvm,
    props=SAMPLEWISE | {Prop.ANCHOR}, packed_weight="a", vjp=_conv_vjp))


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
    check_affine(x, [bias], ["bias"], (channels,), "one value per output channel")
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
    window = nn_native("spatial").Window.of(x.shape[2:], w.shape[2:], stride, dilation, padding,
                                            out)
    groups = to_int(n.attrs["groups"], "groups")
    layout = _winograd_layout(kb, n)

    def gemm(weight):  # the GEMM and scatter on the panels at `weight`
        nn_native("conv").conv_transpose(kb, n, window, groups, weight)

    if layout in ("winograd", "winograd_or_packed"):
        # a 4x4 stride-2 one as its stride-1 3x3 form in F(4, 3), the weight transformed for
        # it (winograd_ct), or that and the GEMM's panels (winograd_ct_or_b), one of the two
        # chosen by the batch
        nn_native("winograd").conv_transpose_winograd(
            kb, n, None if layout == "winograd" else gemm)
    elif layout == "winograd_lazy_or_packed":
        # too large a U to keep: made during a call with enough samples, else the GEMM
        nn_native("winograd").conv_transpose_lazy(kb, n, gemm)
    else:
        nn_native("conv").conv_transpose(kb, n, window, groups)


def _conv_transpose_macs(input_types, _output_types, _a) -> Dim:
    x, w, _b = input_types
    return prod(x.shape) * prod(w.shape[1:])


def _conv_transpose_vjp(gb, node, cts):
    """conv's rule read backwards: conv_transpose(x, w) is the input gradient of a conv with
    the same attributes, so dx is that conv of the cotangent, and dw that conv's weight
    gradient with the cotangent as its input and x as its result's cotangent."""
    (ct,), (x, w, bias) = cts, node.inputs
    stride, dilation, padding, _, _ = _conv_transpose_geometry(x.type, w.type, node.attrs)
    groups = to_int(node.attrs["groups"], "groups")
    pads = [(Dim.of(p), Dim.of(p)) for p in padding]
    return [conv_transpose_input_grad(gb, ct, w, x.type.shape[2:], stride, dilation, padding,
                                      groups),
            conv_weight_grad(gb, ct, x, w.type.shape[2:], stride, dilation, pads, groups),
            None if bias is None else bias_grad(gb, ct)]


register(OpRecord(
    "conv_transpose",
    tensors("x", "weight") + optional("bias")
    + attrs(("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)),
    _conv_transpose_infer, _conv_transpose_reference,
    "1-D or 2-D transposed convolution, weight [C_in, C_out/groups, *k] (PyTorch's layout).",
    macs=_conv_transpose_macs, onnx=widened(_conv_transpose_onnx), llvm=_conv_transpose_llvm,
    props=SAMPLEWISE | {Prop.ANCHOR}, packed_weight="b", vjp=_conv_transpose_vjp))


# depthwise_weight_grad: a depthwise convolution's weight gradient ----------------------------
def _dw_grad_geometry(x: TensorType, grad: TensorType, a: dict) -> tuple:
    """(kernel, stride, dilation, pads as (before, after) pairs, channel multiplier) of a
    depthwise_weight_grad call, its sizes checked against x and grad."""
    n = _spatial_rank(x)
    check_rank(grad, (x.rank,), "grad", f"rank {x.rank} like x")
    kernel = spatial(a["kernel_size"], n, "kernel_size")
    stride = spatial(a["stride"], n, "stride")
    dilation = spatial(a["dilation"], n, "dilation")
    flat = spatial(a["pads"], 2 * n, "pads", minimum=0)
    pads = tuple(zip(flat[::2], flat[1::2], strict=True))
    channels, outs = x.shape[1], grad.shape[1]
    if not channels.is_const or not divides(outs, channels.value) or grad.shape[0] != x.shape[0]:
        raise OpError(f"grad {shape_str(grad.shape)} is not a depthwise convolution's result "
                      f"over x {shape_str(x.shape)} (a multiple of its constant channels)",
                      arg="grad")
    out = tuple(window_count(size, k, s, lo, hi, d) for size, k, s, (lo, hi), d
                in zip(x.shape[2:], kernel, stride, pads, dilation, strict=True))
    if tuple(grad.shape[2:]) != out:
        raise OpError(f"grad {shape_str(grad.shape)} is not the convolution's output size "
                      f"{shape_str(out)}", arg="grad")
    return kernel, stride, dilation, pads, outs // channels.value


def _dw_grad_infer(types, a):
    x, grad = types
    check_dtype(x, FLOATS, "x")
    check_same_dtype([x, grad], ["x", "grad"])
    kernel, *_ = _dw_grad_geometry(x, grad, a)
    return [TensorType(x.dtype, (grad.shape[1], Dim.of(1), *map(Dim.of, kernel)))]


def _dw_grad_reference(env, inputs, a):
    """dw[c * m + k, 0, t] = sum over samples and output pixels p of grad[n, c * m + k, p] *
    xpad[n, c, p * s + t * d], through the windows of the padded x."""
    x, grad = inputs
    types = [TensorType(dtype_name(v), v.shape) for v in inputs]
    kernel, stride, dilation, pads, _ = _dw_grad_geometry(*types, a)
    xp = pad_or_crop(upcast(x), [(0, 0), (0, 0), *pads])
    out = grad.shape[2:]
    win = windows(xp, kernel, stride, dilation, out)  # [N, C, *out, *K]
    n, channels = x.shape[:2]
    g = upcast(grad).reshape(n, channels, grad.shape[1] // channels, *out)
    o, k = "xyz"[:len(out)], "uvw"[:len(out)]
    dw = np.einsum(f"nc{o}{k},ncm{o}->cm{k}", win, g, optimize=True)
    return [dw.reshape(grad.shape[1], 1, *kernel).astype(x.dtype)]


def _dw_grad_onnx(b, n):
    """The general form (_conv_grad.conv_weight_grad): a Conv of x with batch and channels
    swapped, [1, C * N, *S], grouped by channel, with grad [O, N, *out] as its weight, stride
    and dilation exchanged, cut to the kernel."""
    x, grad = n.in_types
    kernel, stride, dilation, pads, _ = _dw_grad_geometry(x, grad, n.attrs)
    spatial_axes = list(range(2, x.rank))
    swap = [1, 0, *spatial_axes]
    source = one(b, "Reshape", one(b, "Transpose", n.inputs[0], perm=swap),
                 b.ints([1, -1] + [0] * len(kernel)))
    weight = one(b, "Transpose", n.inputs[1], perm=swap)
    full = one(b, "Conv", source, weight, strides=list(dilation), dilations=list(stride),
               pads=onnx_pads(b, pads), group=x.shape[1].value)
    cut = one(b, "Slice", full, b.ints([0] * len(kernel)), b.ints(list(kernel)),
              b.ints(spatial_axes))
    b.node("Transpose", [cut], n.outputs, perm=swap)


def _dw_grad_llvm(kb, n):
    x, grad = n.in_types
    kernel, stride, dilation, pads, _ = _dw_grad_geometry(x, grad, n.attrs)
    window = nn_native("spatial").Window.of(x.shape[2:], kernel, stride, dilation,
                                            [lo for lo, _ in pads], grad.shape[2:])
    nn_native("depthwise_grad").depthwise_weight_grad(kb, n, window)


def _dw_grad_macs(input_types, _output_types, a) -> Dim:
    _x, grad = input_types
    return prod(grad.shape) * math.prod(spatial(a["kernel_size"], grad.rank - 2, "kernel_size"))


def _dw_grad_vjp(gb, node, cts):
    """Linear in each operand: with G the cotangent of dw, grad's is the depthwise
    convolution of x with G as its weight, and x's that convolution's input gradient."""
    (g,), (x, grad) = cts, node.inputs
    kernel, stride, dilation, pads, _ = _dw_grad_geometry(x.type, grad.type, node.attrs)
    channels = x.type.shape[1].value
    pads = [(Dim.of(lo), Dim.of(hi)) for lo, hi in pads]
    dgrad = gb.op("conv", spatial_pads(gb, x, pads), g, None, stride=list(stride),
                  padding=[0] * len(kernel), dilation=list(dilation), groups=channels)
    dx = conv_input_grad(gb, grad, g, x.type.shape[2:], stride, dilation, pads, channels)
    return [dx, dgrad]


register(internal(OpRecord(
    "depthwise_weight_grad",
    tensors("x", "grad") + attrs("kernel_size", ("stride", 1), ("pads", 0), ("dilation", 1)),
    _dw_grad_infer, _dw_grad_reference,
    "A depthwise convolution's weight gradient, [C * m, 1, *k]: dw[c * m + j, 0, t] = sum of "
    "grad[n, c * m + j, p] * xpad[n, c, p * stride + t * dilation] over samples n and output "
    "pixels p, x padded by pads (before, after per spatial axis).",
    macs=_dw_grad_macs, onnx=widened(_dw_grad_onnx), llvm=_dw_grad_llvm,
    vjp=float_only(_dw_grad_vjp))))


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
    nn_native("pool").max_pool(kb, n, _window(x, _pool_geometry(x, n.attrs)))


def _avg_pool_llvm(kb, n):
    x = n.in_types[0]
    nn_native("pool").avg_pool(kb, n, _window(x, _pool_geometry(x, n.attrs)),
                       bool(n.attrs["count_include_pad"]))


# pooling gradients -------------------------------------------------------------------------
def _pool_attrs(a: dict) -> dict:
    """max_pool's window attributes (what max_pool_grad takes too)."""
    return {k: a[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


def _max_pool_vjp(gb, node, cts):
    """The cotangent of each window to its maximum (max_pool_grad)."""
    (x,) = node.inputs
    return [gb.op("max_pool_grad", x, cts[0], **_pool_attrs(node.attrs))]


def _avg_pool_vjp(gb, node, cts):
    """The cotangent over the divisor, spread evenly over each window: per plane, the input
    gradient of a convolution with a kernel of ones. The divisors are that convolution of the
    cells PyTorch counts (ones over the input, or over the input and its padding), in the
    graph so that a symbolic size needs nothing at compile time."""
    (ct,), (x,) = cts, node.inputs
    t, a = x.type, node.attrs
    geo = _pool_geometry(t, a)
    tiled = _tiled_avg_pool_grad(gb, ct, t, geo)
    if tiled is not None:
        return [tiled]
    if a["ceil_mode"] and not all(d.is_const for d in t.shape[2:]):
        # the last window's overhang past the padding is known only at run time
        raise KilnError("K0815", f"avg_pool's gradient with ceil_mode needs constant spatial "
                        f"sizes, not {shape_str(t.shape)}", gb.span,
                        hint="declare the input's spatial sizes as numbers (f32[B, 3, 32, 32])")
    kernel = gb.constant(np.ones((1, 1, *(k.value for k in geo.kernel)), t.np_dtype))
    counted_pad = bool(a["count_include_pad"])
    sizes = [size + 2 * lo if counted_pad else size for size, (lo, _) in zip(t.shape[2:], geo.pads,
                                                                          strict=True)]
    if all(d.is_const for d in sizes):
        cells = gb.constant(np.ones((1, 1, *(d.value for d in sizes)), t.np_dtype))
    else:
        cells = gb.op("full", shape=[1, 1, *sizes], value=1.0, dtype=t.dtype)
    around = [(Dim.of(0), hi - lo) if counted_pad else (lo, hi) for lo, hi in geo.pads]
    cells = spatial_pads(gb, cells, around)
    divisor = gb.op("conv", cells, kernel, None, stride=list(geo.stride))
    planes = gb.reshape(gb.div(ct, divisor), [t.shape[0] * t.shape[1], Dim.of(1), *geo.out])
    grad = conv_input_grad(gb, planes, kernel, t.shape[2:], geo.stride, geo.dilation,
                           list(geo.pads), 1)
    return [gb.reshape(grad, list(t.shape))]


def _tiled_avg_pool_grad(gb, ct, t: TensorType, geo: Conv):
    """avg_pool's gradient where the windows tile the input (stride = kernel, no padding, no
    dilation; the rows and columns past the last window get nothing): each cotangent over
    the window's size, repeated over its window (a broadcast), not a transposed convolution
    of a kernel of ones, which runs at a few GFLOP/s. None where the windows do not tile."""
    kernel = [k.value for k in geo.kernel]
    zero = Dim.of(0)
    if (list(geo.stride) != kernel or any(d != 1 for d in geo.dilation)
            or any(lo != zero or hi != zero for lo, hi in geo.pads)):
        return None
    n, c = t.shape[:2]
    spread, tiled, covered = [], [], []
    for out, k in zip(geo.out, kernel, strict=True):
        spread += [out, Dim.of(1)]
        tiled += [out, Dim.of(k)]
        covered.append(out * k)
    g = gb.div(ct, scalar(gb, math.prod(kernel), t.dtype))
    g = gb.reshape(g, [n, c, *spread])
    g = gb.op("broadcast_to", g, shape=[n, c, *tiled])
    g = gb.reshape(g, [n, c, *covered])
    return spatial_pads(gb, g, [(zero, size - got)
                                for size, got in zip(t.shape[2:], covered, strict=True)])


def _global_avg_pool_vjp(gb, node, cts):
    """The cotangent over the plane's size, on every element of the plane."""
    (x,) = node.inputs
    return [expand_to(gb, gb.div(cts[0], size_value(gb, prod(x.type.shape[2:]), x.type.dtype)),
                      x.type)]


def _max_pool_grad_infer(types, a):
    x, grad = types
    check_dtype(x, FLOATS, "x")
    check_same_dtype([x, grad], ["x", "grad"])
    want = _pool_infer(FLOATS)([x], a)[0]
    if grad.shape != want.shape:
        raise OpError(f"grad {shape_str(grad.shape)} is not the pooled shape "
                      f"{shape_str(want.shape)}", arg="grad")
    return [x]


def _max_pool_grad_reference(env, inputs, a):
    """PyTorch's rule for each window: its first maximum among the input cells (padding is
    never chosen; a window of -inf picks its first cell), or its last NaN; the window's
    cotangent added there (nowhere for a window that covers no input cell)."""
    x, grad = inputs
    xs = upcast(x)
    geo = _pool_geometry(TensorType(dtype_name(x), x.shape), a)
    kernel, pads, out = geo.concrete(env)
    plane = int(np.prod(x.shape[2:], dtype=np.int64))
    where = np.pad(np.arange(plane).reshape(x.shape[2:]), pads, constant_values=-1)
    cells = windows(where, kernel, geo.stride, geo.dilation, out).reshape(*out, -1)
    values = windows(np.pad(xs, [(0, 0), (0, 0)] + pads, constant_values=-np.inf), kernel,
                     geo.stride, geo.dilation, out).reshape(*x.shape[:2], *out, -1)
    valid = cells >= 0
    best = np.where(valid, values, -np.inf).max(axis=-1, keepdims=True)
    first = np.argmax(valid & (values == best), axis=-1)
    nans = valid & np.isnan(values)
    last_nan = nans.shape[-1] - 1 - np.argmax(nans[..., ::-1], axis=-1)
    pick = np.where(nans.any(axis=-1), last_nan, first)
    at = np.take_along_axis(np.broadcast_to(cells, values.shape), pick[..., None], -1)[..., 0]
    planes = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * len(out))
    reached = at >= 0  # a window over padding alone (dilation past the input) passes nothing
    total = np.bincount((planes * plane + np.maximum(at, 0)).ravel(),
                        weights=np.where(reached, upcast(grad), 0).ravel(), minlength=x.size)
    return [total.reshape(x.shape).astype(x.dtype)]


def _max_pool_grad_onnx(b, n):
    """MaxPool's indices (flat over the whole input; the first maximum of a window, as
    PyTorch), then the cotangents added there by ScatterElements. onnxruntime's MaxPool never
    picks a NaN, nor a -inf (a window of NaN or -inf alone differs from the reference)."""
    x, grad = n.inputs
    geo, window = _pool_window(b, n)
    _, indices = b.node("MaxPool", [x], 2, dilations=list(geo.dilation), **window)
    flat = b.ints([-1])
    zeros = one(b, "Mul", one(b, "Reshape", x, flat), b.const(0.0, n.in_types[0].dtype))
    summed = one(b, "ScatterElements", zeros, one(b, "Reshape", indices, flat),
                 one(b, "Reshape", grad, flat), axis=0, reduction="add")
    b.node("Reshape", [summed, one(b, "Shape", x)], n.outputs)


def _max_pool_grad_llvm(kb, n):
    x = n.in_types[0]
    nn_native("pool").max_pool_grad(kb, n, _window(x, _pool_geometry(x, n.attrs)))


register(internal(OpRecord(
    "max_pool_grad",
    tensors("x", "grad") + attrs("kernel_size", ("stride", None), ("padding", 0),
                                 ("dilation", 1), ("ceil_mode", False)),
    _max_pool_grad_infer, _max_pool_grad_reference,
    "max_pool's gradient: each window's grad added at its first maximum in x (PyTorch's rule).",
    onnx=widened(_max_pool_grad_onnx), llvm=_max_pool_grad_llvm)))


# max_pool of integers runs in f64 (exact for i32): onnxruntime's MaxPool has no int32 kernel
register(OpRecord(
    "max_pool",
    tensors("x") + attrs("kernel_size", ("stride", None), ("padding", 0), ("dilation", 1),
                         ("ceil_mode", False)),
    _pool_infer(NUMERIC), _max_pool_reference,
    "1-D or 2-D max pooling (padding counts as -inf), PyTorch's max_pool1d/2d.",
    onnx=widened(_max_pool_onnx, {**BF16_UP, "i32": "f64", "i64": "f64"}), llvm=_max_pool_llvm,
    props=SAMPLEWISE, vjp=float_only(_max_pool_vjp)))
register(OpRecord(
    "avg_pool",
    tensors("x") + attrs("kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                         ("count_include_pad", True)),
    _pool_infer(FLOATS), _avg_pool_reference,
    "1-D or 2-D average pooling, PyTorch's avg_pool1d/2d.", onnx=widened(_avg_pool_onnx),
    llvm=_avg_pool_llvm,
    props=SAMPLEWISE, vjp=_avg_pool_vjp))


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
    check_channels_first(x, 3)
    return [TensorType(x.dtype, x.shape[:2] + (Dim.of(1),) * (x.rank - 2))]


register(OpRecord(
    "global_avg_pool", tensors("x"), _global_avg_pool_infer,
    lambda env, inputs, a: [np.mean(upcast(inputs[0]), axis=tuple(range(2, inputs[0].ndim)),
                                    keepdims=True).astype(inputs[0].dtype)],
    "Mean over every spatial axis, kept as size 1 (ONNX GlobalAveragePool).",
    onnx=widened(_global_avg_pool_onnx),
    llvm=lambda kb, n: nn_native("pool").global_avg_pool(kb, n),
    props=SAMPLEWISE, vjp=_global_avg_pool_vjp))
