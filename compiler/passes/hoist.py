"""Loop-invariant code motion for scans: what a scan body computes from values that do not
change between steps is computed once, before the loop.

An RNN cell reads its weights as captured inputs of the scan body, so `h @ W_hh.T` transposed
W_hh on every step of every sequence. `hoist_scan_invariants` moves each body node whose
operands are all captured inputs, parameters, constants or other such nodes into the graph
that holds the scan, and feeds its result back into the body as a new captured input. Back in
the outer graph, the other passes see it: `fold_weight_layout` turns `transpose(param)` into a
constant made once per weight binding.

Only ops that cannot fail at run time move (elementwise ops, and Prop.CANNOT_FAIL ops: layout
moves, matmul, concat): a scan of no steps runs its body never, so a hoisted op that reports
an out-of-range index (gather, one_hot, scatter) could raise where the loop would not have.
Nested scans stay in their body (their own bodies are hoisted first: the pass runs bottom-up).
"""

from __future__ import annotations

from ..builder import GraphBuilder
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop
from .edit import key, remove_unused, replace_uses
from .manager import PassContext, graph_pass


def hoistable(node: dict) -> bool:
    """Whether a body node may run once before the loop instead of at every step."""
    op = node["op"]
    rec = REGISTRY.get(op)
    if rec is None or any(isinstance(v, Graph) for v in node["attrs"].values()):
        return False
    return rec.has(Prop.CANNOT_FAIL) or rec.scalar is not None


@graph_pass("hoist_scan_invariants")
def hoist_scan_invariants(graph: Graph, ctx: PassContext) -> Graph:
    """scan(body: f(captured)) -> scan(body reading f(captured) computed before the loop)."""
    for nid in graph.order():
        if graph.op(nid) == "scan" and (moved := _hoist(graph, nid)):
            ctx.count("hoisted", moved)
    return graph


FIXED = frozenset({"constant", "param"})  # body nodes whose value no step changes


def _fixed(graph: Graph, node: dict) -> Value:
    """A body's constant or parameter node as a value of `graph`: the same parameter node when
    `graph` has one for its path (a weight has one node per graph), else a new one."""
    if node["op"] == "constant":
        return GraphBuilder.like(graph, node).constant(node["attrs"]["value"],
                                                       node["attrs"].get("derived"))
    path = node["attrs"]["path"]
    for nid in graph.params():
        if graph.node(nid)["attrs"]["path"] == path:
            return Value(nid, 0, graph.node(nid)["types"][0])
    (value,) = graph.add("param", [], node["attrs"], node["types"], node["span"], node["scope"])
    return value


def _hoist(graph: Graph, scan: int) -> int:
    """Move the invariant nodes of one scan's body into `graph`; returns how many moved."""
    node = graph.node(scan)
    attrs = node["attrs"]
    body: Graph = attrs["body"]
    operands = graph.operands(scan)
    first = attrs["n_carry"] + attrs["n_seq"]  # the first captured operand
    # body value -> the outer value it equals: captured inputs, then each hoisted node
    outer: dict[tuple[int, int], Value] = {
        (bid, 0): operands[first + j]
        for j, bid in enumerate(body.inputs[attrs["n_fixed_inputs"]:])
    }
    moved: list[int] = []
    for bid in body.order():
        bnode = body.node(bid)
        if not hoistable(bnode):
            continue
        args = body.operands(bid)
        if not any(v is not None for v in args):
            continue  # zeros(...) and the like: nothing to save
        if not all(v is None or key(v) in outer or body.op(v.node) in FIXED for v in args):
            continue
        mapped = [None if v is None else outer[key(v)] if key(v) in outer
                  else _fixed(graph, body.node(v.node)) for v in args]
        results = graph.add(bnode["op"], mapped, bnode["attrs"], bnode["types"], bnode["span"],
                            bnode["scope"])
        for i, value in enumerate(results):
            outer[(bid, i)] = value
        moved.append(bid)
    if not moved:
        return 0
    hoisted = set(moved)
    body_outputs = {key(o) for o in body.outputs}
    for bid in moved:
        bnode = body.node(bid)
        for i, t in enumerate(bnode["types"]):
            value = Value(bid, i, t)
            used_inside = any(d["src"] == i and user not in hoisted
                              for _, user, d in body.g.out_edges(bid, data=True))
            if not used_inside and key(value) not in body_outputs:
                continue  # read only by other hoisted nodes
            captured = body.add_input(f"hoisted.{bid}.{i}", t, bnode["span"])
            replace_uses(body, value, captured)
            source = outer[(bid, i)]
            graph.g.add_edge(source.node, scan, src=source.index, dst=node["arity"])
            node["arity"] += 1
    remove_unused(body, moved)
    return len(moved)
