"""The weight gradient of a depthwise convolution (depthwise_weight_grad: one input channel a
group, m filters each; MobileNet's, EfficientNet's and ConvNeXt's) as a direct kernel:

    dw[o, 0, i, j] = sum over n, p, q of ct[n, o, p, q] * xpad[n, o // m, p*sh + i*dh, q*sw + j*dw]

Through the general form (a convolution of x with batch and channels swapped and ct as its
weight) it ran at 1.4 GFLOP/s. In f32, per output channel (threads split the channels,
`channels.by_channel`, so a channel's sums run in one order whatever the threads), per
sample, per band of output rows:

1. the band's input rows are copied into a zero-bordered buffer on the stack (a masked load a
   vector: zeros where the row or column lies outside x), so whole vectors are read with no
   bounds test (depthwise.py's buffer, cut into bands so that any image size fits);
2. for each group of kernel rows whose taps fit in registers (one accumulator vector a tap),
   every output row of the band a vector of output columns at a time: the cotangent's vector
   loaded once and multiplied into each tap's input vector (stride 2 along the width: the
   even lanes of two loads); the last, partial vector masked, its input lanes too (an inf or
   NaN that no output reads stays out of the sums);
3. the group's accumulators are added into per-tap partial vectors, whose lanes are summed
   once the channel is done.

The taps are unrolled at compile time (kernel, stride and dilation are constants), the sizes
read at run time. Other dtypes, strides past 2 along the width (conv's rule takes the general
form for those) and rows too wide for one output row's band to fit the buffer run direct
loops (in the compute type, bounds tested per term).
"""

from __future__ import annotations

from llvmlite import ir

from .abi import F32, I32
from .channels import by_channel
from .depthwise import STACK_FLOATS, load_strided
from .irgen import Vectors, i64, loop, smaller
from .microkernels import tiling
from .spatial import ZERO, Window, inside

# accumulator vectors a group of kernel rows keeps in registers: of AVX-512's 32 and AVX2's 16,
# with room for the cotangent's vector and an input vector or two
ACCUMULATORS = {16: 24, 8: 12}


def depthwise_weight_grad(kb, n, win: Window) -> None:
    """dw = depthwise_weight_grad(x, grad) for every output channel (see the module)."""
    if n.in_types[0].dtype != "f32" or win.stride[1] > 2:  # vectors: strides 1 and 2 across
        _direct(kb, n, win)
        return
    b = kb.b
    width = tiling(kb.vector_width).width
    (kh, kw), (sh, sw), (dh, dw) = (k.value for k in win.kernel), win.stride, win.dilation
    oh, ow = (kb.dim(d) for d in win.out)
    reach = (kh - 1) * dh + 1  # buffer rows one output row reads
    vectors = b.sdiv(b.add(ow, i64(width - 1)), i64(width))
    # columns of whole vectors of outputs, and the stride-2 pairs' second load
    wp = b.add(b.mul(vectors, i64(width * sw)), i64((kw - 1) * dw + width))
    fits = b.icmp_signed("<=", b.mul(wp, i64(reach)), i64(STACK_FLOATS))
    with b.if_else(fits) as (vector, direct):
        with vector:
            band = smaller(b, oh, b.add(b.sdiv(b.sub(b.sdiv(i64(STACK_FLOATS), wp),
                                                     i64(reach)), i64(sh)), i64(1)))
            _by_channels(kb, n, win, wp, band)
        with direct:
            _direct(kb, n, win)


def _by_channels(kb, n, win: Window, wp, band) -> None:
    """The f32 kernel over every output channel, channels split across threads."""
    b = kb.b
    x_t, g_t = n.in_types
    (kh, kw), (sh, sw), (dh, dw) = (k.value for k in win.kernel), win.stride, win.dilation
    h, w = (kb.dim(d) for d in win.size)
    ph, pw = (kb.dim(d) for d in win.pad)
    oh, ow = (kb.dim(d) for d in win.out)
    outs, channels = kb.dim(g_t.shape[1]), kb.dim(x_t.shape[1])
    sizes = [outs, ZERO, b.sdiv(outs, channels), kb.dim(x_t.shape[0]), channels, h, w, ph, pw,
             oh, ow, wp, band]
    pointers = [kb.input("x"), kb.input("grad"), kb.output()]
    name = f"dwgrad_{kh}x{kw}_s{sh}x{sw}_d{dh}x{dw}"

    def work(b_, s):  # multiply-adds: every channel's taps over every sample's pixels
        return b_.mul(b_.mul(s[0], s[3]), b_.mul(b_.mul(s[9], s[10]), i64(kh * kw)))

    by_channel(kb, name, pointers, sizes, lambda b_, s: [ZERO] * 3,
               lambda ikb, p, s: _channels(ikb, p, s, win), work, first=1)


def _channels(kb, pointers, sizes, win: Window) -> None:
    """The body: `count` output channels from channel `first` (sizes as `_by_channels`
    passes them)."""
    b = kb.b
    width = tiling(kb.vector_width).width
    vec = Vectors(b, width)
    x, grad, dw_out = pointers
    count, first, per, batch, channels, h, w, ph, pw, oh, ow, wp, band = sizes
    (kh, kw), sh, dh = (k.value for k in win.kernel), win.stride[0], win.dilation[0]
    taps = kh * kw
    with b.goto_entry_block():  # the band's buffer (a vector past it), then the partial sums
        buffer = b.alloca(F32, i64(STACK_FLOATS + width + taps * width), name="band")
        buffer.align = 64
    parts = b.gep(buffer, [i64(STACK_FLOATS + width)])
    zero = ir.Constant(vec.type, None)
    rows_per = max(1, ACCUMULATORS.get(width, 12) // kw)  # kernel rows a group
    groups = [range(i0, min(kh, i0 + rows_per)) for i0 in range(0, kh, rows_per)]
    whole = b.sub(ow, b.srem(ow, i64(width)))  # columns of whole vectors; then a masked one
    tail = vec.mask(b.sub(ow, whole), 0)
    with kb.for_range(count) as k:
        out = b.add(first, k)
        channel = b.sdiv(out, per)
        for t in range(taps):
            vec.store(zero, parts, t * width)
        with kb.for_range(batch) as s:
            x0 = b.gep(x, [b.mul(b.add(b.mul(s, channels), channel), b.mul(h, w))])
            g0 = b.gep(grad, [b.mul(b.add(b.mul(s, b.mul(channels, per)), out), b.mul(oh, ow))])
            with loop(b, oh) as rows:
                p0 = rows.index
                height = smaller(b, band, b.sub(oh, p0))
                _fill(kb, vec, buffer, x0, (h, w, ph, pw, wp), b.mul(p0, i64(sh)),
                      b.add(b.mul(b.sub(height, i64(1)), i64(sh)), i64((kh - 1) * dh + 1)))
                for rows_of in groups:
                    _accumulate(kb, vec, buffer, parts, b.gep(g0, [b.mul(p0, ow)]),
                                (height, ow, wp, whole, tail), rows_of, win)
                rows.advance(height)
        for t in range(taps):
            total = _lanes_sum(b, vec.load(parts, t * width), width)
            b.store(total, b.gep(dw_out, [b.add(b.mul(out, i64(taps)), i64(t))]))


def _fill(kb, vec: Vectors, buffer, x0, sizes, top, rows) -> None:
    """buffer[r, c] = xpad[top + r, c] for r < rows and c < wp (rounded up to whole vectors):
    x's plane x0 where it lies, zeros outside it (one masked load a vector)."""
    b = kb.b
    h, w, ph, pw, wp = sizes
    lanes = ir.Constant(ir.VectorType(I32, vec.width), list(range(vec.width)))
    w32 = vec.splat(b.trunc(w, I32))
    with kb.for_range(rows) as r:
        row = b.sub(b.add(top, r), ph)  # of x
        dst = b.gep(buffer, [b.mul(r, wp)])
        with b.if_else(inside(kb, row, h)) as (copy, blank):
            with copy:
                src = b.gep(x0, [b.sub(b.mul(row, w), pw)])
                with kb.for_range(wp, step=vec.width) as c:
                    column = b.add(lanes, vec.splat(b.trunc(b.sub(c, pw), I32)))
                    mask = b.icmp_unsigned("<", column, w32)  # 0 <= column < w
                    vec.store(vec.masked_load(b.gep(src, [c]), 0, mask), b.gep(dst, [c]))
            with blank:
                with kb.for_range(wp, step=vec.width) as c:
                    vec.store(ir.Constant(vec.type, None), b.gep(dst, [c]))


def _accumulate(kb, vec: Vectors, buffer, parts, g_rows, sizes, rows_of: range,
                win: Window) -> None:
    """parts[(i, j)] += the band's sum of ct[p, q] * buffer[p*sh + i*dh, q*sw + j*dw] for the
    kernel rows i in `rows_of`, every tap column j: their accumulators carried in registers
    over the band's output rows and column vectors."""
    b = kb.b
    height, ow, wp, whole, tail = sizes
    (_kh, kw), (sh, sw), (dh, dw) = (k.value for k in win.kernel), win.stride, win.dilation
    taps = [(i, j) for i in rows_of for j in range(kw)]
    start = [vec.load(parts, (i * kw + j) * vec.width) for i, j in taps]

    def step(accs, g_row, lines, col, mask=None):
        v = vec.load(b.gep(g_row, [col])) if mask is None else vec.masked_load(
            b.gep(g_row, [col]), 0, mask)
        accs = list(accs)
        for a, (i, j) in enumerate(taps):
            line = b.gep(lines[i], [b.mul(col, i64(sw))])
            value = load_strided(b, vec, line, j * dw, sw)
            if mask is not None:  # the masked lanes' inputs: never an inf or NaN times 0
                value = b.select(mask, value, ir.Constant(vec.type, None))
            accs[a] = vec.fma(v, value, accs[a])
        return accs

    with loop(b, height, carries=start) as rows:
        p = rows.index
        g_row = b.gep(g_rows, [b.mul(p, ow)])
        lines = {i: b.gep(buffer, [b.mul(b.add(b.mul(p, i64(sh)), i64(i * dh)), wp)])
                 for i in rows_of}
        with loop(b, whole, step=vec.width, carries=rows.values) as cols:
            cols.carry(step(cols.values, g_row, lines, cols.index))
        accs = cols.values
        before = b.block
        with b.if_then(b.icmp_signed("<", whole, ow)):
            last = step(accs, g_row, lines, whole, tail)
            after = b.block
        merged = []
        for old, new in zip(accs, last, strict=True):
            phi = b.phi(vec.type)
            phi.add_incoming(new, after)
            phi.add_incoming(old, before)
            merged.append(phi)
        rows.carry(merged)
    for (i, j), total in zip(taps, rows.values, strict=True):
        vec.store(total, parts, (i * kw + j) * vec.width)


def _lanes_sum(b, vector, width: int) -> ir.Value:
    """The sum of a vector's lanes, pairwise (a fixed order)."""
    values = [b.extract_element(vector, ir.Constant(I32, lane)) for lane in range(width)]
    while len(values) > 1:
        values = [b.fadd(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    return values[0]


def _direct(kb, n, win: Window) -> None:
    """dw by direct loops in the compute type: per output channel and tap, the sum over
    samples and output pixels of the terms whose input pixel lies inside x."""
    b = kb.b
    x_t, g_t = n.in_types
    dtype = x_t.dtype
    x, grad, dw_out = kb.input("x"), kb.input("grad"), kb.output()
    (kh, kw), (dh, dw) = (k.value for k in win.kernel), win.dilation
    h, w = (kb.dim(d) for d in win.size)
    oh, ow = (kb.dim(d) for d in win.out)
    outs, channels = kb.dim(g_t.shape[1]), kb.dim(x_t.shape[1])
    per = b.sdiv(outs, channels)
    with b.goto_entry_block():
        acc = b.alloca(kb.const(0.0, dtype).type, name="acc")
    with kb.for_range(outs) as o, kb.for_range(i64(kh)) as i, kb.for_range(i64(kw)) as j:
        b.store(kb.const(0.0, dtype), acc)
        with kb.for_range(kb.dim(x_t.shape[0])) as s, kb.for_range(oh) as p, \
                kb.for_range(ow) as q:
            row = b.add(win.origin(kb, p, 0), b.mul(i, i64(dh)))
            col = b.add(win.origin(kb, q, 1), b.mul(j, i64(dw)))
            with b.if_then(b.and_(inside(kb, row, h), inside(kb, col, w))):
                plane = b.add(b.mul(s, channels), b.sdiv(o, per))
                at = b.add(b.mul(b.add(b.mul(plane, h), row), w), col)
                g_at = b.add(b.mul(b.add(b.mul(b.add(b.mul(s, outs), o), oh), p), ow), q)
                term = kb.mul(kb.load(grad, g_at, dtype), kb.load(x, at, dtype))
                b.store(kb.add(b.load(acc), term), acc)
        at = b.add(b.mul(b.add(b.mul(o, i64(kh)), i), i64(kw)), j)
        kb.store(dw_out, at, b.load(acc), dtype)


__all__ = ["depthwise_weight_grad"]
