"""Elementwise ops: unary math and activations, binary arithmetic, comparisons, logic, where, cast.

Activations follow PyTorch's definitions (torch.nn.functional); `mod` and `floor_div` floor as
Python and PyTorch's `%` and `//` do.

One op is one declaration: `unary(...)` or `binary(...)` with its name, numpy reference, doc,
dtypes, ONNX emitter and `llvm`, its native lowering on one element (on compute values: half
floats in f32, bools as i1; a numeric attribute may be a Dim, hence kb.number). The helpers an
op needs sit just above its declaration, so adding an op touches one place in this file.
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
    broadcast_shapes,
    check_dtype,
    check_same_dtype,
    choice,
    dtype_attr,
    erf,
    number,
    tensors,
)
from ._emit import BF16_UP, attr_number, by_kind, cast, identity, one, onnx_op, trimmed, widened
from ._factories import binary, unary
from ._grad import (
    elementwise_vjp,
    float_only,
    is_float,
    like_scalar,
    masked,
    no_gradient,
    unbroadcast,
)
from .registry import REQUIRED, OpRecord, Prop, register


def _const(b, n, value):
    """A scalar constant of the node's (compute) dtype; value a number or an attribute's name."""
    if isinstance(value, str):
        value = number(n.attrs[value], value)
    return b.const(value, n.in_types[0].dtype)


# arithmetic of one tensor -----------------------------------------------------------------
register(unary("detach", lambda x: np.array(x, copy=True),
               "x itself, through which no gradient flows (PyTorch's x.detach(), JAX's "
               "stop_gradient).", dtypes=ALL_DTYPES, onnx=onnx_op("Identity"),
               llvm=lambda kb, a, x: x, vjp=no_gradient))
register(unary("neg", np.negative, "Negation, -x.", dtypes=NUMERIC, onnx=onnx_op("Neg"),
               llvm=lambda kb, a, x: kb.neg(x),
               vjp=float_only(lambda gb, node, cts: [gb.neg(cts[0])])))


def _abs_llvm(kb, _a, x):
    if kb.is_float(x):
        return kb.intrinsic("fabs", x)
    return kb.select(kb.compare("<", x, kb.lit(x, 0)), kb.neg(x), x)  # |MIN| wraps, as numpy


register(unary("abs", np.abs, "Absolute value |x|.", dtypes=NUMERIC, onnx=onnx_op("Abs"),
               llvm=_abs_llvm,  # sign(x): 0 at 0, as PyTorch
               vjp=elementwise_vjp(lambda gb, x, y: gb.op("sign", x))))


register(unary("exp", np.exp, "Exponential e^x.", onnx=onnx_op("Exp"),
               llvm=lambda kb, a, x: kb.exp(x), vjp=elementwise_vjp(lambda gb, x, y: y)))


def _ct_over(divisor):
    """The rule ct / divisor(gb, x, y) of a unary op."""
    return float_only(lambda gb, node, cts: [gb.div(cts[0], divisor(gb, *node.inputs,
                                                                    *node.outputs))])


register(unary("log", np.log, "Natural logarithm.", onnx=onnx_op("Log"),
               llvm=lambda kb, a, x: kb.log(x),
               vjp=_ct_over(lambda gb, x, y: x)))


register(unary("sqrt", np.sqrt, "Square root.", onnx=onnx_op("Sqrt"),
               llvm=lambda kb, a, x: kb.intrinsic("sqrt", x),  # ct / (2 sqrt(x)), as PyTorch
               vjp=_ct_over(lambda gb, x, y: gb.mul(y, like_scalar(gb, 2.0, y)))))


def _rsqrt_onnx(b, n):
    b.node("Reciprocal", [one(b, "Sqrt", n.inputs[0])], n.outputs)


register(unary("rsqrt", lambda x: 1 / np.sqrt(x), "Reciprocal square root 1/sqrt(x).",
               onnx=widened(_rsqrt_onnx),
               llvm=lambda kb, a, x: kb.fdiv(kb.lit(x, 1.0), kb.intrinsic("sqrt", x)),
               # -x^(-3/2) / 2 = -y^3 / 2
               vjp=elementwise_vjp(lambda gb, x, y: gb.mul(gb.mul(y, gb.mul(y, y)),
                                                           like_scalar(gb, -0.5, y)))))


register(unary("sin", np.sin, "Sine.", onnx=onnx_op("Sin"),
               llvm=lambda kb, a, x: kb.sin(x),
               vjp=elementwise_vjp(lambda gb, x, y: gb.op("cos", x))))


register(unary("cos", np.cos, "Cosine.", onnx=onnx_op("Cos"),
               llvm=lambda kb, a, x: kb.cos(x),
               vjp=elementwise_vjp(lambda gb, x, y: gb.neg(gb.op("sin", x)))))


# the gradient is ct / (1 + x^2)
register(unary("atan", np.arctan, "Arctangent, in (-pi/2, pi/2).", onnx=onnx_op("Atan"),
               llvm=lambda kb, a, x: kb.atan(x),
               vjp=_ct_over(lambda gb, x, y: gb.add(like_scalar(gb, 1.0, x), gb.mul(x, x)))))


def _one_minus(gb, v):
    return gb.sub(like_scalar(gb, 1.0, v), v)


register(unary("tanh", np.tanh, "Hyperbolic tangent.", onnx=onnx_op("Tanh"),
               llvm=lambda kb, a, x: kb.tanh(x),
               vjp=elementwise_vjp(lambda gb, x, y: _one_minus(gb, gb.mul(y, y)))))


# activations ------------------------------------------------------------------------------
def sigmoid(x):
    """1 / (1 + e^-x) without overflow: e^-|x| is never large."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


register(unary("sigmoid", sigmoid, "Logistic sigmoid 1/(1+e^-x).", onnx=onnx_op("Sigmoid"),
               llvm=lambda kb, a, x: kb.sigmoid(x),
               vjp=elementwise_vjp(lambda gb, x, y: gb.mul(y, _one_minus(gb, y)))))


def _relu_vjp(gb, node, cts):
    """ct where x > 0, else 0 (PyTorch's threshold_backward: none at 0)."""
    (x,) = node.inputs
    return [masked(gb, gb.op("greater", x, like_scalar(gb, 0.0, x)), cts[0])]


register(unary("relu", lambda x: np.maximum(x, 0), "max(x, 0).", dtypes=NUMERIC,
               onnx=onnx_op("Relu"), llvm=lambda kb, a, x: kb.maximum(x, kb.lit(x, 0)),
               vjp=float_only(_relu_vjp)))


def _positive_or(negative):
    """The rule of an op that is x for x > 0: ct there, else negative(gb, node, ct)."""

    def vjp(gb, node, cts):
        (ct,), (x,) = cts, node.inputs
        positive = gb.op("greater", x, like_scalar(gb, 0.0, x))
        return [gb.op("where", positive, ct, negative(gb, node, ct))]

    return float_only(vjp)


register(unary("leaky_relu", lambda x, negative_slope: np.where(x >= 0, x, x * negative_slope),
               "x where x >= 0, else negative_slope * x.", extra=(("negative_slope", 0.01),),
               onnx=onnx_op("LeakyRelu", alpha=attr_number("negative_slope")),
               llvm=lambda kb, a, x: kb.select(kb.compare(">=", x, kb.lit(x, 0)), x, kb.mul(
                   x, kb.number(a["negative_slope"], x))),
               # PyTorch: the slope at 0 too
               vjp=_positive_or(lambda gb, node, ct: gb.mul(
                   ct, like_scalar(gb, node.attrs["negative_slope"], ct)))))


register(unary("elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
               "x where x > 0, else alpha * (e^x - 1).", extra=(("alpha", 1.0),),
               onnx=onnx_op("Elu", alpha=attr_number("alpha")),
               llvm=lambda kb, a, x: kb.select(kb.compare(">", x, kb.lit(x, 0)), x, kb.mul(
                   kb.number(a["alpha"], x), kb.expm1(kb.minimum(x, kb.lit(x, 0))))),
               # alpha e^x = y + alpha below 0 (and at 0, as PyTorch)
               vjp=_positive_or(lambda gb, node, ct: gb.mul(ct, gb.add(
                   node.outputs[0], like_scalar(gb, node.attrs["alpha"], ct))))))


def gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _check_gelu(a):
    choice(a["approximate"], "approximate", ("none", "tanh"))


def _gelu_onnx(b, n):
    """Exact: x/2 (1 + erf(x/sqrt2)); tanh: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (ONNX's Gelu comes with opset 20)."""
    (x,) = n.inputs
    if n.attrs["approximate"] == "tanh":
        cube = one(b, "Mul", one(b, "Mul", x, x), x)
        inner = one(b, "Add", x, one(b, "Mul", _const(b, n, 0.044715), cube))
        phi = one(b, "Tanh", one(b, "Mul", _const(b, n, math.sqrt(2 / math.pi)), inner))
    else:
        phi = one(b, "Erf", one(b, "Div", x, _const(b, n, math.sqrt(2))))
    half_x = one(b, "Mul", x, _const(b, n, 0.5))
    b.node("Mul", [half_x, one(b, "Add", _const(b, n, 1.0), phi)], n.outputs)


def _gelu_llvm(kb, a, x):
    """x/2 (1 + erf(x/sqrt2)) as x/2 erfc(-x/sqrt2): the same function, without the
    cancellation of 1 + erf in f32 for negative x (the reference computes erf in f64)."""
    half_x = kb.mul(kb.lit(x, 0.5), x)
    if a["approximate"] == "tanh":
        inner = kb.add(x, kb.mul(kb.lit(x, 0.044715), kb.mul(kb.mul(x, x), x)))
        phi = kb.tanh(kb.mul(kb.lit(x, math.sqrt(2 / math.pi)), inner))
        return kb.mul(half_x, kb.add(kb.lit(x, 1.0), phi))
    return kb.mul(half_x, kb.erfc(kb.neg(kb.fdiv(x, kb.lit(x, math.sqrt(2))))))


def _gelu_derivative(gb, x, _y, approximate):
    """Phi(x) + x phi(x); for tanh, PyTorch's GeluBackward: with t = tanh(k (x + c x^3)),
    (1 + t) / 2 + x/2 (1 - t^2) k (1 + 3 c x^2)."""
    def c(v):
        return like_scalar(gb, v, x)

    square = gb.mul(x, x)
    if approximate == "tanh":
        k, kappa = math.sqrt(2 / math.pi), 0.044715
        t = gb.op("tanh", gb.mul(c(k), gb.add(x, gb.mul(c(kappa), gb.mul(square, x)))))
        left = gb.mul(c(0.5), gb.add(c(1.0), t))
        slope = gb.mul(c(k), gb.add(c(1.0), gb.mul(c(3 * kappa), square)))
        return gb.add(left, gb.mul(gb.mul(gb.mul(c(0.5), x), _one_minus(gb, gb.mul(t, t))),
                                   slope))
    cdf = gb.mul(c(0.5), gb.add(c(1.0), gb.op("erf", gb.mul(x, c(1 / math.sqrt(2))))))
    pdf = gb.mul(c(1 / math.sqrt(2 * math.pi)), gb.op("exp", gb.mul(square, c(-0.5))))
    return gb.add(cdf, gb.mul(x, pdf))


def _gelu_vjp(gb, node, cts):
    (x,), (y,) = node.inputs, node.outputs
    return [gb.mul(cts[0], _gelu_derivative(gb, x, y, node.attrs["approximate"]))]


register(unary("gelu", gelu, "Gaussian error linear unit x*Phi(x) (or its tanh approximation).",
               extra=(("approximate", "none"),), check=_check_gelu, onnx=widened(_gelu_onnx),
               llvm=_gelu_llvm, vjp=float_only(_gelu_vjp)))


def _silu_onnx(b, n):
    (x,) = n.inputs
    b.node("Mul", [x, one(b, "Sigmoid", x)], n.outputs)


def _silu_derivative(gb, x, _y):
    """s (1 + x (1 - s)), s = sigmoid(x)."""
    s = gb.op("sigmoid", x)
    return gb.mul(s, gb.add(like_scalar(gb, 1.0, x), gb.mul(x, _one_minus(gb, s))))


register(unary("silu", lambda x: x * sigmoid(x), "x * sigmoid(x) (swish).",
               onnx=widened(_silu_onnx), llvm=lambda kb, a, x: kb.mul(x, kb.sigmoid(x)),
               vjp=elementwise_vjp(_silu_derivative)))


def _softplus_onnx(b, n):
    """Softplus(beta x) / beta, and x itself where beta x > threshold (PyTorch)."""
    (x,) = n.inputs
    beta = _const(b, n, "beta")
    scaled = one(b, "Mul", x, beta)
    soft = one(b, "Div", one(b, "Softplus", scaled), beta)
    linear = one(b, "Greater", scaled, _const(b, n, "threshold"))
    b.node("Where", [linear, x, soft], n.outputs)


def _softplus_llvm(kb, a, x):
    """numpy's logaddexp(0, y) = max(y, 0) + log1p(e^-|y|), over beta; x above threshold."""
    y = kb.mul(x, kb.number(a["beta"], x))
    tail = kb.log1p(kb.exp(kb.neg(kb.intrinsic("fabs", y))))
    soft = kb.fdiv(kb.add(kb.maximum(y, kb.lit(y, 0.0)), tail), kb.number(a["beta"], x))
    return kb.select(kb.compare(">", y, kb.number(a["threshold"], x)), x, soft)


def _softplus_vjp(gb, node, cts):
    """ct where beta x > threshold, else ct sigmoid(beta x) (PyTorch's softplus_backward)."""
    (ct,), (x,) = cts, node.inputs
    scaled = gb.mul(x, like_scalar(gb, node.attrs["beta"], x))
    linear = gb.op("greater", scaled, like_scalar(gb, node.attrs["threshold"], x))
    return [gb.op("where", linear, ct, gb.mul(ct, gb.op("sigmoid", scaled)))]


register(unary("softplus", lambda x, beta, threshold: np.where(
    x * beta > threshold, x, np.logaddexp(0, x * beta) / beta),
    "log(1 + e^(beta x)) / beta, linear above threshold.",
    extra=(("beta", 1.0), ("threshold", 20.0)), onnx=widened(_softplus_onnx),
    llvm=_softplus_llvm, vjp=float_only(_softplus_vjp)))


register(unary("erf", erf, "The error function.", onnx=onnx_op("Erf"),
               llvm=lambda kb, a, x: kb.erf(x),  # 2/sqrt(pi) e^(-x^2)
               vjp=elementwise_vjp(lambda gb, x, y: gb.mul(
                   like_scalar(gb, 2 / math.sqrt(math.pi), x),
                   gb.op("exp", gb.neg(gb.mul(x, x)))))))


# rounding, sign and bounds ----------------------------------------------------------------
def _int_is_identity(fn):
    """floor/ceil leave integers as they are (numpy would go through float64)."""
    return lambda x: x if x.dtype.kind in "iub" else fn(x)


def _rounding(name):
    """floor or ceil: integers are left as they are."""
    return lambda kb, _a, x: kb.intrinsic(name, x) if kb.is_float(x) else x


# piecewise constant: no gradient flows back (PyTorch's is zero)
register(unary("floor", _int_is_identity(np.floor), "Round down.", dtypes=NUMERIC,
               onnx=by_kind(onnx_op("Floor"), int=identity), llvm=_rounding("floor"),
               vjp=no_gradient))


register(unary("ceil", _int_is_identity(np.ceil), "Round up.", dtypes=NUMERIC,
               onnx=by_kind(onnx_op("Ceil"), int=identity), llvm=_rounding("ceil"),
               vjp=no_gradient))


def _sign_llvm(kb, _a, x):
    """1, -1, 0 (never -0) or NaN, as numpy's sign."""
    zero = kb.lit(x, 0)
    rest = kb.select(kb.compare("==", x, zero), zero, x)
    return kb.select(kb.compare(">", x, zero), kb.lit(x, 1),
                     kb.select(kb.compare("<", x, zero), kb.lit(x, -1), rest))


register(unary("sign", np.sign, "-1, 0 or 1 by the sign of x.", dtypes=NUMERIC,
               onnx=onnx_op("Sign"), llvm=_sign_llvm, vjp=no_gradient))


register(unary("reciprocal", lambda x: 1 / x, "1 / x.", onnx=onnx_op("Reciprocal"),
               llvm=lambda kb, a, x: kb.fdiv(kb.lit(x, 1.0), x),  # -1/x^2 = -y^2
               vjp=elementwise_vjp(lambda gb, x, y: gb.neg(gb.mul(y, y)))))


def clip(x, min, max):
    lo = x if min is None else np.maximum(x, min)
    return lo if max is None else np.minimum(lo, max)


def _check_clip(a):
    if a["min"] is None and a["max"] is None:
        raise attr_error("min", "clip needs min or max")
    for bound in ("min", "max"):
        if a[bound] is not None:
            number(a[bound], bound)


def _clip_onnx(b, n):
    """Clip with absent bounds left out; bounds in x's dtype (an int x truncates them, as the
    reference's cast of its float result does)."""
    bounds = [None if n.attrs[k] is None else _const(b, n, k) for k in ("min", "max")]
    b.node("Clip", trimmed([n.inputs[0], *bounds]), n.outputs)


def _clip_llvm(kb, a, x):
    """max then min, NaN propagating; an integer x meets a float bound in f64 (numpy's
    promotion), and the result is truncated back to x's dtype."""
    if not kb.is_float(x) and any(isinstance(a[k], float) for k in ("min", "max")):
        x = kb.convert(x, "f64")
    if a["min"] is not None:
        x = kb.maximum(x, kb.number(a["min"], x))
    return x if a["max"] is None else kb.minimum(x, kb.number(a["max"], x))


def _clip_vjp(gb, node, cts):
    """ct where min <= x <= max, bounds included (PyTorch's clamp_backward), else 0."""
    (x,) = node.inputs
    inside = None
    for bound, op in (("min", "greater_equal"), ("max", "less_equal")):
        if node.attrs[bound] is not None:
            test = gb.op(op, x, like_scalar(gb, node.attrs[bound], x))
            inside = test if inside is None else gb.op("logical_and", inside, test)
    return [masked(gb, inside, cts[0])]


register(unary("clip", clip, "Clamp x into [min, max] (either bound may be None).",
               dtypes=NUMERIC, extra=(("min", None), ("max", None)), check=_check_clip,
               onnx=widened(_clip_onnx), llvm=_clip_llvm, vjp=float_only(_clip_vjp)))


def hard_sigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def _hard_sigmoid_llvm(kb, x):
    clipped = kb.minimum(kb.maximum(kb.add(x, kb.lit(x, 3)), kb.lit(x, 0)), kb.lit(x, 6))
    return kb.fdiv(clipped, kb.lit(x, 6))


def _between_threes(gb, x):
    """-3 < x < 3: where hard_sigmoid and hard_swish are not flat (PyTorch: the ends
    excluded)."""
    return gb.op("logical_and", gb.op("greater", x, like_scalar(gb, -3.0, x)),
                 gb.op("less", x, like_scalar(gb, 3.0, x)))


def _hard_sigmoid_vjp(gb, node, cts):
    """ct / 6 for -3 < x < 3, else 0."""
    (x,) = node.inputs
    return [masked(gb, _between_threes(gb, x), gb.div(cts[0], like_scalar(gb, 6.0, x)))]


def _hard_swish_vjp(gb, node, cts):
    """ct (x/3 + 1/2) for -3 < x < 3, ct for x >= 3, 0 for x <= -3 (as PyTorch 2.13)."""
    (ct,), (x,) = cts, node.inputs
    middle = gb.mul(ct, gb.add(gb.div(x, like_scalar(gb, 3.0, x)), like_scalar(gb, 0.5, x)))
    high = masked(gb, gb.op("greater_equal", x, like_scalar(gb, 3.0, x)), ct)
    return [gb.op("where", _between_threes(gb, x), middle, high)]


register(unary("hard_sigmoid", hard_sigmoid, "relu6(x + 3) / 6 (PyTorch hardsigmoid).",
               onnx=onnx_op("HardSigmoid", alpha=1 / 6, beta=0.5),
               llvm=lambda kb, a, x: _hard_sigmoid_llvm(kb, x), vjp=float_only(_hard_sigmoid_vjp)))


register(unary("hard_swish", lambda x: x * hard_sigmoid(x), "x * hard_sigmoid(x).",
               onnx=onnx_op("HardSwish"),
               llvm=lambda kb, a, x: kb.mul(x, _hard_sigmoid_llvm(kb, x)),
               vjp=float_only(_hard_swish_vjp)))


# logic and conversion ---------------------------------------------------------------------
def _logical_not_onnx(b, n):
    (x,) = n.inputs
    b.node("Not", [x if n.in_types[0].dtype == "bool" else cast(b, x, "bool")], n.outputs)


register(unary("logical_not", np.logical_not, "Elementwise not (nonzero is true).",
               dtypes=ALL_DTYPES, out_dtype="bool", onnx=_logical_not_onnx,
               llvm=lambda kb, a, x: kb.b.not_(kb.convert(x, "bool")), vjp=no_gradient))


def _cast_onnx(b, n):
    cast(b, n.inputs[0], n.out_types[0].dtype, n.outputs[0])


def _cast_vjp(gb, node, cts):
    """A float-to-float cast casts its cotangent back; to or from an integer, none flows."""
    (ct,), (x,) = cts, node.inputs
    return [gb.cast(ct, x.type.dtype) if is_float(x) and is_float(ct) else None]


register(unary("cast", lambda x, dtype: x, "Convert x to another element type.",
               dtypes=ALL_DTYPES, extra=(("dtype", REQUIRED),),
               out_dtype=lambda _d, a: dtype_attr(a["dtype"]),
               check=lambda a: dtype_attr(a["dtype"]), onnx=_cast_onnx,
               llvm=lambda kb, a, x: kb.convert(x, a["dtype"]), vjp=_cast_vjp))


# arithmetic of two tensors ----------------------------------------------------------------
def _binary_vjp(da, db):
    """The rule of a broadcasting binary op: the cotangent times each partial derivative
    (`da(gb, node, ct)`, `db(...)`, of the broadcast shape; None: no gradient), summed back to
    each operand's shape."""

    def vjp(gb, node, cts):
        (ct,), (a, b) = cts, node.inputs
        return [None if d is None else unbroadcast(gb, d(gb, node, ct), v.type)
                for d, v in ((da, a), (db, b))]

    return float_only(vjp)


def _cotangent(gb, node, ct):
    return ct


# on bools numpy's + and max are `or`, * and min are `and`
_COMMUTATIVE = frozenset({Prop.COMMUTATIVE})
register(binary("add", np.add, "a + b, broadcasting.", dtypes=ALL_DTYPES, props=_COMMUTATIVE,
                onnx=by_kind(onnx_op("Add"), bool=onnx_op("Or")),
                llvm=lambda kb, a, x, y: kb.add(x, y), vjp=_binary_vjp(_cotangent, _cotangent)))
register(binary("sub", np.subtract, "a - b, broadcasting.", onnx=onnx_op("Sub"),
                llvm=lambda kb, a, x, y: kb.sub(x, y),
                vjp=_binary_vjp(_cotangent, lambda gb, node, ct: gb.neg(ct))))
register(binary("mul", np.multiply, "a * b, broadcasting.", dtypes=ALL_DTYPES,
                props=_COMMUTATIVE,
                onnx=by_kind(onnx_op("Mul"), bool=onnx_op("And")),
                llvm=lambda kb, a, x, y: kb.mul(x, y),
                vjp=_binary_vjp(lambda gb, node, ct: gb.mul(ct, node.inputs[1]),
                                lambda gb, node, ct: gb.mul(ct, node.inputs[0]))))


def _true_div_dtype(dtype, _attrs):
    return dtype if dtype in FLOATS else "f32"


def _int_true_div_onnx(b, n):
    """Integers divide in f64 (exact operands), rounded once to f32 as the reference."""
    a, d = (cast(b, x, "f64") for x in n.inputs)
    cast(b, one(b, "Div", a, d), "f32", n.outputs[0])


def _div_llvm(kb, _attrs, a, b):
    if kb.is_float(a):
        return kb.fdiv(a, b)
    wide = [kb.convert(v, "f64") for v in (a, b)]  # numpy: int / int in f64, then f32
    return kb.convert(kb.fdiv(*wide), "f32")


register(binary("div", np.true_divide, "a / b, true division (integers give f32).",
                out_dtype=_true_div_dtype, onnx=by_kind(onnx_op("Div"), int=_int_true_div_onnx),
                llvm=_div_llvm,
                # d(a/b)/db = -a/b^2 = -(a/b)/b
                vjp=_binary_vjp(lambda gb, node, ct: gb.div(ct, node.inputs[1]),
                                lambda gb, node, ct: gb.neg(gb.div(gb.mul(ct, node.outputs[0]),
                                                                   node.inputs[1])))))


def _float_divmod(b, n):
    """numpy's divmod for floats (npy_divmod): fmod, then one step toward -inf where the
    remainder's sign differs from the divisor's; the quotient rounds (a - mod) / b to an integer.
    Returns (a - mod) / b corrected (before rounding), mod corrected, and the step mask."""
    a, d = n.inputs
    zero = _const(b, n, 0.0)
    fmod = one(b, "Mod", a, d, fmod=1)
    signs_differ = one(b, "Xor", one(b, "Less", d, zero), one(b, "Less", fmod, zero))
    step = one(b, "And", signs_differ, one(b, "Not", one(b, "Equal", fmod, zero)))
    quotient = one(b, "Div", one(b, "Sub", a, fmod), d)
    return quotient, fmod, step


def _float_mod_onnx(b, n):
    _, fmod, step = _float_divmod(b, n)
    b.node("Where", [step, one(b, "Add", fmod, n.inputs[1]), fmod], n.outputs)


def _float_floor_div_onnx(b, n):
    """floor of the corrected quotient, rounded to nearest as numpy; a / 0 where b is 0."""
    a, d = n.inputs
    quotient, _, step = _float_divmod(b, n)
    div = one(b, "Where", step, one(b, "Sub", quotient, _const(b, n, 1.0)), quotient)
    floor = one(b, "Floor", div)
    up = one(b, "Greater", one(b, "Sub", div, floor), _const(b, n, 0.5))
    rounded = one(b, "Where", up, one(b, "Add", floor, _const(b, n, 1.0)), floor)
    by_zero = one(b, "Equal", d, _const(b, n, 0.0))
    b.node("Where", [by_zero, one(b, "Div", a, d), rounded], n.outputs)


def _int_safe_divisor(b, n) -> tuple[str, str, str]:
    """(b == 0, b == -1, b with both replaced by 1): integer Div and Mod by 0, or of MIN by
    -1, trap (SIGFPE) or fail in a runtime; the results there are chosen after (numpy and
    native code: x // 0 and x % 0 are 0, MIN // -1 wraps to MIN, x % -1 is 0)."""
    d = n.inputs[1]
    by_zero, by_minus_one = (one(b, "Equal", d, _const(b, n, v)) for v in (0, -1))
    safe = one(b, "Where", one(b, "Or", by_zero, by_minus_one), _const(b, n, 1), d)
    return by_zero, by_minus_one, safe


def _int_floor_div_onnx(b, n):
    """(a - a mod b) / b: exact, and ONNX's integer Mod (fmod=0) floors as Python."""
    a = n.inputs[0]
    by_zero, by_minus_one, safe = _int_safe_divisor(b, n)
    quotient = one(b, "Div", one(b, "Sub", a, one(b, "Mod", a, safe, fmod=0)), safe)
    quotient = one(b, "Where", by_zero, _const(b, n, 0), quotient)
    b.node("Where", [by_minus_one, one(b, "Neg", a), quotient], n.outputs)


def _int_mod_onnx(b, n):
    """ONNX's integer Mod (fmod=0) floors as Python; x % 0 is Mod(x, 1), 0."""
    b.node("Mod", [n.inputs[0], _int_safe_divisor(b, n)[2]], n.outputs, fmod=0)


def _float_divmod_llvm(kb, a, b):
    """numpy's npy_divmod, step by step (numpy/_core/src/npymath/npy_math_internal.h.src):
    mod = fmod(a, b), moved one b toward -inf where its sign differs from b's (else a zero
    takes b's sign); the quotient (a - mod) / b, one less after that move, snapped to the
    nearest integer (a zero takes the sign of a / b). b == 0 gives a / b and fmod(a, b)."""
    with kb.strict():
        zero, one = kb.lit(a, 0.0), kb.lit(a, 1.0)
        fmod = kb.b.frem(a, b)
        nonzero = kb.compare("!=", fmod, zero)
        moved = kb.b.and_(nonzero, kb.b.xor(kb.compare("<", b, zero), kb.compare("<", fmod, zero)))
        mod = kb.select(moved, kb.fadd(fmod, b),
                        kb.select(nonzero, fmod, kb.intrinsic("copysign", zero, b)))
        div = kb.fdiv(kb.fsub(a, fmod), b)
        div = kb.select(moved, kb.fsub(div, one), div)
        floor = kb.intrinsic("floor", div)
        floor = kb.select(kb.compare(">", kb.fsub(div, floor), kb.lit(a, 0.5)),
                          kb.fadd(floor, one), floor)
        quotient = kb.fdiv(a, b)
        floor = kb.select(kb.compare("!=", div, zero), floor,
                          kb.intrinsic("copysign", zero, quotient))
        by_zero = kb.compare("==", b, zero)
        return kb.select(by_zero, quotient, floor), kb.select(by_zero, fmod, mod)


def _int_divmod_llvm(kb, a, b):
    """Python's floor division and modulo. As numpy: x // 0 and x % 0 are 0, MIN // -1 wraps
    to MIN. LLVM's sdiv by 0 (or of MIN by -1) is undefined (x86 traps): divide by 1 there."""
    zero, one, minus_one = (kb.lit(a, v) for v in (0, 1, -1))
    by_zero, by_minus_one = kb.compare("==", b, zero), kb.compare("==", b, minus_one)
    safe = kb.select(kb.b.or_(by_zero, by_minus_one), one, b)
    q, r = kb.b.sdiv(a, safe), kb.b.srem(a, safe)
    moved = kb.b.and_(kb.compare("!=", r, zero),
                      kb.b.xor(kb.compare("<", r, zero), kb.compare("<", b, zero)))
    q = kb.select(moved, kb.sub(q, one), q)
    q = kb.select(by_minus_one, kb.neg(a), kb.select(by_zero, zero, q))
    return q, kb.select(moved, kb.add(r, b), r)


def _divmod_llvm(part):
    """floor_div (part 0) or mod (part 1)."""

    def lower(kb, _attrs, x, y):
        return (_float_divmod_llvm if kb.is_float(x) else _int_divmod_llvm)(kb, x, y)[part]

    return lower


register(binary("floor_div", np.floor_divide, "a // b, rounding toward -inf.",
                onnx=by_kind(widened(_float_floor_div_onnx), int=_int_floor_div_onnx),
                llvm=_divmod_llvm(0)))
# floor_div has no gradient rule, as PyTorch's floor_divide has none: a gradient through it
# is an error (K0801). a % b = a - b floor(a / b): ct, and -ct floor(a / b) (PyTorch)
register(binary("mod", np.mod, "a % b with the sign of b (Python's floor modulo).",
                onnx=by_kind(widened(_float_mod_onnx), int=_int_mod_onnx),
                llvm=_divmod_llvm(1),
                vjp=_binary_vjp(_cotangent, lambda gb, node, ct: gb.neg(gb.mul(
                    ct, gb.op("floor_div", *node.inputs))))))


# numpy and torch refuse an integer to a negative integer power; so does every target (K0505)
_NEGATIVE_POWER = "pow: an integer to a negative integer power (2 ** -1 has no integer value)"


def _pow_llvm(kb, _a, x, y):
    """C's pow on floats (mathlib's vectorisable form in f32); integers by repeated squaring
    (wrapping, as numpy). A negative integer exponent is reported (K0505); the kernel goes on
    with the truncated 1 / x^-y."""
    if kb.is_float(x):
        return kb.pow(x, y)
    one = kb.lit(x, 1)
    kb.check(kb.compare(">=", y, kb.lit(y, 0)), _NEGATIVE_POWER)

    def square(state, _bit):
        result, base, e = state
        odd = kb.convert(kb.b.and_(e, one), "bool")
        return kb.select(odd, kb.mul(result, base), result), kb.mul(base, base), kb.b.ashr(e, one)

    bits = kb.const(x.type.width - 1, "i64")  # the exponent's bits below the sign
    power, _, _ = kb.accumulate(kb.const(0, "i64"), bits, (one, x, y), square)
    unit = kb.b.or_(kb.compare("==", x, one), kb.compare("==", x, kb.lit(x, -1)))
    negative = kb.compare("<", y, kb.lit(y, 0))
    return kb.select(negative, kb.select(unit, power, kb.lit(x, 0)), power)


def _pow_onnx(b, n) -> None:
    """Pow, with a negative integer exponent reported (K0505) as on the other targets."""
    if not n.in_types[1].dtype.startswith("u"):
        zero = b.const(np.asarray(0), n.in_types[1].dtype)
        b.check(one(b, "GreaterOrEqual", n.inputs[1], zero), _NEGATIVE_POWER)
    b.node("Pow", n.inputs, n.outputs)


def _pow_base(gb, node, ct):
    """ct b a^(b-1), and 0 where b == 0 (PyTorch's pow_backward_self: no 0 * inf there)."""
    a, b = node.inputs
    zero = like_scalar(gb, 0.0, b)
    power = gb.op("pow", a, gb.sub(b, like_scalar(gb, 1.0, b)))
    return masked(gb, gb.op("not_equal", b, zero), gb.mul(ct, gb.mul(b, power)))


def _pow_exponent(gb, node, ct):
    """ct a^b log(a), and 0 where a == 0 and b >= 0 (PyTorch's pow_backward_exponent)."""
    a, b = node.inputs
    zero = like_scalar(gb, 0.0, a)
    at_zero = gb.op("logical_and", gb.op("equal", a, zero),
                    gb.op("greater_equal", b, like_scalar(gb, 0.0, b)))
    grad = gb.mul(ct, gb.mul(node.outputs[0], gb.op("log", a)))
    return gb.op("where", at_zero, like_scalar(gb, 0.0, grad), grad)


register(binary("pow", np.power, "a ** b.", onnx=by_kind(onnx_op("Pow"), int=_pow_onnx),
                llvm=_pow_llvm, vjp=_binary_vjp(_pow_base, _pow_exponent)))


def _extreme_side(wins: str, mine: int):
    """The cotangent of operand `mine` of maximum (`wins` = "greater") or minimum ("less"):
    all of it where that operand wins, half where the two tie (PyTorch)."""

    def grad(gb, node, ct):
        a, b = node.inputs if mine == 0 else node.inputs[::-1]
        half = gb.mul(ct, like_scalar(gb, 0.5, ct))
        return gb.op("where", gb.op("equal", a, b), half, masked(gb, gb.op(wins, a, b), ct))

    return grad


register(binary("maximum", np.maximum, "Elementwise max (NaN propagates).", dtypes=ALL_DTYPES,
                onnx=by_kind(onnx_op("Max"), bool=onnx_op("Or")),
                llvm=lambda kb, a, x, y: kb.maximum(x, y),
                vjp=_binary_vjp(_extreme_side("greater", 0), _extreme_side("greater", 1))))
register(binary("minimum", np.minimum, "Elementwise min (NaN propagates).", dtypes=ALL_DTYPES,
                onnx=by_kind(onnx_op("Min"), bool=onnx_op("And")),
                llvm=lambda kb, a, x, y: kb.minimum(x, y),
                vjp=_binary_vjp(_extreme_side("less", 0), _extreme_side("less", 1))))


# comparisons and logic of two tensors -----------------------------------------------------
def _compare(op_type: str, negate: bool = False):
    """A comparison; bool and bf16 operands, which onnxruntime cannot compare, go through i32
    and f32 (exactly)."""
    up = {"bool": "i32", "bf16": "f32"}

    def emit(b, n):
        ins = [cast(b, x, up[t.dtype]) if t.dtype in up else x
               for x, t in zip(n.inputs, n.in_types, strict=True)]
        if negate:
            b.node("Not", [one(b, op_type, *ins)], n.outputs)
        else:
            b.node(op_type, ins, n.outputs)

    return emit


def _compare_llvm(op):
    return lambda kb, _a, x, y: kb.compare(op, x, y)


register(binary("equal", np.equal, "a == b.", dtypes=ALL_DTYPES, out_dtype="bool",
                onnx=_compare("Equal"), llvm=_compare_llvm("=="), vjp=no_gradient))
register(binary("not_equal", np.not_equal, "a != b.", dtypes=ALL_DTYPES, out_dtype="bool",
                onnx=_compare("Equal", negate=True), llvm=_compare_llvm("!="),
                vjp=no_gradient))
register(binary("less", np.less, "a < b.", dtypes=ALL_DTYPES, out_dtype="bool",
                onnx=_compare("Less"), llvm=_compare_llvm("<"), vjp=no_gradient))
register(binary("greater", np.greater, "a > b.", dtypes=ALL_DTYPES, out_dtype="bool",
                onnx=_compare("Greater"), llvm=_compare_llvm(">"), vjp=no_gradient))
register(binary("less_equal", np.less_equal, "a <= b.", dtypes=ALL_DTYPES, out_dtype="bool",
                onnx=_compare("LessOrEqual"), llvm=_compare_llvm("<="),
                vjp=no_gradient))
register(binary("greater_equal", np.greater_equal, "a >= b.", dtypes=ALL_DTYPES,
                out_dtype="bool", onnx=_compare("GreaterOrEqual"), llvm=_compare_llvm(">="),
                vjp=no_gradient))
register(binary("logical_and", np.logical_and, "Elementwise and of bools.", dtypes=BOOL,
                onnx=onnx_op("And"), llvm=lambda kb, a, x, y: kb.b.and_(x, y),
                vjp=no_gradient))
register(binary("logical_or", np.logical_or, "Elementwise or of bools.", dtypes=BOOL,
                onnx=onnx_op("Or"), llvm=lambda kb, a, x, y: kb.b.or_(x, y),
                vjp=no_gradient))


# selection --------------------------------------------------------------------------------
def _where_infer(types, _attrs):
    cond, a, b = types
    check_dtype(cond, BOOL, "cond")
    dtype = check_same_dtype([a, b], ["a", "b"])
    return [TensorType(dtype, broadcast_shapes(cond.shape, a.shape, b.shape, args=("b",)))]


def _where_reference(env, inputs, _attrs):
    cond, a, b = inputs
    return [np.where(cond, a, b).astype(a.dtype, copy=False)]


def _where_vjp(gb, node, cts):
    """The cotangent goes to a where cond holds, to b elsewhere; cond takes none."""
    (ct,), (cond, a, b) = cts, node.inputs
    if not is_float(a):
        return [None, None, None]
    zero = like_scalar(gb, 0.0, ct)
    return [None, unbroadcast(gb, gb.op("where", cond, ct, zero), a.type),
            unbroadcast(gb, gb.op("where", cond, zero, ct), b.type)]


# a and b meet at one dtype; cond stays bool
# onnxruntime's Where has no bool or bf16 kernel: a and b go through i32 or f32 (exactly)
register(OpRecord("where", tensors("cond", "a", "b") + attrs(), _where_infer, _where_reference,
                  "a where cond is true, else b, broadcasting all three.", promote=("a", "b"),
                  props=frozenset({Prop.ELEMENTWISE}),
                  onnx=widened(onnx_op("Where", {}), {**BF16_UP, "bool": "i32"}, inputs=(1, 2)),
                  llvm=lambda kb, n: kb.elementwise(n, lambda kb_, c, a, b: kb_.select(c, a, b)),
                  scalar=lambda kb, _attrs, c, a, b: kb.select(c, a, b), vjp=_where_vjp))
