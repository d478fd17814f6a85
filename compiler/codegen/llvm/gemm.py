"""C = A @ B (+ C) in f32: a register-blocked GEMM with packed panels (Goto, BLIS), in LLVM IR.

    for jc in range(0, N, NC):          # a block of columns of C
      for pc in range(0, K, KC):        # a slice of the sum: B[pc:, jc:] packed in NR-wide panels
        for ic in range(0, M, MC):      # A[ic:, pc:] packed in MR-high panels
          for jr in range(0, NC, NR):
            for ir in range(0, MC, MR): # the micro-kernel: an MR x NR tile of C in registers,
              C[ir:, jr:] += A_panel @ B_panel  # A broadcast, B two vectors wide, llvm.fma

One GEMM function per module and kind of B (`_driver`) holds these loops; every kernel calls it
with its sizes, so a model with twenty convolutions compiles them once. The micro-kernels
(microkernels.py) are functions too, one per tile height: the rows are taken MR at a time, then
the tallest smaller kernel that fits (8, 4, 2, 1 rows: 7 rows are 4 + 2 + 1). Columns past the
last full panel are zero in the packed B panel and stored through a mask (at most one vector
of them: through one-vector tiles, which skip the zero half). With at most
IN_PLACE_ROWS x MR rows, a B that is a matrix is read in place (packing it would cost as much as
the product), in slices of IN_PLACE_DEPTH rows; a B whose rows lie at run-time offsets
(im2col.Shifted) is read in place whatever the rows, through a table of the offsets per slice
(`rows_in_place`); with at most Tiling.stream_rows (a matrix-vector product, a layer at a
small batch), row by row by `row_kernel`, which keeps each sum in a register and streams B
once, the product's whole cost. B is
anything that packs itself into panels (`Source`): a matrix, the transpose of one read in place
(TransposedB), or a convolution's input seen as its im2col matrix (im2col.Im2col, never
materialised; im2col.Shifted for stride 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llvmlite import ir

from . import bf16
from .abi import F32, I64, KERNEL_TYPE, PTR
from .irgen import Vectors, element, i64, loop, memcpy, memset, smaller, unrolled
from .kernel import KernelBuilder
from .microkernels import Tiling, micro_kernel, row_kernel, tiling
from .movement import TILE, transposed
from .packing import prepack_a, prepack_b  # noqa: F401  (re-exported)
from .threads import parallel_rows, threads_global

ALIGN = 64  # bytes: packed panels start on a cache line
# B read in place is walked in slices this deep: a KC-deep walk down a 32-column panel of a
# wide B strides across pages (TLB misses); 16 rows of it stay in L1 across the row of panels
IN_PLACE_DEPTH = 16
# a B matrix is read in place (never packed) up to this many tiles of MR rows of C: packing
# it costs about as much as a product with so few rows (16 rows: 40% less time in place)
IN_PLACE_ROWS = 4
PACKED_ONLY = 2  # a flag of the GEMM function's call: B packed (a block of a taller C's rows)


class Source(Protocol):
    """A B operand: something that packs a block of itself into an NR-column panel. The GEMM
    function receives it as `pointers` pointers and `sizes` i64 values (`fields`), and
    rebuilds it from them (`unpack`)."""

    pointers: int
    sizes: int

    def fields(self) -> tuple[list[ir.Value], list[ir.Value]]: ...

    @classmethod
    def unpack(cls, pointers: list[ir.Value], sizes: list[ir.Value]) -> Source: ...

    def pack(self, kb, dst: ir.Value, k0: ir.Value, kc: ir.Value, j0: ir.Value,
             cols: ir.Value, nr: int) -> None:
        """B[k0 : k0+kc, j0 : j0+cols] as a [kc, nr] row-major panel at dst, zero past cols."""

    @classmethod
    def from_column(cls, b: ir.IRBuilder, pointers: list[ir.Value], sizes: list[ir.Value],
                    col0: ir.Value) -> tuple[list[ir.Value], list[ir.Value]]:
        """The fields of the same B seen from its column col0 on (a thread's block)."""

    # optional: finish(kb, c, ldc, rows, cols), called by the packed path on each block of
    # columns of C once all its sums are done (im2col.Im2col's hook: a convolution's bias and
    # fused epilogue while the block is in cache)


@dataclass(frozen=True)
class Matrix:
    """An f32 matrix in memory: element (i, j) at ptr[i * stride + j], or, transposed (the
    transpose of a row-major matrix; as A only), at ptr[j * stride + i]; or, prepacked (as A
    only: a weight laid out at compile time by `prepack_a`), in KC-deep slices of all its rows,
    `stride` floats apart: element (i, j) at ptr[(j // KC) * stride + i * KC + j % KC]."""

    ptr: ir.Value
    stride: ir.Value
    transposed: bool = False
    prepacked: bool = False
    pointers = 1
    sizes = 1

    def fields(self):
        return [self.ptr], [self.stride]

    @classmethod
    def unpack(cls, pointers, sizes) -> Matrix:
        return cls(pointers[0], sizes[0])

    @classmethod
    def from_column(cls, b, pointers, sizes, col0):
        return [b.gep(pointers[0], [b.mul(col0, ir.Constant(I64, 4))])], list(sizes)

    def at(self, kb, i: ir.Value, j: ir.Value) -> ir.Value:
        """Pointer to element (i, j)."""
        i, j = (j, i) if self.transposed else (i, j)
        return kb.b.gep(self.ptr, [kb.b.add(kb.b.mul(i, self.stride), j)])

    def pack(self, kb, dst, k0, kc, j0, cols, nr) -> None:
        vec = Vectors(kb.b, nr // 2)
        masks = [vec.mask(cols, v * vec.width) for v in range(2)]  # all true but at the edge
        with kb.for_range(kc) as p:
            src = self.at(kb, kb.b.add(k0, p), j0)
            row = kb.b.gep(dst, [kb.b.mul(p, ir.Constant(I64, nr))])
            for v in range(2):
                at = v * vec.width
                vec.store(vec.masked_load(src, at, masks[v]), row, at, align=vec.width * 4)


@dataclass(frozen=True)
class PackedB:
    """A B known before the call (a linear layer's or a transposed convolution's weight), laid
    out once by `prepack_b` in the panels the micro-kernel reads, [N/NR panels, K, NR] zero
    past N: no call packs it, the tiles read panel (j, pc) in place at ptr[j * K + pc * NR]
    (j a multiple of NR)."""

    ptr: ir.Value
    depth: ir.Value  # K
    pointers = 1
    sizes = 1

    def fields(self):
        return [self.ptr], [self.depth]

    @classmethod
    def unpack(cls, pointers, sizes) -> PackedB:
        return cls(pointers[0], sizes[0])

    @classmethod
    def from_column(cls, b, pointers, sizes, col0):  # col0: a multiple of NR (a panel)
        return [b.gep(pointers[0], [b.mul(col0, b.mul(sizes[0], ir.Constant(I64, 4)))])], \
            list(sizes)

    def panel(self, kb, col: ir.Value, k0: ir.Value, nr: int) -> ir.Value:
        """Where rows k0... of the panel holding column `col` start."""
        b = kb.b
        return b.gep(self.ptr, [b.add(b.mul(col, self.depth), b.mul(k0, ir.Constant(I64, nr)))])

    def pack(self, kb, dst, k0, kc, j0, cols, nr) -> None:
        raise AssertionError("a prepacked B is read in place, never packed")


@dataclass(frozen=True)
class TransposedB:
    """B as the transpose of a row-major [N, K] matrix W (a linear layer's weight that is not
    known before the call, a training step's): element (k, j) at ptr[j * stride + k]. Packed
    into the NR-wide panels by 8 x 8 blocks transposed in registers, never copied whole."""

    ptr: ir.Value
    stride: ir.Value  # K: W's row length
    pointers = 1
    sizes = 1

    def fields(self):
        return [self.ptr], [self.stride]

    @classmethod
    def unpack(cls, pointers, sizes) -> TransposedB:
        return cls(pointers[0], sizes[0])

    @classmethod
    def from_column(cls, b, pointers, sizes, col0):  # column col0 of B is row col0 of W
        return [b.gep(pointers[0], [b.mul(col0, b.mul(sizes[0], ir.Constant(I64, 4)))])], \
            list(sizes)

    def pack(self, kb, dst, k0, kc, j0, cols, nr) -> None:
        b = kb.b
        vec = Vectors(b, TILE)

        def w(j, p):  # W[j0 + j, k0 + p], B's element (k0 + p, j0 + j)
            return b.gep(self.ptr, [b.add(b.mul(b.add(j0, j), self.stride), b.add(k0, p))])

        def out(p, j):
            return b.gep(dst, [b.add(b.mul(p, i64(nr)), j)])

        def rounded(count):
            return b.mul(b.sdiv(count, i64(TILE)), i64(TILE))

        full_j, full_p = rounded(cols), rounded(kc)
        with kb.for_range(full_j, step=TILE) as j, kb.for_range(full_p, step=TILE) as p:
            rows = [vec.load(w(b.add(j, i64(r)), p)) for r in range(TILE)]
            for q, row in enumerate(transposed(b, rows)):  # B[k0 + p + q, j0 + j : + 8]
                vec.store(row, out(b.add(p, i64(q)), j))
        with kb.for_range(full_j) as j, kb.for_range(kc, full_p) as p:  # the last sums
            b.store(b.load(w(j, p)), out(p, j))
        with kb.for_range(cols, full_j) as j, kb.for_range(kc) as p:  # the last columns
            b.store(b.load(w(j, p)), out(p, j))
        with kb.for_range(kc) as p, kb.for_range(i64(nr), cols) as j:  # zero past them
            b.store(ir.Constant(F32, 0.0), out(p, j))


# the driver -------------------------------------------------------------------------------
def gemm(kb, m: ir.Value, n: ir.Value, k: ir.Value, a: Matrix, b: Source, c: Matrix,
         accumulate: bool = False, t: Tiling | None = None) -> None:
    """C[m, n] = A[m, k] @ B[k, n] in f32 (C += A @ B when `accumulate`), any sizes: a call of
    the module's GEMM function for B's kind, built on first use and shared by every kernel."""
    paired = kb.precision == "bf16"
    amx = paired and bf16.uses_amx(kb.module)
    t = t or (AMX_TILING if amx else tiling(kb.vector_width))  # the target's, not the host's
    a_kind = "prepacked" if a.prepacked else "transposed" if a.transposed else "matrix"
    # precision="bf16" (bf16.py): the operands in bf16 pairs, prepacked ones paired already
    with unrolled():
        fn = _driver(kb.module, type(b), a_kind, t, paired, amx)
    if not kb.serial:  # a kernel already split across threads (by sample) runs its GEMMs whole
        fn = _parallel(kb.module, fn, type(b), a_kind, t, paired)
    b_pointers, b_sizes = b.fields()
    pointers = [a.ptr, c.ptr, *b_pointers]
    sizes = [m, n, k, a.stride, c.stride, ir.Constant(I64, int(accumulate)), *b_sizes]
    kb.call_kernel(fn, pointers, sizes, "gemm")


# precision="bf16" on a CPU with AMX: 32-row tiles (two A tiles by two B tiles), and below
# 16 rows the AVX512_BF16 micro-kernels (bf16.py)
AMX_TILING = Tiling(16, mr=32, kc=256, mc=96, nc=512)
AMX_MIN_DEPTH = 16  # a shallower sum is too little work for tiles, and a prepacked B's panels
# are zero-padded only to K rows: a whole tile of 16 pair rows fits in them from K = 16 on

PARALLEL_WORK = 1 << 18  # multiply-adds below which waking the workers costs more than it saves
# ... except for a C of at most Tiling.stream_rows rows (a matrix-vector product: a recurrent
# step, a linear layer at a small batch), bound by reading B, not by its multiply-adds: from
# this many, each thread streams its own columns of B, which stay in its core's L2 from one
# call to the next
STREAM_PARALLEL_WORK = 1 << 16
# A C of at most DEPTH_MOST_C floats over a sum at least DEPTH_PIECES * DEPTH_LEAST deep (a
# weight gradient: a few channels' products over every pixel of the batch) has too few blocks
# of rows or columns to share: its sum is split into DEPTH_PIECES pieces instead, whatever the
# threads (so that their count does not change the result), each into a partial C of its own,
# added in order at the end (`_by_depth`)
DEPTH_PIECES = 8
DEPTH_MOST_C = 4096
DEPTH_LEAST = 1024
# A streamed C of at most this many rows reads B in runs of up to 8 vectors; a taller one a
# panel (2 vectors) at a time: the wider runs for 3 to 11 rows saved 5-10 % on one thread and
# nothing on two, for a fifth of a second more to compile a model
WIDE_STREAM_ROWS = 2


def _parallel(module: ir.Module, driver: ir.Function, source: type, a_kind: str,
              t: Tiling, paired: bool = False) -> ir.Function:
    """The driver on the module's threads, each owning a block of C (so no two threads write
    the same element): blocks of columns when C has at least as many columns as rows, or a
    prepacked A and four panels of columns a thread (each block packs only its own columns of
    B, the costly part); with a prepacked A, which no block packs, about eight blocks a thread,
    claimed as threads come free (even work), else one a thread (each packs all of A);
    otherwise one block of rows a thread (each packs all of B). A small f32 C over a deep sum
    (a weight gradient) shares pieces of its sum instead (`_by_depth`)."""
    name = f"{driver.name}_parallel"
    fn = module.globals.get(name)
    if fn is not None:
        return fn

    def by_rows(b, pointers, sizes, row0):
        lda, ldc = sizes[3], sizes[4]
        a_step = {"transposed": ir.Constant(I64, 4), "prepacked": ir.Constant(I64, 4 * t.kc)
                  }.get(a_kind) or b.mul(lda, ir.Constant(I64, 4))
        a_ptr = b.gep(pointers[0], [b.mul(row0, a_step)])
        c_ptr = b.gep(pointers[1], [b.mul(row0, b.mul(ldc, ir.Constant(I64, 4)))])
        # a block of a C too tall to read B in place takes the whole C's path (PACKED_ONLY):
        # the threads must not change the result
        tall = b.icmp_signed(">", sizes[0], i64(IN_PLACE_ROWS * t.mr))
        flags = b.or_(sizes[5], b.select(tall, i64(PACKED_ONLY), i64(0)))
        return [a_ptr, c_ptr, *pointers[2:]], [*sizes[:5], flags, *sizes[6:]]

    def by_columns(b, pointers, sizes, col0):
        c_ptr = b.gep(pointers[1], [b.mul(col0, ir.Constant(I64, 4))])
        b_pointers, b_sizes = source.from_column(b, pointers[2:], sizes[6:], col0)
        return [pointers[0], c_ptr, *b_pointers], [*sizes[:6], *b_sizes]

    # (the drivers with a streamed path: `_driver`)
    streams = source in (Matrix, PackedB) and a_kind != "prepacked" and not paired

    def work(b, sizes):  # m n k, scaled so that a streamed product's threshold is its own
        m, n, k = sizes[:3]
        mnk = b.mul(b.mul(m, n), k)
        streamed = b.icmp_signed("<=", m, i64(t.stream_rows))
        return b.select(streamed, b.mul(mnk, i64(PARALLEL_WORK // STREAM_PARALLEL_WORK)), mnk)

    n_pointers, n_sizes = 2 + source.pointers, 6 + source.sizes
    rows = parallel_rows(module, driver, n_pointers, n_sizes, by_rows, min_rows=2 * t.mr,
                         min_work=PARALLEL_WORK, name=f"{driver.name}_rows")
    # a column's sums do not depend on the block it is in (blocks start on a panel): the
    # leftover columns may be a short block of their own
    columns = parallel_rows(module, driver, n_pointers, n_sizes, by_columns, min_rows=t.nr,
                            min_work=PARALLEL_WORK, rows_index=1,
                            work=work if streams else None,
                            oversplit=8 if a_kind == "prepacked" else 1, short_last=True,
                            name=f"{driver.name}_columns")
    fn = ir.Function(module, KERNEL_TYPE, name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m, n, k = (element(b, fn.args[1], i) for i in range(3))
    if source in (Matrix, TransposedB) and a_kind != "prepacked" and not paired:
        # a small C over a deep sum, in f32 (bf16 pairs rows of the sum: pieces would split
        # pairs)
        deep = b.and_(b.icmp_signed("<=", b.mul(m, n), i64(DEPTH_MOST_C)),
                      b.icmp_signed(">=", k, i64(DEPTH_PIECES * DEPTH_LEAST)))
        with b.if_then(deep):
            b.call(_by_depth(module, driver, source, a_kind), list(fn.args))
            b.ret_void()
    wide = b.icmp_signed(">=", n, m)
    if a_kind == "prepacked":  # no A to pack: columns whenever there are four panels a thread
        # (with fewer, whole panels split unevenly: 7 over 2 threads is 4 and 3)
        panels = b.mul(b.load(threads_global(module)), ir.Constant(I64, 4 * t.nr))
        wide = b.or_(wide, b.icmp_signed(">=", n, panels))
    with b.if_else(wide) as (by_cols, by_rows_):
        with by_cols:
            b.call(columns, list(fn.args))
        with by_rows_:
            b.call(rows, list(fn.args))
    b.ret_void()
    return fn


def _by_depth(module: ir.Module, driver: ir.Function, source: type,
              a_kind: str) -> ir.Function:
    """The driver over DEPTH_PIECES pieces of the sum, shared by the module's threads: piece 0
    into C (adding to it when the call accumulates), piece p > 0 into the p-th partial C (on
    the stack: C is small), then C += each partial, in order. A (matrix or transposed) and B
    (Matrix or TransposedB) are read from the piece's first row of the sum in place."""
    name = f"{driver.name}_depth"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    n_pointers, n_sizes = 2 + source.pointers, 6 + source.sizes
    count_at, first_at = n_sizes, n_sizes + 1  # pieces: how many, and the first one's index

    def piece_fields(b, pointers, sizes, partial, p):
        """The driver's pointers and sizes for piece p."""
        m, n, k, lda = sizes[:4]
        k0 = b.sdiv(b.mul(k, p), i64(DEPTH_PIECES))
        k1 = b.sdiv(b.mul(k, b.add(p, i64(1))), i64(DEPTH_PIECES))
        a_step = b.mul(lda, i64(4)) if a_kind == "transposed" else i64(4)
        b_step = i64(4) if source is TransposedB else b.mul(sizes[6], i64(4))
        a = b.gep(pointers[0], [b.mul(k0, a_step)])
        b_ptr = b.gep(pointers[2], [b.mul(k0, b_step)])
        first = b.icmp_signed("==", p, i64(0))
        own = b.gep(partial, [b.mul(b.sub(p, i64(1)), b.mul(b.mul(m, n), i64(4)))])
        c = b.select(first, pointers[1], own)
        ldc = b.select(first, sizes[4], n)
        accumulate = b.select(first, sizes[5], i64(0))
        return [a, c, b_ptr], [m, n, b.sub(k1, k0), lda, ldc, accumulate, *sizes[6:n_sizes]]

    pieces = ir.Function(module, KERNEL_TYPE, f"{driver.name}_pieces")
    pieces.linkage = "internal"
    b = ir.IRBuilder(pieces.append_basic_block("entry"))
    args_p, sizes_p, status_p = pieces.args
    pointers = [element(b, args_p, i) for i in range(n_pointers + 1)]
    sizes = [element(b, sizes_p, i) for i in range(n_sizes + 2)]
    args = b.alloca(PTR, n_pointers, name="piece_args")
    dims = b.alloca(I64, n_sizes, name="piece_sizes")
    with loop(b, sizes[count_at], name="pieces") as each:
        ptrs, szs = piece_fields(b, pointers[:n_pointers], sizes, pointers[n_pointers],
                                 b.add(sizes[first_at], each.index))
        for i, v in enumerate(ptrs):
            b.store(v, b.gep(args, [i64(i)]))
        for i, v in enumerate(szs):
            b.store(v, b.gep(dims, [i64(i)]))
        b.call(driver, [args, dims, status_p])
    b.ret_void()

    def shift(b, ptrs, szs, piece0):
        szs = list(szs)
        szs[first_at] = b.add(szs[first_at], piece0)
        return list(ptrs), szs

    shared = parallel_rows(module, pieces, n_pointers + 1, n_sizes + 2, shift, min_rows=1,
                           min_work=PARALLEL_WORK, rows_index=count_at,
                           name=f"{driver.name}_pieces_parallel")
    fn = ir.Function(module, KERNEL_TYPE, name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    args_p, sizes_p, status_p = fn.args
    partial = b.alloca(F32, i64((DEPTH_PIECES - 1) * DEPTH_MOST_C), name="partials")
    partial.align = ALIGN
    args = b.alloca(PTR, n_pointers + 1, name="depth_args")
    dims = b.alloca(I64, n_sizes + 2, name="depth_sizes")
    for i in range(n_pointers):
        b.store(element(b, args_p, i), b.gep(args, [i64(i)]))
    b.store(b.bitcast(partial, PTR), b.gep(args, [i64(n_pointers)]))
    for i in range(n_sizes):
        b.store(element(b, sizes_p, i), b.gep(dims, [i64(i)]))
    b.store(i64(DEPTH_PIECES), b.gep(dims, [i64(count_at)]))
    b.store(i64(0), b.gep(dims, [i64(first_at)]))
    b.call(shared, [args, dims, status_p])
    m, n, ldc = (element(b, sizes_p, i) for i in (0, 1, 4))
    c = b.bitcast(element(b, args_p, 1), F32.as_pointer())
    with loop(b, i64(DEPTH_PIECES - 1), name="partials") as each, \
            loop(b, m, name="rows") as row, loop(b, n, name="columns") as col:
        at = b.gep(c, [b.add(b.mul(row.index, ldc), col.index)])
        part = b.gep(partial, [b.add(b.mul(b.add(b.mul(each.index, m), row.index), n),
                                     col.index)])
        b.store(b.fadd(b.load(at), b.load(part)), at)
    b.ret_void()
    return fn


def _driver(module: ir.Module, source: type, a_kind: str, t: Tiling,
            bf16: bool = False, amx: bool = False) -> ir.Function:
    """void gemm(i8** [a, c, *b pointers], i64* [m, n, k, lda, ldc, flags, *b sizes]) (flags:
    1, C += A @ B; PACKED_ONLY, B packed whatever the rows),
    a kernel-shaped function with the blocked loops for one kind of B; `bf16`: the products
    in bf16 pairs (bf16.py), every B packed (no path reads B in place as f32); `amx`: and on
    AMX tiles where the process may use them."""
    kinds = f"{ {'matrix': '', 'transposed': 'at_', 'prepacked': 'ap_'}[a_kind]}" \
        f"{source.__name__.lower()}"
    kind = "amx" if amx else "bf16" if bf16 else "s"
    name = f"kiln_{kind}gemm_{kinds}_{t.mr}x{t.nr}x{t.kc}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    kb = KernelBuilder(module, name, [])
    kb.function.attributes.add("noinline")  # compiled once, called from every kernel
    pointers = [kb.buffer(i, "f32") for i in range(2 + source.pointers)]
    sizes = [element(kb.b, kb.dims_ptr, i) for i in range(6 + source.sizes)]
    m, n, k, lda, ldc, flags = sizes[:6]
    accumulate = kb.b.and_(flags, i64(1))
    a_pack = _buffer(kb.b, t.mc * t.kc, "a_pack")  # packing buffers: fixed size, on the stack
    b_pack = _buffer(kb.b, t.kc * t.nc, "b_pack")
    a = Matrix(pointers[0], lda, a_kind == "transposed", a_kind == "prepacked")
    g = _Gemm(kb, t, a, source.unpack(pointers[2:], sizes[6:]),
              Matrix(pointers[1], ldc), m, n, k, a_pack, b_pack,
              kb.b.icmp_signed("!=", accumulate, ir.Constant(I64, 0)), bf16, amx)
    # the ways to the product by the most rows of C each serves, the first that fits taken
    paths = []
    # (a prepacked A is in slices; bf16 reads only packed pairs)
    if source in (Matrix, PackedB) and a_kind != "prepacked" and not bf16:
        paths.append((t.stream_rows, g.streamed))
    if source is Matrix and not bf16:
        paths.append((IN_PLACE_ROWS * t.mr, g.in_place))
    # a block of rows of a taller C (PACKED_ONLY) takes the packed path, as the whole C does
    fit = kb.b.select(kb.b.icmp_signed("!=", kb.b.and_(flags, i64(PACKED_ONLY)), i64(0)),
                      i64(1 << 62), m)
    if hasattr(source, "row_offsets") and not bf16:  # B's rows at offsets: never packed
        _first_fit(kb.b, fit, paths, g.rows_in_place)
    else:
        _first_fit(kb.b, fit, paths, g.packed)
    g.empty_sum()
    return kb.finish()


def _first_fit(b: ir.IRBuilder, rows: ir.Value, paths: list, otherwise) -> None:
    """Emit the first of `paths` ((most rows, emit)) that `rows` is within, else `otherwise`:
    one branch per path, chosen at run time."""
    if not paths:
        otherwise()
        return
    (most, emit), rest = paths[0], paths[1:]
    with b.if_else(b.icmp_signed("<=", rows, i64(most))) as (within, beyond):
        with within:
            emit()
        with beyond:
            _first_fit(b, rows, rest, otherwise)


def _buffer(b: ir.IRBuilder, floats: int, name: str) -> ir.Value:
    array = b.alloca(ir.ArrayType(F32, floats), name=name)
    array.align = ALIGN
    return b.gep(array, [ir.Constant(I64, 0), ir.Constant(I64, 0)])


@dataclass
class _Gemm:
    """The loops of the GEMM function."""

    kb: object
    t: Tiling
    a: Matrix
    b: Source
    c: Matrix
    m: ir.Value
    n: ir.Value
    k: ir.Value
    a_pack: ir.Value
    b_pack: ir.Value
    accumulate: ir.Value  # i1
    bf16: bool = False  # A and B packed in bf16 pairs (bf16.py)
    amx: bool = False  # and AMX micro-kernels for 16 rows and more, where the process may
    tiles: ir.Value | None = None  # (amx) i1: this call uses them (`packed`)

    def _min(self, x, y):
        return smaller(self.kb.b, x, y)

    def _max(self, x, y):
        return self.kb.b.select(self.kb.b.icmp_signed(">", x, y), x, y)

    def _at(self, ptr, offset):
        return self.kb.b.gep(ptr, [offset])

    def _slices(self, body, depth: int) -> None:
        """body(pc, kc, add) for each `depth`-deep slice of the sum; add: C += rather than C =."""
        kb = self.kb
        with kb.for_range(self.k, step=depth) as pc:
            kc = self._min(i64(depth), kb.b.sub(self.k, pc))
            not_first = kb.b.icmp_signed("!=", pc, i64(0))
            body(pc, kc, kb.b.or_(self.accumulate, not_first))

    def empty_sum(self) -> None:
        """With k = 0 there is no slice to write C: C = 0 (or stays, when accumulating)."""
        kb, b = self.kb, self.kb.b
        nothing = b.and_(b.icmp_signed("==", self.k, i64(0)), b.not_(self.accumulate))
        with b.if_then(nothing), kb.for_range(self.m) as i, kb.for_range(self.n) as j:
            b.store(ir.Constant(F32, 0.0), self.c.at(kb, i, j))

    def _a_block(self, row0, rows, pc, kc) -> ir.Value:
        """Where the micro-kernels read A[row0 : row0+rows, pc : pc+kc], one row every KC
        floats: packed into the A buffer now, or, prepacked, in place."""
        if not self.a.prepacked and not self.a.transposed and not self.bf16:
            # rows KC floats apart already (a sum 256 deep on AVX-512: an LSTM's or a 256-wide
            # transformer's products): read in place, the copy saved (1.7-2.9 % of a GRU, an
            # LSTM and a transformer encoder on one thread)
            b = self.kb.b
            spaced = b.icmp_signed("==", self.a.stride, i64(self.t.kc))
            with b.if_then(b.not_(spaced)):
                self._pack_a(row0, rows, pc, kc)
            return b.select(spaced, self.a.at(self.kb, row0, pc), self.a_pack)
        if not self.a.prepacked:
            self._pack_a(row0, rows, pc, kc)
            if self.bf16:  # each packed row to pairs, in place
                with self.kb.for_range(rows) as i:
                    bf16.pair_row(self.kb.b, self._at(self.a_pack, self.kb.b.mul(
                        i, i64(self.t.kc))), kc)
            return self.a_pack
        b, depth = self.kb.b, i64(self.t.kc)
        offset = b.add(b.mul(b.sdiv(pc, depth), self.a.stride),
                       b.add(b.mul(row0, depth), b.srem(pc, depth)))
        return self._at(self.a.ptr, offset)

    def _pack_a(self, row0, rows, pc, kc) -> None:
        """A[row0 : row0+rows, pc : pc+kc] into the A buffer, one row every KC floats."""
        kb, b, pitch = self.kb, self.kb.b, i64(self.t.kc)
        if self.a.transposed:
            self._pack_a_transposed(row0, rows, pc, kc)
            return
        with kb.for_range(rows) as i:
            dst = self._at(self.a_pack, b.mul(i, pitch))
            src = self.a.at(kb, b.add(row0, i), pc)
            size = b.mul(kc, i64(4))
            memcpy(b, b.bitcast(dst, PTR), b.bitcast(src, PTR), size)

    def _pack_a_transposed(self, row0, rows, pc, kc) -> None:
        """_pack_a of a transposed A (A[i, p] stored at p * stride + i): whole 8 x 8 blocks
        as 8 vectors, read along the stored rows and transposed in registers (a weight
        gradient dy^T @ x over many rows packs all of dy: 3x faster than element by element),
        the edges element by element."""
        kb, b, pitch = self.kb, self.kb.b, i64(self.t.kc)
        vec = Vectors(b, TILE)

        def rounded(count):  # count rounded down to whole tiles
            return b.mul(b.sdiv(count, i64(TILE)), i64(TILE))

        def elements(i_stop, p_start, i_start=None):
            with kb.for_range(i_stop, i_start) as i, kb.for_range(kc, p_start) as p:
                value = b.load(self.a.at(kb, b.add(row0, i), b.add(pc, p)))
                b.store(value, self._at(self.a_pack, b.add(b.mul(i, pitch), p)))

        full_i, full_p = rounded(rows), rounded(kc)
        with kb.for_range(full_i, step=TILE) as i0, kb.for_range(full_p, step=TILE) as p0:
            stored = [vec.load(self.a.at(kb, b.add(row0, i0), b.add(pc, b.add(p0, i64(r)))))
                      for r in range(TILE)]
            for r, row in enumerate(transposed(b, stored)):  # row r: A[i0 + r, p0 : p0 + 8]
                vec.store(row, self._at(self.a_pack, b.add(b.mul(b.add(i0, i64(r)), pitch),
                                                           p0)))
        elements(full_i, full_p)  # the last columns of the whole tiles' rows
        elements(rows, i64(0), full_i)  # the last rows

    def _tiles(self, a_block, row0, rows, kc, b_ptr, b_stride, col, cols, add,
               table: bool = False) -> None:
        """C[row0 : row0+rows, col : col+cols] (+)= packed A rows @ B: MR rows per micro-kernel
        call while they last, then the remainder through the smaller ones (7 rows: 4, 2, 1).
        `table`: b_stride is a table of B's row offsets (MICRO_TABLE_TYPE)."""
        b, t = self.kb.b, self.t
        if table:
            self._tile_rows(self._kernels(t.heights, table=True), a_block, row0, rows, kc,
                            b_ptr, b_stride, col, cols, add)
            return
        if self.amx:  # on tiles (self.tiles: decided once per call) or on AVX512_BF16
            with b.if_else(self.tiles) as (tiles, vectors):
                with tiles:
                    self._tile_rows(self._kernels(t.heights), a_block, row0, rows, kc, b_ptr,
                                    b_stride, col, cols, add)
                with vectors:
                    self._tile_rows(self._kernels(tiling(t.width).heights), a_block, row0,
                                    rows, kc, b_ptr, b_stride, col, cols, add)
            return
        if self.bf16:
            self._tile_rows(self._kernels(t.heights), a_block, row0, rows, kc, b_ptr, b_stride,
                            col, cols, add)
            return
        # a last panel at most one vector wide: the one-vector tiles (half the work)
        with b.if_else(b.icmp_signed("<=", cols, i64(t.width))) as (narrow, wide):
            for branch, vectors in ((narrow, 1), (wide, 2)):
                with branch:
                    self._tile_rows(self._kernels(t.heights, vectors=vectors), a_block, row0,
                                    rows, kc, b_ptr, b_stride, col, cols, add)

    def _kernels(self, heights, table: bool = False,
                 vectors: int = 2) -> list[tuple[int, ir.Function]]:
        """(height, micro-kernel) by height, shortest first: AMX's where it has one; with
        `table`, the f32 ones that read B's rows through a table of offsets; with `vectors`
        1, the f32 ones one vector wide."""
        module, t = self.kb.module, self.t

        def micro(h):
            if table or vectors != 2:
                return micro_kernel(module, t, h, table=table, vectors=vectors)
            if self.amx and h in bf16.AMX_HEIGHTS:
                return bf16.amx_micro_kernel(module, t, h)
            return (bf16.micro_kernel if self.bf16 else micro_kernel)(module, t, h)

        return [(h, micro(h)) for h in sorted(heights)]

    def _tile_rows(self, kernels, a_block, row0, rows, kc, b_ptr, b_stride, col, cols,
                   add) -> None:
        b, t = self.kb.b, self.t

        def step(i):
            left = b.sub(rows, i)
            height, fn = i64(1), kernels[0][1]
            for h, f in kernels[1:]:  # the tallest micro-kernel that fits
                fits = b.icmp_signed(">=", left, i64(h))
                height, fn = b.select(fits, i64(h), height), b.select(fits, f, fn)
            a_panel = self._at(a_block, b.mul(i, i64(t.kc)))
            b.call(fn, [kc, a_panel, b_ptr, b_stride, self.c.at(self.kb, b.add(row0, i), col),
                        self.c.stride, cols, add])
            return height

        with loop(b, rows, name="by") as tiles:
            tiles.advance(step(tiles.index))

    def packed(self) -> None:
        """The blocked loops: B packed per (NC, KC) block, A per (MC, KC) block."""
        kb, t, b = self.kb, self.t, self.kb.b
        nr = i64(t.nr)
        if self.amx:  # tiles when the process may have them and the sum is deep enough
            self.tiles = b.and_(bf16.amx_ready(b),
                                b.icmp_signed(">=", self.k, i64(AMX_MIN_DEPTH)))
            with b.if_then(self.tiles):
                bf16.configure_tiles(b)

        def pitch(kc):  # floats between B panels in the buffer, per column: a bf16 panel's
            # pair rows are padded to a whole tile (16), past kc rows when kc < 32
            return self._max(kc, i64(2 * bf16.TILE_ROWS)) if self.bf16 else kc

        with kb.for_range(self.n, step=t.nc) as jc:
            nc = self._min(i64(t.nc), b.sub(self.n, jc))

            def block(pc, kc, add):
                prepacked = isinstance(self.b, PackedB)
                if not prepacked:
                    with kb.for_range(nc, step=t.nr) as jr:
                        panel = self._at(self.b_pack, b.mul(jr, pitch(kc)))
                        self.b.pack(kb, panel, pc, kc, b.add(jc, jr),
                                    self._min(nr, b.sub(nc, jr)), t.nr)
                        if self.bf16:  # rows to pair rows, in place
                            bf16.pair_panel(b, panel, kc, t.nr)
                        if self.amx:  # zero pair rows up to a whole tile
                            self._pad_panel(panel, kc)
                with kb.for_range(self.m, step=t.mc) as ic:
                    mc = self._min(i64(t.mc), b.sub(self.m, ic))
                    a_block = self._a_block(ic, mc, pc, kc)
                    with kb.for_range(nc, step=t.nr) as jr:
                        # a paired prepacked B has its slice at pc's pair row (pc is even)
                        row = b.sdiv(pc, i64(2)) if self.bf16 else pc
                        panel = (self.b.panel(kb, b.add(jc, jr), row, t.nr) if prepacked
                                 else self._at(self.b_pack, b.mul(jr, pitch(kc))))
                        self._tiles(a_block, ic, mc, kc, panel, nr, b.add(jc, jr),
                                    self._min(nr, b.sub(nc, jr)), add)

            self._slices(block, t.kc)
            if hasattr(self.b, "finish"):  # the block's sums are done: its hook, while in cache
                self.b.finish(kb, self.c.at(kb, i64(0), jc), self.c.stride, self.m, nc)
        if self.amx:
            with b.if_then(self.tiles):
                bf16.release_tiles(b)

    def _pad_panel(self, panel, kc) -> None:
        """Zero a paired B panel's pair rows from ceil(kc/2) up to a multiple of 16 (an A
        row's pairs are zero there too: bf16.pair_row converts 16 words at a time)."""
        b, nr, rows = self.kb.b, self.t.nr, i64(bf16.TILE_ROWS)
        pairs = b.sdiv(b.add(kc, i64(1)), i64(2))
        whole = b.mul(b.sdiv(b.add(pairs, i64(bf16.TILE_ROWS - 1)), rows), rows)
        memset(b, b.bitcast(self._at(panel, b.mul(pairs, i64(nr))), PTR),
               b.mul(b.sub(whole, pairs), i64(4 * nr)))

    def streamed(self) -> None:
        """At most Tiling.stream_rows rows: B read in place row by row (`row_kernel`), in runs of
        the widest kernel that fits the columns left (the last one masked), A in place."""
        kb, t, b = self.kb, self.t, self.kb.b
        a = self.a
        a_row, a_step = (i64(1), a.stride) if a.transposed else (a.stride, i64(1))
        # 24 accumulators at most (of 32 vector registers; 12 of 16 under AVX2), and at most 8
        # vectors a row: 16 (8 panels of B streaming at once) were 1-2 % slower on Zen 4 (a
        # [256, 1024] product at batch 1; an LSTM step 2-7 % on two threads)
        most = t.accumulators
        packed = isinstance(self.b, PackedB)  # whole panels a kernel: an even vector count
        for height in range(1, t.stream_rows + 1):
            with b.if_then(b.icmp_signed("==", self.m, i64(height))):
                widths = [v for v in (8, 4, 2, 1)
                          if v * height <= most and not (packed and v % 2)
                          and (height <= WIDE_STREAM_ROWS or v <= 2)]
                kernels = [(v, row_kernel(kb.module, t.width, height, v, packed))
                           for v in widths]

                def step(j, kernels=kernels):
                    left = b.sub(self.n, j)
                    chosen, fn = i64(kernels[-1][0] * t.width), kernels[-1][1]
                    for v, f in reversed(kernels[:-1]):  # the widest that fits whole
                        fits = b.icmp_signed(">=", left, i64(v * t.width))
                        chosen, fn = b.select(fits, i64(v * t.width), chosen), \
                            b.select(fits, f, fn)
                    cols = self._min(chosen, left)
                    if packed:  # j is a multiple of NR: a panel's first column
                        b_at, ldb = self.b.panel(kb, j, i64(0), t.nr), \
                            b.mul(self.b.depth, i64(t.nr))
                    else:
                        b_at, ldb = self.b.at(kb, i64(0), j), self.b.stride
                    b.call(fn, [self.k, a.ptr, a_row, a_step, b_at, ldb,
                                self.c.at(kb, i64(0), j), self.c.stride, cols,
                                self.accumulate])
                    return cols

                with loop(b, self.n, name="by") as runs:
                    runs.advance(step(runs.index))

    def rows_in_place(self) -> None:
        """B whose rows lie at offsets from a column pointer (im2col.Shifted: a stride-1
        convolution's zero-bordered input) read in place through a table of those offsets,
        one per KC-deep slice of the sum (packing B costs about as much as the product
        when C has few rows: 16 output channels); A packed per MC rows; the last partial
        panel packed."""
        kb, t, b = self.kb, self.t, self.kb.b
        nr = i64(t.nr)
        full_n = b.sub(self.n, b.urem(self.n, nr))
        cols = b.sub(self.n, full_n)
        with b.goto_entry_block():
            table = b.alloca(ir.ArrayType(I64, t.kc), name="rows")
        table = b.gep(table, [i64(0), i64(0)])

        def block(pc, kc, add):
            self.b.row_offsets(kb, table, pc, kc)
            with kb.for_range(self.m, step=t.mc) as ic:
                mc = self._min(i64(t.mc), b.sub(self.m, ic))
                a_block = self._a_block(ic, mc, pc, kc)
                with kb.for_range(full_n, step=t.nr) as jr:
                    self._tiles(a_block, ic, mc, kc, self.b.column(kb, jr), table, jr, nr, add,
                                table=True)
                with b.if_then(b.icmp_signed("!=", cols, i64(0))):
                    self.b.pack(kb, self.b_pack, pc, kc, full_n, cols, t.nr)
                    self._tiles(a_block, ic, mc, kc, self.b_pack, nr, full_n, cols, add)

        self._slices(block, t.kc)

    def in_place(self) -> None:
        """At most IN_PLACE_ROWS x MR rows: A packed, B read where it is (its last partial
        panel packed)."""
        kb, t, b = self.kb, self.t, self.kb.b
        nr = i64(t.nr)
        full_n = b.sub(self.n, b.urem(self.n, nr))
        cols = b.sub(self.n, full_n)

        def block(pc, kc, add):
            a_block = self._a_block(i64(0), self.m, pc, kc)
            with kb.for_range(full_n, step=t.nr) as jr:
                self._tiles(a_block, i64(0), self.m, kc, self.b.at(kb, pc, jr), self.b.stride,
                            jr, nr, add)
            with b.if_then(b.icmp_signed("!=", cols, i64(0))):
                self.b.pack(kb, self.b_pack, pc, kc, full_n, cols, t.nr)
                self._tiles(a_block, i64(0), self.m, kc, self.b_pack, nr, full_n, cols, add)

        self._slices(block, IN_PLACE_DEPTH)


