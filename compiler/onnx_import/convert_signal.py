"""Converters of ONNX's signal ops: DFT, STFT and Col2Im, each a product with the matrix ONNX's
own reference makes of the unit impulses (convert_nn.linear_response: the ops are linear in
their signal), so every attribute means what the standard's reference computes.
"""

from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..ir import Value
from .convert_base import (
    FLOAT_TYPES,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    const_ints,
    converter_table,
    need,
    require_dtype,
)
from .convert_nn import linear_response

CONVERTERS, converter = converter_table()


def _apply_matrix(gb: GraphBuilder, x: Value, matrix: np.ndarray, lead: int) -> Value:
    """x's axes from `lead` on, flattened, times `matrix` ([their size, k]): [*lead axes, k]."""
    flat = gb.reshape(x, [*x.type.shape[:lead], matrix.shape[0]])
    return gb.matmul(flat, gb.constant(matrix.astype(x.type.np_dtype)))


@converter("DFT")
def _dft(gb, node):
    """The forward DFT (one- or two-sided) along one axis, and the inverse of a one-sided one
    (irfft), as the product with the matrix ONNX's reference DFT makes of the unit
    impulses: exact up to rounding."""
    x = need(node, 0, "input")
    require_dtype(x, FLOAT_TYPES, "DFT input")
    if attr(node, "inverse", 0) and not attr(node, "onesided", 0):
        # the product gives exact zeros (a real signal's imaginary parts) where ONNX's
        # expected values hold f32 FFT rounding noise of 2e-7, outside the node tests'
        # tolerance (atol 1e-7): not claimed until judged otherwise
        raise Unsupported("the two-sided inverse DFT")
    rank = x.type.rank
    if node.opset >= 20:
        axis = const_ints(gb, node, 2, "axis")
        axis = -2 if axis is None else axis[0]
    else:
        axis = int(attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis  # negative: from the back of every axis
    if not 0 <= axis < rank - 1:  # the last axis holds the real and imaginary parts
        raise Unsupported(f"DFT axis {axis} out of range for rank {rank}")
    length = const_ints(gb, node, 1, "dft_length")
    shape = x.type.shape
    if not (shape[axis].is_const and shape[-1].is_const):
        raise Unsupported("DFT along a symbolic axis")
    n, parts = shape[axis].value, shape[-1].value
    attrs = {k: v for k, v in node.attrs.items() if k != "axis"}
    matrix = dft_matrix(node, attrs, n, parts, None if length is None else length[0])
    # the signal axis and the parts last, transformed, and put back
    perm = [a for a in range(rank - 1) if a != axis] + [axis, rank - 1]
    moved = gb.permute(x, perm) if perm != list(range(rank)) else x
    y = _apply_matrix(gb, moved, matrix, rank - 2)
    # (real and imaginary parts out, but the real signal of an inverse one-sided DFT)
    parts_out = 1 if attr(node, "inverse", 0) and attr(node, "onesided", 0) else 2
    out = matrix.shape[1] // parts_out
    y = gb.reshape(y, [*moved.type.shape[:rank - 2], out, parts_out])
    back = [perm.index(a) for a in range(rank)]
    return [gb.permute(y, back) if back != list(range(rank)) else y]


def dft_matrix(node: OnnxNode, attrs: dict, n: int, parts: int, length: int | None
               ) -> np.ndarray:
    """[n * parts, out * parts out]: ONNX's reference DFT (at the node's opset, with `attrs`
    and dft_length `length`) of the unit signals of n samples of `parts` parts."""
    extra = {} if length is None else {"dft_length": np.array(length, np.int64)}
    slots = ["dft_length" if length is not None else ""]
    attrs = dict(attrs)
    if node.opset >= 20:  # the axis an input from DFT-20 on, an attribute before
        extra["axis"] = np.array(1, np.int64)
        slots.append("axis")
    else:
        attrs["axis"] = 1
    return linear_response(node, "DFT", attrs, (n, parts), slots, extra)


@converter("STFT")
def _stft(gb, node):
    """Frames of frame_length samples every frame_step (1 + (L - length) // step of them: a
    gather), times the window, each transformed by the DFT's matrix: [B, frames, bins, 2]."""
    x = need(node, 0, "signal")
    require_dtype(x, FLOAT_TYPES, "STFT signal")
    step = const_ints(gb, node, 1, "frame_step")
    window = arg(node, 2)
    length = const_ints(gb, node, 3, "frame_length")
    if x.type.rank != 3 or not (x.type.shape[1].is_const and x.type.shape[2].is_const):
        raise Unsupported(f"STFT of a signal of type {x.type} (only [batch, length, 1 or 2] "
                          "of constant length)")
    if window is not None and (window.type.rank != 1 or not window.type.shape[0].is_const):
        raise Unsupported("STFT's window must be a vector of constant length")
    size = window.type.shape[0].value if window is not None else None
    n = length[0] if length is not None else size if size is not None else x.type.shape[1].value
    if size is not None and size != n:
        raise Unsupported(f"STFT with a window of {size} samples for frames of {n}")
    total, parts = x.type.shape[1].value, x.type.shape[2].value
    if not 0 < n <= total or step is None or step[0] < 1:
        raise Unsupported(f"STFT frames of {n} samples every {step} in a signal of {total}")
    count = 1 + (total - n) // step[0]
    starts = np.arange(count, dtype=np.int64)[:, None] * step[0]
    frames = gb.op("gather", x, gb.constant(starts + np.arange(n, dtype=np.int64)), axis=1)
    if window is not None:  # [B, frames, n, parts] times window[n]
        if window.type.dtype != x.type.dtype:
            window = gb.cast(window, x.type.dtype)
        frames = gb.mul(frames, gb.reshape(window, [1, 1, n, 1]))
    matrix = dft_matrix(node, {"onesided": int(attr(node, "onesided", 1))}, n, parts, None)
    y = _apply_matrix(gb, frames, matrix, 2)
    return [gb.reshape(y, [x.type.shape[0], count, matrix.shape[1] // 2, 2])]


@converter("Col2Im")
def _col2im(gb, node):
    """Col2Im sums each block's column back into the image: per channel a fixed linear map
    from [block size * blocks] to the image, the matrix ONNX's reference makes of the unit
    impulses."""
    x = need(node, 0, "input")
    require_dtype(x, FLOAT_TYPES, "Col2Im input")
    image = const_ints(gb, node, 1, "image_shape")
    block = const_ints(gb, node, 2, "block_shape")
    if image is None or block is None:
        raise Unsupported("Col2Im needs image_shape and block_shape")
    cols, blocks = x.type.shape[1], x.type.shape[2]
    k = int(np.prod(block))
    if not (cols.is_const and blocks.is_const) or cols.value % k:
        raise Unsupported("Col2Im needs constant sizes, its channels a multiple of the block")
    channels = cols.value // k
    extra = {"image_shape": np.array(image, np.int64), "block_shape": np.array(block, np.int64)}
    matrix = linear_response(node, "Col2Im", node.attrs, (k, blocks.value),
                             ["image_shape", "block_shape"], extra)
    per_channel = gb.reshape(x, [x.type.shape[0], channels, k * blocks.value])
    y = _apply_matrix(gb, per_channel, matrix, 2)
    return [gb.reshape(y, [x.type.shape[0], channels, *image])]
