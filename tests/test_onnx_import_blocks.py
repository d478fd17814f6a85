"""compiler/onnx_import/blocks.py: the repeated stretches of a forward `kiln import` writes as
blocks, on hand-built graphs."""

from __future__ import annotations

import numpy as np

from kiln.compiler.builder import GraphBuilder
from kiln.compiler.ir import Graph
from kiln.compiler.onnx_import.blocks import repeated_units
from kiln.compiler.types import TensorType


def residual_chain(widths: list[int]) -> tuple[Graph, list[int]]:
    """x -> relu(x @ w_k + x) per width (a square weight each; a width change reshapes
    through a projection), and the node of each stretch's result."""
    graph = Graph()
    gb = GraphBuilder(graph)
    x = graph.add_input("x", TensorType("f32", (2, widths[0])), None)
    ends = []
    for k, width in enumerate(widths):
        if x.type.shape[-1] != width:
            x = gb.matmul(x, gb.constant(np.ones((x.type.shape[-1].value, width), np.float32)))
        w = gb.constant(np.full((width, width), k, np.float32))
        x = gb.op("relu", gb.add(gb.op("tanh", gb.matmul(x, w)), x))
        ends.append(x.node)
    graph.outputs, graph.output_names = [x], ["y"]
    return graph, ends


def test_equal_stretches_in_a_row_are_units_of_one_block():
    graph, ends = residual_chain([4, 4, 4, 8])
    units = repeated_units(graph)
    assert [u.result.node for u in units] == ends[:3]
    assert len({u.key for u in units}) == 1
    # each unit starts where the skip connection branches: its first argument is read twice
    for unit in units:
        inside = set(unit.nodes)
        assert sum(v in inside for _, v in graph.g.out_edges(unit.args[0].node)) == 2


def test_stretches_that_differ_in_a_shape_are_not_one_block():
    graph, _ = residual_chain([4, 8, 16])
    assert repeated_units(graph) == []


def test_a_graph_of_two_inputs_is_not_searched():
    graph, _ = residual_chain([4, 4])
    graph.add_input("z", TensorType("f32", (2, 4)), None)
    assert repeated_units(graph) == []
