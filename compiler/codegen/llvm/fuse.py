"""Fusion: groups of ops that one kernel computes, made visible in the IR as `fused` nodes.

A group is a set of elementwise ops with one shape (the group's output shape) whose values
are used only inside the group but for one, the group's result; optionally with an anchor,
a matmul or a convolution producing one of the group's operands (the epilogue: bias, residual
add, activation). The group becomes one `fused` node whose operands are the values the group
reads from outside and whose `body` attribute holds the group's ops as a graph (as a scan's
body does). A pass of the native pipeline (pipeline.py): the native backend runs a group as
one kernel (the anchor's GEMM, then one pass over its output computing the whole chain per
element, in registers: fused.py); the reference evaluates the body, and the ONNX emitter, given
a fused graph, emits the body's ops.

Because every value inside a group other than its result is used only inside it, no path
leaves the group and comes back: fusing never makes a cycle.
"""

from __future__ import annotations

from ...ir import STRUCTURAL_OPS, Graph, Value
from ...ops import REGISTRY, Prop, has
from ...passes.edit import key, remove_unused, replace_uses, users
from ...passes.manager import PassContext, graph_pass
from ...types import shape_str

# ops in one group: LLVM's optimizer takes superlinear time in a function's size (an unrolled
# chain of 8000 adds as one kernel: 12 s in LLVM, 4x per doubling; capped: 2.4 s, 2x per
# doubling — benchmarks/unrolled_chain.py), while a kernel boundary every MAX_GROUP ops costs
# one extra pass over memory per MAX_GROUP ops
MAX_GROUP = 1024


def elementwise_reason(graph: Graph, nid: int) -> str | None:
    """Why node `nid` cannot be part of an elementwise chain (None when it can)."""
    node = graph.node(nid)
    op = node["op"]
    if op in STRUCTURAL_OPS or op == "fused":
        return f"{op} is not an op a kernel computes"
    rec = REGISTRY[op]
    if not rec.has(Prop.ELEMENTWISE):
        return f"{op} is not elementwise"
    if rec.scalar is None:
        return f"{op} has no per-element native lowering"
    if len(node["types"]) != 1:
        return f"{op} has several results"
    return None


def anchor_reason(graph: Graph, nid: int) -> str | None:
    """Why node `nid` cannot head an epilogue (None when it can)."""
    node = graph.node(nid)
    if not has(node["op"], Prop.ANCHOR):
        return f"{node['op']} is not a matmul or a convolution"
    if node["types"][0].dtype != "f32":
        return f"the {node['op']} computes {node['types'][0].dtype} (epilogues are f32)"
    return None


def join_reason(graph: Graph, producer: Value, group: set[int], result: Value) -> str | None:
    """Why `producer` (a value read by a group whose result is `result`) stays outside the
    group's kernel (None when it can join it)."""
    uses = users(graph, producer)
    if any(u == -1 for u, _ in uses):
        return "its result is a model output"
    outside = {u for u, _ in uses if u not in group}
    if outside:
        return f"its result is also used by {len(outside)} other op(s)"
    if producer.type.shape != result.type.shape:
        return (f"its shape {shape_str(producer.type.shape)} differs from the fused result's "
                f"{shape_str(result.type.shape)}")
    return None


@graph_pass("fuse")
def fuse(graph: Graph, ctx: PassContext) -> Graph:
    """Elementwise chains -> one `fused` node each; a matmul or convolution followed by
    elementwise ops on its result (bias, residual add, activation) -> one `fused` node with
    that anchor (an epilogue). Groups grow from each not-yet-fused elementwise op, last first,
    taking in producers whose results only the group uses and have the group's shape, up to
    MAX_GROUP ops (the producers left over head groups of their own)."""
    taken: set[int] = set()
    order = graph.order()
    # positions in the run order, taken once: fusing removes members and adds fused nodes,
    # which never join a group, so the other nodes keep their relative order
    position = {nid: i for i, nid in enumerate(order)}
    for sink in reversed(order):
        if sink in taken or not graph.g.has_node(sink) or elementwise_reason(graph, sink):
            continue
        result = Value(sink, 0, graph.node(sink)["types"][0])
        members = _grow(graph, sink, result, taken)
        anchor = _anchor(graph, members, result, taken, position)
        if len(members) < 2 and anchor is None:
            continue
        if anchor is not None:
            members.add(anchor)
        taken |= members
        _replace(graph, members, anchor, result, position)
        ctx.count("epilogues" if anchor is not None else "chains")
        ctx.count("fused", len(members))
    return graph


def _grow(graph: Graph, sink: int, result: Value, taken: set[int]) -> set[int]:
    members, frontier = {sink}, [sink]
    while frontier:
        for v in graph.operands(frontier.pop()):
            if v is None or v.node in members or v.node in taken or len(members) >= MAX_GROUP:
                continue
            if elementwise_reason(graph, v.node) is None and \
                    join_reason(graph, v, members, result) is None:
                members.add(v.node)
                frontier.append(v.node)
    return members


def _anchor(graph: Graph, members: set[int], result: Value, taken: set[int],
            position: dict[int, int]) -> int | None:
    """The matmul/conv (latest in order) whose result only the group reads, if any."""
    best = None
    for v in _external(graph, members):
        if v.node in taken or anchor_reason(graph, v.node) is not None:
            continue
        if v.type.dtype != result.type.dtype or join_reason(graph, v, members, result):
            continue
        if best is None or position[v.node] > position[best]:
            best = v.node
    return best


def _external(graph: Graph, members: set[int]) -> list[Value]:
    """The values the members read from outside, in a stable order (by member, then slot)."""
    seen: dict[tuple[int, int], Value] = {}
    for nid in sorted(members):
        for v in graph.operands(nid):
            if v is not None and v.node not in members:
                seen.setdefault(key(v), v)
    return list(seen.values())


def _replace(graph: Graph, members: set[int], anchor: int | None, result: Value,
             position: dict[int, int]) -> None:
    """Swap the members for one `fused` node holding them as its body."""
    order = sorted(members, key=position.__getitem__)
    outside = _external(graph, members)
    body = Graph()
    inner: dict[tuple[int, int], Value] = {}
    for i, v in enumerate(outside):
        inner[key(v)] = body.add_input(f"in{i}", v.type, graph.node(v.node)["span"])
    body_anchor = None
    for nid in order:
        node = graph.node(nid)
        operands = [None if v is None else inner[key(v)] for v in graph.operands(nid)]
        outs = body.add(node["op"], operands, node["attrs"], node["types"], node["span"],
                        node["scope"])
        for out in outs:
            inner[(nid, out.index)] = out
        if nid == anchor:
            body_anchor = outs[0].node
    body.outputs = [inner[key(result)]]
    body.output_names = ["out"]
    first, last = graph.node(order[0]), graph.node(result.node)
    attrs = {"body": body, "anchor": body_anchor,
             "ops": tuple(graph.node(nid)["op"] for nid in order)}
    (fused,) = graph.add("fused", outside, attrs, [result.type], first["span"], last["scope"])
    replace_uses(graph, result, fused)
    remove_unused(graph, [result.node])
