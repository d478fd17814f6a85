"""Reduction kernels: folds over some axes (sum, max, argmax, logsumexp, ...) and softmax along
one axis, as methods of KernelBuilder (`ReductionKernels` is one of its parts).
"""

from __future__ import annotations

from llvmlite import ir

from ...dims import Dim
from . import irgen
from .abi import I64


class ReductionKernels:
    """The reduction kernels of a KernelBuilder."""

    def reduce(self, n, axes: tuple[int, ...], folds: list, finish=None) -> None:
        """Output 0 = input 0 reduced over `axes`. For each output element, the folds run in
        turn over the elements reduced into it, in order: folds[k] = (init, step), a constant
        start and step(acc, value, position, earlier) -> acc, where value is an element (a
        compute value), position its row-major index among the reduced elements, and earlier
        the results of the folds before. The output element is finish(results) (by default
        the last result).

        Adjacent axes both reduced (or both kept) are one loop. Reducing the last axes, a fold
        is one tight loop over contiguous memory; reducing leading axes, a fold runs over whole
        rows of the kept last axes at once (its accumulators in a scratch row): the inner loop
        is contiguous either way, and LLVM vectorises it."""
        finish = finish or (lambda results: results[-1])
        t, out_t = n.in_types[0], n.out_types[0]
        x, out = self.input(0), self.output()
        runs: list[tuple[bool, Dim, Dim]] = []  # (reduced, size, stride) of merged axes
        for axis, d in enumerate(t.shape):
            stride = irgen.product(t.shape[axis + 1:])
            if runs and runs[-1][0] == (axis in axes):
                runs[-1] = (axis in axes, runs[-1][1] * d, stride)
            else:
                runs.append((axis in axes, d, stride))
        kept = [(self.dim(size), self.dim(stride)) for r, size, stride in runs if not r]
        reduced = [(self.dim(size), self.dim(stride)) for r, size, stride in runs if r]
        positions = self.strides([size for r, size, _ in runs if r])
        out_strides = self.strides([size for r, size, _ in runs if not r])
        zero = ir.Constant(I64, 0)

        def value(offset):
            return self.load(x, offset, t.dtype)

        if not reduced or runs[-1][0] or runs[-1][1] == 1:  # a fold per output element
            def each(index):
                results: list[ir.Value] = []
                for init, step in folds:
                    def level(k, offset, position, acc, step=step, earlier=tuple(results)):
                        if k == len(reduced):
                            return step(acc, value(offset), position, earlier)
                        size, stride = reduced[k]
                        return self.accumulate(zero, size, acc, lambda a, i: level(
                            k + 1, self.b.add(offset, self.b.mul(i, stride)),
                            self.b.add(position, self.b.mul(i, positions[k])), a))

                    results.append(level(0, self.dot(index, [s for _, s in kept]), zero, init))
                self.store(out, self.dot(index, out_strides), finish(results), out_t.dtype)

            self.loop_nest([size for size, _ in kept], each)
            return

        (width, _), outer = kept[-1], kept[:-1]  # folds over rows of `width` kept elements
        rows = [self.scratch(width, init.type) for init, _ in folds]

        def row_of(k, j):
            return self.b.gep(rows[k], [j])

        def each_row(index):
            base = self.dot(index, [s for _, s in outer])
            for k, (init, step) in enumerate(folds):
                with self.for_range(width) as j:
                    self.b.store(init, row_of(k, j))

                def fold_in(at, k=k, step=step):
                    offset = self.b.add(base, self.dot(at, [s for _, s in reduced]))
                    with self.for_range(width) as j:
                        earlier = [self.b.load(row_of(e, j)) for e in range(k)]
                        acc = self.b.load(row_of(k, j))
                        new = step(acc, value(self.b.add(offset, j)), self.dot(at, positions),
                                   earlier)
                        self.b.store(new, row_of(k, j))

                self.loop_nest([size for size, _ in reduced], fold_in)
            at = self.dot(index, out_strides[:-1])
            with self.for_range(width) as j:
                results = [self.b.load(row_of(k, j)) for k in range(len(folds))]
                self.store(out, self.b.add(at, j), finish(results), out_t.dtype)

        with self.allocated(rows, "a reduction's rows"):
            self.loop_nest([size for size, _ in outer], each_row)

    def along_axis(self, n, axis: int):
        """(x, out, outer, length, inner, each) for an op reading x along one axis: `each(body)`
        calls body(offset_of(j)) once per line, where offset_of(j) is the j-th element's index."""
        t = n.in_types[0]
        x, out = self.input(0), self.output()
        shape = t.shape or (Dim.of(1),)
        outer = self.numel(shape[:axis])
        length = self.dim(shape[axis])
        inner = self.numel(shape[axis + 1 :])

        def each(body):
            with self.for_range(outer) as o:
                with self.for_range(inner) as i:
                    base = self.b.add(self.b.mul(o, self.b.mul(length, inner)), i)
                    body(lambda j: self.b.add(base, self.b.mul(j, inner)))

        return x, out, length, each

    def softmax(self, n, axis: int, log: bool = False) -> None:
        """Stable softmax (or log_softmax) along `axis`: max, then sum of exp(x - max)."""
        dtype = n.in_types[0].dtype
        x, out, length, each = self.along_axis(n, axis)
        zero = ir.Constant(I64, 0)

        def line(at):
            def load(j):
                return self.load(x, at(j), dtype)

            top = self.accumulate(zero, length, self.const(float("-inf"), dtype),
                                  lambda m, j: self.maximum(m, load(j)))
            total = self.accumulate(zero, length, self.const(0.0, dtype),
                                    lambda s, j: self.fadd(s, self.exp(self.fsub(load(j), top))))
            log_total = self.intrinsic("log", total) if log else None
            with self.for_range(length) as j:
                shifted = self.fsub(load(j), top)
                value = (self.fsub(shifted, log_total) if log
                         else self.fdiv(self.exp(shifted), total))
                self.store(out, at(j), value, dtype)

        each(line)
