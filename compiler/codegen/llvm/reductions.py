"""Reduction kernels: folds over some axes (sum, max, argmax, logsumexp, ...) and softmax along
one axis, as methods of KernelBuilder (`ReductionKernels` is one of its parts).
"""

from __future__ import annotations

from llvmlite import ir

from ...dims import Dim
from . import irgen
from .abi import F32, I64
from .microkernels import tiling
from .threads import parallel_rows

ROWS_BLOCK = 8  # rows: the smallest block of a softmax a thread takes
ROWS_PARALLEL = 1 << 15  # elements below which a softmax runs on one thread


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
        """Stable softmax (or log_softmax) along `axis`: max, then sum of exp(x - max). Along
        the last axis in f32 (attention's rows) the rows are explicit vectors (`_softmax_rows`);
        otherwise a loop per element that LLVM vectorises where it can."""
        t = n.in_types[0]
        if t.dtype == "f32" and t.rank and all(d == 1 for d in t.shape[axis + 1:]):
            self._softmax_rows(t, axis, log)
            return
        dtype = t.dtype
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

    def _softmax_rows(self, t, axis: int, log: bool) -> None:
        """Softmax along the contiguous last axis of an f32 tensor, rows shared by the
        module's threads when there are enough of them. Short rows (attention's 64 to 512
        keys) are why the vectors are explicit: LLVM's vectorised loops pay a scalar
        remainder, runtime checks and a reduction epilogue per loop, three loops per row."""
        zero = ir.Constant(I64, 0)
        rows, length = self.numel(t.shape[:axis]), self.dim(t.shape[axis])
        width = self.vector_width or tiling().width
        x, out = self.input(0), self.output()
        if self.serial:
            _softmax_row_range(self, x, out, zero, rows, length, width, log)
            return
        inner = self.helper("rows")
        start, count, size = (irgen.element(inner.b, inner.dims_ptr, i) for i in range(3))
        _softmax_row_range(inner, inner.buffer(0, "f32"), inner.buffer(1, "f32"), start, count,
                           size, width, log)
        fn = parallel_rows(self.module, inner.finish(), 2, 3,
                           lambda b, ptrs, sizes, row0: (list(ptrs), [b.add(sizes[0], row0),
                                                                      sizes[1], sizes[2]]),
                           min_rows=ROWS_BLOCK, min_work=ROWS_PARALLEL, rows_index=1,
                           work=lambda b, sizes: b.mul(sizes[1], sizes[2]), oversplit=2)
        self.call_kernel(fn, [x, out], [zero, rows, length], "rows")


def _softmax_row_range(kb, x, out, start, count, length, width: int, log: bool) -> None:
    """Rows start .. start + count of length `length`: the maximum, the sum of exp(x - max)
    (softmax: storing each exp), then softmax's exp times 1 / sum, or log_softmax's
    (x - max) - log(sum). The maximum skips NaN, which the sum then carries to every output
    of its row, as numpy's NaN maximum would; a +inf or all -inf row is NaN as numpy's is."""
    b = kb.b
    vec = irgen.Vectors(b, width)
    step = ir.Constant(I64, width)
    whole = b.mul(b.sdiv(length, step), step)  # elements in whole vectors
    mask = vec.mask(b.sub(length, whole), 0)  # the tail's lanes

    def splat(value: float) -> ir.Constant:
        return ir.Constant(vec.type, [value] * width)

    def larger(p, q):  # vmaxps: q when either is NaN
        return b.select(b.fcmp_ordered(">", p, q), p, q)

    def across(v, combine):  # the lanes of v combined into one scalar, by halves
        lanes = width
        while lanes > 1:
            lanes //= 2
            high = b.shuffle_vector(v, ir.Constant(vec.type, None), ir.Constant(
                ir.VectorType(ir.IntType(32), width), [lanes + i % lanes for i in range(width)]))
            v = combine(v, high)
        return b.extract_element(v, ir.Constant(ir.IntType(32), 0))

    def sweep(base, init, body):  # init = body(at, vector, tail mask or None, init) per vector
        with irgen.loop(b, whole, step=width, carries=[init], name="vectors") as state:
            at = b.add(base, state.index)
            state.carry([body(at, vec.load(x, at), None, state.values[0])])
        at = b.add(base, whole)
        last = vec.masked_load(x, at, mask)
        return b.select(b.icmp_signed("<", whole, length), body(at, last, mask, state.values[0]),
                        state.values[0])

    def store(value, at, tail):
        if tail is None:
            vec.store(value, out, at)
        else:
            vec.masked_store(value, out, at, tail)

    with kb.for_range(count) as r:
        base = b.mul(b.add(start, r), length)
        top = across(sweep(base, splat(float("-inf")), lambda at, v, tail, m: larger(
            v if tail is None else b.select(tail, v, splat(float("-inf"))), m)), larger)
        tops = vec.splat(top)

        def add_exp(at, v, tail, total):
            e = kb.exp(kb.fsub(v, tops))
            if not log:
                store(e, at, tail)
            return kb.fadd(total, e if tail is None else b.select(tail, e, splat(0.0)))

        total = across(sweep(base, splat(0.0), add_exp), kb.fadd)
        if log:
            scale = vec.splat(kb.intrinsic("log", total))

            def finish(at, v, tail, carried):
                store(kb.fsub(kb.fsub(v, tops), scale), at, tail)
                return carried
        else:
            scale = vec.splat(kb.fdiv(ir.Constant(F32, 1.0), total))

            def finish(at, v, tail, carried):
                e = vec.load(out, at) if tail is None else vec.masked_load(out, at, tail)
                store(kb.fmul(e, scale), at, tail)
                return carried

        sweep(base, splat(0.0), finish)
