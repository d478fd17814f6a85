"""Dead-code elimination and common-subexpression elimination."""

from __future__ import annotations

from ..ir import Graph
from .edit import attr_key, key, outputs_of, replace_node
from .manager import PassContext, graph_pass


@graph_pass("dce")
def dce(graph: Graph, ctx: PassContext) -> Graph:
    """Remove every node no graph output depends on (inputs stay: they are the signature).

    Parameters no longer read disappear from the graph with their nodes (the model's
    parameter table is not changed)."""
    before = len(graph)
    graph.prune()
    ctx.count("removed", before - len(graph))
    return graph


@graph_pass("cse")
def cse(graph: Graph, ctx: PassContext) -> Graph:
    """Two nodes with the same op, the same attributes and the same operands -> one.

    Attributes compare by a canonical key (arrays by dtype, shape and bytes; 1 is not True;
    nested graphs by identity), so equal constants merge as well. Inputs never merge.
    """
    seen: dict = {}
    for nid in graph.order():
        node = graph.node(nid)
        if node["op"] == "input":
            continue
        operands = tuple(None if v is None else key(v) for v in graph.operands(nid))
        k = (node["op"], attr_key(node["attrs"]), operands)
        first = seen.setdefault(k, nid)
        if first != nid and graph.node(first)["types"] == node["types"]:
            replace_node(graph, nid, outputs_of(graph, first))
            ctx.count("merged")
    return graph
