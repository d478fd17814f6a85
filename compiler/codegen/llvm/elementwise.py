"""Elementwise kernels: out[i...] = scalar(kb, *inputs[i...]) with numpy's broadcasting, as
methods of KernelBuilder (`ElementwiseKernels` is one of its parts).

Without broadcasting, one flat loop, shared by the module's threads when the tensor is large
(threads.parallel_rows); with it, a loop nest whose inner loop runs over contiguous memory, so
LLVM vectorises it either way. An input may be a `Part` of a larger tensor (a split's, read in
place: fused.py): then the loop runs over rows, the elements from the split's axis on, which
are contiguous in each part; the module's threads share the rows when the work is large.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ...dims import Dim
from ...types import TensorType
from .abi import I64
from .threads import parallel_rows

FLAT_BLOCK = 1 << 12  # elements: the smallest block of an elementwise loop a thread takes
FLAT_PARALLEL = 1 << 16  # elements below which an elementwise loop runs on one thread
# IR instructions per element of an add's loop over rows (two loads with their index and
# address, the add, the store with its index and address): that loop weighs its elements by
# their instructions against FLAT_PARALLEL adds, so that a costly chain (an LSTM's cell, some
# 230 an element: 5 sigmoids and tanhs) takes the threads at fewer elements than an add
LOOP_COST = 10


@dataclass(frozen=True)
class Part:
    """An input read where it stands in a larger row-major tensor `whole`: the part of it
    from index `start` of axis `axis` on (a split's part), of the input type's shape."""

    whole: TensorType
    axis: int
    start: Dim


class ElementwiseKernels:
    """The elementwise loops of a KernelBuilder."""

    def elementwise(self, n, scalar) -> None:
        """out[i...] = scalar(kb, *inputs[i...]) with numpy broadcasting; the inner loop runs
        over contiguous memory so LLVM vectorises it."""
        out_t = n.out_types[0]
        ins = [(self.input(i), t) for i, t in enumerate(n.in_types)]
        self.elementwise_over(self.output(), out_t, ins, scalar)

    def elementwise_over(self, out: ir.Value, out_t, ins: list, scalar) -> None:
        """out[i...] = scalar(kb, *values) where the values are each (pointer, type) of `ins`
        at i, broadcast (numpy's rules) to `out_t`. An input may be `out` itself: each element
        is read before it is written."""
        self.elementwise_into([(out, out_t)], ins, lambda kb, *values: [scalar(kb, *values)])

    def elementwise_into(self, outs: list, ins: list, scalar) -> None:
        """outs[k][i...] = scalar(kb, *values)[k] for each (pointer, type) of `outs` (all of one
        shape), the values as elementwise_over reads them: several results of one pass over
        the elements. Per element, every input is loaded before any result is stored."""
        out_t = outs[0][1]
        parts = [entry[2] if len(entry) > 2 else None for entry in ins]
        ins = [entry[:2] for entry in ins]
        if any(parts):
            rows = self._row_layout(out_t, ins, parts)
            if rows is not None:
                self._rows(outs, ins, rows, scalar)
                return
        elif all(t.shape == out_t.shape or t.rank == 0 for _, t in ins):  # no broadcasting
            self._flat(outs, ins, scalar)
            return
        strides = [self.broadcast_strides(t, out_t) if p is None else self._part_strides(p, t)
                   for (_, t), p in zip(ins, parts, strict=True)]
        starts = [ir.Constant(I64, 0) if p is None else self._part_start(p, t)
                  for (_, t), p in zip(ins, parts, strict=True)]
        self._nest(0, out_t, ins, strides, starts, ir.Constant(I64, 0), outs, scalar)

    def _part_start(self, p: Part, t: TensorType) -> ir.Value:
        """The index in p.whole of the part's first element."""
        return self.b.mul(self.dim(p.start), self.numel(t.shape[p.axis + 1:]))

    def _part_strides(self, p: Part, t: TensorType) -> list[ir.Value]:
        """Element strides in p.whole along each axis of the part (of type `t`)."""
        return [self.numel(p.whole.shape[axis + 1:]) for axis in range(t.rank)]

    def _row_layout(self, out_t: TensorType, ins: list, parts: list):
        """Rows for a loop with Part inputs, all of one axis a: a row is the elements from
        axis a on (contiguous in each part, in the result, and in an input broadcast only
        along the axes before a). Returns a and, per input, (elements from one row to the
        next, the index of its first; None for a scalar); None where an input is broadcast
        otherwise."""
        axes = {p.axis for p in parts if p is not None}
        if len(axes) != 1:
            return None
        (a,) = axes
        row = tuple(out_t.shape[a:])
        layout = []
        for (_, t), p in zip(ins, parts, strict=True):
            lead = t.rank - len(row)
            if p is not None:
                layout.append((self.numel(p.whole.shape[a:]), self._part_start(p, t)))
            elif t.rank == 0:
                layout.append(None)
            elif t.shape == out_t.shape:
                layout.append((self.numel(row), ir.Constant(I64, 0)))
            elif lead >= 0 and tuple(t.shape[lead:]) == row and \
                    all(d == Dim.of(1) for d in t.shape[:lead]):
                layout.append((ir.Constant(I64, 0), ir.Constant(I64, 0)))
            else:
                return None
        return a, layout

    def _rows(self, outs: list, ins: list, rows, scalar) -> None:
        """The loop over rows (_row_layout) as a range function, shared by the module's
        threads when the rows' work, weighed by the loop's IR instructions per element
        (LOOP_COST an add's), is worth it; inside a kernel that already runs on several
        threads (`serial`), the range function called on all the rows."""
        a, layout = rows
        out_t = outs[0][1]
        inner = self.helper("rows")
        unique, targets, sources = _range_buffers(inner, outs, ins)
        sizes = [inner.b.load(inner.b.gep(inner.dims_ptr, [ir.Constant(I64, i)]))
                 for i in range(3 + 2 * sum(entry is not None for entry in layout))]
        row0, count, length = sizes[:3]
        b, zero = inner.b, ir.Constant(I64, 0)
        with inner.for_range(count) as r:
            row = b.add(row0, r)
            firsts, k = [], 3
            for entry in layout:
                if entry is None:
                    firsts.append(None)
                else:
                    firsts.append(b.add(b.mul(row, sizes[k]), sizes[k + 1]))
                    k += 2
            out_first = b.mul(row, length)
            with inner.for_range(length) as j:
                before = _instructions(inner.function)
                vals = [inner.load(p, zero if first is None else b.add(first, j), t.dtype)
                        for (p, t), first in zip(sources, firsts, strict=True)]
                at = b.add(out_first, j)
                for (p, t), value in zip(targets, scalar(inner, *vals), strict=True):
                    inner.store(p, at, value, t.dtype)
                cost = max(LOOP_COST, _instructions(inner.function) - before)
        fn = inner.finish()
        values = [ir.Constant(I64, 0), self.numel(out_t.shape[:a]), self.numel(out_t.shape[a:])]
        for entry in layout:
            if entry is not None:
                values += list(entry)
        if self.serial:
            self.call_kernel(fn, unique, values, "rows")
            return
        fn = parallel_rows(self.module, fn, len(unique), len(values), _from_row, min_rows=1,
                           min_work=FLAT_PARALLEL * LOOP_COST, rows_index=1, oversplit=4,
                           work=lambda b_, sizes_: b_.mul(b_.mul(sizes_[1], sizes_[2]),
                                                          ir.Constant(I64, cost)))
        self.call_kernel(fn, unique, values, "rows")

    def _flat(self, outs: list, ins: list, scalar) -> None:
        """The elementwise loop over flat indices, as a range function the module's threads
        share when the tensor is large enough (see threads.parallel_rows); inside a kernel
        that already runs on several threads (`serial`), the loop itself."""
        total = self.numel(outs[0][1].shape)
        if self.serial:
            self._flat_range(self, outs, ins, scalar, ir.Constant(I64, 0), total)
            return
        inner = self.helper("range")
        unique, targets, pointers = _range_buffers(inner, outs, ins)
        start, count = (inner.b.load(inner.b.gep(inner.dims_ptr, [ir.Constant(I64, i)]))
                        for i in range(2))
        self._flat_range(inner, targets, pointers, scalar, start, count)
        fn = parallel_rows(self.module, inner.finish(), len(unique), 2, _from_row,
                           min_rows=FLAT_BLOCK, min_work=FLAT_PARALLEL, rows_index=1,
                           work=lambda b, sizes: sizes[1], oversplit=4)
        self.call_kernel(fn, unique, [ir.Constant(I64, 0), total], "flat")

    @staticmethod
    def _flat_range(kb, outs, ins, scalar, start, count) -> None:
        zero = ir.Constant(I64, 0)
        with kb.for_range(count) as j:
            i = kb.b.add(start, j)
            vals = [kb.load(p, i if t.rank else zero, t.dtype) for p, t in ins]
            for (p, t), value in zip(outs, scalar(kb, *vals), strict=True):
                kb.store(p, i, value, t.dtype)

    def broadcast_strides(self, t, out_t) -> list[ir.Value]:
        """Element strides of `t` along each axis of the output (0 where it broadcasts)."""
        pad = out_t.rank - t.rank
        strides: list[ir.Value] = [ir.Constant(I64, 0)] * out_t.rank
        step: ir.Value = ir.Constant(I64, 1)
        for axis in range(t.rank - 1, -1, -1):
            d = t.shape[axis]
            if not (d.is_const and d.value == 1 and not (out_t.shape[axis + pad] == 1)):
                strides[axis + pad] = step
            step = self.b.mul(step, self.dim(d))
        return strides

    def _nest(self, axis, out_t, ins, strides, offsets, out_offset, outs, scalar) -> None:
        if axis == out_t.rank:
            vals = [self.load(p, o, t.dtype) for (p, t), o in zip(ins, offsets, strict=True)]
            for (p, t), value in zip(outs, scalar(self, *vals), strict=True):
                self.store(p, out_offset, value, t.dtype)
            return
        inner = self.numel(out_t.shape[axis + 1:])
        with self.for_range(self.dim(out_t.shape[axis])) as i:
            new = [self.b.add(o, self.b.mul(i, s[axis])) for o, s in zip(offsets, strides,
                                                                         strict=True)]
            self._nest(axis + 1, out_t, ins, strides, new,
                       self.b.add(out_offset, self.b.mul(i, inner)), outs, scalar)


def _range_buffers(inner, outs: list, ins: list) -> tuple[list, list, list]:
    """A range function's arguments for a loop's (pointer, type) outputs and inputs: each
    distinct buffer once (an input that is an output itself, a fused epilogue reading the
    anchor's result in place, must be one pointer in the range function too, or LLVM cannot
    prove the in-place loop safe to vectorise), and the outputs and inputs as (pointer in
    `inner` to their dtype, type)."""
    unique: list[ir.Value] = []
    for p, _t in [*outs, *ins]:
        if all(p is not q for q in unique):
            unique.append(p)
    typed: dict[tuple[int, str], ir.Value] = {}

    def pointer(p: ir.Value, dtype: str) -> ir.Value:
        k = next(k for k, q in enumerate(unique) if q is p)
        if (k, dtype) not in typed:
            typed[(k, dtype)] = inner.buffer(k, dtype)
        return typed[(k, dtype)]

    return (unique, [(pointer(p, t.dtype), t) for p, t in outs],
            [(pointer(p, t.dtype), t) for p, t in ins])


def _from_row(b, pointers, sizes, row0):
    """A range function's arguments for its block from row0 on (sizes[0], its first row)."""
    return list(pointers), [b.add(sizes[0], row0), *sizes[1:]]


def _instructions(fn: ir.Function) -> int:
    """IR instructions in a function so far."""
    return sum(len(block.instructions) for block in fn.blocks)
