"""Elementwise ops: unary math and activations, binary arithmetic, comparisons, logic, where, cast.

Activations follow PyTorch's definitions (torch.nn.functional); `mod` and `floor_div` floor as
Python and PyTorch's `%` and `//` do.
"""

from __future__ import annotations

import math

import numpy as np

from ..types import TensorType
from ._common import (
    ALL_DTYPES,
    BOOL,
    FLOATS,
    NUMERIC,
    attr_error,
    attrs,
    binary,
    broadcast_shapes,
    check_dtype,
    check_same_dtype,
    choice,
    dtype_attr,
    erf,
    tensors,
    unary,
)
from .registry import REQUIRED, OpRecord, register


def sigmoid(x):
    """1 / (1 + e^-x) without overflow: e^-|x| is never large."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def hard_sigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def clip(x, min, max):
    lo = x if min is None else np.maximum(x, min)
    return lo if max is None else np.minimum(lo, max)


def _check_gelu(a):
    choice(a["approximate"], "approximate", ("none", "tanh"))


def _check_clip(a):
    if a["min"] is None and a["max"] is None:
        raise attr_error("min", "clip needs min or max")


def _int_is_identity(fn):
    """floor/ceil leave integers as they are (numpy would go through float64)."""
    return lambda x: x if x.dtype.kind in "iub" else fn(x)


def _true_div_dtype(dtype, _attrs):
    return dtype if dtype in FLOATS else "f32"


register(unary("neg", np.negative, "Negation, -x.", dtypes=NUMERIC))
register(unary("abs", np.abs, "Absolute value |x|.", dtypes=NUMERIC))
register(unary("exp", np.exp, "Exponential e^x."))
register(unary("log", np.log, "Natural logarithm."))
register(unary("sqrt", np.sqrt, "Square root."))
register(unary("rsqrt", lambda x: 1 / np.sqrt(x), "Reciprocal square root 1/sqrt(x)."))
register(unary("sin", np.sin, "Sine."))
register(unary("cos", np.cos, "Cosine."))
register(unary("tanh", np.tanh, "Hyperbolic tangent."))
register(unary("sigmoid", sigmoid, "Logistic sigmoid 1/(1+e^-x)."))
register(unary("relu", lambda x: np.maximum(x, 0), "max(x, 0).", dtypes=NUMERIC))
register(unary("leaky_relu", lambda x, negative_slope: np.where(x >= 0, x, x * negative_slope),
               "x where x >= 0, else negative_slope * x.", extra=(("negative_slope", 0.01),)))
register(unary("elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
               "x where x > 0, else alpha * (e^x - 1).", extra=(("alpha", 1.0),)))
register(unary("gelu", gelu, "Gaussian error linear unit x*Phi(x) (or its tanh approximation).",
               extra=(("approximate", "none"),), check=_check_gelu))
register(unary("silu", lambda x: x * sigmoid(x), "x * sigmoid(x) (swish)."))
register(unary("softplus", lambda x, beta, threshold: np.where(
    x * beta > threshold, x, np.logaddexp(0, x * beta) / beta),
    "log(1 + e^(beta x)) / beta, linear above threshold.",
    extra=(("beta", 1.0), ("threshold", 20.0))))
register(unary("erf", erf, "The error function."))
register(unary("floor", _int_is_identity(np.floor), "Round down.", dtypes=NUMERIC))
register(unary("ceil", _int_is_identity(np.ceil), "Round up.", dtypes=NUMERIC))
register(unary("sign", np.sign, "-1, 0 or 1 by the sign of x.", dtypes=NUMERIC))
register(unary("reciprocal", lambda x: 1 / x, "1 / x."))
register(unary("clip", clip, "Clamp x into [min, max] (either bound may be None).",
               dtypes=NUMERIC, extra=(("min", None), ("max", None)), check=_check_clip))
register(unary("hard_sigmoid", hard_sigmoid, "relu6(x + 3) / 6 (PyTorch hardsigmoid)."))
register(unary("hard_swish", lambda x: x * hard_sigmoid(x), "x * hard_sigmoid(x)."))
register(unary("logical_not", np.logical_not, "Elementwise not (nonzero is true).",
               dtypes=ALL_DTYPES, out_dtype="bool"))
register(unary("cast", lambda x, dtype: x, "Convert x to another element type.",
               dtypes=ALL_DTYPES, extra=(("dtype", REQUIRED),),
               out_dtype=lambda _d, a: dtype_attr(a["dtype"]), check=lambda a: dtype_attr(a["dtype"])))

register(binary("add", np.add, "a + b, broadcasting.", dtypes=ALL_DTYPES))
register(binary("sub", np.subtract, "a - b, broadcasting."))
register(binary("mul", np.multiply, "a * b, broadcasting.", dtypes=ALL_DTYPES))
register(binary("div", np.true_divide, "a / b, true division (integers give f32).",
                out_dtype=_true_div_dtype))
register(binary("floor_div", np.floor_divide, "a // b, rounding toward -inf."))
register(binary("mod", np.mod, "a % b with the sign of b (Python's floor modulo)."))
register(binary("pow", np.power, "a ** b."))
register(binary("maximum", np.maximum, "Elementwise max (NaN propagates).", dtypes=ALL_DTYPES))
register(binary("minimum", np.minimum, "Elementwise min (NaN propagates).", dtypes=ALL_DTYPES))
register(binary("equal", np.equal, "a == b.", dtypes=ALL_DTYPES, out_dtype="bool"))
register(binary("not_equal", np.not_equal, "a != b.", dtypes=ALL_DTYPES, out_dtype="bool"))
register(binary("less", np.less, "a < b.", dtypes=ALL_DTYPES, out_dtype="bool"))
register(binary("greater", np.greater, "a > b.", dtypes=ALL_DTYPES, out_dtype="bool"))
register(binary("less_equal", np.less_equal, "a <= b.", dtypes=ALL_DTYPES, out_dtype="bool"))
register(binary("greater_equal", np.greater_equal, "a >= b.", dtypes=ALL_DTYPES,
                out_dtype="bool"))
register(binary("logical_and", np.logical_and, "Elementwise and of bools.", dtypes=BOOL))
register(binary("logical_or", np.logical_or, "Elementwise or of bools.", dtypes=BOOL))


def _where_infer(types, _attrs):
    cond, a, b = types
    check_dtype(cond, BOOL, "cond")
    dtype = check_same_dtype([a, b], ["a", "b"])
    return [TensorType(dtype, broadcast_shapes(cond.shape, a.shape, b.shape, args=("b",)))]


def _where_reference(env, inputs, _attrs):
    cond, a, b = inputs
    return [np.where(cond, a, b).astype(a.dtype, copy=False)]


# a and b meet at one dtype; cond stays bool
register(OpRecord("where", tensors("cond", "a", "b") + attrs(), _where_infer, _where_reference,
                  "a where cond is true, else b, broadcasting all three.", promote=("a", "b"),
                  elementwise=True))
