"""Native kernels of the nn ops: convolution (im2col into the GEMM), transposed convolution,
pooling, normalization and resize, written against `KernelBuilder` (kb).

Tensors are NC(L) or NCHW. A 1-D op is run as a 2-D one with a unit height (`Window.of`), so
every kernel here walks planes of H x W.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ...dims import Dim
from .abi import F32, F64, I32, I64
from .gemm import Matrix, PackedB, gemm, tiling
from .irgen import Vectors, i64, smaller
from .threads import parallel_rows

ZERO = ir.Constant(I64, 0)


@dataclass(frozen=True)
class Window:
    """A sliding window over the two spatial axes: output (oh, ow) reads input rows
    oh * stride[0] - pad[0] + i * dilation[0] for i < kernel[0], and columns likewise."""

    size: tuple[Dim, Dim]  # input H, W
    kernel: tuple[Dim, Dim]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[Dim, Dim]  # before
    out: tuple[Dim, Dim]

    @classmethod
    def of(cls, size, kernel, stride, dilation, pad, out) -> Window:
        """From per-spatial-axis values of a 1-D or 2-D op (1-D gets a unit height)."""
        unit = len(size) == 1

        def two(values, fill):
            values = tuple(values)
            return (fill, *values) if unit else values

        return cls(tuple(map(Dim.of, two(size, 1))), tuple(map(Dim.of, two(kernel, 1))),
                   two(stride, 1), two(dilation, 1), tuple(map(Dim.of, two(pad, 0))),
                   tuple(map(Dim.of, two(out, 1))))

    def origin(self, kb, o: ir.Value, axis: int) -> ir.Value:
        """The input coordinate of output o's first tap along `axis` (negative in padding)."""
        return kb.b.sub(kb.b.mul(o, i64(self.stride[axis])), kb.dim(self.pad[axis]))


# small pieces ------------------------------------------------------------------------------
def _inside(kb, index: ir.Value, size: ir.Value) -> ir.Value:
    """0 <= index < size (one unsigned compare)."""
    return kb.b.icmp_unsigned("<", index, size)


def _fold(kb, sizes: list[ir.Value], init: ir.Value, step) -> ir.Value:
    """acc = step(acc, [i0, i1, ...]) over the index space sizes[0] x sizes[1] x ..."""

    def level(d, acc, index):
        if d == len(sizes):
            return step(acc, index)
        return kb.accumulate(ZERO, sizes[d], acc, lambda a, i: level(d + 1, a, [*index, i]))

    return level(0, init, [])


def _planes(kb, t) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(N * C, H, W) of an NCHW or NCL tensor type (L is W, H is 1)."""
    spatial = t.shape[2:]
    h = kb.dim(spatial[0]) if len(spatial) == 2 else i64(1)
    return kb.numel(t.shape[:2]), h, kb.dim(spatial[-1])


def _maximum(kb, a, b):
    """numpy's maximum: NaN wins (no fast-math flags, which would let LLVM drop NaN)."""
    if not kb.is_float(a):
        return kb.maximum(a, b)
    fn = kb.module.declare_intrinsic("llvm.maximum", [a.type],
                                     ir.FunctionType(a.type, [a.type, a.type]))
    return kb.b.call(fn, [a, b])


# convolution -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Im2col:
    """A convolution's input as the B matrix of its GEMM, packed panel by panel and never
    materialised: B[(c, i, j), (oh, ow)] = x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], zero
    in the padding. `plane0` is the group's first channel; the rest are run-time i64 sizes,
    so that one GEMM function serves every convolution of a model."""

    plane0: ir.Value
    h: ir.Value
    w: ir.Value
    kh: ir.Value
    kw: ir.Value
    sh: ir.Value
    sw: ir.Value
    ph: ir.Value
    pw: ir.Value
    dh: ir.Value
    dw: ir.Value
    out_w: ir.Value
    col0: ir.Value  # the pixel that is column 0 (a thread's block of columns starts there)
    pointers = 1
    sizes = 12

    @classmethod
    def of(cls, kb, plane0: ir.Value, win: Window) -> Im2col:
        sizes = [*win.size, *win.kernel, *win.stride, *win.pad, *win.dilation, win.out[1]]
        return cls(plane0, *(kb.dim(d) for d in sizes), i64(0))

    def fields(self):
        return [self.plane0], [self.h, self.w, self.kh, self.kw, self.sh, self.sw, self.ph,
                               self.pw, self.dh, self.dw, self.out_w, self.col0]

    @classmethod
    def unpack(cls, pointers, sizes) -> Im2col:
        return cls(*pointers, *sizes)

    @classmethod
    def from_column(cls, b, pointers, sizes, col0):
        return list(pointers), [*sizes[:11], b.add(sizes[11], col0)]

    def pack(self, kb, dst, k0, kc, j0, cols, nr) -> None:
        """Two vectors of columns at a time: each column's window origin is computed once per
        panel, then each tap (row of B) is one masked gather per vector; or, when the
        columns of a vector are consecutive pixels of at most two output rows (stride and
        dilation 1 along the width, rows at least a vector long), two masked loads of
        consecutive input pixels, one per row; or, at stride 2 along the width with the
        vector in one output row, the even lanes of two masked loads."""
        b = kb.b
        vec = Vectors(b, nr // 2)
        i32 = I32
        one = i64(1)
        contiguous = b.and_(b.and_(b.icmp_signed("==", self.sw, one),
                                   b.icmp_signed("==", self.dw, one)),
                            b.icmp_signed(">=", self.out_w, i64(vec.width)))
        halved = b.and_(b.icmp_signed("==", self.sw, i64(2)), b.icmp_signed("==", self.dw, one))
        local = ir.Constant(ir.VectorType(i32, vec.width), list(range(vec.width)))

        def splat(value):  # an i64 size as an i32 vector
            return vec.splat(b.trunc(value, i32))

        tap = _tap_at(b, k0, self.kh, self.kw)
        origins = []
        for v in range(2):
            lane = ir.Constant(ir.VectorType(i32, vec.width), [v * vec.width + lane
                                                              for lane in range(vec.width)])
            col = b.add(splat(b.add(self.col0, j0)), lane)
            oh = _quotient(vec, col, splat(self.out_w))
            ow = b.sub(col, b.mul(oh, splat(self.out_w)))
            top = b.sub(b.mul(oh, splat(self.sh)), splat(self.ph))
            far = vec.splat(ir.Constant(i32, -(1 << 30)))  # past `cols`: only zeros are read
            top = b.select(b.icmp_signed("<", lane, splat(cols)), top, far)
            # lanes before `split` are in the first lane's output row, the rest in the next
            split = b.sub(b.trunc(self.out_w, i32), b.extract_element(ow, ir.Constant(i32, 0)))
            first_row = b.icmp_signed("<", local, vec.splat(split))
            # the whole vector in one output row and before `cols` (for stride 2's loads)
            one_row = b.and_(b.icmp_signed(">=", split, ir.Constant(i32, vec.width)),
                             b.icmp_signed(">=", cols, i64((v + 1) * vec.width)))
            origins.append((top, b.sub(b.mul(ow, splat(self.sw)), splat(self.pw)), split,
                            first_row, one_row))
        h, w = splat(self.h), splat(self.w)

        def taps_loop(mode: str) -> None:  # one loop per way of fetching, chosen once
            with kb.for_range(kc) as p:
                c, i, j = (b.load(slot) for slot in tap)
                plane = b.gep(self.plane0, [b.mul(c, b.mul(self.h, self.w))])
                dy, dx = splat(b.mul(i, self.dh)), splat(b.mul(j, self.dw))
                out = b.gep(dst, [b.mul(p, i64(nr))])
                for v, (top, left, split, first_row, one_row) in enumerate(origins):
                    y, x = b.add(top, dy), b.add(left, dx)
                    inside = b.and_(b.icmp_unsigned("<", y, h), b.icmp_unsigned("<", x, w))
                    at = (out, v * vec.width)
                    if mode == "rows":
                        value = self._two_rows(b, vec, plane, y, x, split, first_row, inside, j)
                    elif mode == "halved":  # one row: the even lanes of two loads, else gather
                        with b.if_else(one_row) as (loads, scattered_):
                            with loads:
                                vec.store(self._even_lanes(b, vec, plane, y, x), *at,
                                          align=vec.width * 4)
                            with scattered_:
                                vec.store(vec.gather(plane, b.add(b.mul(y, w), x), inside), *at,
                                          align=vec.width * 4)
                        continue
                    else:
                        value = vec.gather(plane, b.add(b.mul(y, w), x), inside)
                    vec.store(value, *at, align=vec.width * 4)
                _next_tap(b, tap, self.kh, self.kw)

        with b.if_else(contiguous) as (consecutive, other):
            with consecutive:
                taps_loop("rows")
            with other, b.if_else(halved) as (strided, scattered):
                with strided:
                    taps_loop("halved")
                with scattered:
                    taps_loop("gather")

    def _even_lanes(self, b, vec: Vectors, plane, y, x) -> ir.Value:
        """A vector of pixels of one output row at stride 2 along the width (dilation 1):
        the even lanes of two masked loads of 2 * width consecutive input floats from the
        first lane's pixel (masked off: a row or columns outside x, never read)."""
        i32 = I32
        zero = ir.Constant(i32, 0)
        y0, x0 = b.extract_element(y, zero), b.extract_element(x, zero)
        row_ok = b.icmp_unsigned("<", b.sext(y0, I64), self.h)
        base = b.gep(plane, [b.add(b.mul(b.sext(y0, I64), self.w), b.sext(x0, I64))])
        width = vec.splat(b.trunc(self.w, i32))
        halves = []
        for half in range(2):
            lanes = ir.Constant(ir.VectorType(i32, vec.width),
                                [half * vec.width + lane for lane in range(vec.width)])
            inside = b.icmp_unsigned("<", b.add(vec.splat(x0), lanes), width)
            mask = b.and_(inside, vec.splat(row_ok))
            halves.append(vec.masked_load(base, half * vec.width, mask))
        even = ir.Constant(ir.VectorType(i32, vec.width), [2 * lane for lane in range(vec.width)])
        return b.shuffle_vector(halves[0], halves[1], even)

    def _two_rows(self, b, vec: Vectors, plane, y, x, split, first_row, inside, j) -> ir.Value:
        """The lanes of one vector of consecutive pixels (stride 1 along the width): those of
        the first lane's row by one masked load, the rest (from ow = 0 of the next output
        row, sh input rows down) by another. Masked-off lanes are never read: the base
        pointers may lie outside x."""
        zero = ir.Constant(I32, 0)
        y0 = b.sext(b.extract_element(y, zero), I64)
        x0 = b.sext(b.extract_element(x, zero), I64)
        here = b.gep(plane, [b.add(b.mul(y0, self.w), x0)])
        below = b.gep(plane, [b.sub(b.add(b.mul(b.add(y0, self.sh), self.w),
                                          b.sub(b.mul(j, self.dw), self.pw)),
                                    b.sext(split, I64))])
        upper = vec.masked_load(here, 0, b.and_(inside, first_row))
        lower = vec.masked_load(below, 0, b.and_(inside, b.not_(first_row)))
        return b.select(first_row, upper, lower)


@dataclass(frozen=True)
class Shifted:
    """A stride-1 convolution's input as the B matrix of its GEMM, once copied into a zero-
    bordered buffer xp of [C, Hp, Wp] (Hp = OH + dh*(kh-1), Wp = OW + dw*(kw-1)): column q is
    the output pixel (q // Wp, q % Wp) of a grid Wp wide, and row (c, i, j) is
    xp[c*Hp*Wp + i*dh*Wp + j*dw + q], consecutive floats. A panel then packs by plain vector
    copies, with no gather, mask or bounds per element; the Wp - OW columns of each grid row
    past the output are computed and dropped (`conv`'s compaction)."""

    base: ir.Value  # xp
    plane: ir.Value  # Hp * Wp
    wp: ir.Value
    kh: ir.Value
    kw: ir.Value
    dh: ir.Value
    dw: ir.Value
    pointers = 1
    sizes = 6

    def fields(self):
        return [self.base], [self.plane, self.wp, self.kh, self.kw, self.dh, self.dw]

    @classmethod
    def unpack(cls, pointers, sizes) -> Shifted:
        return cls(*pointers, *sizes)

    @classmethod
    def from_column(cls, b, pointers, sizes, col0):
        return [b.gep(pointers[0], [b.mul(col0, i64(4))])], list(sizes)

    def pack(self, kb, dst, k0, kc, j0, cols, nr) -> None:
        """Row by row, two vectors of consecutive floats from the row's tap offset."""
        b = kb.b
        vec = Vectors(b, nr // 2)
        tap = _tap_at(b, k0, self.kh, self.kw)
        start = b.gep(self.base, [j0])
        row_step = b.mul(self.dh, self.wp)

        def rows(masks) -> None:
            with kb.for_range(kc) as p:
                c, i, j = (b.load(slot) for slot in tap)
                offset = b.add(b.add(b.mul(c, self.plane), b.mul(i, row_step)),
                               b.mul(j, self.dw))
                src = b.gep(start, [offset])
                out = b.gep(dst, [b.mul(p, i64(nr))])
                for v, mask in enumerate(masks):
                    at = v * vec.width
                    value = vec.load(src, at) if mask is None else vec.masked_load(src, at, mask)
                    vec.store(value, out, at, align=vec.width * 4)
                _next_tap(b, tap, self.kh, self.kw)

        with b.if_else(b.icmp_signed("==", cols, i64(nr))) as (whole, part):
            with whole:
                rows([None, None])
            with part:
                rows([vec.mask(cols, v * vec.width) for v in range(2)])


def _quotient(vec: Vectors, num: ir.Value, den: ir.Value) -> ir.Value:
    """num // den of non-negative i32 vectors, through f64 (a vector division of integers is
    16 scalar ones): exact, as num / den < 2**31 is at least 1/den away from the next integer
    while f64 resolves 2**-21 there."""
    b = vec.b
    f64s = ir.VectorType(F64, vec.width)
    return b.fptosi(b.fdiv(b.sitofp(num, f64s), b.sitofp(den, f64s)), num.type)


def _tap_at(b, k: ir.Value, kh: ir.Value, kw: ir.Value) -> list[ir.Value]:
    """Slots (in the entry block) for the running tap (c, i, j) of rows of B over [C, kh, kw],
    set to row k's."""
    with b.goto_entry_block():
        tap = [b.alloca(I64, name=n) for n in ("c", "i", "j")]
    taps = b.mul(kh, kw)
    first = b.srem(k, taps)
    for slot, value in zip(tap, (b.sdiv(k, taps), b.sdiv(first, kw), b.srem(first, kw)),
                           strict=True):
        b.store(value, slot)
    return tap


def _next_tap(b, tap, kh, kw) -> None:
    """(c, i, j) <- the next tap in row-major order over [C, kh, kw]."""
    c, i, j = (b.load(slot) for slot in tap)
    one = i64(1)
    j = b.add(j, one)
    wrap_j = b.icmp_signed("==", j, kw)
    i = b.select(wrap_j, b.add(i, one), i)
    wrap_i = b.icmp_signed("==", i, kh)
    for slot, value in zip(tap, (b.select(wrap_i, b.add(c, one), c), b.select(wrap_i, ZERO, i),
                                 b.select(wrap_j, ZERO, j))):
        b.store(value, slot)


def conv(kb, n, win: Window, groups: int) -> None:
    """y[n, g] = w[g] @ im2col(x[n, g]) (+ bias) per sample and group, through the GEMM; a
    1x1 convolution with stride 1 and no padding multiplies x itself, and another with stride
    1 reads a zero-bordered copy of x (`Shifted`). Other dtypes than f32 run the direct
    loops."""
    x_t, w_t, bias_t = n.in_types
    if x_t.dtype != "f32":
        _conv_direct(kb, n, win, groups)
        return
    b = kb.b
    x, w, y = kb.input("x"), kb.input("weight"), kb.output()
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

    def run() -> None:
        with kb.for_range(batch) as s, kb.for_range(i64(groups)) as g:
            x0 = b.gep(x, [b.mul(b.add(b.mul(s, channels), b.mul(g, per_in)), plane_in)])
            first_out = b.mul(g, per_out)
            y0 = b.gep(y, [b.mul(b.add(b.mul(s, outs), first_out), pixels)])
            if bias is not None and padded is None:  # C starts as the bias; the GEMM adds
                with kb.for_range(per_out) as o, kb.for_range(pixels) as q:
                    value = b.load(b.gep(bias, [b.add(first_out, o)]))
                    b.store(value, b.gep(y0, [b.add(b.mul(o, pixels), q)]))
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
                source = Matrix(x0, plane_in) if pointwise else Im2col.of(kb, x0, win)
                gemm(kb, per_out, pixels, depth, weights, source, Matrix(y0, pixels),
                     accumulate=bias is not None)

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
        needs after), split across threads by channel (`_by_channel`)."""
        sizes = [self.per_in, self.h, self.w, self.ph, self.pw, self.hp, self.wp]
        _by_channel(kb, "pad", [x0, self.base], sizes,
                    lambda b, s: [b.mul(s[1], s[2]), b.mul(s[5], s[6])], _fill_channels,
                    lambda b, s: b.mul(s[0], b.mul(s[5], s[6])))

    def compact(self, kb, y0: ir.Value, bias: ir.Value | None) -> None:
        """y0[o, r, :OW] = result[o, r * Wp : r * Wp + OW] (+ bias[o]), split across threads
        by channel."""
        sizes = [self.per_out, self.oh, self.ow, self.wp, self.columns]
        pointers = [self.result, y0] + ([bias] if bias is not None else [])
        _by_channel(kb, "compact", pointers, sizes,
                    lambda b, s: [s[4], b.mul(s[1], s[2]), i64(1)][:len(pointers)],
                    _compact_channels, lambda b, s: b.mul(s[0], s[4]))


def _fill_channels(kb, pointers, sizes) -> None:
    """The padded copy of `count` channels: pointers (x, xp), sizes (count, h, w, ph, pw, hp,
    wp)."""
    b = kb.b
    x0, base = pointers
    count, h, w, ph, pw, hp, wp = sizes
    # input columns that land in the grid: from 0, at most W and Wp - pw of them
    width = _clamp(b, b.sub(wp, pw), w)
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


COPY_PARALLEL = 1 << 16  # floats a channel-split copy must move for threads to start


def _by_channel(kb, name: str, pointers: list[ir.Value], sizes: list[ir.Value], strides,
                body, work) -> None:
    """body(kb, pointers, sizes) over sizes[0] channels, as a function of its own that the
    module's threads split by channel (blocks of whole channels: each pointer i moves
    strides(b, sizes)[i] floats a channel) when `work(b, sizes)` floats reach COPY_PARALLEL;
    inside a kernel already split by sample (`kb.serial`), or with one thread, the loop runs
    whole."""

    ikb = kb.helper(name)
    body(ikb, [ikb.buffer(i, "f32") for i in range(len(pointers))],
         [ikb.b.load(ikb.b.gep(ikb.dims_ptr, [i64(i)])) for i in range(len(sizes))])
    inner = ikb.finish()

    def shift(b, ptrs, szs, row0):
        moved = [b.gep(p, [b.mul(row0, b.mul(step, i64(4)))])
                 for p, step in zip(ptrs, strides(b, szs), strict=True)]
        return moved, list(szs)

    fn = inner if kb.serial else parallel_rows(
        kb.module, inner, len(pointers), len(sizes), shift, min_rows=1,
        min_work=COPY_PARALLEL, work=work, name=f"{inner.name}_parallel")
    kb.call_kernel(fn, pointers, sizes, name)


def _clamp(b, value: ir.Value, most: ir.Value) -> ir.Value:
    """min(max(value, 0), most)."""
    value = b.select(b.icmp_signed("<", value, ZERO), ZERO, value)
    return smaller(b, value, most)


def _each_output(kb, t, body) -> None:
    """body(sample, channel, oh, ow, flat index) for every element of an NC(H)W output."""
    _, h, w = _planes(kb, t)
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

        total = _fold(kb, [kh, kw], _bias_or_zero(kb, n, o, dtype), tap)
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
        return b.and_(_inside(kb, yy, h), _inside(kb, xx, wd)), yy, xx

    def weight(o, i, j):
        return b.add(b.mul(b.mul(o, per_in), taps), b.add(b.mul(i, kw), j)), taps

    _direct(kb, n, win, groups, where, weight)


COLUMNS = 1 << 16  # floats of a transposed convolution's column buffer (256 KiB of stack)


def conv_transpose(kb, n, win: Window, groups: int) -> None:
    """The adjoint of conv: tap (i, j) of input pixel (ih, iw) lands on output
    oh = ih * stride - pad + i * dilation (and likewise ow); w is [C_in, C_out/groups, kh, kw].
    `win` describes it: size is x's spatial size, out y's.

    f32 as a GEMM and a scatter (col2im), per sample and group, a chunk of input pixels at a
    time: cols[p, (o, i, j)] = sum_c x[c, p] * w[c, (o, i, j)], then y[o, oh, ow] += cols for
    each tap that lands. Other dtypes, and a row (o, i, j) longer than the buffer, gather each
    output directly."""
    x_t, w_t, _ = n.in_types
    row = w_t.shape[1] * win.kernel[0] * win.kernel[1]  # (o, i, j) of a group
    if x_t.dtype != "f32" or not row.is_const or row.value > COLUMNS:
        _conv_transpose_direct(kb, n, win, groups)
        return
    b = kb.b
    x, w, y = kb.input("x"), kb.input("weight"), kb.output()
    h, wd = (kb.dim(d) for d in win.size)
    out_h, out_w = (kb.dim(d) for d in win.out)
    channels, per_out = kb.dim(x_t.shape[1]), kb.dim(w_t.shape[1])
    per_in = b.sdiv(channels, i64(groups))
    pixels, out_plane, width = b.mul(h, wd), b.mul(out_h, out_w), kb.dim(row)
    with b.goto_entry_block():
        cols = b.alloca(ir.ArrayType(F32, COLUMNS), name="cols")
        cols.align = 64
    cols = b.gep(cols, [ZERO, ZERO])
    chunk = i64(COLUMNS // row.value)
    with kb.for_range(kb.dim(x_t.shape[0])) as s, kb.for_range(i64(groups)) as g:
        x0 = b.gep(x, [b.mul(b.add(b.mul(s, channels), b.mul(g, per_in)), pixels)])
        first_out = b.mul(g, per_out)
        y0 = b.gep(y, [b.mul(b.add(b.mul(s, b.mul(per_out, i64(groups))), first_out),
                             out_plane)])
        with kb.for_range(per_out) as o, kb.for_range(out_plane) as q:
            kb.store(y0, b.add(b.mul(o, out_plane), q),
                     _bias_or_zero(kb, n, b.add(first_out, o), "f32"), "f32")
        if 1 in n.prepacked:  # w laid out by gemm.prepack_b: [groups, panels, per_in, NR]
            nr = tiling(kb.vector_width).nr
            group_floats = b.mul(per_in, i64(-(-row.value // nr) * nr))
            weights = PackedB(b.gep(w, [b.mul(g, group_floats)]), per_in)
        else:
            weights = Matrix(b.gep(w, [b.mul(b.mul(g, per_in), width)]), width)
        with kb.for_range(pixels, step=chunk.constant) as p0:
            count = b.select(b.icmp_signed("<", chunk, b.sub(pixels, p0)), chunk,
                             b.sub(pixels, p0))
            gemm(kb, count, width, per_in, Matrix(b.gep(x0, [p0]), pixels, transposed=True),
                 weights, Matrix(cols, width))
            with kb.for_range(count) as p:
                _col2im(kb, win, y0, b.gep(cols, [b.mul(p, width)]), b.add(p0, p), per_out,
                        (out_h, out_w))


def _col2im(kb, win: Window, y, cols, pixel, channels, out) -> None:
    """y[o, oh, ow] += cols[(o, i, j)] for every tap (i, j) of input `pixel` that lands."""
    b = kb.b
    kh, kw = (kb.dim(d) for d in win.kernel)
    wd = kb.dim(win.size[1])
    ih, iw = b.sdiv(pixel, wd), b.srem(pixel, wd)
    with kb.for_range(channels) as o, kb.for_range(kh) as i:
        oh = b.add(win.origin(kb, ih, 0), b.mul(i, i64(win.dilation[0])))
        with b.if_then(_inside(kb, oh, out[0])), kb.for_range(kw) as j:
            ow = b.add(win.origin(kb, iw, 1), b.mul(j, i64(win.dilation[1])))
            with b.if_then(_inside(kb, ow, out[1])):
                at = b.gep(y, [b.add(b.mul(b.add(b.mul(o, out[0]), oh), out[1]), ow)])
                tap = b.load(b.gep(cols, [b.add(b.mul(b.add(b.mul(o, kh), i), kw), j)]))
                b.store(kb.fadd(b.load(at), tap), at)


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
        return b.and_(exact, _inside(kb, q, size)), q

    def where(oh, ow, i, j):
        (row_lands, ih), (col_lands, iw) = source(oh, i, 0, h), source(ow, j, 1, wd)
        return b.and_(row_lands, col_lands), ih, iw

    def weight(o, i, j):
        group, local = b.sdiv(o, per_out), b.srem(o, per_out)
        first = b.add(b.mul(b.mul(group, per_in), per_out), local)  # channel g * per_in, o'
        return b.add(b.mul(first, taps), b.add(b.mul(i, kw), j)), b.mul(per_out, taps)

    _direct(kb, n, win, groups, where, weight)


# pooling -----------------------------------------------------------------------------------
def _pool_rows(kb, n, win: Window, compute: str, init, fold, finish=None) -> None:
    """A pooling op row by row: for each plane and output row, a row of `compute` values
    starts at `init`; each tap (i, j) of the window folds its input row in, acc =
    fold(acc, x), over the outputs whose tap lands inside the input (a loop over consecutive
    outputs with no bounds test, which LLVM vectorises); then finish(oh, ow, acc) gives each
    output (default: acc itself). The row is the output row when `compute` is the output's
    dtype, else one scratch row."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    dtype = x_t.dtype
    x, y = kb.input("x"), kb.output()
    b = kb.b
    planes, h, w = _planes(kb, x_t)
    _, out_h, out_w = _planes(kb, y_t)
    kh, kw = (kb.dim(k) for k in win.kernel)
    sw = i64(win.stride[1])
    dh, dw = (i64(d) for d in win.dilation)
    pw = kb.dim(win.pad[1])
    scratch = kb.scratch(out_w, compute) if compute != y_t.dtype else None

    def row(index):
        p, oh = index
        plane = b.gep(x, [b.mul(p, b.mul(h, w))])
        out = b.gep(y, [b.mul(b.add(b.mul(p, out_h), oh), out_w)])
        acc = scratch if scratch is not None else out
        with kb.for_range(out_w) as ow:
            kb.store(acc, ow, init, compute)
        top = win.origin(kb, oh, 0)
        with kb.for_range(kh) as i:
            yy = b.add(top, b.mul(i, dh))
            with b.if_then(_inside(kb, yy, h)):
                line = b.gep(plane, [b.mul(yy, w)])
                with kb.for_range(kw) as j:
                    shift = b.sub(b.mul(j, dw), pw)  # x = ow * sw + shift
                    first, stop = _inside_range(kb, shift, sw, w, out_w)
                    with kb.for_range(stop, start=first) as ow:
                        value = kb.load(line, b.add(b.mul(ow, sw), shift), dtype)
                        kb.store(acc, ow, fold(kb.load(acc, ow, compute), value), compute)
        if finish is not None or scratch is not None:
            with kb.for_range(out_w) as ow:
                value = kb.load(acc, ow, compute)
                kb.store(out, ow, finish(oh, ow, value) if finish else value, y_t.dtype)

    with kb.allocated([scratch] if scratch is not None else [], "a pooling row"):
        kb.loop_nest([planes, out_h], row)


def _inside_range(kb, shift: ir.Value, stride: ir.Value, size: ir.Value, count: ir.Value):
    """[first, stop): the outputs o < count with 0 <= o * stride + shift < size."""
    b = kb.b
    need = b.sub(ZERO, shift)  # o * stride >= -shift
    first = b.select(b.icmp_signed(">", need, ZERO),
                     b.sdiv(b.add(need, b.sub(stride, i64(1))), stride), ZERO)
    room = b.sub(b.sub(size, i64(1)), shift)  # o * stride <= size - 1 - shift
    last = b.select(b.icmp_signed(">=", room, ZERO), b.add(b.sdiv(room, stride), i64(1)), ZERO)
    stop = smaller(b, last, count)
    return first, b.select(b.icmp_signed("<", stop, first), first, stop)


def max_pool(kb, n, win: Window) -> None:
    """The largest input in each window (padding never wins; NaN does, as numpy's max), row
    by row from the lowest value (_pool_rows)."""
    dtype = n.in_types[0].dtype
    if dtype in ("i32", "i64"):
        lowest = kb.const(-(1 << (31 if dtype == "i32" else 63)), dtype)
    else:
        lowest = kb.const(float("-inf"), dtype)
    _pool_rows(kb, n, win, dtype, lowest, lambda acc, x: _maximum(kb, acc, x))


def avg_pool(kb, n, win: Window, count_include_pad: bool) -> None:
    """Window sums over zero padding, divided by the window cells PyTorch counts: those in the
    padded input with count_include_pad, else those in the input; never ceil mode's overhang.
    Row by row (_pool_rows): sums in the compute type (f32 for half floats, rounded once)."""
    dtype = n.in_types[0].dtype
    compute = "f32" if dtype in ("f16", "bf16") else dtype
    b = kb.b

    def counted(o, axis):  # cells of the window along one axis that the divisor counts
        start = win.origin(kb, o, axis)
        pad = kb.dim(win.pad[axis]) if count_include_pad else ZERO
        lo, hi = b.sub(ZERO, pad), b.add(kb.dim(win.size[axis]), pad)
        end = b.add(start, kb.dim(win.kernel[axis]))
        first = b.select(b.icmp_signed(">", start, lo), start, lo)
        last = smaller(b, end, hi)
        return b.sub(last, first)

    def mean(oh, ow, total):
        return kb.fdiv(total, kb.convert(b.mul(counted(oh, 0), counted(ow, 1)), compute))

    _pool_rows(kb, n, win, compute, kb.const(0.0, compute), lambda acc, x: kb.add(acc, x), mean)


def _mean(kb, x, base: ir.Value, count: ir.Value, dtype: str, term=None) -> ir.Value:
    """mean of term(x[base + i]) over i < count, summed in f64; in the compute type of dtype."""
    def step(acc, i):
        value = kb.load(x, kb.b.add(base, i), dtype)
        return kb.fadd(acc, kb.convert(term(value) if term else value, "f64"))

    total = kb.accumulate(ZERO, count, ir.Constant(F64, 0.0), step)
    return kb.convert(kb.b.fdiv(total, kb.b.sitofp(count, F64)), dtype)


def global_avg_pool(kb, n) -> None:
    """The mean of each plane."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    x, y = kb.input("x"), kb.output()
    planes, h, w = _planes(kb, x_t)
    size = kb.b.mul(h, w)
    with kb.for_range(planes) as p:
        kb.store(y, p, _mean(kb, x, kb.b.mul(p, size), size, x_t.dtype), y_t.dtype)


# normalization -----------------------------------------------------------------------------
def normalize(kb, n, groups: ir.Value, per_group: ir.Value, spatial: ir.Value, eps: float,
              by_position: bool) -> None:
    """(x - mean) / sqrt(var + eps) * weight + bias, x seen as [segments, per_group, spatial]
    with each segment normalized on its own (biased variance, two passes, sums in f64);
    segment s is group s % groups. weight and bias are indexed by channel
    (s % groups) * per_group + c (group and instance norm), or by position in the segment
    (layer norm). Every step rounds as the reference: mean, var and the quotient in the compute
    type; eps is added in it."""
    x_t, w_t, bias_t = n.in_types
    dtype = x_t.dtype
    b = kb.b
    x, y = kb.input("x"), kb.output()
    weight, bias = kb.input("weight"), kb.input("bias")
    length = b.mul(per_group, spatial)
    # an empty segment (normalized axes of size 0) leaves nothing to do, but dividing by its
    # length would trap (SIGFPE): divide by 1 then, the count being 0 anyway
    nonzero = kb.select(kb.compare("==", length, kb.const(0, "i64")), kb.const(1, "i64"), length)
    segments = b.sdiv(kb.numel(x_t.shape), nonzero)
    with kb.for_range(segments) as s:
        base = b.mul(s, length)
        mean = _mean(kb, x, base, length, dtype)
        def square(value):
            centered = kb.fsub(value, mean)
            return kb.fmul(centered, centered)

        var = _mean(kb, x, base, length, dtype, square)
        root = kb.intrinsic("sqrt", kb.fadd(var, kb.const(eps, dtype)))
        with kb.for_range(per_group) as c:
            channel = b.add(b.mul(b.srem(s, groups), per_group), c)
            with kb.for_range(spatial) as i:
                position = b.add(b.mul(c, spatial), i)
                at = b.add(base, position)
                value = kb.fdiv(kb.fsub(kb.load(x, at, dtype), mean), root)
                kb.store(y, at, _affine(kb, value, weight, bias,
                                        position if by_position else channel, dtype), dtype)


def _affine(kb, value, weight, bias, index, dtype: str) -> ir.Value:
    """value * weight[index] + bias[index] (absent ones skipped)."""
    if weight is not None:
        value = kb.fmul(value, kb.load(weight, index, dtype))
    if bias is not None:
        value = kb.fadd(value, kb.load(bias, index, dtype))
    return value


def batch_norm(kb, n, eps: float) -> None:
    """(x - running_mean[c]) / sqrt(running_var[c] + eps) * weight[c] + bias[c]."""
    x_t = n.in_types[0]
    dtype = x_t.dtype
    b = kb.b
    x, y = kb.input("x"), kb.output()
    mean, var, weight, bias = (kb.input(name) for name in ("running_mean", "running_var",
                                                            "weight", "bias"))
    channels = kb.dim(x_t.shape[1])
    spatial = kb.numel(x_t.shape[2:])
    with kb.for_range(kb.dim(x_t.shape[0])) as s, kb.for_range(channels) as c:
        m = kb.load(mean, c, dtype)
        root = kb.intrinsic("sqrt", kb.fadd(kb.load(var, c, dtype), kb.const(eps, dtype)))
        base = b.mul(b.add(b.mul(s, channels), c), spatial)
        with kb.for_range(spatial) as i:
            at = b.add(base, i)
            value = kb.fdiv(kb.fsub(kb.load(x, at, dtype), m), root)
            kb.store(y, at, _affine(kb, value, weight, bias, c, dtype), dtype)


# resize ------------------------------------------------------------------------------------
def resize(kb, n, ratios: list, nearest: bool, corners: bool) -> None:
    """Separable, as the reference: along each spatial axis in turn take the nearest row, or
    blend the two nearest, a * (1 - lam) + b * lam. The coordinate math is plain IEEE f32 (no
    fast-math), as numpy's. ratios[i] is an f32 number, or None for in/out computed at run time
    (PyTorch's area_pixel_compute_scale; (in - 1)/(out - 1) with align_corners)."""
    x_t, y_t = n.in_types[0], n.out_types[0]
    dtype = x_t.dtype
    b = kb.b
    x, y = kb.input("x"), kb.output()
    ins = [kb.dim(d) for d in x_t.shape[2:]]
    outs = [kb.dim(d) for d in y_t.shape[2:]]
    in_strides = kb.strides(x_t.shape[2:])
    out_strides = [kb.numel(y_t.shape[2:]), *kb.strides(y_t.shape[2:])]
    one = ir.Constant(F32, 1.0)

    def ratio(axis):
        if ratios[axis] is not None:
            return ir.Constant(F32, float(ratios[axis]))
        size, out = ins[axis], outs[axis]
        if corners:  # (in - 1) / (out - 1), 0 for one output
            size, out = b.sub(size, i64(1)), b.sub(out, i64(1))
            safe = b.select(b.icmp_signed(">", out, ZERO), out, i64(1))
            value = b.fdiv(b.sitofp(size, F64), b.sitofp(safe, F64))
            return b.select(b.icmp_signed(">", out, ZERO), b.fptrunc(value, F32),
                            ir.Constant(F32, 0.0))
        return b.fptrunc(b.fdiv(b.sitofp(size, F64), b.sitofp(out, F64)), F32)

    def source(o, axis):
        """[(input index, weight)] of output o along axis: one for nearest, two otherwise."""
        last = b.sub(ins[axis], i64(1))
        dst = b.sitofp(o, F32)
        r = ratio(axis)
        if nearest:
            index = b.fptosi(kb.intrinsic("floor", b.fmul(dst, r)), I64)
            return [(smaller(b, index, last), None)]
        if corners:
            src = b.fmul(dst, r)
        else:
            half = ir.Constant(F32, 0.5)
            src = b.fsub(b.fmul(r, b.fadd(dst, half)), half)
            src = b.select(b.fcmp_ordered(">", src, ir.Constant(F32, 0.0)), src,
                           ir.Constant(F32, 0.0))
        lo = b.fptosi(src, I64)
        hi = b.add(lo, i64(1))
        hi = smaller(b, hi, last)
        lam = kb.convert(b.fsub(src, b.sitofp(lo, F32)), dtype)
        return [(lo, b.fsub(kb.convert(one, dtype), lam)), (hi, lam)]

    def body(index):
        plane, spatial = index[0], index[1:]
        axes = [source(o, axis) for axis, o in enumerate(spatial)]
        base = b.mul(plane, kb.numel(x_t.shape[2:]))

        def blend(axis, offset):  # interpolate axis `axis` last: the first axis goes first
            if axis < 0:
                return kb.load(x, b.add(base, offset), dtype)
            terms = [(blend(axis - 1, b.add(offset, b.mul(i, in_strides[axis]))), wt)
                     for i, wt in axes[axis]]
            if nearest:
                return terms[0][0]
            (v0, w0), (v1, w1) = terms
            return b.fadd(b.fmul(v0, w0), b.fmul(v1, w1))

        kb.store(y, kb.dot(index, out_strides), blend(len(spatial) - 1, ZERO), dtype)

    kb.loop_nest([kb.numel(y_t.shape[:2]), *outs], body)
