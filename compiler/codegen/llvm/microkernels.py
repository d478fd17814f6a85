"""The GEMM's innermost loops, as functions in LLVM IR: the register blocking (`Tiling`), the
micro-kernel (an MR x NR tile of C in vector registers, updated by one rank-1 FMA step per
element of the sum from a packed A panel and a B panel) and the row kernel (C at most
STREAM_ROWS rows high: B streamed row by row, each sum in a register). gemm.py's blocked loops
call them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .abi import F32P, I1, I32, I64, PTR, VOID, declare
from .irgen import Vectors, fold, i64
from .target import host


@dataclass(frozen=True)
class Tiling:
    """Register and cache blocking for one vector width (f32 lanes)."""

    width: int
    mr: int  # rows of the C tile held in registers
    kc: int  # depth of a packed slice: a KC x NR panel of B stays in L1
    mc: int  # rows of a packed block of A (a multiple of mr): MC x KC stays in L2
    nc: int  # columns of a packed block of B (a multiple of nr)

    @property
    def nr(self) -> int:
        """Columns of the C tile: two vectors."""
        return 2 * self.width

    @property
    def heights(self) -> tuple[int, ...]:
        """Micro-kernel heights: mr, then the powers of two below it (for remainder rows)."""
        small = [1 << i for i in range(self.mr.bit_length()) if 1 << i < self.mr]
        return (self.mr, *sorted(small, reverse=True))

    @property
    def accumulators(self) -> int:
        """Vector registers a kernel keeps sums in: 24 of AVX-512's 32, 12 of AVX2's 16."""
        return 24 if self.width >= 16 else 12

    @property
    def stream_rows(self) -> int:
        """The most rows of C that stream B (`row_kernel`): STREAM_ROWS, fewer where a panel
        (two vectors) a row would not fit the accumulators (AVX2 and SSE: 6, the tile's
        height)."""
        return min(STREAM_ROWS, self.accumulators // 2)


def tiling(width: int | None = None) -> Tiling:
    """The blocking for `width` f32 lanes (default: the host's widest vectors). AVX-512 has 32
    vector registers: a 12 x 32 tile keeps 24 accumulators, two B vectors and the broadcast A
    value; AVX2 and SSE have 16: a 6 x 2-vector tile keeps 12."""
    if width is None:
        width = host().vector_width
    if width >= 16:
        return Tiling(16, mr=12, kc=256, mc=96, nc=512)
    return Tiling(width, mr=6, kc=384, mc=72, nc=512)


# the micro-kernel -------------------------------------------------------------------------
# Rows of B fetched ahead of the one in use: a B panel read once (a weight streamed from memory
# by a C of few rows: a layer at batch 1) crosses a 4 KiB page every 32 rows of a two-vector
# panel, where the hardware's stream prefetch stops; from L1, where most tiles find B (a panel
# serves all of A's block), the prefetch costs a load slot
B_AHEAD = 32
# void micro(i64 kc, float* a_panel, float* b, i64 b_stride, float* c, i64 ldc, i64 cols, i1 add)
MICRO_TYPE = ir.FunctionType(VOID, [I64, F32P, F32P, I64, F32P, I64, I64, I1])
# the same with B's rows where a table says: row p at b + rows[p] (`micro_kernel`'s `table`)
# void micro(i64 kc, float* a_panel, float* b, i64* rows, float* c, i64 ldc, i64 cols, i1 add)
MICRO_TABLE_TYPE = ir.FunctionType(VOID, [I64, F32P, F32P, I64.as_pointer(), F32P, I64, I64,
                                          I1])


def micro_function(module: ir.Module, name: str,
                   kind: ir.FunctionType = MICRO_TYPE) -> tuple[ir.Function, bool]:
    """The micro-kernel function `name` of type `kind` (MICRO_TYPE or MICRO_TABLE_TYPE) and
    whether it is built already; a new one is declared internal, noinline (one copy per
    module, called once per tile), its pointers noalias, for the caller to build."""
    fn = module.globals.get(name)
    if fn is not None:
        return fn, True
    fn = ir.Function(module, kind, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    _kc, a, b_ptr, _b_stride, c, _ldc, _cols, _add = fn.args
    for arg in (a, b_ptr, c):
        arg.add_attribute("noalias")
    return fn, False


def micro_kernel(module: ir.Module, t: Tiling, height: int, table: bool = False,
                 vectors: int = 2) -> ir.Function:
    """C[:height, :cols] (+)= A_panel @ B: the A panel is `height` rows of kc floats, KC apart
    (packed); B is kc rows of NR floats `b_stride` apart (a packed panel, or B itself in place),
    or, with `table` (MICRO_TABLE_TYPE), row p at b + rows[p] (a stride-1 convolution's input
    read in place: im2col.Shifted); cols <= vectors * width columns are stored. With `vectors`
    1, only B's first vector of each row is read (a last panel at most one vector wide: the
    two-vector tile would spend half its multiply-adds on zeros)."""
    kind, suffix = (MICRO_TABLE_TYPE, "_table") if table else (MICRO_TYPE, "")
    width = vectors * t.width
    fn, built = micro_function(module, f"kiln_gemm_{height}x{width}x{t.kc}{suffix}", kind)
    if built:
        return fn
    kc, a, b_ptr, b_stride, c, ldc, cols, add = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = Vectors(b, t.width)
    zero = ir.Constant(vec.type, None)

    prefetch = declare(module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
    next_panel = b.gep(a, [ir.Constant(I64, height * t.kc)])

    def update(p, accs):  # one rank-1 update: acc[i][v] += a[i, p] * b[p, v]
        row = b.gep(b_ptr, [b.load(b.gep(b_stride, [p])) if table else b.mul(p, b_stride)])
        bv = [vec.load(row, v * t.width) for v in range(vectors)]
        a_col = b.gep(a, [p])
        # the next tile's A panel (height rows of KC floats just after this one, when A is
        # packed or prepacked), fetched a line per step while this tile computes: a
        # prepacked weight comes from memory the first time each call
        ahead = b.gep(next_panel, [b.mul(p, ir.Constant(I64, height))])
        b.call(prefetch, [b.bitcast(ahead, PTR), ir.Constant(I32, 0), ir.Constant(I32, 3),
                          ir.Constant(I32, 1)])
        if not table:  # B's row B_AHEAD steps on, its vectors' lines (x86 prefetches never
            # fault, past B's end included)
            ahead_b = b.gep(b_ptr, [b.mul(b.add(p, i64(B_AHEAD)), b_stride)])
            for v in range(vectors):
                b.call(prefetch, [b.bitcast(b.gep(ahead_b, [i64(v * t.width)]), PTR),
                                  ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
        out = []
        for i in range(height):
            ai = vec.splat(b.load(b.gep(a_col, [ir.Constant(I64, i * t.kc)])))
            out += [vec.fma(ai, bv[v], accs[vectors * i + v]) for v in range(vectors)]
        return out

    accs = fold(b, kc, [zero] * (vectors * height), update, name="k", index="p")

    with b.if_else(b.icmp_signed("==", cols, ir.Constant(I64, width))) as (whole, part):
        with whole:
            _store_tile(vec, c, ldc, accs, height, vectors, None, add)
        with part:  # through masks at the right edge
            _store_tile(vec, c, ldc, accs, height, vectors,
                        [vec.mask(cols, v * t.width) for v in range(vectors)], add)
    b.ret_void()
    return fn


def _store_tile(vec: Vectors, c: ir.Value, ldc: ir.Value, accs: list[ir.Value], height: int,
                vectors: int, masks: list[ir.Value] | None, add: ir.Value) -> None:
    """C (+)= a tile of accumulators: `height` rows of `vectors` vectors (row i's at
    accs[i * vectors:]), ldc floats apart; only the lanes of `masks` (one per vector) when
    given; C += when the i1 `add` is set."""
    b = vec.b
    with b.if_else(add) as (adding, writing):
        for branch, adds in ((adding, True), (writing, False)):
            with branch:
                for i in range(height):
                    row = b.gep(c, [b.mul(i64(i), ldc)])
                    for v in range(vectors):
                        at, value = v * vec.width, accs[i * vectors + v]
                        mask = None if masks is None else masks[v]
                        if adds:
                            old = (vec.load(row, at) if mask is None
                                   else vec.masked_load(row, at, mask))
                            value = b.fadd(old, value)
                        if mask is None:
                            vec.store(value, row, at)
                        else:
                            vec.masked_store(value, row, at, mask)


# the row kernel --------------------------------------------------------------------------
# void rows(i64 k, float* a, i64 a_row, i64 a_step, float* b, i64 ldb, float* c, i64 ldc,
#           i64 cols, i1 add)
ROWS_TYPE = ir.FunctionType(VOID, [I64, F32P, I64, I64, F32P, I64, F32P, I64, I64, I1])
# C at most this many rows high: B streamed row by row, read once (`row_kernel`). The tiles
# would pass over all of B once per micro-kernel: twice for 3 rows (2 + 1), three times for
# 7 or 11 (4 + 2 + 1, 8 + 2 + 1). A linear layer at batch 3, 5 and 11 took 0.65-0.86 of its
# time streamed, at 8 (one tile) 0.87-1.12 (benchmarks/README.md, session 29). Below
# module.ROW_BLOCK, so that a block of rows on a thread takes the whole product's path.
STREAM_ROWS = 11


def row_kernel(module: ir.Module, width: int, height: int, vectors: int,
               panels: bool = False) -> ir.Function:
    """C[:height, :cols] (+)= A[:height, :k] @ B[:k, :cols] with B read in place, one row of
    `vectors` vectors at a time: the whole sum of each C element stays in a register, and B
    streams through in consecutive runs of its rows (a matrix-vector product is bound by
    reading B, which a panel walk of IN_PLACE_DEPTH-deep slices reads less well). A[i, p] is
    at a[i * a_row + p * a_step]; cols <= vectors * width. B's row p is at b + p * ldb, or,
    with `panels` (a prepacked B, `PackedB`; `vectors` even), its vectors 2q and 2q + 1 are
    in the q-th panel, at b + q * ldb + p * 2 * width: each panel streams in one run."""
    name = f"kiln_gemm_rows_{height}x{vectors}x{width}{'_panels' if panels else ''}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, ROWS_TYPE, name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    k, a, a_row, a_step, b_ptr, ldb, c, ldc, cols, add = fn.args
    for arg in (a, b_ptr, c):
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = Vectors(b, width)
    zero = ir.Constant(vec.type, None)
    whole = b.icmp_signed("==", cols, i64(vectors * width))
    masks = [vec.mask(cols, v * width) for v in range(vectors)]

    def sums(partial: bool) -> list[ir.Value]:
        def update(p, accs):
            if panels:
                rows = [b.gep(b_ptr, [b.add(b.mul(i64(v // 2), ldb), b.mul(p, i64(2 * width)))])
                        for v in range(0, vectors, 2)]
                at = [(rows[v // 2], (v % 2) * width) for v in range(vectors)]
            else:
                row = b.gep(b_ptr, [b.mul(p, ldb)])
                at = [(row, v * width) for v in range(vectors)]
            bv = [vec.masked_load(ptr, off, masks[v]) if partial else vec.load(ptr, off)
                  for v, (ptr, off) in enumerate(at)]
            out = []
            for i in range(height):
                a_at = b.add(b.mul(i64(i), a_row), b.mul(p, a_step))
                ai = vec.splat(b.load(b.gep(a, [a_at])))
                out += [vec.fma(ai, bv[v], accs[i * vectors + v]) for v in range(vectors)]
            return out

        return fold(b, k, [zero] * (height * vectors), update, name="k", index="p")

    with b.if_else(whole) as (full, part):
        for branch, partial in ((full, False), (part, True)):
            with branch:
                _store_tile(vec, c, ldc, sums(partial), height, vectors,
                            masks if partial else None, add)
    b.ret_void()
    return fn
