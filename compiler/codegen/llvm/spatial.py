"""What the nn kernels share: `Window`, a sliding window over the two spatial axes, and small
pieces (bounds tests, folds over index spaces, planes of NCHW tensors, a mean summed in f64).

Tensors are NC(L) or NCHW. A 1-D op is run as a 2-D one with a unit height (`Window.of`), so
every nn kernel walks planes of H x W.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ...dims import Dim
from .abi import F64, I64
from .irgen import i64

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


def inside(kb, index: ir.Value, size: ir.Value) -> ir.Value:
    """0 <= index < size (one unsigned compare)."""
    return kb.b.icmp_unsigned("<", index, size)


def fold_over(kb, sizes: list[ir.Value], init: ir.Value, step) -> ir.Value:
    """acc = step(acc, [i0, i1, ...]) over the index space sizes[0] x sizes[1] x ..."""

    def level(d, acc, index):
        if d == len(sizes):
            return step(acc, index)
        return kb.accumulate(ZERO, sizes[d], acc, lambda a, i: level(d + 1, a, [*index, i]))

    return level(0, init, [])


def plane_dims(kb, t) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(N * C, H, W) of an NCHW or NCL tensor type (L is W, H is 1)."""
    spatial = t.shape[2:]
    h = kb.dim(spatial[0]) if len(spatial) == 2 else i64(1)
    return kb.numel(t.shape[:2]), h, kb.dim(spatial[-1])


def mean_of(kb, x, base: ir.Value, count: ir.Value, dtype: str, term=None) -> ir.Value:
    """mean of term(x[base + i]) over i < count, summed in f64; in the compute type of dtype."""
    def step(acc, i):
        value = kb.load(x, kb.b.add(base, i), dtype)
        return kb.fadd(acc, kb.convert(term(value) if term else value, "f64"))

    total = kb.accumulate(ZERO, count, ir.Constant(F64, 0.0), step)
    return kb.convert(kb.b.fdiv(total, kb.b.sitofp(count, F64)), dtype)
