"""Converters of ONNX's linear quantization: DequantizeLinear and QuantizeLinear, per tensor,
per axis and blocked, as compositions of kiln primitives that follow ONNX's reference
(onnx/reference/ops/op_dequantize_linear.py, op_quantize_linear.py) step by step:

    DequantizeLinear: y = (float32(x) - float32(zero_point)) * scale, in scale's type
    QuantizeLinear:   y = saturate(round_half_even(x / scale) + zero_point)
    MatMulInteger:    y = (int32(a) - a_zero_point) @ (int32(b) - b_zero_point)
    QLinearMatMul:    y = saturate(round_half_even(MatMulInteger * (a_scale * b_scale /
                          y_scale) + y_zero_point)), the product in f64 as numpy's int32 *
                          float32 (the scales' quotient in their type)

A quantized type is one of kiln's integers of 8 or 16 bits (ONNX's 2-, 4-bit and float8 types
are no kiln element types: refused by the type map).
"""

from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Value
from ..types import NUMPY_DTYPES
from .convert_base import (
    FLOAT_TYPES,
    INT_TYPES,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    axis_of,
    const_like,
    converter_table,
    dtype_of,
    kiln_dtype,
    need,
    require_dtype,
)
from .convert_elementwise import round_half_even

CONVERTERS, converter = converter_table()
QUANTIZED = ("i8", "u8", "i16", "u16")


def _spread(gb: GraphBuilder, node: OnnxNode, v: Value, x: Value) -> Value:
    """A scale or zero point broadcastable against x: a scalar as it is, a vector along
    `axis` (per axis), or, with `block_size`, each of its entries repeated over a block of
    `axis` (blocked: the last block may be shorter)."""
    block = int(attr(node, "block_size", 0) or 0)
    if v.type.rank == 0 or (v.type.rank == 1 and v.type.shape[0] == Dim.of(1) and not block):
        return gb.reshape(v, []) if v.type.rank else v
    axis = axis_of(int(attr(node, "axis", 1)), x.type.rank, f"{node.op_type} axis")
    if not block:
        if v.type.rank != 1:
            raise Unsupported(f"{node.op_type}: a per-axis scale must be a vector")
        shape = [1] * x.type.rank
        shape[axis] = v.type.shape[0]
        return gb.reshape(v, shape)
    size = x.type.shape[axis]
    if v.type.rank != x.type.rank or not size.is_const:
        raise Unsupported(f"{node.op_type}: blocked quantization needs a scale of x's rank "
                          "and a known size along its axis")
    index = np.arange(size.value, dtype=np.int64) // block
    return gb.op("gather", v, gb.constant(index), axis=axis)


def _zero_point(gb: GraphBuilder, node: OnnxNode, x: Value, dtype: str) -> Value | None:
    """Input 2, spread as the scale; absent, None."""
    zero = arg(node, 2)
    if zero is None:
        return None
    if dtype_of(zero) != dtype:
        raise Unsupported(f"{node.op_type}: zero point of type {dtype_of(zero)}, not {dtype}")
    return _spread(gb, node, zero, x)


@converter("DequantizeLinear")
def _dequantize_linear(gb, node):
    x, scale = need(node, 0, "x"), need(node, 1, "x_scale")
    require_dtype(x, (*QUANTIZED, "i32"), "DequantizeLinear input")
    require_dtype(scale, FLOAT_TYPES, "DequantizeLinear scale")
    out = attr(node, "output_dtype")
    out = kiln_dtype(int(out), "DequantizeLinear output_dtype") if out else dtype_of(scale)
    # the reference: x and the zero point in f32, the product in f32 * scale's type as numpy
    # promotes it (f64 for an f64 scale), then rounded once to the output type
    wide = "f64" if dtype_of(scale) == "f64" else "f32"
    dx = gb.cast(x, "f32")
    zero = _zero_point(gb, node, x, dtype_of(x))
    if zero is not None:
        dx = gb.sub(dx, gb.cast(zero, "f32"))
    scale = _spread(gb, node, scale, x)
    y = gb.mul(_as(gb, dx, wide), _as(gb, scale, wide))
    return [_as(gb, y, out)]


@converter("QuantizeLinear")
def _quantize_linear(gb, node):
    x, scale = need(node, 0, "x"), need(node, 1, "y_scale")
    require_dtype(x, (*FLOAT_TYPES, "i32"), "QuantizeLinear input")
    require_dtype(scale, FLOAT_TYPES, "QuantizeLinear scale")
    zero = arg(node, 2)
    out = attr(node, "output_dtype")
    if zero is not None:
        dtype = dtype_of(zero)
    else:
        dtype = kiln_dtype(int(out), "QuantizeLinear output_dtype") if out else "u8"
    if dtype not in QUANTIZED:
        raise Unsupported(f"QuantizeLinear to {dtype}: kiln quantizes to {', '.join(QUANTIZED)}")
    attr(node, "saturate")  # concerns float8 outputs only; integers always saturate
    precision = attr(node, "precision")
    if precision:  # x and the scale in this type before the division
        wide = kiln_dtype(int(precision), "QuantizeLinear precision")
        x, scale = _as(gb, x, wide), _as(gb, scale, wide)
    elif dtype_of(x) in INT_TYPES:  # numpy: int32 / f32 divides in f64
        x, scale = _as(gb, x, "f64"), _as(gb, scale, "f64")
    elif dtype_of(x) != dtype_of(scale):
        raise Unsupported("QuantizeLinear: x and its scale of different types")
    quotient = gb.op("div", x, _spread(gb, node, scale, x))
    # rounded in the quotient's type (exact), then in f32 or f64, where adding a zero point
    # below 2^16 to an integer below 2^24 is exact, and a larger one saturates either way
    wide = "f64" if dtype_of(quotient) == "f64" else "f32"
    y = _as(gb, round_half_even(gb, quotient), wide)
    zero = _zero_point(gb, node, x, dtype)
    if zero is not None:
        y = gb.add(y, gb.cast(zero, wide))
    return [_saturated(gb, y, dtype)]


def _centered(gb: GraphBuilder, v: Value, zero: Value | None) -> Value:
    """int32(v) - int32(zero), the zero point broadcast as numpy broadcasts it."""
    require_dtype(v, QUANTIZED[:2], "a quantized matrix")
    v = gb.cast(v, "i32")
    return v if zero is None else gb.sub(v, gb.cast(zero, "i32"))


@converter("MatMulInteger")
def _matmul_integer(gb, node):
    a = _centered(gb, need(node, 0, "A"), arg(node, 2))
    return [gb.op("matmul", a, _centered(gb, need(node, 1, "B"), arg(node, 3)))]


@converter("QLinearMatMul")
def _qlinear_matmul(gb, node):
    a = _centered(gb, need(node, 0, "a"), arg(node, 2))
    b = _centered(gb, need(node, 3, "b"), arg(node, 5))
    scales = [need(node, i, name) for i, name in ((1, "a_scale"), (4, "b_scale"), (6, "y_scale"))]
    for scale in scales:  # (numpy rounds f16 * f16 and f16 / f16 to f16 as kiln does)
        require_dtype(scale, (dtype_of(scales[0]),), "QLinearMatMul scale")
        require_dtype(scale, ("f32", "f16"), "QLinearMatMul scale")
    a_scale, b_scale, y_scale = scales
    multiplier = _as(gb, gb.op("div", gb.mul(a_scale, b_scale), y_scale), "f64")
    y = gb.mul(gb.cast(gb.op("matmul", a, b), "f64"), multiplier)
    zero = arg(node, 7)
    dtype = dtype_of(need(node, 0, "a")) if zero is None else dtype_of(zero)
    if zero is not None:
        y = gb.add(y, gb.cast(zero, "f64"))
    return [_saturated(gb, round_half_even(gb, y), dtype)]


def _saturated(gb: GraphBuilder, y: Value, dtype: str) -> Value:
    """A float y clipped to the range of the integer type `dtype` and converted to it; NaN to
    the lowest value, as the reference's int32 conversion of NaN (INT_MIN) gives it."""
    info = np.iinfo(NUMPY_DTYPES[dtype])
    low, high = (const_like(gb, v, dtype_of(y)) for v in (info.min, info.max))
    y = gb.op("where", gb.op("greater", y, low), y, low)
    y = gb.op("where", gb.op("less", y, high), y, high)
    return gb.cast(y, dtype)


def _as(gb: GraphBuilder, v: Value, dtype: str) -> Value:
    return v if dtype_of(v) == dtype else gb.cast(v, dtype)
