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

ROWS_BLOCK = 8  # rows: the smallest block of a row kernel (softmax, layer norm) a thread takes
ROWS_PARALLEL = 1 << 15  # elements below which a row kernel runs on one thread


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
            log_total = self.log(total) if log else None
            with self.for_range(length) as j:
                shifted = self.fsub(load(j), top)
                value = (self.fsub(shifted, log_total) if log
                         else self.fdiv(self.exp(shifted), total))
                self.store(out, at(j), value, dtype)

        each(line)

    def _softmax_rows(self, t, axis: int, log: bool) -> None:
        """Softmax along the contiguous last axis of an f32 tensor (`_softmax_row_range`).
        Short rows (attention's 64 to 512 keys) are why the vectors are explicit: LLVM's
        vectorised loops pay a scalar remainder, runtime checks and a reduction epilogue per
        loop, three loops per row."""
        width = self.vector_width or tiling().width
        self.over_rows("rows", [self.input(0), self.output()], self.numel(t.shape[:axis]),
                       self.dim(t.shape[axis]),
                       lambda kb, ptrs, start, count, length: _softmax_row_range(
                           kb, *ptrs, start, count, length, width, log))

    def over_rows(self, suffix: str, buffers: list[ir.Value], rows: ir.Value,
                  length: ir.Value, emit, extra: tuple[ir.Value, ...] = ()) -> None:
        """emit(kb, buffers, start, count, length, *extra) computes rows start .. start +
        count of `length` f32 elements each (`extra`: more sizes it needs); here it runs on
        rows 0 .. rows, in a range function the module's threads share when there are enough
        rows (in a kernel that already runs on several threads, inline)."""
        zero = ir.Constant(I64, 0)
        if self.serial:
            emit(self, buffers, zero, rows, length, *extra)
            return
        inner = self.helper(suffix)
        start, count, size, *more = (irgen.element(inner.b, inner.dims_ptr, i)
                                     for i in range(3 + len(extra)))
        emit(inner, [inner.buffer(i, "f32") for i in range(len(buffers))], start, count, size,
             *more)
        fn = parallel_rows(self.module, inner.finish(), len(buffers), 3 + len(extra),
                           lambda b, ptrs, sizes, row0: (list(ptrs), [b.add(sizes[0], row0),
                                                                      *sizes[1:]]),
                           min_rows=ROWS_BLOCK, min_work=ROWS_PARALLEL, rows_index=1,
                           work=lambda b, sizes: b.mul(sizes[1], sizes[2]), oversplit=2)
        self.call_kernel(fn, buffers, [zero, rows, length, *extra], suffix)


class RowVectors:
    """One row of `length` f32 elements as whole vectors of `width` lanes and a masked tail:
    `sweep` folds a value over the row's vectors, `load`/`store` move a vector of any buffer
    at a position in the row, `across` folds a vector's lanes into a scalar."""

    def __init__(self, kb, length: ir.Value, width: int):
        self.kb, self.b, self.width, self.length = kb, kb.b, width, length
        self.vec = irgen.Vectors(kb.b, width)
        step = ir.Constant(I64, width)
        self.whole = self.b.mul(self.b.sdiv(length, step), step)  # elements in whole vectors
        self.mask = self.vec.mask(self.b.sub(length, self.whole), 0)  # the tail's lanes

    def splat(self, value: float, element: ir.Type = F32) -> ir.Constant:
        return ir.Constant(ir.VectorType(element, self.width), [value] * self.width)

    def load(self, ptr: ir.Value, at: ir.Value, tail) -> ir.Value:
        """The vector at ptr + at (the tail's lanes only, zero elsewhere, when `tail`)."""
        return self.vec.load(ptr, at) if tail is None else self.vec.masked_load(ptr, at, tail)

    def store(self, value: ir.Value, ptr: ir.Value, at: ir.Value, tail) -> None:
        if tail is None:
            self.vec.store(value, ptr, at)
        else:
            self.vec.masked_store(value, ptr, at, tail)

    def sweep(self, init: ir.Value, body) -> ir.Value:
        """acc = body(j, tail, acc) for each vector at position j of the row: whole vectors
        (tail None), then, when the row has one, the tail (its lane mask: its masked loads
        and stores touch nothing outside the row). The tail is branched around, not computed
        and discarded: a row of attention's 128 keys is 8 whole vectors, and a ninth of
        softmax's exps would be thrown away."""
        b = self.b
        with irgen.loop(b, self.whole, step=self.width, carries=[init], name="vectors") as state:
            state.carry([body(state.index, None, state.values[0])])
        done = state.values[0]
        before = b.block
        with b.if_then(b.icmp_signed("<", self.whole, self.length)):
            last = body(self.whole, self.mask, done)
            tail = b.block
        result = b.phi(done.type)
        result.add_incoming(last, tail)
        result.add_incoming(done, before)
        return result

    def across(self, v: ir.Value, combine) -> ir.Value:
        """The lanes of v combined into one scalar, by halves."""
        b, lanes = self.b, self.width
        i32 = ir.IntType(32)
        while lanes > 1:
            lanes //= 2
            high = b.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(
                ir.VectorType(i32, self.width), [lanes + i % lanes for i in range(self.width)]))
            v = combine(v, high)
        return b.extract_element(v, ir.Constant(i32, 0))


def _softmax_row_range(kb, x, out, start, count, length, width: int, log: bool) -> None:
    """Rows start .. start + count of length `length`: the maximum, the sum of exp(x - max)
    (softmax: storing each exp), then softmax's exp times 1 / sum, or log_softmax's
    (x - max) - log(sum). The maximum skips NaN, which the sum then carries to every output
    of its row, as numpy's NaN maximum would; a +inf or all -inf row is NaN as numpy's is."""
    b = kb.b
    rows = RowVectors(kb, length, width)
    vec = rows.vec

    def larger(p, q):  # vmaxps: q when either is NaN
        return b.select(b.fcmp_ordered(">", p, q), p, q)

    with kb.for_range(count) as r:
        base = b.mul(b.add(start, r), length)

        def at(j):
            return b.add(base, j)

        def fold_max(j, tail, m):
            v = rows.load(x, at(j), tail)
            return larger(v if tail is None else b.select(tail, v, rows.splat(float("-inf"))), m)

        tops = vec.splat(rows.across(rows.sweep(rows.splat(float("-inf")), fold_max), larger))

        def add_exp(j, tail, total):
            e = kb.exp_of_shifted(kb.fsub(rows.load(x, at(j), tail), tops))
            if not log:
                rows.store(e, out, at(j), tail)
            return kb.fadd(total, e if tail is None else b.select(tail, e, rows.splat(0.0)))

        total = rows.across(rows.sweep(rows.splat(0.0), add_exp), kb.fadd)
        if log:
            scale = vec.splat(kb.log(total))

            def finish(j, tail, carried):
                shifted = kb.fsub(rows.load(x, at(j), tail), tops)
                rows.store(kb.fsub(shifted, scale), out, at(j), tail)
                return carried
        else:
            scale = vec.splat(kb.fdiv(ir.Constant(F32, 1.0), total))

            def finish(j, tail, carried):
                rows.store(kb.fmul(rows.load(out, at(j), tail), scale), out, at(j), tail)
                return carried

        rows.sweep(rows.splat(0.0), finish)
