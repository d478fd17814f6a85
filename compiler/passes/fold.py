"""Constant folding: compute at compile time what depends only on constants."""

from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..derived import derived_name
from ..ir import STRUCTURAL_OPS, Graph
from ..ops import REGISTRY, Prop, has
from ..types import NUMPY_DTYPES
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
        picked = _picked_from_stack(graph, nid)
        args = [] if picked is None else [picked]
        operands = operands[len(args):]
        if any(v is not None and graph.op(v.node) != "constant" for v in operands):
            continue
        if any(numel(t) > ctx.fold_limit for t in node["types"]):
            ctx.count("too large")
            continue
        args += [None if v is None else graph.node(v.node)["attrs"]["value"] for v in operands]
        results = evaluate_node(node, args)
        if results is None:
            continue
        gb = GraphBuilder.like(graph, node)
        replace_node(graph, nid, [gb.constant(r) for r in results])
        ctx.count("folded")
    return graph


def _picked_from_stack(graph: Graph, nid: int) -> np.ndarray | None:
    """x where node nid reads, along axis 0, only items of x = stack(items) that are
    constants (a slice x[i] or x[a:b], a gather by constant indices), with zeros in place of
    the items it does not read; else None. An exported model reads a size from a shape that
    is partly symbolic, stack([dim_value(B), 4, 128, 64])[3]: that size is a constant."""
    node = graph.node(nid)
    if node["op"] not in ("slice", "gather") or node["attrs"].get("axis", 0) != 0:
        return None
    x = graph.operands(nid)[0]
    stack = graph.node(x.node)
    if stack["op"] != "stack" or stack["attrs"]["axis"] not in (0, -x.type.rank):
        return None
    items = graph.operands(x.node)
    if node["op"] == "slice":
        entries = node["attrs"]["items"]
        first = tuple(entries[0]) if entries else ("range", None, None, 1)
        if first[0] == "int" and isinstance(first[1], int) and -len(items) <= first[1] < len(items):
            reads = [first[1] % len(items)]
        elif first[0] == "range" and all(b is None or isinstance(b, int) for b in first[1:]):
            reads = list(range(len(items)))[slice(*first[1:])]
        else:
            return None
    else:
        index = graph.operands(nid)[1]
        if graph.op(index.node) != "constant":
            return None
        reads = np.asarray(graph.node(index.node)["attrs"]["value"]).reshape(-1).tolist()
        if not all(-len(items) <= i < len(items) for i in reads):
            return None
    values = {i % len(items): items[i] for i in reads}
    if not values or any(graph.op(v.node) != "constant" for v in values.values()):
        return None
    arrays = {i: np.asarray(graph.node(v.node)["attrs"]["value"]) for i, v in values.items()}
    some = next(iter(arrays.values()))
    return np.stack([arrays.get(i, np.zeros_like(some)) for i in range(len(items))]).astype(
        NUMPY_DTYPES[x.type.dtype])


WEIGHT_LAYOUT_LIMIT = 1 << 26  # elements: a transposed copy of a weight is made once, not per call


@graph_pass("fold_weight_layout", needs_params=True)
def fold_weight_layout(graph: Graph, ctx: PassContext) -> Graph:
    """transpose(param) / permute(param) -> constant holding the moved weights (also of a
    reshaped or squeezed param: permute(reshape(param))).

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
        source, reshaped = graph.node(operand.node), None
        if has(source["op"], Prop.RESHAPE) and foldable(source) and operand.type.rank >= 1:
            # permute(squeeze(param)): ONNX's recurrent weights [directions, 4H, H]
            reshaped = operand.type.shape
            source = graph.node(graph.operands(operand.node)[0].node)
        path = source["attrs"].get("path")
        if source["op"] != "param" or path not in ctx.params:
            continue
        if numel(node["types"][0]) > WEIGHT_LAYOUT_LIMIT:
            ctx.count("too large")
            continue
        value = ctx.params[path]
        if reshaped is not None:
            path = derived_name("reshape", path, shape=tuple(d.value for d in reshaped))
            value = np.asarray(value).reshape([d.value for d in reshaped])
        results = evaluate_node(node, [value])
        if results is None:
            continue
        perm = REGISTRY[node["op"]].permutation(operand.type.rank, node["attrs"])
        name = derived_name("permute", path, perm=tuple(perm))
        replace_node(graph, nid, [GraphBuilder.like(graph, node).constant(results[0], name)])
        ctx.count("folded")
    return graph
