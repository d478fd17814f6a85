"""BatchNorm folding: an inference-mode batch_norm after a convolution (or a transposed one) or
a Linear becomes part of that layer's weight and bias.

batch_norm(y) = (y - mean) * s + beta with s = gamma / sqrt(var + eps), per channel. When
y = conv(x, W) + b, that is conv(x, W * s) + (b - mean) * s + beta (each output channel's
filter scaled by its s); when y = x @ W + b with W: [K, C], it is x @ (W * s) + (b - mean) * s
+ beta. The folded weight and bias are new `constant` nodes computed in float64 and rounded
once to the weight's dtype (compiler/derived.py's bn_* kinds), so every backend handles them;
the parameters themselves are untouched (the old ones drop out of the graph when nothing else
reads them). Each folded constant is marked as derived from its sources: by a name that
remakes it (`bn_conv_weight(eps=1e-05):[conv.weight;bn.running_var;bn.weight]`) when every
source is a parameter or a parameter's transpose, so that new weights remake it without
rebuilding code; otherwise by a name nothing remakes (new weights then optimize again).

And in a train step, a training-mode batch_norm's running statistics share the batch's mean
and variance its gradient computes (`share_batch_statistics`).
"""

from __future__ import annotations

import networkx as nx

from ..builder import GraphBuilder
from ..derived import (
    bn_bias,
    bn_conv_transpose_weight,
    bn_conv_weight,
    bn_linear_weight,
    derived_name,
)
from ..dims import Dim
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from ..ops._common import number, to_int
from .edit import (
    constant_value,
    key,
    only_user,
    remove_unused,
    replace_node,
    replace_uses,
    users,
)
from .manager import PassContext, graph_pass

# The rewrites below name conv, conv_transpose, matmul and add: folding is each op's own algebra
# (which axis of its weight is the output channel), not a property other ops could share.


class _Folding:
    """One batch_norm being folded: its statistics' values, and the names of its sources."""

    def __init__(self, graph: Graph, nid: int, params: dict):
        self.graph, self.nid, self.params = graph, nid, params
        self.bn = graph.node(nid)
        self.gb = GraphBuilder.like(graph, self.bn)  # new nodes point at the batch_norm
        _x, *self.stats = graph.operands(nid)  # mean, var, gamma, beta (the last two optional)
        self.eps = float(number(self.bn["attrs"]["eps"], "eps"))
        self.stats_values = self.values(self.stats)  # None: not known before the call

    def values(self, operands: list[Value | None]) -> list | None:
        """The operands' compile-time values (None for an absent one), or None when one
        present operand is not known before the call."""
        values = [None if v is None else constant_value(self.graph, v, self.params)
                  for v in operands]
        if any(val is None for val, v in zip(values, operands) if v is not None):
            return None
        return values

    def constant(self, array, role: str, kind: str, operands: list[Value | None], **args
                 ) -> Value:
        """A constant node for a folded value, named by how to remake it when every source
        is nameable (a parameter, or a parameter moved by transpose/permute)."""
        sources = [None if v is None else _source_name(self.graph, v) for v in operands]
        if any(name is None for name, v in zip(sources, operands) if v is not None):
            derived = f"fold_batch_norm(node={self.nid}):{role}"  # no name remakes it
        else:
            derived = derived_name(kind, sources, **args)
        return self.gb.constant(array, derived)

    def bias(self, weight_value: Value, weight, bias_value: Value | None, bias) -> Value:
        mean, var, gamma, beta = self.stats_values
        array = bn_bias(weight, bias, mean, var, gamma, beta, self.eps)
        return self.constant(array, "bias", "bn_bias",
                             [weight_value, bias_value, *self.stats], eps=self.eps)


def _source_name(graph: Graph, value: Value) -> str | None:
    """The name by which a fold's source is remade: a parameter's path, or a transpose or
    permute of a parameter (fold_weight_layout's name for it); None for anything else."""
    node = graph.node(value.node)
    if node["op"] == "param":
        return node["attrs"]["path"]
    if has(node["op"], Prop.PERMUTE):
        (operand,) = graph.operands(value.node)
        source = graph.node(operand.node)
        if source["op"] == "param":
            perm = REGISTRY[node["op"]].permutation(operand.type.rank, node["attrs"])
            return derived_name("permute", source["attrs"]["path"], perm=tuple(perm))
    return None


def _weight_and_bias(f: _Folding, w: Value, b: Value | None) -> tuple | None:
    """A layer's weight and bias (None when it has none) as arrays, if both are known now."""
    known = f.values([w, b])
    return None if known is None else (known[0], known[1])


def _fold_into_conv(f: _Folding, conv: int) -> list | None:
    x, w, b = f.graph.operands(conv)
    known = _weight_and_bias(f, w, b)
    if known is None:
        return None
    weight, bias = known
    node = f.graph.node(conv)
    _mean, var, gamma, _beta = f.stats_values
    _m, var_v, gamma_v, _b = f.stats
    if node["op"] == "conv":
        scaled = bn_conv_weight(weight, var, gamma, f.eps)
        new_w = f.constant(scaled, "weight", "bn_conv_weight", [w, var_v, gamma_v], eps=f.eps)
    else:
        groups = to_int(node["attrs"]["groups"], "groups")
        scaled = bn_conv_transpose_weight(weight, var, gamma, f.eps, groups)
        new_w = f.constant(scaled, "weight", "bn_conv_transpose_weight", [w, var_v, gamma_v],
                           eps=f.eps, groups=groups)
    new_b = f.bias(w, weight, b, bias)
    new = f.gb.checked(node["op"], x, new_w, new_b, want=node["types"], **node["attrs"])
    return _or_undo(f.graph, new, [new_w, new_b])


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


def _fold_into_linear(f: _Folding, y: Value) -> list | None:
    graph = f.graph
    parts = _linear_parts(graph, y)
    if parts is None or y.type.rank != 2:  # batch_norm's channel axis 1 is the feature axis
        return None
    mm, b = parts
    x, w = graph.operands(mm)
    known = _weight_and_bias(f, w, b)
    if known is None or known[0].ndim != 2:
        return None
    weight, bias = known
    channels = weight.shape[1]
    if bias is not None and bias.shape not in ((channels,), (1, channels)):
        return None  # a bias broadcast along another axis is not a per-channel shift
    _mean, var, gamma, _beta = f.stats_values
    _m, var_v, gamma_v, _b = f.stats
    new_w = f.constant(bn_linear_weight(weight, var, gamma, f.eps), "weight",
                       "bn_linear_weight", [w, var_v, gamma_v], eps=f.eps)
    product = _or_undo(graph, f.gb.checked("matmul", x, new_w, want=graph.node(mm)["types"]),
                       [new_w])
    if product is None:
        return None
    new_b = f.bias(w, weight, b, bias)
    return _or_undo(graph, f.gb.checked("add", product[0], new_b, want=[y.type]),
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
        if only_user(graph, y) != nid or graph.node(nid)["attrs"]["training"]:
            continue  # training mode normalizes with the batch's statistics: nothing to fold
        f = _Folding(graph, nid, ctx.params)
        if f.stats_values is None:
            continue
        if graph.op(y.node) in ("conv", "conv_transpose"):
            new = _fold_into_conv(f, y.node)
        else:
            new = _fold_into_linear(f, y)
        if new is not None:
            ctx.count("removed", replace_node(graph, nid, new))
            ctx.count("folded")
    return graph


def _first_rows_only(graph: Graph, stats: int) -> bool:
    """Whether every use of node `stats`'s value is a slice of its rows 0 and 1 alone (the
    mean and variance of x: batch_norm_stats' rows that do not read dy)."""
    uses = users(graph, Value(stats, 0, graph.node(stats)["types"][0]))
    for user, _slot in uses:
        if user == -1 or graph.op(user) != "slice":
            return False
        items = graph.node(user)["attrs"]["items"]
        if len(items) != 1 or items[0][0] != "range" or items[0][3] != 1:
            return False
        start, stop = (Dim.of(b) if b is not None else None for b in items[0][1:3])
        if (start is None or stop is None or not (start.is_const and stop.is_const)
                or not 0 <= start.value < stop.value <= 2):
            return False
    return bool(uses)


@graph_pass("share_batch_statistics")
def share_batch_statistics(graph: Graph, ctx: PassContext) -> Graph:
    """batch_norm_stats(x, x)[0:2] -> batch_norm_stats(x, dy)[0:2]: a training-mode
    batch_norm's running statistics read the mean and variance of x from batch_norm_stats(x,
    x) (ops/norm.py), and its gradient computes them again, beside the sums of dy, in
    batch_norm_stats(x, dy). Rows 0 and 1 read x alone, so where a train step has both, the
    running statistics take the gradient's node and the first goes (one kernel, two reads
    of x, fewer). Only where the first node's every use slices those rows and the second
    does not depend on the first."""
    by_x: dict[tuple[int, int], list[int]] = {}
    for nid in graph.nodes_with_op("batch_norm_stats"):
        x, _dy = graph.operands(nid)
        by_x.setdefault(key(x), []).append(nid)
    for nids in by_x.values():
        alone = [n for n in nids if key(graph.operands(n)[1]) == key(graph.operands(n)[0])]
        others = [n for n in nids if n not in alone]
        for nid in alone:
            if not others or not _first_rows_only(graph, nid):
                continue
            target = next((o for o in others if not nx.has_path(graph.g, nid, o)), None)
            if target is None:
                continue
            t = graph.node(nid)["types"][0]
            replace_uses(graph, Value(nid, 0, t), Value(target, 0, t))
            ctx.count("removed", remove_unused(graph, [nid]))
            ctx.count("shared")
    return graph
