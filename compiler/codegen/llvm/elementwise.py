"""Elementwise kernels: out[i...] = scalar(kb, *inputs[i...]) with numpy's broadcasting, as
methods of KernelBuilder (`ElementwiseKernels` is one of its parts).

Without broadcasting, one flat loop, shared by the module's threads when the tensor is large
(threads.parallel_rows); with it, a loop nest whose inner loop runs over contiguous memory, so
LLVM vectorises it either way.
"""

from __future__ import annotations

from llvmlite import ir

from .abi import I64
from .threads import parallel_rows

FLAT_BLOCK = 1 << 12  # elements: the smallest block of an elementwise loop a thread takes
FLAT_PARALLEL = 1 << 16  # elements below which an elementwise loop runs on one thread


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
        if all(t.shape == out_t.shape or t.rank == 0 for _, t in ins):  # no broadcasting
            self._flat(outs, ins, scalar)
            return
        strides = [self.broadcast_strides(t, out_t) for _, t in ins]
        self._nest(0, out_t, ins, strides, [ir.Constant(I64, 0)] * len(ins),
                   ir.Constant(I64, 0), outs, scalar)

    def _flat(self, outs: list, ins: list, scalar) -> None:
        """The elementwise loop over flat indices, as a range function the module's threads
        share when the tensor is large enough (see threads.parallel_rows); inside a kernel
        that already runs on several threads (`serial`), the loop itself."""
        total = self.numel(outs[0][1].shape)
        if self.serial:
            self._flat_range(self, outs, ins, scalar, ir.Constant(I64, 0), total)
            return
        inner = self.helper("range")
        # each distinct buffer once: an input that is an output itself (a fused epilogue
        # reads the anchor's result in place) must be the same pointer in the range function
        # too, or LLVM cannot prove the in-place loop safe to vectorise
        unique: list[ir.Value] = []
        for p, _t in [*outs, *ins]:
            if all(p is not q for q in unique):
                unique.append(p)
        slot_of = {id(p): k for k, p in enumerate(unique)}
        typed: dict[tuple[int, str], ir.Value] = {}

        def pointer(k: int, dtype: str) -> ir.Value:
            if (k, dtype) not in typed:
                typed[(k, dtype)] = inner.buffer(k, dtype)
            return typed[(k, dtype)]

        targets = [(pointer(slot_of[id(p)], t.dtype), t) for p, t in outs]
        pointers = [(pointer(slot_of[id(p)], t.dtype), t) for p, t in ins]
        start, count = (inner.b.load(inner.b.gep(inner.dims_ptr, [ir.Constant(I64, i)]))
                        for i in range(2))
        self._flat_range(inner, targets, pointers, scalar, start, count)
        fn = parallel_rows(self.module, inner.finish(), len(unique), 2,
                           lambda b, ptrs, sizes, row0: (list(ptrs), [b.add(sizes[0], row0),
                                                                      sizes[1]]),
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
