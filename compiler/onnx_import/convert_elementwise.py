"""Converters of ONNX's elementwise ops: unary math and activations, binary arithmetic,
comparisons and logic, Where, Cast, Clip and the variadic Sum/Mean/Max/Min.

Each follows the ONNX operator specification (onnx/defs/math, logical, tensor); where kiln's
primitive differs (integer Div truncates in ONNX, floors in kiln), the converter composes
primitives that give ONNX's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..builder import GraphBuilder
from ..ir import Value
from ..types import NUMPY_DTYPES
from .convert_base import (
    FLOAT_TYPES,
    INT_TYPES,
    Converter,
    OnnxNode,
    Unsupported,
    arg,
    attr,
    const_like,
    dtype_of,
    kiln_dtype,
    known,
    need,
    require_dtype,
)

CONVERTERS: dict[str, Converter] = {}


def _register(op_type: str, fn: Callable[[GraphBuilder, OnnxNode], Value]) -> None:
    """A converter of a one-output op: fn returns the Value."""
    CONVERTERS[op_type] = lambda gb, node: [fn(gb, node)]


def _x(node: OnnxNode) -> Value:
    return need(node, 0, "X")


def _floats(node: OnnxNode, value: Value | None = None) -> Value:
    """The input (or `value`), which must be a kiln float type."""
    x = _x(node) if value is None else value
    require_dtype(x, FLOAT_TYPES, f"{node.op_type} input")
    return x


def _scalar(gb: GraphBuilder, x: Value, number: float) -> Value:
    return const_like(gb, number, dtype_of(x))


# unary ops one kiln primitive computes ----------------------------------------------------
_UNARY = {
    "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Sin": "sin",
    "Cos": "cos", "Atan": "atan", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu",
    "Erf": "erf", "Floor": "floor", "Ceil": "ceil", "Sign": "sign", "Reciprocal": "reciprocal",
    "Not": "logical_not",
}
for _op_type, _kiln in _UNARY.items():
    _register(_op_type, lambda gb, node, op=_kiln: gb.op(op, _x(node)))


def _identity(gb: GraphBuilder, node: OnnxNode) -> list:
    return [_x(node)]


CONVERTERS["Identity"] = _identity


# unary ops composed -----------------------------------------------------------------------
def _tan(gb, node):
    x = _floats(node)
    return gb.div(gb.op("sin", x), gb.op("cos", x))


def _sinh_cosh(sign: float):
    """(e^x - e^-x) / 2 or (e^x + e^-x) / 2."""

    def convert(gb, node):
        x = _floats(node)
        a, b = gb.op("exp", x), gb.op("exp", gb.neg(x))
        return gb.mul(gb.add(a, b) if sign > 0 else gb.sub(a, b), _scalar(gb, x, 0.5))

    return convert


def _asinh(gb, node):
    """sign(x) log(|x| + sqrt(x^2 + 1)): odd, so large negative x does not cancel."""
    x = _floats(node)
    a = gb.op("abs", x)
    root = gb.op("sqrt", gb.add(gb.mul(a, a), _scalar(gb, x, 1.0)))
    return gb.mul(gb.op("sign", x), gb.op("log", gb.add(a, root)))


def _acosh(gb, node):
    """log(x + sqrt(x^2 - 1))."""
    x = _floats(node)
    root = gb.op("sqrt", gb.sub(gb.mul(x, x), _scalar(gb, x, 1.0)))
    return gb.op("log", gb.add(x, root))


def _atanh(gb, node):
    """log((1 + x) / (1 - x)) / 2."""
    x = _floats(node)
    one = _scalar(gb, x, 1.0)
    ratio = gb.div(gb.add(one, x), gb.sub(one, x))
    return gb.mul(gb.op("log", ratio), _scalar(gb, x, 0.5))


def _asin(gb, node):
    """atan(x / sqrt((1 - x)(1 + x))): +-pi/2 at +-1 (x / 0 is +-inf), NaN outside [-1, 1]."""
    x = _floats(node)
    one = _scalar(gb, x, 1.0)
    root = gb.op("sqrt", gb.mul(gb.sub(one, x), gb.add(one, x)))
    return gb.op("atan", gb.div(x, root))


def _acos(gb, node):
    """2 atan(sqrt((1 - x) / (1 + x))): no cancellation near x = 1, where acos is small."""
    x = _floats(node)
    one = _scalar(gb, x, 1.0)
    ratio = gb.div(gb.sub(one, x), gb.add(one, x))
    return gb.mul(gb.op("atan", gb.op("sqrt", ratio)), _scalar(gb, x, 2.0))


def _leaky_relu(gb, node):
    return gb.op("leaky_relu", _floats(node), negative_slope=float(attr(node, "alpha", 0.01)))


def _elu(gb, node):
    return gb.op("elu", _floats(node), alpha=float(attr(node, "alpha", 1.0)))


def _selu(gb, node):
    """gamma * (x > 0 ? x : alpha (e^x - 1)) = gamma * elu(x, alpha)."""
    x = _floats(node)
    alpha = float(attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(attr(node, "gamma", 1.05070102214813232421875))
    return gb.mul(gb.op("elu", x, alpha=alpha), _scalar(gb, x, gamma))


def _celu(gb, node):
    """max(0, x) + min(0, alpha (e^(x/alpha) - 1)) = alpha * elu(x / alpha)."""
    x = _floats(node)
    alpha = float(attr(node, "alpha", 1.0))
    if alpha == 1.0:
        return gb.op("elu", x)
    a = _scalar(gb, x, alpha)
    return gb.mul(gb.op("elu", gb.div(x, a)), a)


def _hard_sigmoid_of(gb, x, alpha: float, beta: float) -> Value:
    """max(0, min(1, alpha x + beta))."""
    y = gb.add(gb.mul(x, _scalar(gb, x, alpha)), _scalar(gb, x, beta))
    return gb.op("clip", y, min=0.0, max=1.0)


def _hard_sigmoid(gb, node):
    x = _floats(node)
    return _hard_sigmoid_of(gb, x, float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5)))


def _hard_swish(gb, node):
    """x * HardSigmoid(x, alpha=1/6, beta=1/2)."""
    x = _floats(node)
    return gb.mul(x, _hard_sigmoid_of(gb, x, 1 / 6, 0.5))


def _softplus(gb, node):
    """log(1 + e^x); kiln's is linear above 20, where log1p(e^-20) is below an f32 ulp of x."""
    return gb.op("softplus", _floats(node))


def _softsign(gb, node):
    x = _floats(node)
    return gb.div(x, gb.add(_scalar(gb, x, 1.0), gb.op("abs", x)))


def _thresholded_relu(gb, node):
    x = _floats(node)
    alpha = _scalar(gb, x, float(attr(node, "alpha", 1.0)))
    return gb.op("where", gb.op("greater", x, alpha), x, _scalar(gb, x, 0.0))


def _gelu(gb, node):
    approximate = attr(node, "approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"attribute approximate={approximate!r} is not supported")
    return gb.op("gelu", _floats(node), approximate=approximate)


def _mish(gb, node):
    """x * tanh(softplus(x))."""
    x = _floats(node)
    return gb.mul(x, gb.op("tanh", gb.op("softplus", x)))


def _swish(gb, node):
    """x * sigmoid(alpha x)."""
    x = _floats(node)
    alpha = float(attr(node, "alpha", 1.0))
    scaled = x if alpha == 1.0 else gb.mul(x, _scalar(gb, x, alpha))
    return gb.mul(x, gb.op("sigmoid", scaled))


def _prelu(gb, node):
    """x < 0 ? slope * x : x, slope broadcasting to x."""
    x, slope = _x(node), need(node, 1, "slope")
    return gb.op("where", gb.op("less", x, _scalar(gb, x, 0)), gb.mul(slope, x), x)


def _shrink(gb, node):
    """x < -lambd ? x + bias : x > lambd ? x - bias : 0."""
    x = _x(node)
    lambd, bias = float(attr(node, "lambd", 0.5)), float(attr(node, "bias", 0.0))
    if dtype_of(x) in INT_TYPES and not (lambd.is_integer() and bias.is_integer()):
        raise Unsupported("Shrink of an integer tensor with a fractional lambd or bias")
    low = gb.op("less", x, _scalar(gb, x, -lambd))
    high = gb.op("greater", x, _scalar(gb, x, lambd))
    zero = _scalar(gb, x, 0)
    return gb.op("where", low, gb.add(x, _scalar(gb, x, bias)),
                 gb.op("where", high, gb.sub(x, _scalar(gb, x, bias)), zero))


def _is_nan(gb, node):
    x = _floats(node)
    return gb.op("not_equal", x, x)


def _is_inf(gb, node):
    x = _floats(node)
    negative = bool(attr(node, "detect_negative", 1))
    positive = bool(attr(node, "detect_positive", 1))
    if not (negative or positive):
        return gb.op("less", x, x)  # false everywhere, at NaN too
    parts = []
    if positive:
        parts.append(gb.op("equal", x, _scalar(gb, x, math.inf)))
    if negative:
        parts.append(gb.op("equal", x, _scalar(gb, x, -math.inf)))
    return parts[0] if len(parts) == 1 else gb.op("logical_or", *parts)


def _round(gb, node):
    return round_half_even(gb, _floats(node))


def round_half_even(gb: GraphBuilder, x: Value) -> Value:
    """Round half to even: floor(x), one up where the fraction is above 1/2, or is 1/2 and
    floor(x) is odd. x - floor(x) is exact in floating point, so the comparisons are too."""
    down = gb.op("floor", x)
    frac = gb.sub(x, down)
    half, one = _scalar(gb, x, 0.5), _scalar(gb, x, 1.0)
    odd = gb.op("equal", gb.op("mod", down, _scalar(gb, x, 2.0)), one)
    up = gb.op("logical_or", gb.op("greater", frac, half),
               gb.op("logical_and", gb.op("equal", frac, half), odd))
    return gb.op("where", up, gb.add(down, one), down)


for _op_type, _fn in {
    "Tan": _tan, "Sinh": _sinh_cosh(-1.0), "Cosh": _sinh_cosh(1.0), "Asinh": _asinh,
    "Acosh": _acosh, "Atanh": _atanh, "Asin": _asin, "Acos": _acos,
    "LeakyRelu": _leaky_relu, "Elu": _elu, "Selu": _selu,
    "Celu": _celu, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish,
    "Softplus": _softplus, "Softsign": _softsign, "ThresholdedRelu": _thresholded_relu,
    "Gelu": _gelu, "Mish": _mish, "Swish": _swish, "PRelu": _prelu, "Shrink": _shrink,
    "IsNaN": _is_nan, "IsInf": _is_inf, "Round": _round,
}.items():
    _register(_op_type, _fn)


# binary arithmetic ------------------------------------------------------------------------
def _operands(node: OnnxNode) -> tuple[Value, Value]:
    return need(node, 0, "A"), need(node, 1, "B")


_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "equal", "Less": "less",
    "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
    "And": "logical_and", "Or": "logical_or", "Xor": "not_equal",
}
for _op_type, _kiln in _BINARY.items():
    _register(_op_type, lambda gb, node, op=_kiln: gb.op(op, *_operands(node)))


def _trunc_div(gb: GraphBuilder, a: Value, b: Value) -> Value:
    """Integer a / b rounded toward zero (C's, ONNX's): |a| // |b| with the quotient's sign.
    A divisor 0 gives 0, as kiln's floor division does."""
    magnitude = gb.op("floor_div", gb.op("abs", a), gb.op("abs", b))
    negative = gb.op("not_equal", gb.op("less", a, _scalar(gb, a, 0)),
                     gb.op("less", b, _scalar(gb, b, 0)))
    return gb.op("where", negative, gb.neg(magnitude), magnitude)


def _div(gb, node):
    a, b = _operands(node)
    if dtype_of(a) in INT_TYPES:
        return _trunc_div(gb, a, b)
    return gb.div(a, b)


def _mod(gb, node):
    """fmod=0: the sign of the divisor (Python's %); fmod=1: of the dividend (C's fmod)."""
    a, b = _operands(node)
    if not attr(node, "fmod", 0):
        return gb.op("mod", a, b)
    if dtype_of(a) in INT_TYPES:
        return gb.sub(a, gb.mul(_trunc_div(gb, a, b), b))
    # fmod(a, b) = mod(a, b), less b where that changed the sign: exact (both are exact)
    r = gb.op("mod", a, b)
    zero = _scalar(gb, a, 0.0)
    fix = gb.op("logical_and", gb.op("not_equal", r, zero),
                gb.op("not_equal", gb.op("less", a, zero), gb.op("less", r, zero)))
    return gb.op("where", fix, gb.sub(r, b), r)


def _pow(gb, node):
    """X ** Y with the result in X's element type; a Y of another type is cast to X's (an
    integer X with a float Y goes through f32 and is truncated back, as the reference)."""
    x, y = _operands(node)
    if dtype_of(x) == dtype_of(y):
        return gb.op("pow", x, y)
    if dtype_of(x) in INT_TYPES and dtype_of(y) in FLOAT_TYPES:
        return gb.cast(gb.op("pow", gb.cast(x, "f32"), gb.cast(y, "f32")), dtype_of(x))
    return gb.op("pow", x, gb.cast(y, dtype_of(x)))


_register("Div", _div)
_register("Mod", _mod)
_register("Pow", _pow)


def _variadic(kiln: str, mean: bool = False):
    """Sum/Max/Min/Mean of any number of broadcasting inputs, folded left to right."""

    def convert(gb, node):
        values = [v for v in node.inputs if v is not None]
        if not values:
            raise Unsupported(f"{node.op_type} needs at least one input")
        out = values[0]
        for v in values[1:]:
            out = gb.op(kiln, out, v)
        if mean:
            require_dtype(out, FLOAT_TYPES, "Mean input")
            if len(values) > 1:
                out = gb.div(out, _scalar(gb, out, float(len(values))))
        return out

    return convert


_register("Sum", _variadic("add"))
_register("Max", _variadic("maximum"))
_register("Min", _variadic("minimum"))
_register("Mean", _variadic("add", mean=True))


def _where(gb, node):
    return gb.op("where", need(node, 0, "condition"), need(node, 1, "X"), need(node, 2, "Y"))


_register("Where", _where)


# Cast and Clip ----------------------------------------------------------------------------
def _cast_to(gb: GraphBuilder, x: Value, dtype: str) -> Value:
    return x if dtype_of(x) == dtype else gb.cast(x, dtype)


def _cast(gb, node):
    dtype = kiln_dtype(int(attr(node, "to")), "Cast's target")
    _float8_only(node)
    return _cast_to(gb, _x(node), dtype)


def _float8_only(node: OnnxNode) -> None:
    """Read saturate and round_mode: they concern float8 targets only, which kiln has not."""
    attr(node, "saturate")
    attr(node, "round_mode")


def _cast_like(gb, node):
    _float8_only(node)
    return _cast_to(gb, _x(node), dtype_of(need(node, 1, "target_type")))


_register("Cast", _cast)
_register("CastLike", _cast_like)


def _clip(gb, node):
    """Clip(x, min, max) = min(max(x, min), max): bounds are inputs from opset 11 (absent: no
    bound). Constant bounds are kiln's clip's attributes; with a bound known only at run time
    (PyTorch's `boxes.clamp(max=img.shape[-1])`, a size as a float) each bound is a maximum,
    then a minimum, NaN propagating as clip's."""
    x = _x(node)
    number = int if dtype_of(x) in INT_TYPES else float
    bounds: dict[str, float | int | Value] = {}
    for slot, name in ((1, "min"), (2, "max")):
        if arg(node, slot) is None and (slot >= len(node.consts) or node.consts[slot] is None):
            continue
        value = known(gb, node, slot)
        if value is not None:
            bounds[name] = number(value.reshape(()).item())
            continue
        bound = need(node, slot, f"Clip's {name}")
        if any(d != 1 for d in bound.type.shape):
            raise Unsupported(f"Clip's {name} (input {slot}) of type {bound.type}: not a scalar")
        bounds[name] = gb.reshape(bound, []) if bound.type.rank else bound
    if not any(isinstance(v, Value) for v in bounds.values()):
        return gb.op("clip", x, **bounds) if bounds else x
    for name, op in (("min", "maximum"), ("max", "minimum")):
        if name in bounds:
            bound = bounds[name]
            x = gb.op(op, x, bound) if isinstance(bound, Value) else gb.op("clip", x,
                                                                               **{name: bound})
    return x


_register("Clip", _clip)


# bit shifts on signed integers ------------------------------------------------------------
def _bit_shift(gb, node):
    """X << Y (X * 2^Y, wrapping) or X >> Y (X // 2^Y, rounding down: arithmetic on signed
    types, logical on unsigned ones). A shift out of range (Y negative or at least the bit
    width) gives 0, or -1 for a right shift of a negative X (ONNX BitShift)."""
    x, y = _operands(node)
    require_dtype(x, INT_TYPES, "BitShift input")
    dtype = dtype_of(x)
    width, signed = _bits_of(dtype)
    left = _direction(node) == "LEFT"
    # a signed right shift by width - 1 fills with the sign as the out-of-range ones do, and
    # 2^(width - 1) does not fit the signed type
    limit = width if left or not signed else width - 1
    in_range = gb.op("logical_and", gb.op("greater_equal", y, _scalar(gb, y, 0)),
                     gb.op("less", y, _scalar(gb, y, limit)))
    power = gb.op("pow", _scalar(gb, x, 2), gb.op("clip", y, min=0, max=limit - 1))
    if left:
        return gb.op("where", in_range, gb.mul(x, power), _scalar(gb, x, 0))
    fill = _scalar(gb, x, 0) if not signed else gb.op(
        "where", gb.op("less", x, _scalar(gb, x, 0)), _scalar(gb, x, -1), _scalar(gb, x, 0))
    return gb.op("where", in_range, gb.op("floor_div", x, power), fill)


def _bits_of(dtype: str) -> tuple[int, bool]:
    """An integer type's bit width and whether it is signed."""
    numpy_dtype = NUMPY_DTYPES[dtype]
    return numpy_dtype.itemsize * 8, numpy_dtype.kind == "i"


def _direction(node: OnnxNode) -> str:
    direction = attr(node, "direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise Unsupported(f"BitShift direction {direction!r}")
    return direction


def _bitwise_not(gb, node):
    """~x = -x - 1 in two's complement (at the minimum too: both wrap to the maximum)."""
    x = _x(node)
    if dtype_of(x) == "bool":
        return gb.op("logical_not", x)
    require_dtype(x, INT_TYPES, "BitwiseNot input")
    return gb.sub(gb.neg(x), _scalar(gb, x, 1))


def _bitwise(combine: Callable[[GraphBuilder, Value, Value], Value]):
    """BitwiseAnd/Or/Xor of integers bit by bit: bit k < width - 1 of x is
    floor(x / 2^k) mod 2 (two's complement: negative x too), the top bit x < 0 (of an
    unsigned x, floor(x / 2^k) mod 2 too); the result is the sum of the combined bits times
    2^k, a signed type's top one's weight -2^(width - 1)."""

    def convert(gb, node):
        x, y = _operands(node)
        require_dtype(x, INT_TYPES, f"{node.op_type} input")
        width, signed = _bits_of(dtype_of(x))
        low = np.array([2**k for k in range(width - 1 if signed else width)], np.int64)
        weights = np.append(low, np.int64(-(2 ** (width - 1)))) if signed else low

        def bits(v: Value) -> Value:  # [..., width] of 0 and 1, lowest first
            wide = gb.op("unsqueeze", v if dtype_of(v) == "i64" else gb.cast(v, "i64"),
                         axis=v.type.rank)
            lower = gb.op("mod", gb.op("floor_div", wide, gb.constant(low)),
                          gb.constant(np.array(2, np.int64)))
            if not signed:
                return lower
            sign = gb.cast(gb.op("less", wide, gb.constant(np.array(0, np.int64))), "i64")
            return gb.op("concat", [lower, sign], axis=v.type.rank)

        rank = max(x.type.rank, y.type.rank)
        both = combine(gb, bits(x), bits(y))
        total = gb.op("sum", gb.mul(both, gb.constant(weights)), axis=[rank], keepdims=False)
        return total if dtype_of(x) == "i64" else gb.cast(total, dtype_of(x))

    return convert


def _bits_or(gb: GraphBuilder, a: Value, b: Value) -> Value:
    return gb.sub(gb.add(a, b), gb.mul(a, b))


def _bits_xor(gb: GraphBuilder, a: Value, b: Value) -> Value:
    return gb.op("abs", gb.sub(a, b))


_register("BitShift", _bit_shift)
_register("BitwiseNot", _bitwise_not)
_register("BitwiseAnd", _bitwise(GraphBuilder.mul))
_register("BitwiseOr", _bitwise(_bits_or))
_register("BitwiseXor", _bitwise(_bits_xor))
