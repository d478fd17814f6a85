"""Multiply-accumulates: how much arithmetic each node of a graph does in one call.

    macs_of_node(graph, nid)        # a Dim: an op's by its record's `macs` rule (0 without
                                    # one), a fused group's the sum of its ops', a scan's its
                                    # body's times its length
    macs_by_scope(graph)            # {block-instance path: Dim}, for `kiln summary`

A count is symbolic in the graph's sizes (B); `Dim.evaluate(sizes)` gives the number.
"""

from __future__ import annotations

from collections.abc import Callable

from .dims import Dim
from .ir import Graph, GraphVisitor
from .ops import REGISTRY

Visit = Callable[[dict, Dim], None]  # (node, how many times it runs per call)


class _Macs(GraphVisitor):
    """Calls `visit(node, times)` for every op node that runs, nested bodies included, with
    how many times per call it runs, and returns the node's MACs (times included)."""

    def __init__(self, visit: Visit | None = None):
        self.on_op = visit

    def visit_scan(self, graph: Graph, nid: int, node: dict, times: Dim) -> Dim:
        attrs = node["attrs"]
        first_seq = graph.operands(nid)[attrs["n_carry"]]
        return self.graph(attrs["body"], times * first_seq.type.shape[attrs["axes"][0]])

    def visit_fused(self, graph: Graph, nid: int, node: dict, times: Dim) -> Dim:
        return self.graph(node["attrs"]["body"], times)

    def visit_op(self, graph: Graph, nid: int, node: dict, times: Dim) -> Dim:
        record = REGISTRY[node["op"]]
        if record.macs is None:
            return Dim.of(0)
        types = [v.type if v is not None else None for v in graph.operands(nid)]
        macs = record.macs(types, node["types"], node["attrs"]) * times
        if self.on_op is not None:
            self.on_op(node, macs)
        return macs

    def visit_leaf(self, graph: Graph, nid: int, node: dict, times: Dim) -> Dim:
        return Dim.of(0)

    def graph(self, graph: Graph, times: Dim) -> Dim:
        total = Dim.of(0)
        for nid in graph.order():
            total = total + self.visit(graph, nid, times)
        return total


def macs_of_node(graph: Graph, nid: int) -> Dim:
    """The multiply-accumulates node `nid` of `graph` does in one call."""
    return _Macs().visit(graph, nid, Dim.of(1))


def macs_by_scope(graph: Graph) -> dict[str, Dim]:
    """Multiply-accumulates of one call, per block-instance path ('' is the model)."""
    out: dict[str, Dim] = {}

    def count(node: dict, macs: Dim) -> None:
        out[node["scope"]] = out.get(node["scope"], Dim.of(0)) + macs

    _Macs(count).graph(graph, Dim.of(1))
    return out


__all__ = ["macs_by_scope", "macs_of_node"]
