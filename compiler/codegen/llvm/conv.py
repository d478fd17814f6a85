"""Convolution and transposed convolution kernels: f32 through the GEMM (im2col.py's B
operands; a stride-1 convolution over a zero-bordered copy of its input, weights known
before the call prepacked), other dtypes by a direct sum per output element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from . import depthwise
from .abi import F32
from .channels import by_channel, clamp
from .finish import finisher
from .gemm import Matrix, PackedB, gemm
from .im2col import Im2col, Shifted
from .irgen import Vectors, i64, smaller
from .microkernels import tiling
from .spatial import ZERO, Window, fold_over, inside, plane_dims
from .threads import threads_global


def conv(kb, n, win: Window, groups: int, weight: ir.Value | None = None,
         epilogue=None) -> None:
    """y[n, g] = w[g] @ im2col(x[n, g]) (+ bias) per sample and group, through the GEMM; a
    1x1 convolution with stride 1 and no padding multiplies x itself, and another with stride
    1 reads a zero-bordered copy of x (`Shifted`). A depthwise one (a group per input channel)
    runs depthwise.py's direct kernel while a plane fits its buffer. Other dtypes than f32 run
    the direct loops. `weight`: where the prepacked weight is, when not input 1 itself (the
    panels before winograd_lazy_a's channels-last weight). `epilogue`: a fused node's
    (fused.Epilogue), which the im2col path applies itself (finish.finisher); it is marked
    consumed when taken, else the fused node applies it after the call."""
    x_t, w_t, _bias_t = n.in_types
    if x_t.dtype != "f32":
        _conv_direct(kb, n, win, groups)
        return
    kc = tiling(kb.vector_width).kc
    if depthwise.eligible(x_t, w_t, win, groups, kc):
        b = kb.b
        geometry = depthwise.Geometry(kb, win)
        fits = b.icmp_signed("<=", geometry.floats, i64(depthwise.STACK_FLOATS))
        with b.if_else(fits) as (direct, through_gemm):
            with direct:
                depthwise.depthwise(kb, n, win, geometry, groups, kc)
            with through_gemm:
                _conv_gemm(kb, n, win, groups)
        return
    _conv_gemm(kb, n, win, groups, weight, epilogue)


def _conv_gemm(kb, n, win: Window, groups: int, weight: ir.Value | None = None,
               epilogue=None) -> None:
    """conv's f32 path through the GEMM (see `conv`). Through `Im2col` (a stride above 1),
    the GEMM writes C, then adds the bias and applies `epilogue` to each block of columns it
    finishes, while the block is in cache (finish.finisher), rather than starting C as the bias
    and leaving the epilogue to a pass of its own over the whole output."""
    x_t, w_t, bias_t = n.in_types
    b = kb.b
    x, w, y = kb.input("x"), kb.input("weight") if weight is None else weight, kb.output()
    bias = kb.input("bias")
    batch, channels, outs = (kb.dim(d) for d in (x_t.shape[0], x_t.shape[1], w_t.shape[0]))
    per_in, per_out = (b.sdiv(c, i64(groups)) for c in (channels, outs))
    plane_in, pixels = kb.numel(win.size), kb.numel(win.out)
    depth = kb.dim(w_t.shape[1] * win.kernel[0] * win.kernel[1])  # K: (c, i, j) of a group
    pointwise = all(k == 1 for k in win.kernel) and win.stride == (1, 1) and all(
        p == 0 for p in win.pad)
    padded = _Padded.of(kb, win, per_in, per_out) if win.stride == (1, 1) and not pointwise \
        else None
    kc = tiling(kb.vector_width).kc
    hook = None
    if padded is None and not pointwise and (bias is not None or epilogue is not None):
        hook = finisher(kb, y, bias, epilogue, pixels, outs)

    def run() -> None:
        with kb.for_range(batch) as s, kb.for_range(i64(groups)) as g:
            x0 = b.gep(x, [b.mul(b.add(b.mul(s, channels), b.mul(g, per_in)), plane_in)])
            first_out = b.mul(g, per_out)
            y0 = b.gep(y, [b.mul(b.add(b.mul(s, outs), first_out), pixels)])
            if bias is not None and padded is None and hook is None:
                # C starts as the bias; the GEMM adds
                by_channel(kb, "bias_planes", [y0, b.gep(bias, [first_out])],
                           [per_out, pixels], lambda b_, z: [z[1], i64(1)], _bias_planes,
                           lambda b_, z: b_.mul(z[0], z[1]))
            if 1 in n.prepacked:  # w laid out by gemm.prepack_a: [groups, slices, per_out, KC]
                slice_floats = b.mul(per_out, i64(kc))
                group_floats = b.mul(b.sdiv(b.add(depth, i64(kc - 1)), i64(kc)), slice_floats)
                weights = Matrix(b.gep(w, [b.mul(g, group_floats)]), slice_floats,
                                 prepacked=True)
            else:
                weights = Matrix(b.gep(w, [b.mul(first_out, depth)]), depth)
            if padded is not None:
                padded.fill(kb, x0)
                gemm(kb, per_out, padded.columns, depth, weights, padded.source,
                     Matrix(padded.result, padded.columns))
                padded.compact(kb, y0, None if bias is None else b.gep(bias, [first_out]))
            else:
                source = Matrix(x0, plane_in) if pointwise else Im2col.of(kb, x0, win, hook)
                gemm(kb, per_out, pixels, depth, weights, source, Matrix(y0, pixels),
                     accumulate=bias is not None and hook is None)

    if padded is None:
        run()
        return
    with b.if_then(padded.allocate(kb)):
        run()
        padded.release(kb)


@dataclass
class _Padded:
    """The buffers of a stride-1 convolution read through `Shifted`: the zero-bordered copy
    of one sample's group of input channels, and the GEMM's result over the grid Wp wide,
    from one heap block per kernel call."""

    win: Window
    per_in: ir.Value
    per_out: ir.Value
    h: ir.Value
    w: ir.Value
    ph: ir.Value
    pw: ir.Value
    oh: ir.Value
    ow: ir.Value
    hp: ir.Value
    wp: ir.Value
    columns: ir.Value  # of the GEMM: (OH - 1) * Wp + OW
    base: ir.Value | None = None  # xp, at the start of the heap block
    result: ir.Value | None = None  # [per_out, columns]
    source: Shifted | None = None

    @classmethod
    def of(cls, kb, win: Window, per_in, per_out) -> _Padded:
        b = kb.b
        (h, w), (ph, pw), (oh, ow), (kh, kw) = ([kb.dim(d) for d in pair] for pair in (
            win.size, win.pad, win.out, win.kernel))
        hp = b.add(oh, b.mul(i64(win.dilation[0]), b.sub(kh, i64(1))))
        wp = b.add(ow, b.mul(i64(win.dilation[1]), b.sub(kw, i64(1))))
        columns = b.add(b.mul(b.sub(oh, i64(1)), wp), ow)
        empty = b.or_(b.icmp_signed("<=", oh, ZERO), b.icmp_signed("<=", ow, ZERO))
        columns = b.select(empty, ZERO, columns)
        return cls(win, per_in, per_out, h, w, ph, pw, oh, ow, hp, wp, columns)

    def allocate(self, kb) -> ir.Value:
        """Takes the heap block; an i1 that is false (and a reported failure) when there is
        no memory for it."""
        b = kb.b
        padded = b.mul(self.per_in, b.mul(self.hp, self.wp))
        floats = b.add(b.add(padded, b.mul(self.per_out, self.columns)), i64(16))
        self.base = kb.scratch(floats, F32, zeroed=False)  # fill and the GEMM write it all
        ok = b.icmp_unsigned("!=", self.base, ir.Constant(self.base.type, None))
        kb.check(ok, "out of memory for a convolution's padded input")
        self.result = b.gep(self.base, [padded])
        kh, kw = (kb.dim(k) for k in self.win.kernel)
        self.source = Shifted(self.base, b.mul(self.hp, self.wp), self.wp, kh, kw,
                              i64(self.win.dilation[0]), i64(self.win.dilation[1]))
        return ok

    def release(self, kb) -> None:
        kb.release(self.base)

    def fill(self, kb, x0: ir.Value) -> None:
        """xp = x0's channels with ph rows and pw columns of zeros before (and what the grid
        needs after), split across threads by channel (`channels.by_channel`)."""
        sizes = [self.per_in, self.h, self.w, self.ph, self.pw, self.hp, self.wp]
        by_channel(kb, "pad", [x0, self.base], sizes,
                    lambda b, s: [b.mul(s[1], s[2]), b.mul(s[5], s[6])], _fill_channels,
                    lambda b, s: b.mul(s[0], b.mul(s[5], s[6])))

    def compact(self, kb, y0: ir.Value, bias: ir.Value | None) -> None:
        """y0[o, r, :OW] = result[o, r * Wp : r * Wp + OW] (+ bias[o]), split across threads
        by channel."""
        sizes = [self.per_out, self.oh, self.ow, self.wp, self.columns]
        pointers = [self.result, y0] + ([bias] if bias is not None else [])
        by_channel(kb, "compact", pointers, sizes,
                    lambda b, s: [s[4], b.mul(s[1], s[2]), i64(1)][:len(pointers)],
                    _compact_channels, lambda b, s: b.mul(s[0], s[4]))


def _fill_channels(kb, pointers, sizes) -> None:
    """The padded copy of `count` channels: pointers (x, xp), sizes (count, h, w, ph, pw, hp,
    wp)."""
    b = kb.b
    x0, base = pointers
    count, h, w, ph, pw, hp, wp = sizes
    # input columns that land in the grid: from 0, at most W and Wp - pw of them
    width = clamp(b, b.sub(wp, pw), w)
    after = b.sub(b.sub(wp, pw), width)
    with kb.for_range(count) as c, kb.for_range(hp) as r:
        row = b.mul(b.add(b.mul(c, hp), r), wp)  # where the row starts in xp
        src_row = b.sub(r, ph)
        with b.if_else(b.icmp_unsigned("<", src_row, h)) as (copy, blank):
            with copy:
                kb.zero_elements(base, row, pw, "f32")
                kb.copy_elements(base, b.add(row, pw), x0,
                                 b.add(b.mul(c, b.mul(h, w)), b.mul(src_row, w)), width, "f32")
                kb.zero_elements(base, b.add(row, b.add(pw, width)), after, "f32")
            with blank:
                kb.zero_elements(base, row, wp, "f32")


def _bias_planes(kb, pointers, sizes) -> None:
    """`_fill_with_bias` as `by_channel`'s body (the threads take channels: a stem's 3.2 MB
    output was filled by one thread, from a cold cache): pointers (y, bias), sizes (count,
    plane)."""
    _fill_with_bias(kb, pointers[0], *sizes, pointers[1])


def _compact_channels(kb, pointers, sizes) -> None:
    """The compaction of `count` channels: pointers (result, y[, bias]), sizes (count, oh, ow,
    wp, columns)."""
    b = kb.b
    result, y0 = pointers[:2]
    bias = pointers[2] if len(pointers) > 2 else None
    count, oh, ow, wp, columns = sizes
    vec = Vectors(b, kb.vector_width or tiling().width)
    with kb.for_range(count) as o:
        add = vec.splat(b.load(b.gep(bias, [o]))) if bias is not None else None
        src_plane = b.gep(result, [b.mul(o, columns)])
        dst_plane = b.gep(y0, [b.mul(o, b.mul(oh, ow))])
        whole = b.sub(ow, b.srem(ow, i64(vec.width)))  # whole vectors, then a masked tail
        tail = vec.mask(b.sub(ow, whole), 0)  # (AVX2's masked stores are slow)
        with kb.for_range(oh) as r:
            src = b.gep(src_plane, [b.mul(r, wp)])
            dst = b.gep(dst_plane, [b.mul(r, ow)])
            with kb.for_range(whole, step=vec.width) as q:
                value = vec.load(b.gep(src, [q]))
                vec.store(value if add is None else b.fadd(value, add), b.gep(dst, [q]))
            with b.if_then(b.icmp_signed("<", whole, ow)):
                value = vec.masked_load(b.gep(src, [whole]), 0, tail)
                vec.masked_store(value if add is None else b.fadd(value, add),
                                 b.gep(dst, [whole]), 0, tail)


def _each_output(kb, t, body) -> None:
    """body(sample, channel, oh, ow, flat index) for every element of an NC(H)W output."""
    _, h, w = plane_dims(kb, t)
    sizes = [kb.dim(t.shape[0]), kb.dim(t.shape[1]), h, w]
    strides = [kb.b.mul(sizes[1], kb.b.mul(h, w)), kb.b.mul(h, w), w, i64(1)]
    kb.loop_nest(sizes, lambda index: body(*index, kb.dot(index, strides)))


def _bias_or_zero(kb, n, channel, dtype) -> ir.Value:
    bias_t = n.in_types[2]
    if bias_t is None:
        return kb.const(0.0, dtype)
    return kb.load(kb.input("bias"), channel, bias_t.dtype)


def _direct(kb, n, win: Window, groups: int, where, weight) -> None:
    """y[s, o, oh, ow] = bias[o] + sum, over the kernel taps (i, j) that land on an input pixel
    and the group's input channels c, of x[s, c, pixel] * w[...]: the direct loops of conv and
    conv_transpose, in the compute type (f32 for half floats, rounded once). A tap that lands
    nowhere runs its channel loop zero times.

    where(oh, ow, i, j) -> (lands, y, x); weight(o, i, j) -> (w offset at c = 0, w step in c).
    """
    x_t, y_t = n.in_types[0], n.out_types[0]
    dtype = x_t.dtype
    b = kb.b
    x, w, y = kb.input("x"), kb.input("weight"), kb.output()
    h, wd = (kb.dim(d) for d in win.size)
    kh, kw = (kb.dim(d) for d in win.kernel)
    channels = kb.dim(x_t.shape[1])
    per_in = b.sdiv(channels, i64(groups))
    per_out = b.sdiv(kb.dim(y_t.shape[1]), i64(groups))
    plane = b.mul(h, wd)

    def output(s, o, oh, ow, at):
        first = b.add(b.mul(s, channels), b.mul(b.sdiv(o, per_out), per_in))

        def tap(acc, index):
            i, j = index
            lands, yy, xx = where(oh, ow, i, j)
            x0 = b.add(b.mul(b.add(b.mul(first, h), yy), wd), xx)
            w0, step = weight(o, i, j)

            def channel(total, c):
                value = kb.load(x, b.add(x0, b.mul(c, plane)), dtype)
                return kb.add(total, kb.mul(value, kb.load(w, b.add(w0, b.mul(c, step)), dtype)))

            return kb.accumulate(ZERO, b.select(lands, per_in, ZERO), acc, channel)

        total = fold_over(kb, [kh, kw], _bias_or_zero(kb, n, o, dtype), tap)
        kb.store(y, at, total, dtype)

    _each_output(kb, y_t, output)


def _conv_direct(kb, n, win: Window, groups: int) -> None:
    """conv by direct loops: w is [O, C/groups, kh, kw]."""
    b = kb.b
    h, wd = (kb.dim(d) for d in win.size)
    kh, kw = (kb.dim(d) for d in win.kernel)
    taps = b.mul(kh, kw)
    per_in = kb.dim(n.in_types[1].shape[1])

    def where(oh, ow, i, j):
        yy = b.add(win.origin(kb, oh, 0), b.mul(i, i64(win.dilation[0])))
        xx = b.add(win.origin(kb, ow, 1), b.mul(j, i64(win.dilation[1])))
        return b.and_(inside(kb, yy, h), inside(kb, xx, wd)), yy, xx

    def weight(o, i, j):
        return b.add(b.mul(b.mul(o, per_in), taps), b.add(b.mul(i, kw), j)), taps

    _direct(kb, n, win, groups, where, weight)


COLUMNS = 1 << 16  # floats of a transposed convolution's column buffer (256 KiB of stack)


def conv_transpose(kb, n, win: Window, groups: int, weight: ir.Value | None = None) -> None:
    """The adjoint of conv: tap (i, j) of input pixel (ih, iw) lands on output
    oh = ih * stride - pad + i * dilation (and likewise ow); w is [C_in, C_out/groups, kh, kw].
    `win` describes it: size is x's spatial size, out y's.

    f32 as a GEMM and a scatter (col2im), per group, a block of columns (o, i, j) at a time
    (`_column_block`), then per sample, a chunk of input pixels at a time:
    cols[p, (o, i, j)] = sum_c x[c, p] * w[c, (o, i, j)], then y[o, oh, ow] += cols for each
    tap that lands (`_column_blocks`; the threads share the blocks where there are enough of
    them). Other dtypes, and a row (o, i, j) longer than the buffer, gather each
    output directly. `weight`: where the prepacked weight is, when not input 1 itself (the
    panels after winograd_ct_or_b's U)."""
    x_t, w_t, _ = n.in_types
    row = w_t.shape[1] * win.kernel[0] * win.kernel[1]  # (o, i, j) of a group
    if x_t.dtype != "f32" or not row.is_const or row.value > COLUMNS or \
            not all(k.is_const for k in win.kernel):
        _conv_transpose_direct(kb, n, win, groups)
        return
    b = kb.b
    x, w, y = kb.input("x"), kb.input("weight") if weight is None else weight, kb.output()
    h, wd = (kb.dim(d) for d in win.size)
    out_h, out_w = (kb.dim(d) for d in win.out)
    channels, per_out = kb.dim(x_t.shape[1]), kb.dim(w_t.shape[1])
    per_in = b.sdiv(channels, i64(groups))
    pixels, out_plane, width = b.mul(h, wd), b.mul(out_h, out_w), kb.dim(row)
    if groups == 1 and all(d.is_const and d.value == 1 for d in x_t.shape[2:]):
        _conv_transpose_of_pixels(kb, n, win, x, w, y, _columns(b), i64(COLUMNS // row.value),
                                  width, (channels, per_out, out_h, out_w))
        return
    taps = win.kernel[0].value * win.kernel[1].value
    block = _column_block(row.value, taps, x_t.shape[1], groups, tiling(kb.vector_width).nr)
    shape = _Blocks(tuple(k.value for k in win.kernel), win.stride, win.dilation, block,
                    1 in n.prepacked, n.in_types[2] is not None)
    bias = kb.input("bias") if shape.biased else None
    blocks = -(-row.value // block)
    pad = [kb.dim(d) for d in win.pad]
    with kb.for_range(i64(groups)) as g:
        first_out = b.mul(g, per_out)
        if shape.prepacked:  # w laid out by gemm.prepack_b: [groups, panels, per_in, NR]
            nr = tiling(kb.vector_width).nr
            w0 = b.gep(w, [b.mul(g, b.mul(per_in, i64(-(-row.value // nr) * nr)))])
        else:
            w0 = b.gep(w, [b.mul(b.mul(g, per_in), width)])
        pointers = [b.gep(x, [b.mul(b.mul(g, per_in), pixels)]), w0,
                    b.gep(y, [b.mul(first_out, out_plane)])]
        if bias is not None:
            pointers.append(b.gep(bias, [first_out]))
        sizes = [i64(blocks), ZERO, kb.dim(x_t.shape[0]), per_in, pixels, wd, out_h, out_w,
                 width, b.mul(channels, pixels), b.mul(b.mul(per_out, i64(groups)), out_plane),
                 *pad]
        if blocks < 2 or kb.serial:  # (a kernel split by sample: each block on its thread)
            _column_blocks(kb, pointers, sizes, shape)
        else:
            # at least twice as many blocks as threads: the threads take whole blocks, each
            # with its product, bias and scatter (the scatter alone would run on one thread);
            # fewer: the blocks in turn, each product shared by the threads; one thread: the
            # blocks here, where the sizes known when compiling are constants (the shared
            # function reads them at run time; on one thread it looked 1-2 % slower, within
            # this machine's noise)
            threads = b.load(threads_global(kb.module))
            enough = b.and_(b.icmp_signed(">=", i64(blocks), b.mul(threads, i64(2))),
                            b.icmp_signed(">", threads, i64(1)))
            with b.if_else(enough) as (split, whole):
                with split:
                    by_channel(kb, shape.name(kb), pointers, sizes, shape.strides, shape.body,
                               shape.work, first=1)
                with whole:
                    _column_blocks(kb, pointers, sizes, shape)


# a transposed convolution's column block: its weights (the sum's depth x the block's columns)
# take at most this many bytes, to stay in L2 while every sample reads them
BLOCK_BYTES = 1 << 19


def _column_block(row: int, taps: int, channels, groups: int, nr: int) -> int:
    """Columns (o, i, j) of a transposed convolution's GEMM computed at a time: whole output
    channels and whole NR-wide panels (a multiple of both taps and NR), their weights within
    BLOCK_BYTES (the depth, channels / groups, taken as 256 when not known), at least one
    such unit and at most the row."""
    unit = math.lcm(taps, nr)
    depth = channels.value // groups if channels.is_const else 256
    block = max(unit, BLOCK_BYTES // (4 * max(depth, 1)) // unit * unit)
    return min(block, -(-row // unit) * unit, max(unit, COLUMNS // unit * unit))


def _conv_transpose_of_pixels(kb, n, win: Window, x, w, y, cols, chunk, width,
                              sizes) -> None:
    """conv_transpose of 1x1 inputs (a latent vector projected to the first feature maps,
    as a DCGAN generator's first layer does), one group: x is then a row-major [B, C]
    matrix, so a chunk of samples is one GEMM [samples, C] @ w, each sample's row of `cols`
    then scattered (col2im) into its output; per sample, the GEMM would read all of w for
    one row, 32 times for a batch of 32. Where the output is the kernel's footprint (DCGAN's
    1 -> 4x4: no padding), the product is the output: one GEMM onto the bias, no scatter."""
    b = kb.b
    channels, per_out, out_h, out_w = sizes
    out_plane = b.mul(out_h, out_w)
    batch = kb.dim(n.in_types[0].shape[0])
    sample_out = b.mul(per_out, out_plane)
    with kb.for_range(batch) as s:
        _fill_with_bias(kb, b.gep(y, [b.mul(s, sample_out)]), per_out, out_plane,
                        kb.input("bias") if n.in_types[2] is not None else None)
    weights = (PackedB(w, channels) if 1 in n.prepacked else Matrix(w, width))
    if win.dilation == (1, 1) and all(p.is_const and p.value == 0 for p in win.pad) and all(
            o.is_const and k.is_const and o.value == k.value
            for o, k in zip(win.out, win.kernel, strict=True)):
        # the output is the kernel's footprint (no padding, no output padding): a sample's
        # row (o, i, j) of the product is its output, in order; the GEMM adds it to the
        # bias in place, every sample in one product, with no scatter
        gemm(kb, batch, width, channels, Matrix(x, channels), weights, Matrix(y, width),
             accumulate=True)
        return
    with kb.for_range(batch, step=chunk.constant) as s0:
        count = b.select(b.icmp_signed("<", chunk, b.sub(batch, s0)), chunk, b.sub(batch, s0))
        gemm(kb, count, width, channels, Matrix(b.gep(x, [b.mul(s0, channels)]), channels),
             weights, Matrix(cols, width))
        with kb.for_range(count) as r:
            _col2im(kb, _Taps.of(kb, win), b.gep(y, [b.mul(b.add(s0, r), sample_out)]),
                    b.gep(cols, [b.mul(r, width)]), ZERO, per_out, (out_h, out_w))


def _columns(b: ir.IRBuilder) -> ir.Value:
    """The function's column buffer (COLUMNS floats on the stack, in its entry block)."""
    with b.goto_entry_block():
        cols = b.alloca(ir.ArrayType(F32, COLUMNS), name="cols")
        cols.align = 64
    return b.gep(cols, [ZERO, ZERO])


def _fill_with_bias(kb, y0, channels, plane, bias) -> None:
    """y0's `channels` planes of `plane` floats set to bias[o] (0 where `bias`, an f32 pointer
    at the first plane's channel, is None), a vector at a time: what a GEMM or a transposed
    convolution's scatter then adds to."""
    b = kb.b
    vec = Vectors(b, kb.vector_width or tiling().width)
    whole = b.sub(plane, b.srem(plane, i64(vec.width)))  # whole vectors, then a masked tail
    tail = vec.mask(b.sub(plane, whole), 0)
    with kb.for_range(channels) as o:
        value = vec.splat(ir.Constant(F32, 0.0) if bias is None else b.load(b.gep(bias, [o])))
        row = b.gep(y0, [b.mul(o, plane)])
        with kb.for_range(whole, step=vec.width) as q:
            vec.store(value, b.gep(row, [q]))
        with b.if_then(b.icmp_signed("<", whole, plane)):
            vec.masked_store(value, b.gep(row, [whole]), 0, tail)


@dataclass(frozen=True)
class _Taps:
    """Where a transposed convolution's taps land: a constant kernel, stride and dilation, and
    at run time the input's width and the padding before each axis."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    width: ir.Value
    pad: tuple[ir.Value, ir.Value]

    @classmethod
    def of(cls, kb, win: Window) -> _Taps:
        return cls(tuple(k.value for k in win.kernel), win.stride, win.dilation,
                   kb.dim(win.size[1]), tuple(kb.dim(d) for d in win.pad))

    def origin(self, b: ir.IRBuilder, index: ir.Value, axis: int) -> ir.Value:
        return b.sub(b.mul(index, i64(self.stride[axis])), self.pad[axis])


def _col2im(kb, taps: _Taps, y, cols, pixel, channels, out) -> None:
    """y[o, oh, ow] += cols[(o, i, j)] for every tap (i, j) of input `pixel` that lands."""
    b = kb.b
    kh, kw = (i64(k) for k in taps.kernel)
    ih, iw = b.sdiv(pixel, taps.width), b.srem(pixel, taps.width)
    with kb.for_range(channels) as o, kb.for_range(kh) as i:
        oh = b.add(taps.origin(b, ih, 0), b.mul(i, i64(taps.dilation[0])))
        with b.if_then(inside(kb, oh, out[0])), kb.for_range(kw) as j:
            ow = b.add(taps.origin(b, iw, 1), b.mul(j, i64(taps.dilation[1])))
            with b.if_then(inside(kb, ow, out[1])):
                at = b.gep(y, [b.add(b.mul(b.add(b.mul(o, out[0]), oh), out[1]), ow)])
                tap = b.load(b.gep(cols, [b.add(b.mul(b.add(b.mul(o, kh), i), kw), j)]))
                b.store(kb.fadd(b.load(at), tap), at)


@dataclass(frozen=True)
class _Blocks:
    """A transposed convolution's column blocks (`_column_block`) of one group, as
    `_column_blocks` computes them: what its code depends on besides the run-time sizes."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    block: int  # columns (o, i, j) a block: whole output channels and whole panels
    prepacked: bool  # the weight in gemm.prepack_b's panels, else a [per_in, row] matrix
    biased: bool

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def name(self, kb) -> str:
        """by_channel's name of the function the threads share (one per distinct `_Blocks`)."""
        k, s, d = ("x".join(map(str, v)) for v in (self.kernel, self.stride, self.dilation))
        return (f"ct_blocks_k{k}_s{s}_d{d}_c{self.block}_{'p' if self.prepacked else 'm'}"
                f"{'b' if self.biased else ''}_{kb.precision}")

    def strides(self, b, sizes) -> list[ir.Value]:
        """Floats each pointer moves a block: x none; the weight a block of panels or
        columns; y and the bias the block's output channels."""
        planes = i64(self.block // self.taps)
        weight = b.mul(i64(self.block), sizes[3]) if self.prepacked else i64(self.block)
        moves = [ZERO, weight, b.mul(planes, b.mul(sizes[6], sizes[7]))]
        return moves + [planes] if self.biased else moves

    def work(self, b, sizes) -> ir.Value:
        """The blocks' multiply-adds (blocks x samples x pixels x per_in x block)."""
        count, _, samples, per_in, pixels = sizes[:5]
        return b.mul(b.mul(b.mul(count, samples), b.mul(pixels, per_in)), i64(self.block))

    def body(self, kb, pointers, sizes) -> None:
        """by_channel's body: the threads split the blocks, so each product runs whole."""
        kb.serial = True
        _column_blocks(kb, pointers, sizes, self)


def _column_blocks(kb, pointers, sizes, shape: _Blocks) -> None:
    """Column blocks first .. first + count of one group of a transposed convolution, each over
    every sample: y's block of output channels set to the bias, then per chunk of input
    pixels the product cols = x^T @ w[:, block] and its scatter (`_col2im`). Pointers x (the
    group's first input channel), w (the block's weight), y (the group's first output
    channel, of the block's first sample) and the bias (the same channel) where `biased`;
    sizes count, first, samples, per_in, pixels, the input's width, out_h, out_w, the row's
    columns (o, i, j), x's and y's floats a sample, and the padding before each axis."""
    b = kb.b
    x, w, y = pointers[:3]
    bias = pointers[3] if shape.biased else None
    (count, first, samples, per_in, pixels, width, out_h, out_w, row, x_step, y_step,
     pad_h, pad_w) = sizes
    taps = _Taps(shape.kernel, shape.stride, shape.dilation, width, (pad_h, pad_w))
    cols, chunk = _columns(b), i64(COLUMNS // shape.block)
    out_plane, per_block = b.mul(out_h, out_w), shape.block // shape.taps
    with kb.for_range(count) as j:
        # the block's columns (a short last one) and its whole output channels
        cw = smaller(b, i64(shape.block), b.sub(row, b.mul(b.add(first, j), i64(shape.block))))
        planes = b.sdiv(cw, i64(shape.taps))
        if shape.prepacked:  # a multiple of NR columns a block: its panels are contiguous
            weights = PackedB(b.gep(w, [b.mul(j, b.mul(i64(shape.block), per_in))]), per_in)
        else:
            weights = Matrix(b.gep(w, [b.mul(j, i64(shape.block))]), row)
        y_block = b.gep(y, [b.mul(b.mul(j, i64(per_block)), out_plane)])
        bias_block = None if bias is None else b.gep(bias, [b.mul(j, i64(per_block))])
        with kb.for_range(samples) as s:
            x0, y0 = b.gep(x, [b.mul(s, x_step)]), b.gep(y_block, [b.mul(s, y_step)])
            _fill_with_bias(kb, y0, planes, out_plane, bias_block)
            with kb.for_range(pixels, step=chunk.constant) as p0:
                rows = smaller(b, chunk, b.sub(pixels, p0))
                gemm(kb, rows, cw, per_in, Matrix(b.gep(x0, [p0]), pixels, transposed=True),
                     weights, Matrix(cols, cw))
                with kb.for_range(rows) as p:
                    _col2im(kb, taps, y0, b.gep(cols, [b.mul(p, cw)]), b.add(p0, p), planes,
                            (out_h, out_w))


def _conv_transpose_direct(kb, n, win: Window, groups: int) -> None:
    """conv_transpose gathered per output element (any dtype)."""
    b = kb.b
    h, wd = (kb.dim(d) for d in win.size)
    kh, kw = (kb.dim(d) for d in win.kernel)
    taps = b.mul(kh, kw)
    per_in = b.sdiv(kb.dim(n.in_types[0].shape[1]), i64(groups))
    per_out = kb.dim(n.in_types[1].shape[1])

    def source(o, i, axis, size):
        """(whether a tap at kernel offset i lands on output o along axis, input index)."""
        t = b.sub(b.add(o, kb.dim(win.pad[axis])), b.mul(i, i64(win.dilation[axis])))
        stride = i64(win.stride[axis])
        q = b.sdiv(t, stride)
        exact = b.and_(b.icmp_signed(">=", t, ZERO), b.icmp_signed("==", b.srem(t, stride), ZERO))
        return b.and_(exact, inside(kb, q, size)), q

    def where(oh, ow, i, j):
        (row_lands, ih), (col_lands, iw) = source(oh, i, 0, h), source(ow, j, 1, wd)
        return b.and_(row_lands, col_lands), ih, iw

    def weight(o, i, j):
        group, local = b.sdiv(o, per_out), b.srem(o, per_out)
        first = b.add(b.mul(b.mul(group, per_in), per_out), local)  # channel g * per_in, o'
        return b.add(b.mul(first, taps), b.add(b.mul(i, kw), j)), b.mul(per_out, taps)

    _direct(kb, n, win, groups, where, weight)
