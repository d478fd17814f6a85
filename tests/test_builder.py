"""compiler/builder.py: nodes by op name through their records, typed by their rules."""

from __future__ import annotations

import numpy as np
import pytest

from kiln import KilnError
from kiln.compiler.builder import GraphBuilder
from kiln.compiler.dims import Dim
from kiln.compiler.errors import Span
from kiln.compiler.ir import Graph, IRError
from kiln.compiler.passes import verify
from kiln.compiler.types import TensorType

SPAN = Span("model.kiln", 3, 5, 3, 12)


def f32(*shape) -> TensorType:
    return TensorType("f32", tuple(Dim.of(d) for d in shape))


def _graph(*types: TensorType) -> tuple[Graph, list]:
    graph = Graph()
    return graph, [graph.add_input(f"x{i}", t, None) for i, t in enumerate(types)]


def test_shapes_inferred_and_node_added():
    graph, (a, b) = _graph(f32("B", 3), f32(3, 4))
    gb = GraphBuilder(graph, span=SPAN, scope="fc")
    y = gb.matmul(a, b)
    assert y.type == f32("B", 4)
    s = gb.add(y, gb.constant(np.ones(4, np.float32)))
    assert s.type == f32("B", 4)
    node = graph.node(s.node)
    assert node["op"] == "add" and node["span"] == SPAN and node["scope"] == "fc"
    assert graph.operands(s.node)[0] == y
    graph.outputs, graph.output_names = [s], ["out"]
    verify(graph)  # every node's type is its rule's


def test_any_op_by_name_with_defaults_and_keywords():
    graph, (x, w) = _graph(f32(1, 2, 8, 8), f32(4, 2, 3, 3))
    gb = GraphBuilder(graph)
    y = gb.op("conv", x, w, stride=2)
    assert y.type == f32(1, 4, 3, 3)
    node = graph.node(y.node)
    # defaults applied; the absent optional bias is an empty slot
    assert node["attrs"] == {"stride": 2, "padding": 0, "dilation": 1, "groups": 1}
    assert graph.operands(y.node) == [x, w, None]
    by_name = gb.op("conv", weight=w, x=x, padding=1)
    assert by_name.type == f32(1, 4, 8, 8)


def test_multi_output_and_tensor_lists():
    graph, (x,) = _graph(f32(6, 4))
    gb = GraphBuilder(graph)
    parts = gb.op("split", x, n=3, axis=0)
    assert isinstance(parts, tuple) and [p.type for p in parts] == [f32(2, 4)] * 3
    joined = gb.op("concat", list(parts), axis=1)
    assert joined.type == f32(2, 12)
    assert graph.operands(joined.node) == list(parts)


def test_typed_helpers():
    graph, (x,) = _graph(f32(2, 3))
    gb = GraphBuilder(graph)
    assert gb.permute(x, [1, 0]).type == f32(3, 2)
    assert gb.reshape(x, [6]).type == f32(6)
    assert gb.cast(x, "f16").type == TensorType("f16", f32(2, 3).shape)
    assert gb.neg(gb.sub(gb.mul(x, x), gb.div(x, x))).type == f32(2, 3)


def test_constant_carries_derivation():
    graph = Graph()
    gb = GraphBuilder(graph, span=SPAN)
    c = gb.constant(np.zeros((2, 3), np.int64), derived="permute(perm=1_0):w")
    node = graph.node(c.node)
    assert c.type == TensorType("i64", f32(2, 3).shape)
    assert node["attrs"]["derived"] == "permute(perm=1_0):w" and node["span"] == SPAN
    with pytest.raises(IRError, match="no kiln dtype"):
        gb.constant(np.zeros(2, np.complex64))


def test_like_takes_span_and_scope_of_a_node():
    graph, (x,) = _graph(f32(2))
    gb = GraphBuilder(graph, span=SPAN, scope="block.0")
    y = gb.neg(x)
    z = GraphBuilder.like(graph, graph.node(y.node)).neg(y)
    assert graph.node(z.node)["span"] == SPAN and graph.node(z.node)["scope"] == "block.0"


@pytest.mark.parametrize("call, code, message", [
    (lambda gb, a, b: gb.op("matmul", a, b), "K0301", "matmul: inner dimensions differ"),
    (lambda gb, a, b: gb.op("no_such_op", a), "K0102", "unknown op no_such_op"),
    (lambda gb, a, b: gb.op("matmul", a, b, a), "K0201", "matmul takes at most 2 arguments"),
    (lambda gb, a, b: gb.op("matmul", a), "K0201", "matmul is missing its argument b"),
    (lambda gb, a, b: gb.op("matmul", a, b, c=a), "K0201", "matmul has no argument c"),
    (lambda gb, a, b: gb.op("matmul", a, a=b), "K0201", "matmul: argument a given twice"),
    (lambda gb, a, b: gb.op("matmul", a, None), "K0201", "matmul: argument b needs a tensor"),
    (lambda gb, a, b: gb.op("matmul", a, 2.0), "K0202", "matmul: expected a tensor (a Value), not float"),
    (lambda gb, a, b: gb.op("concat", [], axis=0), "K0202", "concat: argument xs must be a list of tensors"),
    (lambda gb, a, b: gb.op("softmax", a, axis=5), "K0303", "softmax: axis 5"),
])
def test_bad_calls_rejected_at_the_span_adding_nothing(call, code, message):
    graph, (a, b) = _graph(f32(2, 3), f32(4, 5))
    before = len(graph)
    with pytest.raises(KilnError) as err:
        call(GraphBuilder(graph, span=SPAN), a, b)
    assert err.value.code == code and err.value.span == SPAN
    assert err.value.message.startswith(message)
    assert len(graph) == before


def test_operand_of_another_graph_is_a_compiler_bug():
    _other, (a,) = _graph(f32(2))
    graph = Graph()
    with pytest.raises(IRError, match="not a node of this graph"):
        GraphBuilder(graph).neg(a)


def test_checked_adds_only_the_wanted_types():
    graph, (a, b) = _graph(f32(2, 3), f32(3, 4))
    gb = GraphBuilder(graph)
    before = len(graph)
    assert gb.checked("matmul", a, a, want=[f32(2, 3)]) is None  # the rule refuses
    assert gb.checked("matmul", a, b, want=[f32(2, 5)]) is None  # another type
    assert len(graph) == before
    (y,) = gb.checked("matmul", a, b, want=[f32(2, 4)])
    assert y.type == f32(2, 4)
    with pytest.raises(KilnError, match="has no argument"):  # a misuse is no type question
        gb.checked("matmul", a, b, c=a, want=[f32(2, 4)])
