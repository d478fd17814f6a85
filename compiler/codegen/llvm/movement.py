"""Data-movement kernels: whole copies, strided views (transpose, permute, slices, broadcast),
and joining or splitting tensors along an axis (concat, stack, split), as methods of
KernelBuilder (`MovementKernels` is one of its parts). Elements move as stored, never
converted.
"""

from __future__ import annotations

from llvmlite import ir

from ...dims import Dim
from ...types import NUMPY_DTYPES
from .abi import I64
from .irgen import smaller
from .microkernels import tiling

RUN_COPY = 16  # elements: a contiguous run of a view copy at least this long is a memcpy
TILE = 8  # elements along each of a tiled permute's two axes (a block: 8 vectors of 8) at least


def transposed(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The rows of the transpose of a square matrix held as len(rows) vectors (a power of
    two): for h = 1, 2, 4, ..., the h x h blocks off the diagonal of each 2h x 2h block swap
    (element (r, l) with r's bit h clear and l's set trades places with (r + h, l - h)), two
    shuffles a pair of rows."""
    size = len(rows)
    rows = list(rows)
    h = 1
    while h < size:
        low = [lane if not lane & h else lane - h + size for lane in range(size)]
        high = [lane + h if not lane & h else lane + size for lane in range(size)]
        for r in range(size):
            if r & h:
                continue
            a, c = rows[r], rows[r | h]
            rows[r] = b.shuffle_vector(a, c, ir.Constant(ir.VectorType(ir.IntType(32), size),
                                                          low))
            rows[r | h] = b.shuffle_vector(a, c, ir.Constant(
                ir.VectorType(ir.IntType(32), size), high))
        h *= 2
    return rows


class MovementKernels:
    """The data-movement kernels of a KernelBuilder."""

    def copy_all(self, n) -> None:
        """Output 0 is input 0's bytes (reshape, flatten, squeeze): one memcpy."""
        t, zero = n.in_types[0], ir.Constant(I64, 0)
        self.copy_elements(self.output(), zero, self.input(0), zero,
                           self.numel(t.shape), t.dtype)

    def permute(self, n, perm) -> None:
        """out[i0, i1, ...] = x[..., i_k at axis perm[k], ...] (transpose, permute). Where x's
        contiguous axis is not the result's last, in square tiles of those two axes."""
        x_strides = self.strides(n.in_types[0].shape)
        strides = [x_strides[p] for p in perm]
        rank = len(perm)
        if rank >= 2 and perm[-1] != rank - 1:
            self.tiled_view_copy(n, strides, perm.index(rank - 1))
        else:
            self.view_copy(n, ir.Constant(I64, 0), strides)

    def padded_permute(self, n, perm, widths) -> None:
        """out = x permuted by perm inside a border of zeros, widths[k] = (before, after) on
        result axis k: the border zeroed slab by slab (each a memset), then the interior
        written as `permute` writes its result, at its offset in the output."""
        x_t, out_t = n.in_types[0], n.out_types[0]
        out = self.output()
        out_strides = self.strides(out_t.shape)
        sizes = [self.dim(x_t.shape[p]) for p in perm]
        befores = [self.dim(lo) for lo, _ in widths]
        padded = [a for a, (lo, hi) in enumerate(widths) if lo != 0 or hi != 0]

        def border(axis: int, at: ir.Value) -> None:  # out[at + ...] with axes < axis fixed
            row, before = out_strides[axis], befores[axis]
            after = self.b.add(before, sizes[axis])
            self.zero_elements(out, at, self.b.mul(before, row), out_t.dtype)
            self.zero_elements(out, self.b.add(at, self.b.mul(after, row)), self.b.mul(
                self.b.sub(self.dim(out_t.shape[axis]), after), row), out_t.dtype)
            if axis < padded[-1]:
                with self.for_range(sizes[axis]) as i:
                    border(axis + 1, self.b.add(at, self.b.mul(self.b.add(before, i), row)))

        if padded:
            border(0, ir.Constant(I64, 0))
        x_strides = self.strides(x_t.shape)
        strides = [x_strides[p] for p in perm]
        interior = (sizes, out_strides, self.dot(befores, out_strides))
        rank = len(perm)
        if rank >= 2 and perm[-1] != rank - 1:
            self.tiled_view_copy(n, strides, perm.index(rank - 1), interior)
        else:
            self.view_copy(n, ir.Constant(I64, 0), strides, interior)

    def tiled_view_copy(self, n, strides: list[ir.Value], inner: int,
                        interior: tuple | None = None) -> None:
        """view_copy (base 0) walking result axes `inner` (x's contiguous one) and the last in
        square blocks (`tile_for`: 8 or 16 a side): element by element, a transpose reads
        each x cache line for one element and has left it by the next. A whole block is a
        side's worth of vectors of x (each along x's contiguous axis) transposed in registers
        (`transposed`) and stored as as many vectors of the result's rows; the blocks at the
        edges go element by element.
        `interior`: (sizes, the output's strides, offset) of a region of a larger output to
        write instead (padded_permute)."""
        x, out = self.input(0), self.output()
        sizes, out_strides, offset = interior or self._whole_output(n)
        out = self.b.gep(out, [offset])
        last = len(sizes) - 1
        outer = [a for a in range(len(sizes)) if a not in (inner, last)]
        size = self.tile_for(n.in_types[0].dtype)
        tile = ir.Constant(I64, size)
        vector = ir.VectorType(x.type.pointee, size)

        def block(at, i0, j0):
            index = [at.get(a, ir.Constant(I64, 0)) for a in range(len(sizes))]
            index[inner], index[last] = i0, j0
            src, dst = self.dot(index, strides), self.dot(index, out_strides)
            rows = [self.b.load(self.b.bitcast(self.b.gep(x, [self.b.add(src, self.b.mul(
                ir.Constant(I64, j), strides[last]))]), vector.as_pointer()), align=1)
                for j in range(size)]  # rows[j][i] = the element at (i0 + i, j0 + j)
            for i, row in enumerate(transposed(self.b, rows)):
                at_i = self.b.add(dst, self.b.mul(ir.Constant(I64, i), out_strides[inner]))
                self.b.store(row, self.b.bitcast(self.b.gep(out, [at_i]),
                                                 vector.as_pointer()), align=1)

        def elements(at, i0, j0):
            i_end = smaller(self.b, self.b.add(i0, tile), sizes[inner])
            j_end = smaller(self.b, self.b.add(j0, tile), sizes[last])
            with self.for_range(i_end, i0) as i, self.for_range(j_end, j0) as j:
                index = [at.get(a) for a in range(len(sizes))]
                index[inner], index[last] = i, j
                self.move(out, self.dot(index, out_strides), x, self.dot(index, strides))

        def tiles(index_outer):
            at = dict(zip(outer, index_outer, strict=True))
            with self.for_range(sizes[inner], step=size) as i0, \
                    self.for_range(sizes[last], step=size) as j0:
                whole = self.b.and_(
                    self.b.icmp_signed("<=", self.b.add(i0, tile), sizes[inner]),
                    self.b.icmp_signed("<=", self.b.add(j0, tile), sizes[last]))
                with self.b.if_else(whole) as (then, otherwise):
                    with then:
                        block(at, i0, j0)
                    with otherwise:
                        elements(at, i0, j0)

        self.loop_nest([sizes[a] for a in outer], tiles)

    def tile_for(self, dtype: str) -> int:
        """A tiled permute's block side for elements of `dtype`: as many 4-byte elements as
        the target's vectors hold (16 x 16 blocks on AVX-512: 4 shuffle stages of 16 rows
        per 256 elements against 3 of 8 per 64, and the shuffles are what such a copy is
        bound by), else TILE."""
        width = self.vector_width or tiling().width
        return width if NUMPY_DTYPES[dtype].itemsize == 4 and width > TILE else TILE

    def view_copy(self, n, base: ir.Value, strides: list[ir.Value],
                  interior: tuple | None = None) -> None:
        """out[i0, i1, ...] = x[base + i0 * strides[0] + i1 * strides[1] + ...]: a strided view
        of input 0 (strides may be negative or 0) copied out as stored, element by element,
        or run by run where the last axis is contiguous in x too; `interior` as
        tiled_view_copy's."""
        x, out = self.input(0), self.output()
        sizes, out_strides, offset = interior or self._whole_output(n)
        out = self.b.gep(out, [offset])

        def body(index):
            self.move(out, self.dot(index, out_strides), x,
                      self.b.add(base, self.dot(index, strides)))

        last = strides[-1] if strides else None
        if not (isinstance(last, ir.Constant) and last.constant == 1):
            self.loop_nest(sizes, body)
            return
        # runs along the last axis are contiguous on both sides: one memcpy each (a known
        # length: inline vector moves; the loop moved them one by one, as LLVM cannot tell
        # that x and the output do not overlap). A run shorter than RUN_COPY elements, known
        # at run time only, is cheaper as the loop than as a call of memcpy.
        dtype = n.in_types[0].dtype

        def run(index):
            self.copy_elements(out, self.dot(index, out_strides[:-1]), x,
                               self.b.add(base, self.dot(index, strides[:-1])), sizes[-1],
                               dtype)

        if isinstance(sizes[-1], ir.Constant):
            self.loop_nest(sizes[:-1], run)
            return
        long = self.b.icmp_signed(">=", sizes[-1], ir.Constant(I64, RUN_COPY))
        with self.b.if_else(long) as (runs, elements):
            with runs:
                self.loop_nest(sizes[:-1], run)
            with elements:
                self.loop_nest(sizes, body)

    def _whole_output(self, n) -> tuple:
        """(sizes, strides, offset 0) of the whole of output 0."""
        shape = n.out_types[0].shape
        return [self.dim(d) for d in shape], self.strides(shape), ir.Constant(I64, 0)

    def move(self, dst: ir.Value, dst_at: ir.Value, src: ir.Value, src_at: ir.Value) -> None:
        """dst[dst_at] = src[src_at], as stored (no conversion)."""
        self.b.store(self.b.load(self.b.gep(src, [src_at])), self.b.gep(dst, [dst_at]))

    def join(self, n, axis: int, sizes: list, split: bool = False) -> None:
        """Copy between pieces and the whole they make side by side along `axis`, pieces of
        extent sizes[k] (Dims) along it: the inputs into the output (concat, stack), or with
        `split` the input into the outputs."""
        whole_t, piece_ts = (n.in_types[0], n.out_types) if split else (n.out_types[0],
                                                                         n.in_types)
        whole = self.input(0) if split else self.output()
        pieces = [self.output(k) for k in range(len(piece_ts))] if split else self.inputs()
        inner = whole_t.shape[axis + 1:]
        row = self.numel(whole_t.shape[axis:])
        with self.for_range(self.numel(whole_t.shape[:axis])) as o:
            offset = Dim.of(0)
            for piece, size in zip(pieces, sizes, strict=True):
                count = self.numel((size, *inner))
                at_whole = self.b.add(self.b.mul(o, row), self.numel((offset, *inner)))
                at_piece = self.b.mul(o, count)
                if split:
                    self.copy_elements(piece, at_piece, whole, at_whole, count, whole_t.dtype)
                else:
                    self.copy_elements(whole, at_whole, piece, at_piece, count, whole_t.dtype)
                offset = offset + size
