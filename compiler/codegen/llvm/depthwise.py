"""Depthwise convolutions (one input channel a group: MobileNet's, EfficientNet's and
ConvNeXt's 3x3, 5x5 and 7x7) in f32 as a direct kernel, not through the GEMM.

Through the GEMM such a convolution is, per channel, a product one row high and kh * kw deep:
every micro-kernel call sums a few taps into one or two accumulators and stores them, bound by
the FMA's latency (20-35 % of peak; a 5x5 or 7x7 one ran at half onnxruntime's speed). Here,
per channel plane (split across threads by plane, `channels.by_channel`):

1. the plane is copied into a zero-bordered buffer on the stack (its padding, and zeros past
   the last output column's window, so that whole vectors are read with no bounds test);
2. output rows are taken ROWS at a time (then 4, 2, 1), a vector of columns at a time: each
   input row the block reads is loaded once per tap column (stride 2 along the width: the even
   lanes of two loads) and multiplied into every output row of the block it serves, so a load
   feeds up to kh FMAs and the block's rows are independent FMA chains;
3. the sum of the taps (in kiln's tap order, row by row) is added to the bias and stored,
   through a mask at the right edge.

The taps are unrolled at compile time (kernel, stride and dilation are constants), the sizes
read at run time, so one function serves every depthwise convolution of a geometry. A plane
whose buffer would pass STACK_FLOATS runs on the GEMM path instead (conv.py chooses at run
time).
"""

from __future__ import annotations

from llvmlite import ir

from .abi import F32, I32
from .channels import by_channel, clamp
from .irgen import Vectors, i64, smaller
from .microkernels import tiling
from .spatial import ZERO, Window

STACK_FLOATS = 1 << 16  # the zero-bordered plane's buffer, on each thread's stack: 256 KiB
MAX_TAPS = 81  # kernels up to 9x9 are unrolled


def eligible(x_t, w_t, win: Window, groups: int, kc: int) -> bool:
    """Whether conv(x, w) of these types, window and groups runs here: f32, every group one
    input channel (any channel multiplier), constant kernel sizes with at most MAX_TAPS taps
    (and no more than a GEMM slice, `kc`, for a prepacked weight's layout), stride 1 or 2
    along the width."""
    if x_t.dtype != "f32" or groups < 2 or w_t.rank not in (3, 4):
        return False
    channels, per_in = x_t.shape[1], w_t.shape[1]
    if not (channels.is_const and channels.value == groups and per_in.is_const
            and per_in.value == 1):
        return False
    if not all(d.is_const for d in win.kernel) or not all(
            d.is_const and d.value >= 0 for d in win.pad):
        return False
    taps = win.kernel[0].value * win.kernel[1].value
    return 0 < taps <= min(MAX_TAPS, kc) and win.stride[1] in (1, 2)


def rows_per_block(width: int) -> int:
    """Output rows a block keeps in registers: 8 vectors of AVX-512's 32 registers, 4 of 16."""
    return 8 if width >= 16 else 4


class Geometry:
    """The zero-bordered plane's size, from the window: hp rows of wp floats."""

    def __init__(self, kb, win: Window):
        b = kb.b
        width = tiling(kb.vector_width).width
        (h, w), (ph, pw), (oh, ow) = ([kb.dim(d) for d in pair] for pair in (
            win.size, win.pad, win.out))
        kh, kw = (k.value for k in win.kernel)
        (sh, sw), (dh, dw) = win.stride, win.dilation
        self.h, self.w, self.ph, self.pw, self.oh, self.ow = h, w, ph, pw, oh, ow
        self.nonempty = b.and_(b.icmp_signed(">", oh, ZERO), b.icmp_signed(">", ow, ZERO))
        # rows the outputs read; columns of whole vectors of outputs, and the stride-2 pairs'
        # second load
        self.hp = b.add(b.mul(b.sub(oh, i64(1)), i64(sh)), i64((kh - 1) * dh + 1))
        vectors = b.sdiv(b.add(ow, i64(width - 1)), i64(width))
        self.wp = b.add(b.mul(vectors, i64(width * sw)), i64((kw - 1) * dw + width))
        self.floats = b.select(self.nonempty, b.mul(self.hp, self.wp), ZERO)


def depthwise(kb, n, win: Window, geometry: Geometry, groups: int, kc: int) -> None:
    """y = conv(x, w) (+ bias) for a conv that `eligible` accepted and whose plane fits
    (geometry.floats <= STACK_FLOATS), over every (sample, channel) plane."""
    b = kb.b
    x_t, w_t, bias_t = n.in_types
    x, w, y = kb.input("x"), kb.input("weight"), kb.output()
    bias = kb.input("bias") if bias_t is not None else None
    g = geometry
    per_out = b.sdiv(kb.dim(w_t.shape[0]), i64(groups))  # filters per channel
    planes = b.mul(kb.dim(x_t.shape[0]), i64(groups))
    kh, kw = (k.value for k in win.kernel)
    prepacked = 1 in n.prepacked
    # where channel c's k-th filter starts: [groups, 1 slice, per_out, KC] prepacked (one
    # slice: the taps fit in KC), else [O, 1, kh, kw]
    filter_step = i64(kc if prepacked else kh * kw)
    sizes = [planes, ZERO, i64(groups), g.h, g.w, g.ph, g.pw, g.oh, g.ow, g.hp, g.wp, per_out,
             filter_step]
    pointers = [x, y, w] + ([bias] if bias is not None else [])
    name = (f"depthwise_{kh}x{kw}_s{win.stride[0]}x{win.stride[1]}_"
            f"d{win.dilation[0]}x{win.dilation[1]}")

    def strides(b_, s):  # floats each pointer moves per plane
        return [b_.mul(s[3], s[4]), b_.mul(s[11], b_.mul(s[7], s[8])), ZERO, ZERO][
            :len(pointers)]

    def work(b_, s):
        return b_.mul(b_.mul(s[0], s[11]), b_.mul(b_.mul(s[7], s[8]), i64(kh * kw)))

    with b.if_then(g.nonempty):
        by_channel(kb, name, pointers, sizes, strides,
                    lambda ikb, p, s: _planes(ikb, p, s, win), work, first=1)


def _planes(kb, pointers, sizes, win: Window) -> None:
    """The body: `count` planes from plane `first` (sizes as `depthwise` passes them)."""
    b = kb.b
    width = tiling(kb.vector_width).width
    vec = Vectors(b, width)
    x, y, w = pointers[:3]
    bias = pointers[3] if len(pointers) > 3 else None
    count, first, channels, h, wid, ph, pw, oh, ow, hp, wp, per_out, filter_step = sizes
    kh, kw = (k.value for k in win.kernel)
    with b.goto_entry_block():
        padded = b.alloca(F32, i64(STACK_FLOATS), name="plane")
        padded.align = 64
    # input columns that land in the buffer: from 0, at most W and wp - pw of them
    cols = clamp(b, b.sub(wp, pw), wid)
    # the buffer's rows that hold input rows: ph .. min(hp, H + ph)
    last = smaller(b, hp, b.add(h, ph))
    whole = b.sub(ow, b.srem(ow, i64(width)))  # columns of whole vectors; then a masked one
    tail = vec.mask(b.sub(ow, whole), 0)
    spanned = b.mul(b.sdiv(b.add(ow, i64(width - 1)), i64(width)), i64(width))
    out_plane = b.mul(oh, ow)
    rows = rows_per_block(width)
    # zeros once: the interior copies below never write the padding
    kb.zero_elements(padded, ZERO, b.mul(hp, wp), "f32")
    with kb.for_range(count) as p:
        x0 = b.gep(x, [b.mul(p, b.mul(h, wid))])
        with kb.for_range(last, ph) as r:
            src = b.gep(x0, [b.mul(b.sub(r, ph), wid)])
            dst = b.gep(padded, [b.add(b.mul(r, wp), pw)])
            with kb.for_range(cols, step=width) as q:
                mask = vec.mask(b.sub(cols, q), 0)
                vec.masked_store(vec.masked_load(b.gep(src, [q]), 0, mask), b.gep(dst, [q]), 0,
                                 mask)
        channel = b.srem(b.add(first, p), channels)
        with kb.for_range(per_out) as k:
            out = b.add(b.mul(channel, per_out), k)  # the output channel
            taps = b.gep(w, [b.mul(out, filter_step)])
            # a tap's weight is broadcast where it is used: an FMA's memory operand ({1to16}),
            # where 49 hoisted vectors would be spilled and reloaded whole
            weights = [[(lambda at=i * kw + j: vec.splat(b.load(b.gep(taps, [i64(at)]))))
                        for j in range(kw)] for i in range(kh)]
            shift = vec.splat(b.load(b.gep(bias, [out]))) if bias is not None else None
            y0 = b.gep(y, [b.mul(b.add(b.mul(p, per_out), k), out_plane)])

            def block(height: int, row0) -> None:
                with kb.for_range(spanned, step=width) as col:
                    sums = _block(b, vec, padded, wp, row0, col, height, weights, win)
                    edge = b.icmp_signed(">=", col, whole)
                    for r, total in enumerate(sums):
                        value = total if shift is None else b.fadd(total, shift)
                        at = b.gep(y0, [b.add(b.mul(b.add(row0, i64(r)), ow), col)])
                        with b.if_else(edge) as (masked, full):
                            with masked:
                                vec.masked_store(value, at, 0, tail)
                            with full:
                                vec.store(value, at)

            blocks = b.mul(b.sdiv(oh, i64(rows)), i64(rows))
            with kb.for_range(blocks, step=rows) as row0:
                block(rows, row0)
            done = blocks
            height = rows // 2
            while height >= 1:  # at most one block of each smaller height is left
                left = b.icmp_signed(">=", b.sub(oh, done), i64(height))
                with b.if_then(left):
                    block(height, done)
                done = b.select(left, b.add(done, i64(height)), done)
                height //= 2


def _block(b, vec: Vectors, padded, wp, row0, col, height: int, weights, win: Window
           ) -> list[ir.Value]:
    """The tap sums of output rows row0 .. row0 + height - 1 at columns col .. col + width - 1:
    each input row the block reads, loaded once per tap column, multiplied into the rows it
    serves, in tap order (kernel row, then column) for each output row."""
    kh, kw = len(weights), len(weights[0])
    (sh, sw), (dh, dw) = win.stride, win.dilation
    zero = ir.Constant(vec.type, None)
    sums: list[ir.Value | None] = [None] * height
    top = b.mul(row0, i64(sh))
    for d in range((height - 1) * sh + (kh - 1) * dh + 1):  # input rows, top to bottom
        served = [(r, (d - r * sh) // dh) for r in range(height)
                  if d - r * sh >= 0 and (d - r * sh) % dh == 0 and (d - r * sh) // dh < kh]
        if not served:
            continue
        line = b.gep(padded, [b.add(b.mul(b.add(top, i64(d)), wp), b.mul(col, i64(sw)))])
        for j in range(kw):
            value = load_strided(b, vec, line, j * dw, sw)
            for r, i in served:
                sums[r] = vec.fma(value, weights[i][j](), zero if sums[r] is None else sums[r])
    return [zero if s is None else s for s in sums]


def load_strided(b, vec: Vectors, line, offset: int, stride: int) -> ir.Value:
    """The vector of floats line[offset + lane * stride] (stride 1 or 2)."""
    if stride == 1:
        return vec.load(line, offset)
    low, high = vec.load(line, offset), vec.load(line, offset + vec.width)
    even = ir.Constant(ir.VectorType(I32, vec.width), [2 * lane for lane in range(vec.width)])
    return b.shuffle_vector(low, high, even)


__all__ = ["Geometry", "STACK_FLOATS", "depthwise", "eligible", "load_strided"]
