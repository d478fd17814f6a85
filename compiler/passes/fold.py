"""Constant folding: compute at compile time what depends only on constants."""

from __future__ import annotations

from ..builder import GraphBuilder
from ..derived import derived_name
from ..ir import STRUCTURAL_OPS, Graph
from ..ops import REGISTRY, Prop, has
from .edit import evaluate_node, foldable, numel, replace_node
from .manager import PassContext, graph_pass


@graph_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext) -> Graph:
    """op(constant, ..., constant) -> constant, by the op's reference implementation.

    A node folds when every input it has is a `constant` node (ops with no inputs, such as
    `zeros([2, 3])`, fold too), its attributes hold no symbolic size and no nested graph, and
    each result has at most `ctx.fold_limit` elements. Parameters are not constants here: their
    values may change after compilation. A node whose reference fails is left for run time,
    which reports the error at its span. In a scan body an outer constant is a captured input,
    so it does not fold there.
    """
    for nid in graph.order():
        node = graph.node(nid)
        if node["op"] in STRUCTURAL_OPS or not foldable(node):
            continue
        operands = graph.operands(nid)
        if any(v is not None and graph.op(v.node) != "constant" for v in operands):
            continue
        if any(numel(t) > ctx.fold_limit for t in node["types"]):
            ctx.count("too large")
            continue
        args = [None if v is None else graph.node(v.node)["attrs"]["value"] for v in operands]
        results = evaluate_node(node, args)
        if results is None:
            continue
        gb = GraphBuilder.like(graph, node)
        replace_node(graph, nid, [gb.constant(r) for r in results])
        ctx.count("folded")
    return graph


WEIGHT_LAYOUT_LIMIT = 1 << 26  # elements: a transposed copy of a weight is made once, not per call


@graph_pass("fold_weight_layout", needs_params=True)
def fold_weight_layout(graph: Graph, ctx: PassContext) -> Graph:
    """transpose(param) / permute(param) -> constant holding the moved weights.

    `x @ weight.T` (every Linear) would otherwise transpose the weight on every call; with the
    parameter values at hand the transposed copy is made once. The constant is marked as
    derived from the parameter (`permute(perm=1_0):fc.weight`, compiler/derived.py), so that
    new weights remake it without rebuilding anything.
    """
    for nid in graph.order():
        node = graph.node(nid)
        if not has(node["op"], Prop.PERMUTE) or not foldable(node):
            continue
        (operand,) = graph.operands(nid)
        source = graph.node(operand.node)
        path = source["attrs"].get("path")
        if source["op"] != "param" or path not in ctx.params:
            continue
        if numel(node["types"][0]) > WEIGHT_LAYOUT_LIMIT:
            ctx.count("too large")
            continue
        results = evaluate_node(node, [ctx.params[path]])
        if results is None:
            continue
        perm = REGISTRY[node["op"]].permutation(operand.type.rank, node["attrs"])
        name = derived_name("permute", path, perm=tuple(perm))
        replace_node(graph, nid, [GraphBuilder.like(graph, node).constant(results[0], name)])
        ctx.count("folded")
    return graph
