"""Weights laid out as the GEMM reads them (gemm.py: prepacked A and B panels; winograd.py's
transformed weights), in numpy:
made when a model binds its weights, so they need nothing of LLVM (a model loaded from a
library or the compile cache makes them too)."""

from __future__ import annotations

import os

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


# Winograd F(4, 3) (winograd.py)
M_OUT, R = 4, 3  # outputs per tile side, kernel side
ALPHA = M_OUT + R - 1  # input tile side: 6
# the F(4, 3) matrices (Lavin & Gray's, points 0, +-1, +-2 and infinity)
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)

# columns per product: its float64 operands stay in the caches, and the product is small
# enough (36 * 9 * 512 < 2^18 multiply-adds) that OpenBLAS runs it on this thread alone: its
# own threads gain nothing on a product this thin, and on a busy machine they spin-wait, 10x
# slower
_CHUNK = 512


def _transformed(columns: np.ndarray) -> np.ndarray:
    """The filters `columns` ([9, n], each a row-major 3x3 g) transformed, in float64 and
    rounded once: [36, n] float32, as vec(G g G^T) = (G kron G) vec(g), one product a chunk
    of columns at a time."""
    kron = np.kron(G, G)  # [36, 9]
    out = np.empty((ALPHA * ALPHA, columns.shape[1]), np.float32)
    for at in range(0, columns.shape[1], _CHUNK):
        out[:, at:at + _CHUNK] = kron @ columns[:, at:at + _CHUNK].astype(np.float64)
    return out


def weight_transform(weight: np.ndarray) -> np.ndarray:
    """U[xi, c, o] = (G g[o, c] G^T)[xi] of a weight [O, C, 3, 3], in float64, rounded once:
    [36, C, O] (winograd_b's layout with one panel as wide as O)."""
    o, c = weight.shape[:2]
    return winograd_b(weight, o).reshape(ALPHA * ALPHA, c, o)


def winograd_b(weight: np.ndarray, nr: int) -> np.ndarray:
    """The derived array `winograd_b(nr=NR):W`: U as 36 prepacked GEMM B operands, each
    [C, O] in NR-wide panels ([36, O/NR panels, C, NR], zero past O). The filters are put in
    that order first (the sum's 9 taps outermost), so that one product writes U in place."""
    o, c = weight.shape[:2]
    panels = -(-o // nr)
    filters = np.zeros((panels * nr, c, 9), np.float32)
    filters[:o] = np.asarray(weight, dtype=np.float32).reshape(o, c, 9)
    columns = filters.reshape(panels, nr, c, 9).transpose(3, 0, 2, 1)  # [9, panels, C, NR]
    return _transformed(np.ascontiguousarray(columns).reshape(9, -1)).reshape(
        ALPHA * ALPHA, panels, c, nr)


def transposed_as_conv3(weight: np.ndarray) -> np.ndarray:
    """A transposed convolution's weight [C_in, C_out, 4, 4] with stride 2 and padding 1 as
    the weight [4 C_out, C_in, 3, 3] of a stride-1 convolution with padding 1 at the input's
    resolution, whose output channel (2 ph + pw) C_out + o is output channel o's pixels
    (2 a + ph, 2 b + pw): that pixel takes input rows a + t - 1 through tap
    ph + 3 - 2 t of the 4x4 kernel (t = 0, 1, 2; one of the three falls outside it and is 0),
    and columns likewise."""
    cin, cout = weight.shape[:2]
    w = np.asarray(weight, dtype=np.float32)
    out = np.zeros((2, 2, cout, cin, 3, 3), np.float32)
    for ph in range(2):
        for th in range(3):
            kh = ph + 3 - 2 * th
            if not 0 <= kh < 4:
                continue
            for pw in range(2):
                for tw in range(3):
                    kw = pw + 3 - 2 * tw
                    if 0 <= kw < 4:
                        out[ph, pw, :, :, th, tw] = w[:, :, kh, kw].T
    return out.reshape(4 * cout, cin, 3, 3)


def winograd_ct(weight: np.ndarray, nr: int) -> np.ndarray:
    """The derived array `winograd_ct(nr=NR):W` of a 4x4, stride-2, padding-1 transposed
    convolution's weight: winograd_b of its stride-1 form (`transposed_as_conv3`)."""
    return winograd_b(transposed_as_conv3(weight), nr)


def winograd_ct_or_b(weight: np.ndarray, nr: int) -> np.ndarray:
    """The derived array `winograd_ct_or_b(nr=NR):W`: winograd_ct's U, then the weight as
    the GEMM's prepacked B (prepack_b, one group), flat: for a transposed convolution that
    runs as F(4, 3) only where a call's batch gives its GEMMs enough rows, and through its
    GEMM and scatter otherwise (winograd.conv_transpose_winograd, chosen per call)."""
    return np.concatenate([winograd_ct(weight, nr).ravel(), prepack_b(weight, 1, nr).ravel()])


def winograd_lazy_or_b(weight: np.ndarray, nr: int) -> np.ndarray:
    """The derived array `winograd_lazy_or_b(nr=NR):W` of a 4x4, stride-2, padding-1
    transposed convolution whose U is too large to keep (winograd.eligible_lazy): the weight
    as the GEMM's prepacked B (prepack_b, one group), then the weight itself with its output
    channels last ([C_in, 4, 4, C_out], flat), from which a call with enough samples makes U
    a block at a time (winograd.conv_transpose_lazy), vectors along the output channels."""
    return _then_channels_last(prepack_b(weight, 1, nr), weight, (0, 2, 3, 1))


def winograd_lazy_a(weight: np.ndarray, kc: int) -> np.ndarray:
    """The derived array `winograd_lazy_a(kc=KC):W` of a 3x3 convolution whose U is too large
    to keep (winograd.eligible_lazy_conv): the weight as the GEMM's prepacked A (prepack_a,
    one group), then the weight itself with its output channels last ([C, 3, 3, O], flat),
    from which a call with enough samples makes U a block at a time (winograd.conv_lazy)."""
    return _then_channels_last(prepack_a(weight, 1, kc), weight, (1, 2, 3, 0))


def _then_channels_last(panels: np.ndarray, weight: np.ndarray, axes) -> np.ndarray:
    """`panels` flat, then the weight with its axes in the order `axes` (its output channels
    last), in one new array: each written once into it."""
    w = np.asarray(weight, dtype=np.float32)
    out = np.empty(panels.size + w.size, np.float32)
    out[:panels.size] = panels.reshape(-1)
    np.copyto(out[panels.size:].reshape([w.shape[a] for a in axes]), w.transpose(axes))
    return out


WINOGRAD_ENV = "KILN_WINOGRAD"  # "0": every convolution through im2col and the GEMM


def winograd_enabled() -> bool:
    """Whether Winograd convolutions may be chosen (the KILN_WINOGRAD=0 opt-out not set);
    here, beside the transforms' numpy half, so that the compile caches' keys read it without
    importing LLVM."""
    return os.environ.get(WINOGRAD_ENV, "1") != "0"


# precision="bf16" (bf16.py): the same layouts in bf16 pairs along the sum, made when the
# weights are bound (numpy only, like the rest: a model from the compile cache needs no LLVM)
def round_bits(x: np.ndarray) -> np.ndarray:
    """The bf16 bit patterns (uint32, < 2**16) of f32 values, rounded to nearest even; a NaN
    stays a quiet NaN (as vcvtne2ps2bf16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32)
    nan = np.isnan(x)
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint32), rounded)


def _pairs(x: np.ndarray, axis: int) -> np.ndarray:
    """f32 `x` rounded to bf16 and paired along `axis` (element 2q low, 2q + 1 high: one
    word per pair, a zero high half past an odd end), the words zero-padded back to the
    axis's length and seen as float32: the same shape as `x`."""
    x = np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1)
    depth = x.shape[-1]
    even = np.zeros((*x.shape[:-1], depth + depth % 2), dtype=np.float32)
    even[..., :depth] = x
    bits = round_bits(even)
    words = np.zeros(x.shape, dtype=np.uint32)
    words[..., : even.shape[-1] // 2] = bits[..., 0::2] | (bits[..., 1::2] << 16)
    return np.ascontiguousarray(np.moveaxis(words.view(np.float32), -1, axis))


def prepack_a_bf16(weight: np.ndarray, groups: int, kc: int) -> np.ndarray:
    """prepack_a's layout with each KC-deep row slice paired (bf16 pairs along the sum)."""
    return _pairs(prepack_a(weight, groups, kc), -1)


def prepack_b_bf16(weight: np.ndarray, groups: int, nr: int) -> np.ndarray:
    """prepack_b's layout with each panel's rows paired: pair row q holds rows 2q, 2q + 1."""
    return _pairs(prepack_b(weight, groups, nr), -2)
