"""Weights laid out as the GEMM reads them (gemm.py: prepacked A and B panels), in numpy:
made when a model binds its weights, so they need nothing of LLVM (a model loaded from a
library or the compile cache makes them too)."""

from __future__ import annotations

import numpy as np


def _panels(weight: np.ndarray, groups: int, size: int) -> np.ndarray:
    """Per group, the weight's [rows, n] matrix (its first axis split in `groups`, the rest
    flattened) cut along n into `size`-wide pieces, zero past n: [groups, pieces, rows, size]."""
    rows = weight.shape[0] // groups
    m = np.asarray(weight, dtype=np.float32).reshape(groups, rows, -1)
    n = m.shape[2]
    pieces = -(-n // size)
    padded = np.zeros((groups, rows, pieces * size), dtype=np.float32)
    padded[:, :, :n] = m
    return np.ascontiguousarray(padded.reshape(groups, rows, pieces, size).transpose(0, 2, 1, 3))


def prepack_a(weight: np.ndarray, groups: int, kc: int) -> np.ndarray:
    """A convolution's weight [O, C/groups, kh, kw] as the GEMM reads a prepacked A: per group,
    its [O/groups, K] matrix cut into KC-deep slices of all rows ([groups, slices, O/groups,
    KC], zero past K), so that no call packs it again."""
    return _panels(weight, groups, kc)


def prepack_b(weight: np.ndarray, groups: int, nr: int) -> np.ndarray:
    """A weight that is the GEMM's B (a transposed convolution's [C_in, C_out/groups, kh, kw],
    a linear layer's [K, N]) as `PackedB` reads it: per group, its [C_in/groups, (o, i, j)]
    matrix cut into NR-wide column panels ([groups, panels, C_in/groups, NR], zero past the
    last column): prepack_a's layout, in NR-wide pieces."""
    return _panels(weight, groups, nr)
