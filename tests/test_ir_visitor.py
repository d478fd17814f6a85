"""GraphVisitor: how a walker of the IR is dispatched on the kind of each node."""

from __future__ import annotations

import pytest

from kiln.compiler.ir import Graph, GraphVisitor
from kiln.compiler.types import TensorType

T = TensorType("f32", (3,))


def graph_with_every_kind() -> Graph:
    """x (input), w (param), c (constant), add (an op), a scan and a fused node (ops holding a
    body graph; only their holding one matters to the visitor)."""
    g = Graph()
    x = g.add_input("x", T, None)
    (w,) = g.add("param", [], {"path": "w", "kind": "param"}, [T])
    (c,) = g.add("constant", [], {"value": None}, [T])
    (s,) = g.add("add", [x, w], {}, [T])
    body = Graph()
    body.outputs = [body.add_input("in0", T, None)]
    (loop,) = g.add("scan", [s], {"body": body}, [T])
    (group,) = g.add("fused", [loop, c], {"body": body, "anchor": None}, [T])
    g.outputs = [group]
    return g


class Kinds(GraphVisitor):
    def visit_leaf(self, graph, nid, node, tag):
        return f"leaf {node['op']} {tag}"

    def visit_scan(self, graph, nid, node, tag):
        return f"loop {tag}"

    def visit_op(self, graph, nid, node, tag):
        return f"op {node['op']} {tag}"


def test_each_kind_of_node_goes_to_its_method_with_the_extra_arguments():
    g = graph_with_every_kind()
    assert [Kinds().visit(g, nid, "!") for nid in g.order()] == [
        "leaf input !", "leaf param !", "leaf constant !", "op add !", "loop !", "op fused !"]


def test_a_method_named_after_an_op_is_used_only_for_ops_holding_a_body():
    class ByName(Kinds):
        def visit_add(self, graph, nid, node, tag):  # never called: add holds no body
            raise AssertionError("dispatched on a plain op's name")

    g = graph_with_every_kind()
    assert [ByName().visit(g, nid, "") for nid in g.order()][3] == "op add "


def test_a_walker_without_visit_op_says_which_op_it_cannot_walk():
    g = graph_with_every_kind()
    with pytest.raises(NotImplementedError, match="GraphVisitor does not visit add"):
        for nid in g.order():
            GraphVisitor().visit(g, nid)
