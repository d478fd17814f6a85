"""A matmul whose operand is a transpose reads it in place: matmul(permute(x), b) ->
matmul_at(x, b) and matmul(x, permute(w)) -> matmul_bt(x, w) (ops/linalg.py), for f32
matrices, so that no kernel copies x or w transposed.

A weight gradient dW = dy^T @ x (simplify's transposed_product makes every linear layer's and
every scan's weight gradient this way) otherwise transposes dy, the larger operand of an
RNN's gradient over all its steps' rows, before the GEMM; gemm.py's packed GEMM reads a
transposed A at the same speed as a row-major one. Likewise a linear layer's x @ W^T in a
training step, whose W changes every step (so is not prepacked): its B panels are packed from
W's rows. A B that is a constant or parameter stays a matmul's (the native layout prepacks
such a B)."""

from __future__ import annotations

from ..builder import GraphBuilder
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from .edit import replace_node
from .manager import PassContext, graph_pass


def _transposed_matrix(graph: Graph, value: Value) -> Value | None:
    """x where `value` is the 2-D transpose of x, else None."""
    op = graph.op(value.node)
    if not has(op, Prop.PERMUTE) or value.type.rank != 2:
        return None
    node = graph.node(value.node)
    if REGISTRY[op].permutation(2, node["attrs"]) != [1, 0]:
        return None
    return graph.operands(value.node)[0]


@graph_pass("transposed_operands")
def transposed_operands(graph: Graph, ctx: PassContext) -> Graph:
    """matmul(permute(x, [1, 0]), b) -> matmul_at(x, b) for f32 matrices whose b is not a
    weight known before the call, and matmul(x, permute(w, [1, 0])) -> matmul_bt(x, w) for an
    f32 x of rank 2 or more and a matrix w not known before the call: the GEMM reads x or w
    transposed in place."""
    for nid in graph.order():
        if nid not in graph.g or graph.op(nid) != "matmul":
            continue
        a, b = graph.operands(nid)
        if a.type.dtype != "f32" or b.type.rank != 2 or graph.op(b.node) in ("constant",
                                                                             "param"):
            continue
        node = graph.node(nid)
        x = _transposed_matrix(graph, a)
        if x is not None:
            new = GraphBuilder.like(graph, node).checked("matmul_at", x, b, want=node["types"])
            if new:
                replace_node(graph, nid, new)
                ctx.count("matmul(x^T, b) -> matmul_at(x, b)")
            continue
        w = _transposed_matrix(graph, b)
        if w is None or a.type.rank < 2 or graph.op(w.node) in ("constant", "param"):
            continue
        new = GraphBuilder.like(graph, node).checked("matmul_bt", a, w, want=node["types"])
        if new:
            replace_node(graph, nid, new)
            ctx.count("matmul(x, w^T) -> matmul_bt(x, w)")
    return graph
