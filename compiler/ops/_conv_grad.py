"""The adjoints of a convolution, written with conv, conv_transpose and movement ops, which the
gradient rules of conv, conv_transpose and avg_pool share (conv.py attaches them).

For y = conv(x, w) with stride s, dilation d and padding (lo, hi) along each spatial axis:

    dx = conv_transpose(dy, w, stride=s, dilation=d), cropped to the padded input's window
    dw = conv(x^T, dy^T, stride=d, dilation=s), x^T = x with batch and channels swapped
         (per group), dy^T = dy likewise: the packed GEMM the forward conv uses, with the
         batch as the reduction

and conv_transpose is conv's input gradient, so its own gradients are these two read backwards
(conv.py). Every size here is a Dim of the graph's types: the crops are `pad` ops with negative
widths, which need constant spatial sizes (a symbolic batch is fine).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dims import Dim
from .views import range_on

Pads = list[tuple[Dim, Dim]]
MIN_TAP_COLUMNS = 16  # a shifted GEMM narrower than this runs far from peak


def spatial_pads(gb: Any, x: Any, widths: list[tuple[Dim, Dim]]) -> Any:
    """x padded (positive widths) or cropped (negative) along its spatial axes, by (before,
    after) per spatial axis; x itself where every width is 0."""
    widths = [(Dim.of(lo), Dim.of(hi)) for lo, hi in widths]
    if all(lo == Dim.of(0) and hi == Dim.of(0) for lo, hi in widths):
        return x
    flat: list[Dim] = []
    for lo, hi in reversed(widths):  # F.pad's order: the last axis first
        flat += [lo, hi]
    return gb.op("pad", x, pads=flat)


def padded_permute(gb: Any, x: Any, perm: list[int], widths: list[tuple[Any, Any]]) -> Any:
    """x permuted by perm inside a border of zeros, widths (before, after) per result axis
    (at least 0): one padded_permute (one pass over the result, not a permute's and then a
    pad's), or the permute alone where every width is 0."""
    flat = [Dim.of(w) for pair in widths for w in pair]
    if all(w == Dim.of(0) for w in flat):
        return gb.permute(x, perm)
    return gb.op("padded_permute", x, perm=perm, pads=flat)


def _symmetric(pads: Pads) -> list[int] | None:
    """The padding as conv's `padding` attribute when it is the same, constant, on both sides."""
    if all(lo == hi and lo.is_const for lo, hi in pads):
        return [lo.value for lo, _ in pads]
    return None


def conv_input_grad(gb: Any, ct: Any, w: Any, sizes: tuple[Dim, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...], pads: Pads, groups: int) -> Any:
    """The gradient of conv(x, w) with respect to x [N, C, *sizes], given the cotangent ct of
    its result: a transposed convolution of ct, cut to where x sat in the padded input.

    The transposed convolution with padding p covers padded coordinates [p, F - p), F = (out
    - 1) * s + d * (k - 1) + 1; x is [lo, lo + size), and past F lie zeros (positions no window
    reached). p is what both ends may lose: at most lo, and at most what F reaches past x.

    With stride 1, one group and the same constant padding lo on both sides it is instead a
    convolution of ct with w's channels swapped and its kernel flipped, padded by
    d * (k - 1) - lo: the forward convolution's kernel, much faster than the transposed one's
    scatter of columns."""
    for fast in (_flipped_conv_input_grad, _pointwise_strided_input_grad,
                 _phase_input_grad):
        grad = fast(gb, ct, w, sizes, stride, dilation, pads, groups)
        if grad is not None:
            return grad
    kernel = w.type.shape[2:]
    reach = [(out - 1) * s + d * (k - 1) + 1 for out, k, s, d
             in zip(ct.type.shape[2:], kernel, stride, dilation, strict=True)]
    shared = []
    for size, (lo, _hi), f in zip(sizes, pads, reach, strict=True):
        past = f - lo - size
        shared.append(max(0, min(lo.value, past.value))
                      if lo.is_const and past.is_const else 0)
    full = gb.op("conv_transpose", ct, w, None, stride=list(stride), padding=shared,
                 dilation=list(dilation), groups=groups)
    widths = [(p - lo, size + lo + p - f)
              for size, (lo, _hi), f, p in zip(sizes, pads, reach, shared, strict=True)]
    return spatial_pads(gb, full, widths)


def _flipped_conv_input_grad(gb: Any, ct: Any, w: Any, _sizes: tuple[Dim, ...],
                             stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                             groups: int) -> Any | None:
    """conv_input_grad as a stride-1 convolution (see there), or None where it does not apply.
    A depthwise convolution's (a group per input channel, m filters each) is one too, with
    groups C: input channel c sums its m outputs' cotangents, each through its filter
    flipped, so the weight [C * m, 1, *k] is read as [C, m, *k]."""
    kernel = [Dim.of(k) for k in w.type.shape[2:]]
    depthwise = groups > 1 and w.type.shape[1] == Dim.of(1)
    if groups != 1 and not depthwise or any(s != 1 for s in stride) or not all(
            k.is_const for k in kernel):
        return None
    padding = []
    for (lo, hi), k, d in zip(pads, kernel, dilation, strict=True):
        if not (lo.is_const and hi.is_const and lo.value == hi.value):
            return None
        padding.append(d * (k.value - 1) - lo.value)
    if any(p < 0 for p in padding):
        return None
    spatial = list(range(2, w.type.rank))
    if depthwise:
        filters = gb.reshape(w, [groups, w.type.shape[0] // groups, *kernel])
        return gb.op("conv", ct, gb.op("flip", filters, axis=spatial), None,
                     stride=list(stride), padding=padding, dilation=list(dilation),
                     groups=groups)
    turned = gb.op("flip", gb.permute(w, [1, 0, *spatial]), axis=spatial)
    return gb.op("conv", ct, turned, None, stride=list(stride), padding=padding,
                 dilation=list(dilation), groups=1)


def _pointwise_strided_input_grad(gb: Any, ct: Any, w: Any, sizes: tuple[Dim, ...],
                                  stride: tuple[int, ...], _dilation: tuple[int, ...],
                                  pads: Pads, groups: int) -> Any | None:
    """conv_input_grad of an ungrouped 1x1 convolution without padding, constant spatial
    sizes and a stride (a ResNet's downsampling shortcut), or None for another: output pixel
    j read input pixel j * s alone, so dx is the cotangent's channels mixed by w^T (a 1x1
    convolution, the forward's kernel) placed every s-th pixel, zeros between and after the
    last window (a transposed convolution's scatter ran this at a few GFLOP/s)."""
    kernel = [Dim.of(k) for k in w.type.shape[2:]]
    zero = Dim.of(0)
    if (groups != 1 or any(k != Dim.of(1) for k in kernel) or all(s == 1 for s in stride)
            or any(lo != zero or hi != zero for lo, hi in pads)
            or not all(Dim.of(d).is_const for d in (*sizes, *ct.type.shape[2:]))):
        return None
    spatial = list(range(2, w.type.rank))
    mixed = gb.op("conv", ct, gb.permute(w, [1, 0, *spatial]), None,
                  stride=[1] * len(spatial), padding=[0] * len(spatial))  # [N, C, *out]
    # every pixel followed by s - 1 zeros along each axis: one pad of [N, C, o1, 1, o2, 1, ...]
    # (a strided slice's adjoint, all axes in one pass), then the ends cut or padded to x's
    n, channels, *out = mixed.type.shape
    spread = gb.reshape(mixed, [n, channels, *(d for o in out for d in (o, Dim.of(1)))])
    widths = [w for s in reversed(stride) for w in (zero, Dim.of(s - 1), zero, zero)]
    spread = gb.op("pad", spread, pads=widths)
    spread = gb.reshape(spread, [n, channels, *(o * s for o, s in zip(out, stride, strict=True))])
    return spatial_pads(gb, spread, [(zero, Dim.of(size) - o * s)
                                      for size, o, s in zip(sizes, out, stride, strict=True)])


def _phase_input_grad(gb: Any, ct: Any, w: Any, sizes: tuple[Dim, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                      groups: int) -> Any | None:
    """conv_input_grad of an ungrouped, undilated, strided 2-D convolution with constant
    sizes, each spatial size a multiple of its stride (a ResNet's downsampling 3x3), or None
    for another: one stride-1 convolution per output phase, interleaved. Along an axis of
    stride s, kernel k and leading padding lo, input pixel i = s * m + r (phase r) is reached
    by taps t = t0 + s * q (t0 = (r + lo) mod s, q < Q) from output pixels m + c - q,
    c = (r + lo - t0) / s: a correlation of the cotangent, shifted by c - (Q - 1) (a pad or
    crop), with the taps t0, t0 + s, ... reversed. The forward's kernel runs each phase at a
    stride-1 convolution's speed (the transposed convolution's scatter ran at half of it);
    one concat and one permute interleave the phases. A phase no tap reaches (k < s) is
    left to the transposed convolution."""
    if (groups != 1 or w.type.rank != 4 or all(s == 1 for s in stride)
            or any(d != 1 for d in dilation)):
        return None
    dims = [*sizes, *ct.type.shape[2:], *w.type.shape[2:], *(lo for lo, _hi in pads)]
    if not all(Dim.of(d).is_const for d in dims):
        return None
    size, out, kernel, lead = ([Dim.of(d).value for d in dims[i:i + 2]] for i in (0, 2, 4, 6))
    if any(n % s for n, s in zip(size, stride, strict=True)):
        return None
    plans = []  # per axis, per phase: (first tap, taps, shift of the cotangent)
    for k, s, lo in zip(kernel, stride, lead, strict=True):
        plan = []
        for r in range(s):
            t0 = (r + lo) % s
            taps = len(range(t0, k, s))
            if taps == 0:
                return None
            plan.append((t0, taps, (r + lo - t0) // s - (taps - 1)))
        plans.append(plan)
    rows, cols = (n // s for n, s in zip(size, stride, strict=True))
    turned = gb.permute(w, [1, 0, 2, 3])  # [C, O, kh, kw]: the cotangent's channels in
    whole = [("range", None, None, 1)] * 2
    phases = []
    for t0h, kh, ah in plans[0]:
        for t0w, kw, aw in plans[1]:
            taps = gb.op("slice", turned, items=whole + [
                ("range", t0h, t0h + stride[0] * (kh - 1) + 1, stride[0]),
                ("range", t0w, t0w + stride[1] * (kw - 1) + 1, stride[1])])
            taps = gb.op("flip", taps, axis=[2, 3])
            source = spatial_pads(gb, ct, [(Dim.of(-ah), Dim.of(rows + ah + kh - 1 - out[0])),
                                           (Dim.of(-aw), Dim.of(cols + aw + kw - 1 - out[1]))])
            phases.append(gb.op("conv", source, taps, None, stride=[1, 1], padding=[0, 0]))
    n, channels = ct.type.shape[0], w.type.shape[1]
    stacked = gb.op("concat", [gb.reshape(p, [1, n, channels, rows, cols]) for p in phases],
                    axis=0)  # [(rh, rw), N, C, rows, cols]
    stacked = gb.reshape(stacked, [stride[0], stride[1], n, channels, rows, cols])
    grid = gb.permute(stacked, [2, 3, 4, 0, 5, 1])  # [N, C, rows, rh, cols, rw]
    return gb.reshape(grid, [n, channels, *sizes])


def conv_transpose_input_grad(gb: Any, ct: Any, w: Any, sizes: tuple[Dim, ...],
                              stride: tuple[int, ...], dilation: tuple[int, ...],
                              padding: tuple[int, ...], groups: int) -> Any:
    """The gradient of conv_transpose(x, w) with respect to x [N, C, *sizes]: the convolution
    whose input gradient conv_transpose is, of ct, cut to x's sizes (an output_padding past
    the stride gives the convolution room for more windows than x has)."""
    grad = gb.op("conv", ct, w, None, stride=list(stride), padding=list(padding),
                 dilation=list(dilation), groups=groups)
    return spatial_pads(gb, grad, [(Dim.of(0), size - got)
                                    for size, got in zip(sizes, grad.type.shape[2:], strict=True)])


def _swap_batch_channels(gb: Any, x: Any, groups: int) -> Any:
    """x [N, g * C, *S] as [C, g * N, *S]: each group's channels become the batch, and the
    batch the channels of that group (conv's grouped channel order, group major)."""
    n, channels, *spatial = x.type.shape
    if groups == 1:
        return gb.permute(x, [1, 0, *range(2, 2 + len(spatial))])
    rest = list(range(3, 3 + len(spatial)))
    split = gb.reshape(x, [n, Dim.of(groups), channels // groups, *spatial])
    moved = gb.permute(split, [2, 1, 0, *rest])
    return gb.reshape(moved, [channels // groups, n * groups, *spatial])


def _channels_first(gb: Any, ct: Any) -> Any:
    """ct [N, O, *S] as [O, N, *S]: as a weight of a grouped conv, output channel o of group
    o // (O / g) reads the batch (the group's input channels)."""
    return gb.permute(ct, [1, 0, *range(2, ct.type.rank)])


def conv_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...], stride: tuple[int, ...],
                     dilation: tuple[int, ...], pads: Pads, groups: int) -> Any:
    """The gradient of conv(x, w) with respect to w [O, C/g, *kernel], given x [N, C, *S] and
    the cotangent ct [N, O, *out] of its result:

        dw[o, c, k] = sum over n and j of ct[n, o, j] * xpad[n, c, j * s + k * d]

    A depthwise convolution's (a group per input channel) is one depthwise_weight_grad, a
    direct kernel (`_depthwise_weight_grad`). A 2-D ungrouped f32 convolution of stride 1
    (symbolic image sizes too) takes it as one GEMM per kernel tap over shifted rows of the
    channels-last input (`_shifted_weight_grad`), one of another stride likewise over rows
    holding `stride` input rows side by side, read every stride-th row
    (`_phase_weight_grad`; a strided 1x1 without padding first takes the pixels it reads,
    `_strided_pointwise_weight_grad`), or else as one GEMM per kernel row over gathered
    patches (`_patches_weight_grad`); others as a convolution of x (batch and channels
    swapped, so the batch is what the GEMM reduces) with ct as its weight, the stride and
    dilation exchanging roles, whose windows may run past the kernel by what the forward's
    last window left unread, which is cut off.
    That convolution has a kernel as large as the output and a handful of output pixels,
    which the GEMM runs at a few % of peak."""
    for fast in (_depthwise_weight_grad, _shifted_weight_grad, _strided_pointwise_weight_grad,
                 _phase_weight_grad, _sized_phase_weight_grad, _patches_weight_grad):
        grad = fast(gb, x, ct, kernel, stride, dilation, pads, groups)
        if grad is not None:
            return grad
    symmetric = _symmetric(pads)
    source = _swap_batch_channels(gb, x, groups)
    if symmetric is None:
        source = spatial_pads(gb, source, pads)
        symmetric = [0] * len(pads)
    weight = _channels_first(gb, ct)
    grad = gb.op("conv", source, weight, None, stride=list(dilation), padding=symmetric,
                 dilation=list(stride), groups=groups)  # [C/g, O, *K'], K' >= kernel
    grad = spatial_pads(gb, grad, [(Dim.of(0), k - got)
                                    for k, got in zip(kernel, grad.type.shape[2:], strict=True)])
    return gb.permute(grad, [1, 0, *range(2, grad.type.rank)])


def _depthwise_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                           stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                           groups: int) -> Any | None:
    """conv_weight_grad of a depthwise convolution (groups = C > 1 constant channels, one
    input channel a group, any channel multiplier; constant kernel and padding, any image
    sizes, a stride of 1 or 2 along the last axis), or None for another: one
    depthwise_weight_grad, per output channel the taps' sums over samples and pixels.
    Through the general form it was a GEMM a few output pixels wide over a kernel the size
    of the image (1.4 GFLOP/s); the native kernel's vectors run along the last axis at
    stride 1 or 2 (a wider stride would run its direct loops, slower than the general form)."""
    channels = Dim.of(x.type.shape[1])
    if groups < 2 or channels != Dim.of(groups) or stride[-1] > 2:
        return None
    flat = [Dim.of(p) for pair in pads for p in pair]
    if not all(Dim.of(k).is_const for k in kernel) or not all(p.is_const for p in flat):
        return None
    return gb.op("depthwise_weight_grad", x, ct, kernel_size=[Dim.of(k).value for k in kernel],
                 stride=list(stride), pads=[p.value for p in flat], dilation=list(dilation))


def _row_gemm_sizes(x: Any, ct: Any, kernel: tuple[Dim, ...], pads: Pads,
                    groups: int, symbolic: bool = False) -> tuple | None:
    """(C, H, W, out_h, out_w, kh, kw, ((top, bottom), (left, right))) as ints, of an
    ungrouped 2-D f32 convolution whose sizes past the batch are constant (what the GEMMs
    over rows of its input need), or None for another. `symbolic`: H, W, out_h and out_w
    may be sizes (Dims; the channels, kernel and padding still constant)."""
    if (groups != 1 or x.type.rank != 4 or x.type.dtype != "f32"
            or ct.type.dtype != "f32"):
        return None
    spatial = [*x.type.shape[2:], *ct.type.shape[2:]]
    sizes = [x.type.shape[1], *spatial, *kernel, *(b for p in pads for b in p)]
    fixed = [sizes[0], *sizes[5:]] if symbolic else sizes
    if not all(Dim.of(d).is_const for d in fixed):
        return None
    values = [Dim.of(d).value if Dim.of(d).is_const else Dim.of(d) for d in sizes]
    return (*values[:7], ((values[7], values[8]), (values[9], values[10])))


def _shifted_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                         stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                         groups: int) -> Any | None:
    """conv_weight_grad of a 2-D f32 convolution with stride 1, groups = 1, constant channels
    and at least MIN_TAP_COLUMNS columns per kernel row (None for another), as GEMMs
    over shifted rows of the channels-last input, no patches:

        rows[(n, p, q), c] = xpad[n, c, p, q]               x channels-last, one copy
        ct'[o, (n, p, q)]  = ct[n, o, p, q], 0 where p >= out_h or q >= out_w
        dw[o, c, i, j]     = ct' @ rows[(i * dh * Wp + j * dw) + (n, p, q), c]

    With stride 1 the input row under output (p, q) for tap (i, j) is (p + i * dh, q + j *
    dw): the same flat row shifted by a constant, so each tap's operand is `rows` read from
    a row further down (shifted_matmul reads it in place). Without dilation along the width
    the taps of a kernel row are consecutive rows, which one GEMM of kw * C columns reads
    side by side (`span`); with fewer than MIN_TAP_COLUMNS of those (a stem's 1 or 3
    channels), the kh row shifts are first copied side by side as channels, and one GEMM of
    kh * kw * C columns takes every tap. ct' spans the padded grid, its extra positions zero,
    so the flat index runs over whole rows; `rows` has zero samples appended for the furthest
    window, which only those zeros read."""
    sizes = _row_gemm_sizes(x, ct, kernel, pads, groups, symbolic=True)
    if sizes is None or any(s != 1 for s in stride):
        return None
    channels, h, w, out_h, out_w, kh, kw, ((top, bottom), (left, right)) = sizes
    hp, wp = h + top + bottom, w + left + right
    if Dim.of(out_h + (kh - 1) * dilation[0]) != Dim.of(hp) or Dim.of(
            out_w + (kw - 1) * dilation[1]) != Dim.of(wp):
        return None  # the forward's shape rule guarantees this for stride 1
    span = kw if dilation[1] == 1 else 1
    stack = channels * span < MIN_TAP_COLUMNS  # a stem's few channels: kernel rows stacked
    if stack and (span != kw or channels * kh * kw < MIN_TAP_COLUMNS):
        return None
    n, outs = x.type.shape[0], ct.type.shape[1]
    grid = Dim.of(n) * Dim.of(hp) * Dim.of(wp)
    # with a symbolic width the shifts are sizes (shifted_matmul takes them, in this
    # increasing order)
    shifts = [i * dilation[0] * wp + j * dilation[1]
              for i in range(kh) for j in range(0, kw, span)]
    furthest = max(shifts) if all(isinstance(s, int) for s in shifts) else shifts[-1]
    rows = _channels_last_rows(gb, x, pads, furthest + span - 1)
    zero = Dim.of(0)
    spread = padded_permute(gb, ct, [1, 0, 2, 3], [(zero, zero), (zero, zero),
                                                   (zero, Dim.of(hp - out_h)),
                                                   (zero, Dim.of(wp - out_w))])
    flat = gb.reshape(spread, [outs, grid])
    if stack:  # one GEMM: the kh row shifts side by side as channels, the kw taps the span
        length = grid + Dim.of(kw - 1)
        stacked = gb.op("concat", [gb.op("slice", rows, items=range_on(0, s, length + s))
                                   for s in shifts], axis=1)  # [(p, q), (i, c)]
        taps = gb.op("shifted_matmul", flat, stacked, shifts=[0], span=kw)
        # taps[0, o, (j, i, c)] is dw[o, c, i, j]
        return gb.permute(gb.reshape(taps, [outs, kw, kh, channels]), [0, 3, 2, 1])
    taps = gb.op("shifted_matmul", flat, rows, shifts=shifts, span=span)
    # taps[(i, g), o, (s, c)] is dw[o, c, i, g * span + s]
    taps = gb.reshape(taps, [kh, kw // span, outs, span, channels])
    return gb.reshape(gb.permute(taps, [2, 4, 0, 1, 3]), [outs, channels, kh, kw])


def _channels_last_rows(gb: Any, x: Any, pads: Pads, tail: int | Dim) -> Any:
    """x [N, C, H, W] spatially padded, channels last, as rows [(n, p, q), C] followed by at
    least `tail` zero rows (what the furthest shifted window reads past the grid): one
    padded_permute, whose zero rows past the grid are whole samples appended
    (shifted_matmul leaves the rows past its furthest window unread)."""
    n, channels, h, w = x.type.shape
    (top, bottom), (left, right) = pads
    hp, wp = Dim.of(h) + top + bottom, Dim.of(w) + left + right
    zero = Dim.of(0)
    # tail <= (kh - 1) dh Wp + (kw - 1) dw + kw - 1 < 2 Hp Wp, so two samples always do
    extra = Dim.of(-(-tail // (hp * wp).value)) if isinstance(tail, int) and (
        hp * wp).is_const else Dim.of(2)
    padded = padded_permute(gb, x, [0, 2, 3, 1], [(zero, extra), (top, bottom), (left, right),
                                                  (zero, zero)])
    return gb.reshape(padded, [(Dim.of(n) + extra) * hp * wp, channels])


def _strided_pointwise_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                                   stride: tuple[int, ...], dilation: tuple[int, ...],
                                   pads: Pads, groups: int) -> Any | None:
    """conv_weight_grad of a strided 2-D 1x1 convolution without padding (a ResNet's
    downsampling shortcut; None for another): the pixels it reads, x[:, :, ::sh, ::sw] (a
    strided slice, a quarter of x at stride 2), then a stride-1 1x1's dw over them."""
    zero = Dim.of(0)
    if (x.type.rank != 4 or all(s == 1 for s in stride)
            or any(Dim.of(k) != Dim.of(1) for k in kernel)
            or any(lo != zero or hi != zero for lo, hi in pads)):
        return None
    out = ct.type.shape[2:]
    if not all(Dim.of(d).is_const for d in out):
        return None
    whole = [("range", None, None, 1)] * 2
    taken = gb.op("slice", x, items=whole + [("range", 0, (Dim.of(o).value - 1) * s + 1, s)
                                             for o, s in zip(out, stride, strict=True)])
    return _shifted_weight_grad(gb, taken, ct, kernel, (1, 1), dilation, [(zero, zero)] * 2,
                                groups)


def _phase_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                       stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                       groups: int) -> Any | None:
    """conv_weight_grad of a strided 2-D f32 convolution with groups = 1 and constant spatial
    sizes (None for another, or where its GEMMs would be narrower than MIN_TAP_COLUMNS), as
    GEMMs over rows that each hold sh input rows side by side, read every sw-th row:

        rows[(n, g, X), (r, c)] = x[n, c, sh * (g - lo) + r, X - left]   one copy, 0 outside
        ct'[o, (n, p, q)]       = ct[n, o, p, q], 0 where p >= out_h or q >= out_w
        out[d, o, (j, r, c)]    = ct' @ rows[sw * (n, p, q) + (d + lo) * Wp + j * dw, (r, c)]

    Kernel row i reads input row sh * p + e_i, e_i = i * dh - top = sh * d + r: group p + d,
    phase r. Over the grid [Hg, Wq] (Wp = sw * Wq), row (n, p, q) of ct' lands on row
    sw * (n, p, q) + (d + lo) * Wp of `rows` at output column q's first tap, so each group
    shift d is one GEMM with b read every sw-th row (shifted_matmul's step), the kw taps
    side by side (its span; without dilation along the width) and all sh phases as
    columns: kernel rows e = sh * d + r for every r, of which the kernel's are picked (a
    stride-2 3x3 computes 4 rows for 3: no patches, one copy of x instead of kh * kw)."""
    sizes = _row_gemm_sizes(x, ct, kernel, pads, groups)
    return None if sizes is None else _phase_rows_weight_grad(gb, x, ct, sizes, stride,
                                                              dilation)


def _sized_phase_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                             stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                             groups: int) -> Any | None:
    """_phase_weight_grad over symbolic image sizes (the channels, kernel and padding
    constant; None for another): the same GEMMs, their shifts sizes ((d + lo) * Wp + j),
    the grid's sizes bounds that hold for every image size where the constant form takes
    maxima: Hg = lo + ceil(H / sh) + ceil(bottom / sh) groups of rows (at least the input's
    and the furthest window's, floor(a / s) + floor(b / s) <= floor((a + b) / s)) and Wp =
    sw * ceil((left + W + right) / sw) columns (the windows end inside the padded row); x
    always gets the rows that complete its last group, a pad of (sh - H mod sh) mod sh."""
    if _row_gemm_sizes(x, ct, kernel, pads, groups) is not None:
        return None  # constant sizes: _phase_weight_grad
    sizes = _row_gemm_sizes(x, ct, kernel, pads, groups, symbolic=True)
    return None if sizes is None else _phase_rows_weight_grad(gb, x, ct, sizes, stride,
                                                              dilation)


def _phase_rows_weight_grad(gb: Any, x: Any, ct: Any, sizes: tuple, stride: tuple[int, ...],
                            dilation: tuple[int, ...]) -> Any | None:
    """The GEMMs of _phase_weight_grad (see there) over the sizes `_row_gemm_sizes` gave,
    ints or, with `_sized_phase_weight_grad`, Dims."""
    if all(s == 1 for s in stride):
        return None
    channels, h, w, out_h, out_w, kh, kw, ((top, bottom), (left, right)) = sizes
    sized = not all(isinstance(d, int) for d in (h, w, out_h, out_w))
    sh, sw = stride
    span = kw if dilation[1] == 1 else 1
    if span * sh * channels < MIN_TAP_COLUMNS:
        return None
    groups_of = [divmod(i * dilation[0] - top, sh) for i in range(kh)]  # (d, r) per row
    first, last = groups_of[0][0], groups_of[-1][0]
    lo = max(0, -first)
    if sized:  # bounds for every size (see _sized_phase_weight_grad)
        height = (Dim.of(h) + sh - 1) // sh
        hg = lo + height + -(-bottom // sh)
        wq = (Dim.of(w) + left + right + sw - 1) // sw
    else:
        height = -(-h // sh)  # whole groups of sh rows, the last one completed by zeros
        hg = max(lo + height, out_h + last + lo)
        reach = sw * (out_w - 1) + (kw - 1) * dilation[1] + 1
        wq = -(-max(left + w, reach) // sw)
    wp = wq * sw
    if Dim.of(height * sh - h) != Dim.of(0):
        x = spatial_pads(gb, x, [(Dim.of(0), Dim.of(height * sh - h)), (Dim.of(0), Dim.of(0))])
    n, outs = x.type.shape[0], ct.type.shape[1]
    zero = Dim.of(0)
    grouped = gb.reshape(x, [n, channels, height, sh, w])
    rows = padded_permute(gb, grouped, [0, 2, 4, 3, 1],
                          [(zero, Dim.of(1)), (Dim.of(lo), Dim.of(hg - lo - height)),
                           (Dim.of(left), Dim.of(wp - left - w)), (zero, zero), (zero, zero)])
    rows = gb.reshape(rows, [(Dim.of(n) + 1) * hg * wp, sh * channels])
    spread = padded_permute(gb, ct, [1, 0, 2, 3], [(zero, zero), (zero, zero),
                                                   (zero, Dim.of(hg - out_h)),
                                                   (zero, Dim.of(wq - out_w))])
    flat = gb.reshape(spread, [outs, Dim.of(n) * hg * wq])
    shifts = [(d + lo) * wp + j * dilation[1]
              for d in range(first, last + 1) for j in range(0, kw, span)]
    taps = gb.op("shifted_matmul", flat, rows, shifts=shifts, span=span, step=sw)
    # taps[(d, g), o, (s, r, c)] is the kernel row sh * d + r - top's tap g * span + s
    bands = last - first + 1
    taps = gb.reshape(taps, [bands, kw // span, outs, span, sh, channels])
    taps = gb.reshape(gb.permute(taps, [2, 5, 0, 4, 1, 3]), [outs, channels, bands * sh, kw])
    start = groups_of[0][1]  # kernel row 0's row among the bands (then every dh-th)
    return gb.op("slice", taps, items=range_on(2, start, start + dilation[0] * (kh - 1) + 1,
                                               dilation[0]))


def _patches_weight_grad(gb: Any, x: Any, ct: Any, kernel: tuple[Dim, ...],
                         stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads,
                         groups: int) -> Any | None:
    """conv_weight_grad of a 2-D convolution with groups = 1 and constant spatial sizes (None
    for another) as kernel-row-batched GEMMs over the input's patches:

        xt[r, n, q, c]               = xpad[n, c, r, q]           one copy of x
        rows[i, a, n, q, c]          = xt[a * s + i * d, n, q, c]  gather: kernel row i
        patches[i, a, n, b, j, c]    = rows[i, a, n, b * s' + j * d', c]
        dw'[i, o, (j, c)]            = ct'[o, (a, n, b)] @ patches[i, (a, n, b), (j, c)]

    with ct' = ct permuted to [O, out_h, N, out_w]: each kernel row's patches are contiguous
    rows (a, n, b) of (j, c) columns, so the GEMM reduces over batch and output pixels, and
    only dw' (the weight's size) is permuted back to [O, C, kh, kw]. The patches take
    kh * kw times the input's bytes."""
    if groups != 1 or x.type.rank != 4:
        return None
    sizes = [*x.type.shape[2:], *ct.type.shape[2:], *kernel, *(b for p in pads for b in p)]
    if not all(Dim.of(d).is_const for d in sizes):
        return None
    h, w, out_h, out_w, kh, kw = (Dim.of(d).value for d in sizes[:6])
    (top, bottom), (left, right) = ([Dim.of(b).value for b in p] for p in pads)
    rows_at = np.arange(out_h)[None, :] * stride[0] + np.arange(kh)[:, None] * dilation[0]
    cols_at = np.arange(out_w)[:, None] * stride[1] + np.arange(kw)[None, :] * dilation[1]
    if rows_at.max() >= h + top + bottom or cols_at.max() >= w + left + right:
        return None  # a window past the padded input: the convolution's shape rule refuses it
    n, channels = x.type.shape[:2]
    outs = ct.type.shape[1]
    zero = Dim.of(0)
    xt = padded_permute(gb, x, [2, 0, 3, 1], [pads[0], (zero, zero), pads[1], (zero, zero)])
    # [Hp, N, Wp, C]
    rows = gb.op("gather", xt, gb.constant(rows_at.astype(np.int64)), axis=0)
    patches = gb.op("gather", rows, gb.constant(cols_at.astype(np.int64)), axis=3)
    pixels = Dim.of(out_h) * Dim.of(n) * Dim.of(out_w)
    patches = gb.reshape(patches, [kh, pixels, kw * channels])
    ct_t = gb.reshape(gb.permute(ct, [1, 2, 0, 3]), [outs, pixels])
    grad = gb.reshape(gb.matmul(ct_t, patches), [kh, outs, kw, channels])  # [i, o, j, c]
    return gb.permute(grad, [1, 3, 0, 2])


def bias_grad(gb: Any, ct: Any) -> Any:
    """The gradient of a per-channel bias: ct summed over the batch and spatial axes."""
    return gb.op("sum", ct, axis=[0, *range(2, ct.type.rank)], keepdims=False)


__all__ = ["bias_grad", "conv_input_grad", "conv_transpose_input_grad", "conv_weight_grad",
           "spatial_pads"]
