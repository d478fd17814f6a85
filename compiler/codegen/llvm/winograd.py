"""Winograd F(4x4, 3x3) convolution (Lavin & Gray, 2016) for f32 3x3 stride-1 convolutions
whose weight is known before the call: 36 products of [tiles, C] by [C, O] matrices through
the GEMM instead of one [O, 9C] by [9C, pixels] product, 2.25x fewer multiply-adds.

With TH x TW tiles of 4x4 outputs a sample (T = TH * TW; the last row and column of tiles may
reach past the output, their extra outputs never stored), for a group of S samples at a time
(about GROUP_ROWS tiles, at least one sample):

1. xt[r, q, c]: a sample's input, channel-last, with its padding and the zeros the last tiles
   read ([4 TH + 2, 4 TW + 2, C]; 8x8 block transposes; rows split across threads);
2. V[xi, s T + t, c] = (B^T d B)[xi] for the 6x6 patch d of sample s's tile t, channel c:
   vectors along c (contiguous in xt and V), tile rows split across threads;
3. M[xi] = V[xi] @ U[xi]: 36 GEMMs [S T, C] @ [C, O] with U = G g G^T laid out once per
   weight binding as the GEMM's prepacked B (`winograd_b`, computed in float64 and rounded
   once): each reads U once for the group; the threads take whole GEMMs (`_products`), so
   a call forks once for all 36, not once a GEMM (a sample of 7x7 tiles makes GEMMs of
   49 rows, a few microseconds each);
4. Yt[4 th + i, 4 tw + j, o] = (A^T m A)[i, j] per sample, vectors along o (contiguous in M);
5. y[o, h, w] = Yt[h, w, o] + bias[o] for h < OH, w < OW (8x8 block transposes, channels
   split across threads).

A 4x4, stride-2, padding-1 transposed convolution runs as the 3x3 convolution it equals at its
input's resolution (conv_transpose_winograd), step 5 then putting each of its 4 C_out channels
in its place among the outputs. Its four phases' filters each have a zero row and column, so
U[xi] is zero for 11 of the 36 xi in each phase: step 3 skips those (`_live_phases`). Where U
is too large to keep (DCGAN's 4x4 -> 8x8 layer), step 3 makes it during the call, a block at
a time (`conv_transpose_lazy`).

A fused epilogue (relu, a residual add) then runs over y as after any convolution.

Error: the transforms' constants (up to 5 in B, 1/24 in G, 8 in A) scale the rounding errors
of the products. Against a float64 direct convolution, per output element, |y - y64| /
(eps32 (|x| * |w| + |b|)) reached 25 on ResNet-18's layer shapes (random inputs; im2col and
the GEMM: 1.5), about one decimal digit lost; tests/test_winograd.py holds it to 64.
KILN_WINOGRAD=0 (packing.winograd_enabled) keeps every convolution on the GEMM path.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from .abi import F32, I64
from .channels import by_channel, clamp
from .gemm import Matrix, PackedB, gemm
from .irgen import Vectors, i64, larger, smaller
from .microkernels import tiling
from .movement import transposed
from .packing import ALPHA, AT, BT, M_OUT, G, R
from .spatial import ZERO, Window, inside

# Winograd pays when the GEMMs it saves are large enough for the transforms: measured on one
# 3x3 convolution (B=1, 1 thread, time / the GEMM path's): 8 channels in and out 1.74, 16
# 1.00, 32 0.70 (56x56); 64 0.60 (56x56), 0.56 (14x14); 128 0.49 (28x28)
MIN_CHANNELS = 32
# ... and while U (36 C O floats, 4x the weight) is read for enough tiles: 256 channels over
# 16 tiles (14x14) 0.83, 512 over 4 (7x7) 0.97 alone and slower inside ResNet-18, where the
# weights do not stay in cache between calls
MAX_WEIGHT_PER_TILE = 1 << 18  # floats of U per tile of a sample


def eligible(x_t, w_t, y_t, attrs: dict) -> bool:
    """Whether a conv of these types and attributes runs as F(4, 3): f32, 2-D, groups 1, a
    3x3 kernel, stride 1, dilation 1, at least MIN_CHANNELS channels in and out, and an
    output of constant size with enough tiles a sample for U's size (with fewer, the GEMMs
    stream U, 4x the weight's bytes, for too few tiles: memory-bound)."""
    form = _conv_form(x_t, w_t, y_t, attrs)
    return form is not None and ALPHA * ALPHA * form[0] * form[1] <= MAX_WEIGHT_PER_TILE * form[2]


def _conv_form(x_t, w_t, y_t, attrs: dict) -> tuple[int, int, int] | None:
    """(O, C, tiles a sample) of an f32 2-D 3x3 convolution, stride 1, dilation 1, groups
    1, constant sizes, at least MIN_CHANNELS channels in and out; None for any other."""
    def ones(value) -> bool:
        values = value if isinstance(value, (list, tuple)) else [value]
        return all(v == 1 for v in values)

    if x_t.dtype != "f32" or x_t.rank != 4 or w_t.rank != 4:
        return None
    if not (ones(attrs.get("stride", 1)) and ones(attrs.get("dilation", 1))
            and attrs.get("groups", 1) == 1):
        return None
    o, c, kh, kw = w_t.shape
    oh, ow = y_t.shape[2:]
    if not all(d.is_const for d in (o, c, kh, kw, oh, ow)) or (kh.value, kw.value) != (R, R) \
            or min(o.value, c.value) < MIN_CHANNELS:
        return None
    return o.value, c.value, _tiles(oh.value, ow.value)


def eligible_lazy_conv(x_t, w_t, y_t, attrs: dict) -> bool:
    """Whether a conv that `eligible` refuses for U's size alone (ResNet-18's 512-channel
    3x3s at 7x7: 37 MB of U, 4 tiles a sample) runs as F(4, 3) with U made during the call
    (`conv_lazy`): O a multiple of 32."""
    form = _conv_form(x_t, w_t, y_t, attrs)
    return form is not None and form[0] % 32 == 0 and not eligible(x_t, w_t, y_t, attrs)


def _tiles(h: int, w: int) -> int:
    """4x4 output tiles a sample over an h x w output (the last ones partial)."""
    return -(-h // M_OUT) * -(-w // M_OUT)


def eligible_transposed(x_t, w_t, y_t, attrs: dict) -> bool | None:
    """Whether a conv_transpose runs as F(4, 3) (conv_transpose_winograd): f32, 2-D, groups 1,
    a 4x4 kernel with stride 2, padding 1, dilation 1 and no output padding (DCGAN's, U-Net's
    and pix2pix's up-sampling), at least MIN_CHANNELS channels in and 4 C_out >= MIN_CHANNELS,
    and an input of constant size with enough tiles a sample for U's size (`eligible`'s
    rule, for the stride-1 form's 4 C_out channels). None: only where a call's batch gives
    the GEMMs enough rows for the same rule (conv_transpose_winograd decides per call), at
    most BATCH_FOR_BOTH samples (DCGAN's 8x8 -> 16x16 layer: 4 tiles a sample, from batch 5;
    its 4x4 -> 8x8, one tile, would need 72)."""
    form = _stride2_form(x_t, w_t, attrs)
    if form is None:
        return False
    c, o, h, w = form
    tiles = _tiles(h, w)
    u = ALPHA * ALPHA * c * 4 * o
    if u <= MAX_WEIGHT_PER_TILE * tiles:
        return True
    if u <= MAX_WEIGHT_PER_TILE * min(GROUP_ROWS, BATCH_FOR_BOTH * tiles):
        return None
    return False


def _stride2_form(x_t, w_t, attrs: dict) -> tuple[int, int, int, int] | None:
    """(C_in, C_out, H, W) of an f32 2-D transposed convolution of one group with a 4x4
    kernel, stride 2, padding 1, no dilation or output padding, constant sizes, at least
    MIN_CHANNELS channels in and 4 C_out >= MIN_CHANNELS: the ones with a stride-1 3x3 form
    (packing.transposed_as_conv3); None for any other."""
    def all_are(value, want) -> bool:
        values = value if isinstance(value, (list, tuple)) else [value]
        return len(values) in (1, 2) and all(v == want for v in values)

    if x_t.dtype != "f32" or x_t.rank != 4 or w_t.rank != 4 or attrs.get("groups", 1) != 1:
        return None
    if not (all_are(attrs.get("stride", 1), 2) and all_are(attrs.get("padding", 0), 1)
            and all_are(attrs.get("dilation", 1), 1)
            and all_are(attrs.get("output_padding", 0), 0)):
        return None
    c, o, kh, kw = w_t.shape
    h, w = x_t.shape[2:]
    if not all(d.is_const for d in (o, c, kh, kw, h, w)) or (kh.value, kw.value) != (4, 4) \
            or min(4 * o.value, c.value) < MIN_CHANNELS:
        return None
    return c.value, o.value, h.value, w.value


# A stride-2 transposed convolution whose U is too large to keep for any batch (DCGAN's
# 4x4 -> 8x8 layer: 36 x 512 x 1024 floats, 75 MB for an 8 MB weight, one tile a sample) makes
# U during the call instead (`conv_transpose_lazy`): a block of LAZY_KC input channels by one
# NR-wide panel of the stride-1 form's channels at a time, on the thread's stack (36 x 64 x 32
# floats: 288 KiB), which the group's rows use as soon as it is made. Making it costs about
# 2.7 multiply-adds an element of U, the products `rows` each: from LAZY_MIN_ROWS rows a call
# it pays; with fewer, the call takes the GEMM and scatter on the panels.
LAZY_KC = 64
LAZY_MIN_ROWS = 8


def eligible_lazy(x_t, w_t, y_t, attrs: dict) -> bool:
    """Whether a conv_transpose that `eligible_transposed` refuses for U's size alone runs as
    F(4, 3) with U made during the call: its stride-2 form, with C_out a multiple of 32 (so
    that each NR-wide panel of the stride-1 form's channels lies in one of its four
    phases)."""
    form = _stride2_form(x_t, w_t, attrs)
    return form is not None and form[1] % 32 == 0 and \
        eligible_transposed(x_t, w_t, y_t, attrs) is False


# a transposed convolution whose U needs more than one sample's tiles keeps both layouts
# (U and the GEMM's panels) if some batch up to this size pays for U
BATCH_FOR_BOTH = 16


def _combine(b: ir.IRBuilder, matrix: np.ndarray, values: list) -> list:
    """matrix @ values for a constant matrix and a list of vectors: zero coefficients
    skipped, +-1 as an add or subtract; a value None is a zero (a sum of none is None)."""
    out = []
    for row in matrix:
        total = None
        for coef, value in zip(row, values, strict=True):
            if coef == 0 or value is None:
                continue
            if abs(coef) != 1:
                value = b.fmul(value, ir.Constant(value.type, [float(abs(coef))] *
                                                  value.type.count))
            if total is None:
                total = value if coef > 0 else b.fneg(value)
            else:
                total = b.fadd(total, value) if coef > 0 else b.fsub(total, value)
        out.append(total)
    return out


def _sandwich(b: ir.IRBuilder, left: np.ndarray, tile: list[list]) -> list[list]:
    """left @ tile @ left^T over a square tile of vectors."""
    columns = [_combine(b, left, [row[j] for row in tile]) for j in range(len(tile[0]))]
    rows = [[col[i] for col in columns] for i in range(left.shape[0])]
    return [_combine(b, left, row) for row in rows]


def conv_winograd(kb, n, win: Window) -> None:
    """y = conv(x, w) (+ bias) for a conv that `eligible` accepted, whose weight (input 1)
    is `winograd_b`'s array. In f32 under precision="bf16" too (docs/language.md, "Reduced
    precision"): U is f32 panels, not the bf16 GEMM's pairs."""
    _in_f32(kb, lambda: _conv_winograd(kb, n, win, n.out_types[0].shape[1], shuffled=False))


def conv_transpose_winograd(kb, n, otherwise=None) -> None:
    """y = conv_transpose(x, w) (+ bias) for a 4x4, stride-2, padding-1 transposed
    convolution that `eligible_transposed` accepted, whose weight is `winograd_ct`'s array:
    the stride-1 3x3 convolution of packing.transposed_as_conv3 (4 C_out channels at the
    input's resolution, 9 multiply-adds an input pixel and channel pair where the transposed
    convolution's GEMM takes 16, and the Winograd form 36/16 of those 9), its outputs put in
    place by the store (channel (2 ph + pw) C_out + o's pixel (a, b) is
    y[o, 2 a + ph, 2 b + pw]):
    no column buffer and no scatter.

    `otherwise(weight)`, for one it accepted only for large batches (None; the weight is
    `winograd_ct_or_b`'s U then panels): builds the GEMM-and-scatter path on the panels,
    which a call takes where its group of samples has too few tiles for U's size; in f32, as
    Winograd is, under precision="bf16" too (the panels are f32's, not the bf16 GEMM's
    pairs)."""
    x_t, w_t, _ = n.in_types
    h, w = x_t.shape[2:]
    win = Window.of((h, w), (R, R), (1, 1), (1, 1), (1, 1), (h, w))
    outs = w_t.shape[1] * 4
    if otherwise is None:
        _in_f32(kb, lambda: _conv_winograd(kb, n, win, outs, shuffled=True))
        return
    b = kb.b
    rows = _group_rows(kb, x_t, win)
    nr = tiling(kb.vector_width).nr
    u_floats = ALPHA * ALPHA * x_t.shape[1].value * -(-outs.value // nr) * nr
    with b.if_else(b.icmp_signed("<=", i64(u_floats), b.mul(rows, i64(MAX_WEIGHT_PER_TILE)))) \
            as (winograd, gemm_path):
        with winograd:
            _in_f32(kb, lambda: _conv_winograd(kb, n, win, outs, shuffled=True))
        with gemm_path:  # (the panels are f32's, under precision="bf16" too)
            _in_f32(kb, lambda: otherwise(b.gep(kb.input("weight"), [i64(u_floats)])))


def conv_transpose_lazy(kb, n, otherwise) -> None:
    """y = conv_transpose(x, w) (+ bias) for a transposed convolution that `eligible_lazy`
    accepted, whose weight is `winograd_lazy_or_b`'s array (the GEMM's panels, then w
    channels-last): as conv_transpose_winograd's F(4, 3), U made during the call
    (`_lazy_or_gemm`); `otherwise(weight)` is the GEMM and scatter on the panels."""
    x_t, w_t, _ = n.in_types
    h, w = x_t.shape[2:]
    win = Window.of((h, w), (R, R), (1, 1), (1, 1), (1, 1), (h, w))
    nr = tiling(kb.vector_width).nr
    panels = x_t.shape[1].value * -(-(w_t.shape[1].value * 16) // nr) * nr
    _lazy_or_gemm(kb, n, win, w_t.shape[1] * 4, True, panels, otherwise)


def conv_lazy(kb, n, win: Window, otherwise) -> None:
    """y = conv(x, w) (+ bias) for a conv that `eligible_lazy_conv` accepted, whose weight
    is `winograd_lazy_a`'s array (the GEMM's prepacked A, then w channels-last): F(4, 3)
    with U made during the call (`_lazy_or_gemm`); `otherwise(weight)` is the GEMM on the
    prepacked A."""
    o, c = (d.value for d in n.in_types[1].shape[:2])
    kc = tiling(kb.vector_width).kc
    slices = -(-(c * R * R) // kc) * kc * o  # floats of prepack_a's A (one group)
    _lazy_or_gemm(kb, n, win, n.in_types[1].shape[0], False, slices, otherwise)


def _lazy_or_gemm(kb, n, win: Window, outs_dim, shuffled: bool, gemm_floats: int,
                  otherwise) -> None:
    """F(4, 3) with U made during the call from the channels-last weight after the GEMM's
    `gemm_floats` of the weight input, where the call's group of samples has LAZY_MIN_ROWS
    tiles or more; else `otherwise(weight)`; both in f32 (the GEMM's operand is f32's, under
    precision="bf16" too)."""
    b = kb.b
    weight = kb.input("weight")
    rows = _group_rows(kb, n.in_types[0], win)
    with b.if_else(b.icmp_signed(">=", rows, i64(LAZY_MIN_ROWS))) as (lazy, gemm_path):
        with lazy:
            _in_f32(kb, lambda: _conv_winograd(kb, n, win, outs_dim, shuffled=shuffled,
                                               lazy=b.gep(weight, [i64(gemm_floats)])))
        with gemm_path:
            _in_f32(kb, lambda: otherwise(weight))


def _group_rows(kb, x_t, win: Window) -> ir.Value:
    """The rows of a call's GEMMs over `win` (constant output size): its group of samples'
    tiles (`_group`), which decides between the call's paths."""
    tiles = i64(_tiles(*(d.value for d in win.out)))
    return kb.b.mul(_group(kb.b, tiles, kb.dim(x_t.shape[0])), tiles)


def _in_f32(kb, build) -> None:
    precision, kb.precision = kb.precision, "f32"
    try:
        build()
    finally:
        kb.precision = precision


# the GEMMs take the tiles of several samples at once, about this many rows (a multiple of
# the micro-kernel's 12), where one sample has fewer: each GEMM then reads its [C, O] of U
# once for the group, not once a sample (a 4x4 image is one tile a sample)
GROUP_ROWS = 192


def _group(b: ir.IRBuilder, tiles: ir.Value, batch: ir.Value) -> ir.Value:
    """Samples whose tiles go through the GEMMs together: enough for GROUP_ROWS rows, at
    least one, at most the batch."""
    one = i64(1)
    return larger(b, smaller(b, b.sdiv(i64(GROUP_ROWS), larger(b, tiles, one)), batch), one)


def _conv_winograd(kb, n, win: Window, outs_dim, shuffled: bool, lazy=None) -> None:
    """The F(4, 3) convolution over `win` with outs_dim output channels (the GEMM's columns),
    a group of samples at a time (GROUP_ROWS); `shuffled`: stored as a stride-2 transposed
    convolution's outputs (conv_transpose_winograd), else as the convolution's; `lazy`: U is
    made during the call from the channels-last weight there (conv_transpose_lazy).

    The kernel allocates the buffers (and reports when memory ran out); the steps run in one
    function of the module with every size a run-time argument (`_winograd_steps`), shared by
    every Winograd convolution of the same kind: ResNet-18's Winograd kernels call four (U
    kept or made during the call; in a kernel split by sample or not), where each had its
    own copy for LLVM to build."""
    b = kb.b
    x_t, _, bias_t = n.in_types
    x, y = kb.input("x"), kb.output()
    u = lazy if lazy is not None else kb.input("weight")
    bias = kb.input("bias") if bias_t is not None else None
    batch, channels, outs = (kb.dim(d) for d in (x_t.shape[0], x_t.shape[1], outs_dim))
    (h, w), (ph, pw), (oh, ow) = ([kb.dim(d) for d in pair] for pair in (
        win.size, win.pad, win.out))
    sizes = _Sizes(b, batch, channels, outs, oh, ow)
    base = kb.scratch(sizes.total, F32, zeroed=False)  # every part written before it is read
    ok = b.icmp_unsigned("!=", base, ir.Constant(base.type, None))
    kb.check(ok, "out of memory for a Winograd convolution's buffers")
    # a transposed convolution's phase (ph, pw) has no filter taps in one row and one column
    # of its 3x3 form, so U[xi] is zero for 11 of the 36 xi: those products are not made
    # (`_live_phases`); U made during the call skips the same products (eligible_lazy's
    # C_out always starts each phase on a panel)
    phases = _phase_channels(outs_dim, tiling(kb.vector_width).nr) if shuffled else 0
    assert phases or not (shuffled and lazy is not None), "a lazy U's phases"
    kinds = ("ct" if shuffled else "conv", "lazy" if lazy is not None else "kept",
             "phased" if phases else "whole", "bias" if bias is not None else "nobias",
             "serial" if kb.serial else "threads")
    name = f"kiln_winograd_{'_'.join(kinds)}_v{kb.vector_width or 0}"
    steps = kb.module.globals.get(name)
    if steps is None:
        steps = _winograd_steps(kb, name, shuffled, lazy is not None, bool(phases),
                                bias is not None)
    with b.if_then(ok):
        pointers = [x, u, y, base] + ([bias] if bias is not None else [])
        kb.call_kernel(steps, pointers, [batch, channels, outs, h, w, ph, pw, oh, ow,
                                         i64(phases)], "winograd")
        kb.release(base)


class _Sizes:
    """The tiles of a Winograd call, its group of samples and its buffers' floats, from its
    run-time sizes."""

    def __init__(self, b: ir.IRBuilder, batch, channels, outs, oh, ow):
        th = b.sdiv(b.add(oh, i64(M_OUT - 1)), i64(M_OUT))
        tw = b.sdiv(b.add(ow, i64(M_OUT - 1)), i64(M_OUT))
        empty = b.or_(b.icmp_signed("<=", oh, ZERO), b.icmp_signed("<=", ow, ZERO))
        self.th, self.tw = b.select(empty, ZERO, th), b.select(empty, ZERO, tw)
        self.tiles = b.mul(self.th, self.tw)
        self.group = _group(b, self.tiles, batch)
        self.rows = b.mul(self.group, self.tiles)
        self.hp = b.add(b.mul(self.th, i64(M_OUT)), i64(R - 1))
        self.wp = b.add(b.mul(self.tw, i64(M_OUT)), i64(R - 1))
        xi = ALPHA * ALPHA
        self.parts = [b.mul(b.mul(self.hp, self.wp), channels),  # xt
                      b.mul(i64(xi), b.mul(self.rows, channels)),  # V
                      b.mul(i64(xi), b.mul(self.rows, outs)),  # M
                      b.mul(i64(M_OUT * M_OUT), b.mul(self.tiles, outs))]  # Yt
        self.total = b.add(sum_values(b, self.parts), i64(16))


def _winograd_steps(kb, name: str, shuffled: bool, lazy: bool, phased: bool,
                    biased: bool) -> ir.Function:
    """The steps of `_conv_winograd` as a function of the module: pointers x, U (or the
    channels-last weight, `lazy`), y, the buffers (`_Sizes`) and the bias; sizes batch, C,
    outs, H, W, the padding, OH, OW and (`phased`) a transposed convolution's C_out."""
    outer, kb = kb, kb.shared_helper(name)
    kb.serial = outer.serial
    b = kb.b
    x, u, y, base = (kb.buffer(i, "f32") for i in range(4))
    bias = kb.buffer(4, "f32") if biased else None
    batch, channels, outs, h, w, ph, pw, oh, ow, phases = (
        b.load(b.gep(kb.dims_ptr, [i64(i)])) for i in range(10))
    sizes = _Sizes(b, batch, channels, outs, oh, ow)
    th, tw, tiles, group, rows = sizes.th, sizes.tw, sizes.tiles, sizes.group, sizes.rows
    hp, wp = sizes.hp, sizes.wp
    xi = ALPHA * ALPHA
    nr = tiling(kb.vector_width).nr
    panels = b.sdiv(b.add(outs, i64(nr - 1)), i64(nr))
    u_step = b.mul(channels, b.mul(panels, i64(nr)))  # floats of one xi's packed B
    xt = base
    v = b.gep(xt, [sizes.parts[0]])
    m = b.gep(v, [sizes.parts[1]])
    yt = b.gep(m, [sizes.parts[2]])
    plane_in = b.mul(h, w)
    plane_out = b.mul(oh, ow)
    if shuffled:  # y's planes are (2 OH) x (2 OW), C_out = outs / 4 of them
        plane_out = b.mul(plane_out, i64(4))
    y_sample = b.mul(b.sdiv(outs, i64(4)) if shuffled else outs, plane_out)
    groups = b.sdiv(b.add(batch, b.sub(group, i64(1))), group)
    if phased:  # the skipped products' blocks of M zeroed once for every group (M's xi
        # blocks are `rows` apart whatever the group's size)
        for q in range(xi):
            for first, last in _runs(sorted(set(range(4)) - set(_live_phases(q)))):
                with kb.for_range(rows) as row:
                    kb.zero_elements(m, b.add(b.mul(b.add(b.mul(i64(q), rows), row), outs),
                                              b.mul(i64(first), phases)),
                                     b.mul(i64(last - first), phases), "f32")
    with kb.for_range(groups) as g:
        s0 = b.mul(g, group)
        count = smaller(b, group, b.sub(batch, s0))
        with kb.for_range(count) as k:
            s = b.add(s0, k)
            x0 = b.gep(x, [b.mul(b.mul(s, channels), plane_in)])
            by_channel(kb, "wino_pad", [x0, xt], [hp, wp, channels, h, w, ph, pw, ZERO],
                       lambda b_, z: [i64(0), b_.mul(z[1], z[2])], _pad_rows,
                       lambda b_, z: b_.mul(z[0], b_.mul(z[1], z[2])), first=7)
            # V[xi, k tiles + t, c]: this sample's rows of the group's products
            by_channel(kb, "wino_in", [xt, b.gep(v, [b.mul(b.mul(k, tiles), channels)])],
                       [th, tw, channels, wp, b.mul(count, tiles)],
                       lambda b_, z: [b_.mul(i64(M_OUT), b_.mul(z[3], z[2])),
                                      b_.mul(z[1], z[2])], _input_rows,
                       lambda b_, z: b_.mul(i64(xi * 8), b_.mul(b_.mul(z[0], z[1]), z[2])))
        group_rows = b.mul(count, tiles)
        if lazy:
            _lazy_products(kb, u, v, m, (group_rows, rows, channels, outs), shuffled)
        elif phased:  # per xi, only the phases whose U[xi] is not zero
            _phase_products(kb, v, u, m, (group_rows, rows, channels, outs, u_step, phases))
        else:
            _products(kb, v, u, m, (group_rows, rows, channels, outs, u_step))
        with kb.for_range(count) as k:
            y0 = b.gep(y, [b.mul(b.add(s0, k), y_sample)])
            by_channel(kb, "wino_out", [b.gep(m, [b.mul(b.mul(k, tiles), outs)]), yt],
                       [th, tw, outs, rows],
                       lambda b_, z: [b_.mul(z[1], z[2]),
                                      b_.mul(i64(M_OUT * M_OUT), b_.mul(z[1], z[2]))],
                       _output_rows,
                       lambda b_, z: b_.mul(i64(xi * 4), b_.mul(b_.mul(z[0], z[1]), z[2])))
            pointers = [yt, y0] + ([bias] if bias is not None else [])
            if shuffled:
                by_channel(kb, "wino_shuffle", pointers,
                           [b.sdiv(outs, i64(4)), oh, ow, tw, outs],
                           lambda b_, z: [i64(1), b_.mul(i64(4), b_.mul(z[1], z[2])),
                                          i64(1)][:len(pointers)],
                           _store_shuffled,
                           lambda b_, z: b_.mul(i64(4), b_.mul(z[0], b_.mul(z[1], z[2]))))
            else:
                by_channel(kb, "wino_store", pointers, [outs, oh, ow, tw, outs],
                           lambda b_, z: [i64(1), b_.mul(z[1], z[2]), i64(1)][:len(pointers)],
                           _store_channels, lambda b_, z: b_.mul(z[0], b_.mul(z[1], z[2])))
    return kb.finish()


def _products(kb, v, u, m, sizes) -> None:
    """M[xi] = V[xi] @ U[xi] for the 36 xi (rows x outs over `channels`; V's xi blocks
    rows x channels apart, M's `pitch` x outs, U's `u_step` floats): the threads take whole
    products, each GEMM run whole on its thread (`_product_run`)."""
    rows, pitch, channels, outs, u_step = sizes
    # (the work's threshold, COPY_PARALLEL, is then gemm.PARALLEL_WORK multiply-adds in all)
    by_channel(kb, "wino_products", [v, u, m], [i64(ALPHA * ALPHA), rows, channels, outs,
                                                pitch, u_step],
               lambda b_, z: [b_.mul(z[1], z[2]), z[5], b_.mul(z[4], z[3])], _product_run,
               lambda b_, z: b_.mul(i64(ALPHA * ALPHA // 4), b_.mul(z[1], b_.mul(z[2], z[3]))))


def _product_run(kb, pointers, sizes) -> None:
    """Products first .. first + count of `_products`, one after the other on this thread:
    one fork and join a call instead of one a product, and no thread packs V for
    another's columns. Sizes (count, rows, C, outs, M's pitch in rows, U's floats an xi)."""
    b = kb.b
    kb.serial = True
    v, u, m = pointers
    count, rows, channels, outs, pitch, u_step = sizes
    with kb.for_range(count) as q:
        gemm(kb, rows, outs, channels,
             Matrix(b.gep(v, [b.mul(q, b.mul(rows, channels))]), channels),
             PackedB(b.gep(u, [b.mul(q, u_step)]), channels),
             Matrix(b.gep(m, [b.mul(q, b.mul(pitch, outs))]), outs))


def _phase_products(kb, v, u, m, sizes) -> None:
    """`_products` of a transposed convolution's phased form: 4 x LIVE products, each of
    one phase's C_out columns by a U[xi] that is not zero for that phase (`_live_phases`),
    the threads taking whole ones (`_phase_product_run`)."""
    rows, pitch, channels, outs, u_step, phases = sizes
    by_channel(kb, "wino_phase_products", [v, u, m],
               [i64(4 * LIVE), rows, channels, outs, pitch, u_step, phases, ZERO],
               lambda b_, z: [ZERO, ZERO, ZERO], _phase_product_run,
               lambda b_, z: b_.mul(i64(LIVE), b_.mul(z[1], b_.mul(z[2], z[6]))), first=7)


def _phase_product_run(kb, pointers, sizes) -> None:
    """Products first .. first + count of `_phase_products` (product j: phase j // LIVE,
    its (j % LIVE)-th live xi), one after the other on this thread. Sizes (count, rows, C,
    outs, M's pitch in rows, U's floats an xi, C_out, first)."""
    b = kb.b
    kb.serial = True
    v, u, m = pointers
    count, rows, channels, outs, pitch, u_step, phases, first = sizes
    live = _live_table(kb.module)
    with kb.for_range(count) as j:
        index = b.add(first, j)
        phase = b.sdiv(index, i64(LIVE))
        q = b.load(b.gep(live, [ZERO, phase, b.srem(index, i64(LIVE))]))
        col = b.mul(phase, phases)
        gemm(kb, rows, phases, channels,
             Matrix(b.gep(v, [b.mul(q, b.mul(rows, channels))]), channels),
             PackedB(b.gep(u, [b.add(b.mul(q, u_step), b.mul(col, channels))]), channels),
             Matrix(b.gep(m, [b.add(b.mul(q, b.mul(pitch, outs)), col)]), outs))


def _lazy_products(kb, weight, v, m, sizes, transposed: bool) -> None:
    """M[xi] = V[xi] @ U[xi] (rows x outs, over `channels`; V's xi blocks `rows` apart, M's
    `pitch` rows apart) with U made as it is used from the channels-last weight at `weight`
    ([C, 3, 3, O], or a transposed convolution's [C_in, 4, 4, C_out]): the threads take the
    NR-wide panels of the outputs (`_lazy_panels`)."""
    b = kb.b
    rows, pitch, channels, outs = sizes
    panels = b.sdiv(outs, i64(tiling(kb.vector_width).nr))
    by_channel(kb, "wino_lazy_ct" if transposed else "wino_lazy", [weight, v, m],
               [panels, rows, channels, outs, ZERO, pitch], lambda b_, z: [ZERO, ZERO, ZERO],
               lambda kb_, pointers, sizes_: _lazy_panels(kb_, pointers, sizes_, transposed),
               lambda b_, z: b_.mul(i64(ALPHA * ALPHA), b_.mul(z[1], b_.mul(z[2], z[3]))),
               first=4)


def _lazy_panels(kb, pointers, sizes, transposed: bool) -> None:
    """Panels first .. first + count of `_lazy_products`: per LAZY_KC input channels, the
    block of U ([36, kc, NR], PackedB panels, on the stack), then the products into the
    panel's columns of M (the first block's writing M, the others' adding to it): all 36,
    or, transposed, the panel's phase's LIVE. Sizes (count, rows, C_in, outs, first, M's
    pitch in rows)."""
    b = kb.b
    kb.serial = True  # the threads split the panels: the GEMMs run whole
    weight, v, m = pointers
    count, rows, channels, outs, first, pitch = sizes
    nr = tiling(kb.vector_width).nr
    with b.goto_entry_block():
        block = b.alloca(ir.ArrayType(F32, ALPHA * ALPHA * LAZY_KC * nr), name="u_block")
        block.align = 64
    block = b.gep(block, [ZERO, ZERO])
    c_out = b.sdiv(outs, i64(4)) if transposed else outs
    live = _live_table(kb.module) if transposed else None
    with kb.for_range(count) as p:
        col = b.mul(b.add(first, p), i64(nr))  # the panel's first output channel
        phase = b.sdiv(col, c_out) if transposed else None
        with kb.for_range(channels, step=LAZY_KC) as k0:
            kc = smaller(b, i64(LAZY_KC), b.sub(channels, k0))
            if transposed:
                _lazy_block_transposed(kb, weight, block, (phase, b.srem(col, c_out)),
                                       (k0, kc), c_out)
            else:
                _lazy_block(kb, block, kc, lambda c: b.gep(weight, [b.add(b.mul(b.mul(
                    b.add(k0, c), i64(R * R)), outs), col)]), lambda i, j: b.mul(
                        i64(i * R + j), outs))
            with kb.for_range(i64(LIVE if transposed else ALPHA * ALPHA)) as index:
                q = b.load(b.gep(live, [ZERO, phase, index])) if transposed else index
                a = Matrix(b.gep(v, [b.add(b.mul(q, b.mul(rows, channels)), k0)]), channels)
                u = PackedB(b.gep(block, [b.mul(q, b.mul(kc, i64(nr)))]), kc)
                c = Matrix(b.gep(m, [b.add(b.mul(q, b.mul(pitch, outs)), col)]), outs)
                with b.if_else(b.icmp_signed("==", k0, ZERO)) as (first_block, later):
                    with first_block:
                        gemm(kb, rows, i64(nr), kc, a, u, c)
                    with later:
                        gemm(kb, rows, i64(nr), kc, a, u, c, accumulate=True)


def _lazy_block_transposed(kb, weight, block, where, channels, c_out) -> None:
    """`_lazy_block` of a transposed convolution's stride-1 form, at (phase, o0) = `where`:
    phase 2 ph + pw's channels o0 .. o0 + NR, whose 3x3 filter g[t][u] is w[c, o, ph + 3 -
    2 t, pw + 3 - 2 u] where that is inside the 4x4 kernel and 0 elsewhere
    (packing.transposed_as_conv3), read from w channels-last [C_in, 4, 4, C_out]."""
    b = kb.b
    phase, o0 = where
    k0, kc = channels
    for index in range(4):
        ph, pw = divmod(index, 2)

        def offset(t, u, ph=ph, pw=pw):  # of tap (t, u) in w[c]'s 16 rows, or None
            i, j = ph + 3 - 2 * t, pw + 3 - 2 * u
            return b.mul(i64(i * 4 + j), c_out) if 0 <= i <= 3 and 0 <= j <= 3 else None

        with b.if_then(b.icmp_signed("==", phase, i64(index))):
            _lazy_block(kb, block, kc, lambda c: b.gep(weight, [b.add(b.mul(
                b.add(k0, c), b.mul(i64(16), c_out)), o0)]), offset)


def _lazy_block(kb, block, kc, filters, offset) -> None:
    """block[xi, c, :] = U[xi] = (G g G^T)[xi] for c < kc and one NR-wide panel of output
    channels, in vectors along them: g[t][u]'s vector at filters(c) + offset(t, u) (None: a
    zero tap, left out; a U[xi] of none is never stored, nor read)."""
    b = kb.b
    t = tiling(kb.vector_width)
    vec = Vectors(b, t.width)
    with kb.for_range(kc) as c:
        base = filters(c)
        for half in range(t.nr // t.width):
            def tap(tt, uu, half=half):
                at = offset(tt, uu)
                return None if at is None else vec.load(
                    b.gep(base, [b.add(at, i64(half * t.width))]))

            u = _sandwich(b, G, [[tap(tt, uu) for uu in range(R)] for tt in range(R)])
            for xi in range(ALPHA * ALPHA):
                value = u[xi // ALPHA][xi % ALPHA]
                if value is not None:
                    at = b.add(b.mul(b.add(b.mul(i64(xi), kc), c), i64(t.nr)),
                               i64(half * t.width))
                    vec.store(value, b.gep(block, [at]), align=4 * t.width)


def _live_phases(xi: int) -> list[int]:
    """The phases 2 ph + pw of a stride-2 transposed convolution's 3x3 form
    (packing.transposed_as_conv3) whose U[xi] = (G g G^T)[r, s] (xi = 6 r + s) is not zero
    whatever the weight: phase ph's filters have no taps in row t = 2 (ph 0) or t = 0 (ph 1),
    the only row that G's last (first) row reads; columns likewise with pw."""
    r, s = divmod(xi, ALPHA)
    dead = {0: ALPHA - 1, 1: 0}
    return [2 * ph + pw for ph in (0, 1) for pw in (0, 1) if r != dead[ph] and s != dead[pw]]


LIVE = 25  # xi whose U is not zero, in each phase (of 36)


def _live_table(module: ir.Module) -> ir.GlobalVariable:
    """The module's constant i64 [4][LIVE] table of each phase's xi with a U not zero."""
    name = "kiln_winograd_live_xi"
    table = module.globals.get(name)
    if table is None:
        rows = [[q for q in range(ALPHA * ALPHA) if phase in _live_phases(q)]
                for phase in range(4)]
        kind = ir.ArrayType(ir.ArrayType(I64, LIVE), 4)
        table = ir.GlobalVariable(module, kind, name)
        table.initializer = ir.Constant(kind, [ir.Constant(kind.element, row) for row in rows])
        table.global_constant, table.linkage = True, "internal"
    return table


def _runs(phases: list[int]) -> list[tuple[int, int]]:
    """Sorted phases as runs of neighbours [first, last)."""
    runs: list[tuple[int, int]] = []
    for p in phases:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _phase_channels(outs_dim, nr: int) -> int:
    """C_out of a transposed convolution's 3x3 form with 4 C_out channels `outs_dim`, where
    each phase's first channel starts a panel of U's (C_out a multiple of NR), else 0: its
    products then take every phase."""
    c_out = outs_dim.value // 4 if outs_dim.is_const else 0
    return c_out if c_out and c_out % nr == 0 else 0


def sum_values(b: ir.IRBuilder, values: list[ir.Value]) -> ir.Value:
    total = values[0]
    for value in values[1:]:
        total = b.add(total, value)
    return total


def _pad_rows(kb, pointers, sizes) -> None:
    """Rows of xt: pointers (x, xt at the block's first row), sizes (rows, wp, C, h, w, ph,
    pw, the block's first row): xt[r, q, c] = x[c, r - ph, q - pw], zero outside x; a row of
    x's pixels is the transpose of its [C, w] block (`_transpose_into`)."""
    b = kb.b
    x0, xt = pointers
    rows, wp, channels, h, w, ph, pw, first = sizes
    plane = b.mul(h, w)
    # the columns of x inside xt's row: [left, left + width), the rest zero
    left = clamp(b, pw, wp)
    width = clamp(b, smaller(b, w, b.sub(wp, left)), w)
    with kb.for_range(rows) as r:
        src_row = b.sub(b.add(first, r), ph)
        dst = b.gep(xt, [b.mul(b.mul(r, wp), channels)])
        with b.if_else(inside(kb, src_row, h)) as (copy, blank):
            with copy:
                kb.zero_elements(dst, ZERO, b.mul(left, channels), "f32")
                _transpose_into(kb, b.gep(x0, [b.mul(src_row, w)]), plane,
                                b.gep(dst, [b.mul(left, channels)]), channels, channels,
                                width)
                kb.zero_elements(dst, b.mul(b.add(left, width), channels),
                                 b.mul(b.sub(wp, b.add(left, width)), channels), "f32")
            with blank:
                kb.zero_elements(dst, ZERO, b.mul(wp, channels), "f32")


TRANSPOSE_TILE = 8  # a block transpose's side: 8 rows of 8 floats (AVX2 and AVX-512 alike)


def _transpose_into(kb, src, src_stride, dst, dst_stride, rows, cols, bias=None,
                    second=None) -> None:
    """dst[j * dst_stride + i] = src[i * src_stride + j] (+ bias[j]) for i < rows, j < cols:
    8x8 blocks as vectors (movement.transposed), the edges one float at a time. `second`:
    another src of the same shape, interleaved with src along dst's rows (dst[j, 2 i] from
    src, dst[j, 2 i + 1] from second: a stride-2 transposed convolution's two column
    phases)."""
    b = kb.b
    tile = TRANSPOSE_TILE
    vec = Vectors(b, tile)
    spread = 1 if second is None else 2
    out = Vectors(b, spread * tile)  # a row of dst: both phases' values, interleaved
    sources = [src] if second is None else [src, second]

    def rounded(count):
        return b.mul(b.sdiv(count, i64(tile)), i64(tile))

    def add(value, j):
        return value if bias is None else b.fadd(value, b.load(b.gep(bias, [j])))

    full_i, full_j = rounded(rows), rounded(cols)
    with kb.for_range(full_i, step=tile) as i, kb.for_range(full_j, step=tile) as j:
        blocks = [transposed(b, [vec.load(s, b.add(b.mul(b.add(i, i64(r)), src_stride), j))
                                 for r in range(tile)]) for s in sources]
        for q in range(tile):  # dst row j + q: src column j + q, rows i .. i + 8
            column = b.add(j, i64(q))
            row = blocks[0][q] if second is None else b.shuffle_vector(
                blocks[0][q], blocks[1][q], ir.Constant(ir.VectorType(ir.IntType(32), 2 * tile),
                                                        [v for k in range(tile)
                                                         for v in (k, k + tile)]))
            if bias is not None:
                row = b.fadd(row, out.splat(b.load(b.gep(bias, [column]))))
            out.store(row, dst, b.add(b.mul(column, dst_stride), b.mul(i, i64(spread))))

    def one(i, j):
        for k, s in enumerate(sources):
            value = add(b.load(b.gep(s, [b.add(b.mul(i, src_stride), j)])), j)
            b.store(value, b.gep(dst, [b.add(b.mul(j, dst_stride),
                                              b.add(b.mul(i, i64(spread)), i64(k)))]))

    with kb.for_range(rows, full_i) as i, kb.for_range(cols) as j:  # the last rows
        one(i, j)
    with kb.for_range(full_i) as i, kb.for_range(cols, full_j) as j:  # the last columns
        one(i, j)


def _channel_vectors(kb, count: ir.Value, body) -> None:
    """body(vec, c, mask) over channels 0..count in vectors: whole ones (mask None), then a
    masked tail."""
    b = kb.b
    vec = Vectors(b, kb.vector_width or tiling().width)
    whole = b.sub(count, b.srem(count, i64(vec.width)))
    with kb.for_range(whole, step=vec.width) as c:
        body(vec, c, None)
    with b.if_then(b.icmp_signed("<", whole, count)):
        body(vec, whole, vec.mask(b.sub(count, whole), 0))


def _load(vec: Vectors, ptr, mask):
    return vec.load(ptr) if mask is None else vec.masked_load(ptr, 0, mask)


def _store(vec: Vectors, value, ptr, mask) -> None:
    if mask is None:
        vec.store(value, ptr)
    else:
        vec.masked_store(value, ptr, 0, mask)


def _input_rows(kb, pointers, sizes) -> None:
    """V for rows of tiles: pointers (xt at the block's first tile row, V at its first tile),
    sizes (tile rows, TW, C, wp, T)."""
    b = kb.b
    xt, v = pointers
    rows, tw, channels, wp, tiles = sizes
    pixel_row = b.mul(wp, channels)
    with kb.for_range(rows) as r, kb.for_range(tw) as t:
        corner = b.gep(xt, [b.add(b.mul(b.mul(r, i64(M_OUT)), pixel_row),
                                  b.mul(b.mul(t, i64(M_OUT)), channels))])
        tile = b.add(b.mul(r, tw), t)

        def transform(vec, c, mask, corner=corner, tile=tile):
            d = [[_load(vec, b.gep(corner, [b.add(b.add(b.mul(i64(i), pixel_row),
                                                          b.mul(i64(j), channels)), c)]), mask)
                  for j in range(ALPHA)] for i in range(ALPHA)]
            out = _sandwich(b, BT, d)
            for i in range(ALPHA):
                for j in range(ALPHA):
                    at = b.add(b.mul(b.add(b.mul(i64(i * ALPHA + j), tiles), tile), channels),
                               c)
                    _store(vec, out[i][j], b.gep(v, [at]), mask)

        _channel_vectors(kb, channels, transform)


def _output_rows(kb, pointers, sizes) -> None:
    """Yt for rows of tiles: pointers (M at the block's first tile, Yt at its first output
    row), sizes (tile rows, TW, O, T)."""
    b = kb.b
    m, yt = pointers
    rows, tw, outs, tiles = sizes
    pixel_row = b.mul(b.mul(tw, i64(M_OUT)), outs)
    with kb.for_range(rows) as r, kb.for_range(tw) as t:
        tile = b.add(b.mul(r, tw), t)
        corner = b.gep(yt, [b.add(b.mul(b.mul(r, i64(M_OUT)), pixel_row),
                                  b.mul(b.mul(t, i64(M_OUT)), outs))])

        def transform(vec, o, mask, corner=corner, tile=tile):
            mm = [[_load(vec, b.gep(m, [b.add(b.mul(b.add(b.mul(i64(i * ALPHA + j), tiles),
                                                          tile), outs), o)]), mask)
                   for j in range(ALPHA)] for i in range(ALPHA)]
            out = _sandwich(b, AT, mm)
            for i in range(M_OUT):
                for j in range(M_OUT):
                    at = b.add(b.add(b.mul(i64(i), pixel_row), b.mul(i64(j), outs)), o)
                    _store(vec, out[i][j], b.gep(corner, [at]), mask)

        _channel_vectors(kb, outs, transform)


def _store_channels(kb, pointers, sizes) -> None:
    """y for a block of channels: pointers (Yt at the first channel, y at it[, bias at it]),
    sizes (channels, OH, OW, TW, O): y[o, h, w] = Yt[h, w, o] (+ bias[o]), a row of Yt's
    [OW, channels] block transposed at a time."""
    b = kb.b
    yt, y0 = pointers[:2]
    bias = pointers[2] if len(pointers) > 2 else None
    count, oh, ow, tw, outs = sizes
    row = b.mul(b.mul(tw, i64(M_OUT)), outs)  # floats of one Yt row
    with kb.for_range(oh) as r:
        _transpose_into(kb, b.gep(yt, [b.mul(r, row)]), outs, b.gep(y0, [b.mul(r, ow)]),
                        b.mul(oh, ow), ow, count, bias)


def _store_shuffled(kb, pointers, sizes) -> None:
    """y for a block of a transposed convolution's channels (conv_transpose_winograd):
    pointers (Yt at channel o, y at channel o's plane[, bias at o]), sizes (channels, OH,
    OW (the input's), TW, 4 C_out): y[o, 2 a + ph, 2 b + pw] = Yt[a, b, (2 ph + pw) C_out + o]
    (+ bias[o]): per row a and row phase ph, the two column phases' [OW, channels] blocks
    transposed and interleaved."""
    b = kb.b
    yt, y0 = pointers[:2]
    bias = pointers[2] if len(pointers) > 2 else None
    count, oh, ow, tw, outs = sizes
    per_phase = b.sdiv(outs, i64(4))
    row = b.mul(b.mul(tw, i64(M_OUT)), outs)  # floats of one Yt row
    width = b.mul(ow, i64(2))
    with kb.for_range(oh) as a:
        for ph in range(2):
            first = b.gep(yt, [b.add(b.mul(a, row), b.mul(i64(2 * ph), per_phase))])
            _transpose_into(kb, first, outs,
                            b.gep(y0, [b.mul(b.add(b.mul(a, i64(2)), i64(ph)), width)]),
                            b.mul(i64(4), b.mul(oh, ow)), ow, count, bias,
                            second=b.gep(first, [per_phase]))
