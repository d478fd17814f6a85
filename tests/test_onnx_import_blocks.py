"""compiler/onnx_import/blocks.py: the repeated stretches of a forward `kiln import` writes as
blocks, on hand-built graphs."""

from __future__ import annotations

import numpy as np

from kiln.compiler.builder import GraphBuilder
from kiln.compiler.ir import Graph
from kiln.compiler.onnx_import.blocks import repeated_units
from kiln.compiler.types import TensorType


def residual_chain(widths: list[int], rows=2, doubled: bool = False
                   ) -> tuple[Graph, list[int]]:
    """x -> relu(tanh(x @ w_k) + x) per width (a square weight each; a width change goes
    through a projection), and the node of each stretch's result; `doubled`: x stacked on
    itself first, so the stretches see 2*rows rows."""
    graph = Graph()
    gb = GraphBuilder(graph)
    x = graph.add_input("x", TensorType("f32", (rows, widths[0])), None)
    if doubled:
        x = gb.op("concat", [x, x], axis=0)
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


def test_stretches_a_block_signature_could_not_bind_are_not_blocks():
    """A block's forward binds each symbolic size from one axis: `2*N` rows it cannot."""
    graph, _ = residual_chain([4, 4, 4], rows="N")
    assert len(repeated_units(graph)) == 3
    graph, _ = residual_chain([4, 4, 4], rows="N", doubled=True)
    assert repeated_units(graph) == []
