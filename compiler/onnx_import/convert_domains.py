"""Converters of ops outside the standard domain that kiln computes: the optimizer steps of
ai.onnx.preview.training (Adagrad, Adam, Momentum: elementwise updates of each tensor they
are given) and the simplest of ai.onnx.ml (Binarizer, ArrayFeatureExtractor). Each follows
ONNX's reference (onnx/reference/ops/aionnx_preview_training, aionnxml).
"""

from __future__ import annotations

import functools

from ..builder import GraphBuilder
from ..ir import Value
from .convert_base import (
    FLOAT_TYPES,
    INT_TYPES,
    OnnxNode,
    Unsupported,
    attr,
    choose,
    const_like,
    converter_table,
    need,
    require_dtype,
)

TRAINING, training = converter_table()
ML, ml = converter_table()


def _groups(node: OnnxNode, per_tensor: int) -> list[list[Value]]:
    """The optimised tensors' inputs after R and T: `per_tensor` lists of n each (X..., G...,
    then the states), regrouped per tensor."""
    rest = node.inputs[2:]
    if any(v is None for v in rest) or not rest or len(rest) % per_tensor:
        raise Unsupported(f"{node.op_type} takes R, T and {per_tensor} inputs per tensor")
    n = len(rest) // per_tensor
    for v in rest:
        require_dtype(v, FLOAT_TYPES, f"{node.op_type}'s tensors")
    return [[rest[k * n + i] for k in range(per_tensor)] for i in range(n)]


def _scalars(gb: GraphBuilder, node: OnnxNode, like: Value) -> tuple[Value, Value]:
    """R (the learning rate) and T (the step count) in `like`'s element type."""
    r, t = need(node, 0, "R"), need(node, 1, "T")
    require_dtype(r, FLOAT_TYPES, "R")
    require_dtype(t, INT_TYPES, "T")
    return tuple(v if v.type.dtype == like.type.dtype else gb.cast(v, like.type.dtype)
                 for v in (r, t))


def _regularized(gb: GraphBuilder, x: Value, g: Value, norm: float) -> Value:
    """norm_coefficient * x + g."""
    return gb.add(gb.mul(const_like(gb, norm, x.type.dtype), x), g)


@training("Adagrad")
def _adagrad(gb, node):
    """r' = R / (1 + T decay); g' = norm x + g; h' = h + g'^2; x' = x - r' g' / (sqrt(h') + eps):
    outputs X'..., H'...."""
    decay, eps = float(attr(node, "decay_factor", 0.0)), float(attr(node, "epsilon", 0.0))
    norm = float(attr(node, "norm_coefficient", 0.0))
    xs, hs = [], []
    for x, g, h in _groups(node, 3):
        c = functools.partial(const_like, gb, dtype=x.type.dtype)
        r, t = _scalars(gb, node, x)
        rate = gb.div(r, gb.add(c(1.0), gb.mul(t, c(decay))))
        grad = _regularized(gb, x, g, norm)
        h2 = gb.add(h, gb.mul(grad, grad))
        xs.append(gb.sub(x, gb.div(gb.mul(rate, grad), gb.add(gb.op("sqrt", h2), c(eps)))))
        hs.append(h2)
    return xs + hs


@training("Adam")
def _adam(gb, node):
    """g' = norm x + g; v' = a v + (1 - a) g'; h' = b h + (1 - b) g'^2; r' = R sqrt(1 - b^T) /
    (1 - a^T) from T > 0 (R at T = 0); x' = (1 - norm_post)(x - r' v' / (sqrt(h') + eps)):
    outputs X'..., V'..., H'...."""
    alpha, beta = float(attr(node, "alpha", 0.9)), float(attr(node, "beta", 0.999))
    eps, norm = float(attr(node, "epsilon", 0.0)), float(attr(node, "norm_coefficient", 0.0))
    post = float(attr(node, "norm_coefficient_post", 0.0))
    outs: list[list[Value]] = [[], [], []]
    for x, g, v, h in _groups(node, 4):
        c = functools.partial(const_like, gb, dtype=x.type.dtype)
        r, t = _scalars(gb, node, x)
        grad = _regularized(gb, x, g, norm)
        v2 = gb.add(gb.mul(c(alpha), v), gb.mul(c(1 - alpha), grad))
        h2 = gb.add(gb.mul(c(beta), h), gb.mul(c(1 - beta), gb.mul(grad, grad)))
        corrected = gb.div(gb.mul(r, gb.op("sqrt", gb.sub(c(1.0), gb.op("pow", c(beta), t)))),
                           gb.sub(c(1.0), gb.op("pow", c(alpha), t)))
        rate = gb.op("where", gb.op("greater", t, c(0.0)), corrected, r)
        step = gb.sub(x, gb.mul(rate, gb.div(v2, gb.add(gb.op("sqrt", h2), c(eps)))))
        for out, value in zip(outs, (gb.mul(c(1 - post), step), v2, h2), strict=True):
            out.append(value)
    return outs[0] + outs[1] + outs[2]


@training("Momentum")
def _momentum(gb, node):
    """g' = norm x + g; v' = a v + b' g' (b' = beta from T > 0, 1 at T = 0); x' = x - R v'
    (standard) or x - R (g' + a v') (nesterov): outputs X'..., V'...."""
    alpha, beta = float(attr(node, "alpha")), float(attr(node, "beta"))
    norm = float(attr(node, "norm_coefficient"))
    mode = choose(node, "mode", "standard", ("standard", "nesterov"))
    xs, vs = [], []
    for x, g, v in _groups(node, 3):
        c = functools.partial(const_like, gb, dtype=x.type.dtype)
        r, t = _scalars(gb, node, x)
        grad = _regularized(gb, x, g, norm)
        weight = gb.op("where", gb.op("greater", t, c(0.0)), c(beta), c(1.0))
        v2 = gb.add(gb.mul(c(alpha), v), gb.mul(weight, grad))
        direction = v2 if mode == "standard" else gb.add(grad, gb.mul(c(alpha), v2))
        xs.append(gb.sub(x, gb.mul(r, direction)))
        vs.append(v2)
    return xs + vs


@ml("Binarizer")
def _binarizer(gb, node):
    """1 where x > threshold, else 0, in x's element type."""
    x = need(node, 0, "X")
    require_dtype(x, FLOAT_TYPES + INT_TYPES, "Binarizer input")
    above = gb.op("greater", x, const_like(gb, float(attr(node, "threshold", 0.0)),
                                           x.type.dtype))
    return [gb.cast(above, x.type.dtype)]


@ml("ArrayFeatureExtractor")
def _array_feature_extractor(gb, node):
    """X's last axis at the indices Y (flattened): [..., len(Y)], a vector X as one row."""
    x, y = need(node, 0, "X"), need(node, 1, "Y")
    require_dtype(y, INT_TYPES, "ArrayFeatureExtractor's Y")
    count = functools.reduce(lambda a, b: a * b, y.type.shape, 1)
    index = gb.reshape(y, [count])
    taken = gb.op("gather", x, index, axis=x.type.rank - 1)
    return [taken if x.type.rank > 1 else gb.reshape(taken, [1, count])]


DOMAINS = {"ai.onnx.preview.training": TRAINING, "ai.onnx.ml": ML}
