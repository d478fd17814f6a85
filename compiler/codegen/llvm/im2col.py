"""A convolution's input as the B operand of the GEMM (gemm.Source), packed panel by panel and
never materialised: `Im2col` (any stride, window origins computed per panel column, masked
gathers or loads per tap) and `Shifted` (stride 1: a zero-bordered copy whose rows of B are
consecutive floats).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .abi import F64, I32, I64, PTR
from .finish import finish
from .irgen import Vectors, i64
from .spatial import ZERO, Window


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
    # finish.finisher's hook (or nulls): the GEMM calls it on each block of C it finishes
    # (`finish`), the bias and a fused epilogue applied while the block is in cache
    hook: ir.Value
    hook_args: ir.Value
    hook_sizes: ir.Value
    pointers = 4
    sizes = 12

    @classmethod
    def of(cls, kb, plane0: ir.Value, win: Window, hook=None) -> Im2col:
        """`hook`: finish.finisher's (function, argument array, size array), or None."""
        sizes = [*win.size, *win.kernel, *win.stride, *win.pad, *win.dilation, win.out[1]]
        null = ir.Constant(PTR, None)
        fn, args, dims = (null, null, null) if hook is None else (
            kb.b.bitcast(v, PTR) for v in hook)
        return cls(plane0, *(kb.dim(d) for d in sizes), i64(0), fn, args, dims)

    def fields(self):
        return [self.plane0, self.hook, self.hook_args, self.hook_sizes], [
            self.h, self.w, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh,
            self.dw, self.out_w, self.col0]

    def finish(self, kb, c: ir.Value, ldc: ir.Value, rows: ir.Value, cols: ir.Value) -> None:
        """The hook (if any) on C[:rows, :cols] from `c`, ldc floats a row: every sum there
        is done."""
        finish(kb, (self.hook, self.hook_args, self.hook_sizes), c, ldc, rows, cols)

    @classmethod
    def unpack(cls, pointers, sizes) -> Im2col:
        plane0, *hook = pointers
        return cls(plane0, *sizes, *hook)

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
        corners = [tuple(b.sext(b.extract_element(vector, ir.Constant(i32, 0)), I64)
                         for vector in (top, left)) for top, left, *_ in origins]
        # at stride 2, a vector in one output row with every tap of the kernel inside x for
        # every lane (all but a stem's border pixels) is the even lanes of two plain loads:
        # no mask, gather or bounds per tap
        clear = []
        for (y0, x0), (*_, one_row) in zip(corners, origins, strict=True):
            last_y = b.add(y0, b.mul(b.sub(self.kh, i64(1)), self.dh))
            last_x = b.add(b.add(x0, i64(2 * vec.width - 1)),
                           b.mul(b.sub(self.kw, i64(1)), self.dw))  # the odd lane read too
            ok = one_row
            for test in (b.icmp_signed(">=", y0, ZERO), b.icmp_signed(">=", x0, ZERO),
                         b.icmp_signed("<", last_y, self.h), b.icmp_signed("<", last_x, self.w)):
                ok = b.and_(ok, test)
            clear.append(ok)

        def taps_loop(mode: str) -> None:  # one loop per way of fetching, chosen once
            with kb.for_range(kc) as p:
                c, i, j = (b.load(slot) for slot in tap)
                plane = b.gep(self.plane0, [b.mul(c, b.mul(self.h, self.w))])
                out = b.gep(dst, [b.mul(p, i64(nr))])
                tap_at = b.add(b.mul(b.mul(i, self.dh), self.w), b.mul(j, self.dw))

                def plain(v):  # a `clear` vector
                    y0, x0 = corners[v]
                    first = b.gep(plane, [b.add(tap_at, b.add(b.mul(y0, self.w), x0))])
                    vec.store(_even(b, vec, first), out, v * vec.width, align=vec.width * 4)

                if mode == "inside":  # the whole panel clear
                    for v in range(len(corners)):
                        plain(v)
                    _next_tap(b, tap, self.kh, self.kw)
                    return
                dy, dx = splat(b.mul(i, self.dh)), splat(b.mul(j, self.dw))
                for v, (top, left, split, first_row, one_row) in enumerate(origins):
                    y, x = b.add(top, dy), b.add(left, dx)
                    inside = b.and_(b.icmp_unsigned("<", y, h), b.icmp_unsigned("<", x, w))
                    at = (out, v * vec.width)
                    if mode == "rows":
                        value = self._two_rows(b, vec, plane, y, x, split, first_row, inside, j)
                    elif mode == "halved":  # clear: plain loads; one row: the even lanes of
                        # two masked loads; else gather
                        with b.if_else(clear[v]) as (unmasked, masked_):
                            with unmasked:
                                plain(v)
                            with masked_, b.if_else(one_row) as (loads, scattered_):
                                with loads:
                                    vec.store(self._even_lanes(b, vec, plane, y, x), *at,
                                              align=vec.width * 4)
                                with scattered_:
                                    vec.store(vec.gather(plane, b.add(b.mul(y, w), x), inside),
                                              *at, align=vec.width * 4)
                        continue
                    else:
                        value = vec.gather(plane, b.add(b.mul(y, w), x), inside)
                    vec.store(value, *at, align=vec.width * 4)
                _next_tap(b, tap, self.kh, self.kw)

        inside = b.and_(halved, b.and_(clear[0], clear[1]))  # a whole panel clear
        with b.if_else(contiguous) as (consecutive, other):
            with consecutive:
                taps_loop("rows")
            with other, b.if_else(halved) as (strided, scattered):
                with strided, b.if_else(inside) as (plain, masked):
                    with plain:
                        taps_loop("inside")
                    with masked:
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
        return _even_of(b, vec, *halves)

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

    def column(self, kb, j: ir.Value) -> ir.Value:
        """Where column j of B's row 0 is: row p's is `row_offsets`' p-th floats further on."""
        return kb.b.gep(self.base, [j])

    def row_offsets(self, kb, table: ir.Value, k0: ir.Value, kc: ir.Value) -> None:
        """table[p] = where row k0 + p of B starts in xp, for p < kc (i64 floats): the GEMM
        reads whole panels of B in place through it (gemm's `table` micro-kernels)."""
        b = kb.b
        tap = _tap_at(b, k0, self.kh, self.kw)
        row_step = b.mul(self.dh, self.wp)
        with kb.for_range(kc) as p:
            c, i, j = (b.load(slot) for slot in tap)
            offset = b.add(b.add(b.mul(c, self.plane), b.mul(i, row_step)), b.mul(j, self.dw))
            b.store(offset, b.gep(table, [p]))
            _next_tap(b, tap, self.kh, self.kw)

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


def _even(b, vec: Vectors, first: ir.Value) -> ir.Value:
    """The even lanes of the 2 * width floats from `first` (all inside x)."""
    return _even_of(b, vec, vec.load(first, 0), vec.load(first, vec.width))


def _even_of(b, vec: Vectors, low: ir.Value, high: ir.Value) -> ir.Value:
    """The even lanes of two vectors laid end to end (one permute)."""
    even = ir.Constant(ir.VectorType(I32, vec.width), [2 * lane for lane in range(vec.width)])
    return b.shuffle_vector(low, high, even)


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
