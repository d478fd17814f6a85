"""BatchNorm folding: an inference-mode batch_norm after a convolution (or a transposed one) or
a Linear becomes part of that layer's weight and bias.

batch_norm(y) = (y - mean) * s + beta with s = gamma / sqrt(var + eps), per channel. When
y = conv(x, W) + b, that is conv(x, W * s) + (b - mean) * s + beta (each output channel's
filter scaled by its s); when y = x @ W + b with W: [K, C], it is x @ (W * s) + (b - mean) * s
+ beta. The folded weight and bias are new `constant` nodes computed in float64 and rounded
once to the weight's dtype, so every backend handles them; the parameters themselves are
untouched (the old ones drop out of the graph when nothing else reads them).
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Value
from ..ops._common import number, to_int
from .edit import (
    add_checked,
    add_constant,
    constant_value,
    only_user,
    remove_unused,
    replace_node,
)
from .manager import PassContext, graph_pass


def _scale_shift(graph: Graph, nid: int, params: dict) -> tuple | None:
    """(s, mean, beta) of a batch_norm whose statistics and affine are compile-time values."""
    _x, mean, var, gamma, beta = graph.operands(nid)
    values = [None if v is None else constant_value(graph, v, params)
              for v in (mean, var, gamma, beta)]
    if any(val is None for val, v in zip(values, (mean, var, gamma, beta)) if v is not None):
        return None
    mean_, var_, gamma_, beta_ = (None if val is None else val.astype(np.float64)
                                  for val in values)
    eps = float(number(graph.node(nid)["attrs"]["eps"], "eps"))
    s = (1.0 if gamma_ is None else gamma_) / np.sqrt(var_ + eps)
    return s, mean_, 0.0 if beta_ is None else beta_


def _folded_bias(bias: np.ndarray | None, s, mean, beta, dtype) -> np.ndarray:
    b = 0.0 if bias is None else bias.astype(np.float64).reshape(-1)
    return ((b - mean) * s + beta).astype(dtype)


def _weight_and_bias(graph: Graph, w: Value, b: Value | None, params) -> tuple | None:
    """A layer's weight and bias (None when it has none) as arrays, if both are known now."""
    weight = constant_value(graph, w, params)
    bias = None if b is None else constant_value(graph, b, params)
    return None if weight is None or (b is not None and bias is None) else (weight, bias)


def _fold_into_conv(graph: Graph, conv: int, s, mean, beta, params, bn: dict) -> list | None:
    x, w, b = graph.operands(conv)
    known = _weight_and_bias(graph, w, b, params)
    if known is None:
        return None
    weight, bias = known
    node = graph.node(conv)
    scaled = _scaled_weight(node["op"], weight.astype(np.float64), s,
                            to_int(node["attrs"]["groups"], "groups"))
    new_w = add_constant(graph, scaled.astype(weight.dtype), bn)
    new_b = add_constant(graph, _folded_bias(bias, s, mean, beta, weight.dtype), bn)
    return _or_undo(graph, add_checked(graph, node["op"], [x, new_w, new_b], node["attrs"],
                                       node["types"], bn), [new_w, new_b])


def _scaled_weight(op: str, weight: np.ndarray, s: np.ndarray, groups: int) -> np.ndarray:
    """The weight with each output channel's filter times s[channel] (PyTorch's layouts:
    conv [C_out, C_in/g, *k], conv_transpose [C_in, C_out/g, *k], channels group-major)."""
    ones = (1,) * (weight.ndim - 2)
    if op == "conv":
        return weight * s.reshape(-1, 1, *ones)
    grouped = weight.reshape(groups, -1, *weight.shape[1:])
    return (grouped * s.reshape(groups, 1, -1, *ones)).reshape(weight.shape)


def _or_undo(graph: Graph, new: list[Value] | None, made: list[Value]) -> list[Value] | None:
    """`new`, or (when the rewrite did not type-check) None with the nodes `made` removed."""
    if new is None:
        remove_unused(graph, [v.node for v in made])
    return new


def _linear_parts(graph: Graph, y: Value) -> tuple[int, Value | None] | None:
    """(matmul node, bias value or None) when y is `x @ W` or `x @ W + b` with the product
    used only there."""
    node = graph.node(y.node)
    if node["op"] == "matmul":
        return y.node, None
    if node["op"] != "add":
        return None
    for slot in (0, 1):
        mm, bias = graph.operands(y.node)[slot], graph.operands(y.node)[1 - slot]
        if (graph.op(mm.node) == "matmul" and mm.type == y.type
                and only_user(graph, mm) == y.node):
            return mm.node, bias
    return None


def _fold_into_linear(graph: Graph, y: Value, s, mean, beta, params, bn: dict) -> list | None:
    parts = _linear_parts(graph, y)
    if parts is None or y.type.rank != 2:  # batch_norm's channel axis 1 is the feature axis
        return None
    mm, b = parts
    x, w = graph.operands(mm)
    known = _weight_and_bias(graph, w, b, params)
    if known is None or known[0].ndim != 2:
        return None
    weight, bias = known
    channels = weight.shape[1]
    if bias is not None and bias.shape not in ((channels,), (1, channels)):
        return None  # a bias broadcast along another axis is not a per-channel shift
    new_w = add_constant(graph, (weight.astype(np.float64) * s).astype(weight.dtype), bn)
    product = _or_undo(graph, add_checked(graph, "matmul", [x, new_w], {},
                                          graph.node(mm)["types"], bn), [new_w])
    if product is None:
        return None
    new_b = add_constant(graph, _folded_bias(bias, s, mean, beta, weight.dtype), bn)
    return _or_undo(graph, add_checked(graph, "add", [product[0], new_b], {}, [y.type], bn),
                    [product[0], new_b])


@graph_pass("fold_batch_norm", needs_params=True)
def fold_batch_norm(graph: Graph, ctx: PassContext) -> Graph:
    """conv(x, W, b) -> batch_norm -> conv(x, W', b') (conv_transpose too);
    x @ W (+ b) -> batch_norm -> x @ W' + b'.

    Only where the layer's result feeds nothing but the batch_norm, and the weight, bias and
    the batch_norm's statistics are compile-time values: parameters (from `ctx.params`),
    constants, or ops on them such as `weight.T`. Batch statistics computed from the input
    (no running stats) never fold. Needs the parameter values: skipped without them.
    """
    for nid in graph.nodes_with_op("batch_norm"):
        y = graph.operands(nid)[0]
        if only_user(graph, y) != nid:
            continue
        affine = _scale_shift(graph, nid, ctx.params)
        if affine is None:
            continue
        bn = graph.node(nid)
        if graph.op(y.node) in ("conv", "conv_transpose"):
            new = _fold_into_conv(graph, y.node, *affine, ctx.params, bn)
        else:
            new = _fold_into_linear(graph, y, *affine, ctx.params, bn)
        if new is not None:
            ctx.count("removed", replace_node(graph, nid, new))
            ctx.count("folded")
    return graph
