"""Fusion: groups of ops that one kernel computes, made visible in the IR as `fused` nodes.

A group is a set of elementwise ops with one shape (the group's output shape), grown from its
last op (the group's result); optionally with an anchor, a matmul or a convolution producing
one of the group's operands (the epilogue: bias, residual add, activation). A member's value
used outside the group too (a model output, or an op that runs after the group's result) is
one more result of the group, stored by the same kernel in the same pass over the elements:
an optimizer's update (a new moment, then the new weight from it) is one kernel that reads
each of its operands once and writes each new state and the new weight once. A split of a
value from outside the group, into parts of the group's shape that only the group reads (an
LSTM's gates into i, f, g and o), joins it too: the kernel reads each part where it stands in
the value split (fused.py), so no copy of the parts is made. The group becomes one `fused`
node whose operands are the values the group reads from outside, whose results are the
group's result and then those other values, in run order, and whose `body` attribute holds
the group's ops as a graph (as a scan's body does; its outputs are the node's results). A
pass of the native pipeline (pipeline.py): the native backend runs a group as one kernel
(the anchor's GEMM, then one pass over its output computing the whole chain per element, in
registers: fused.py); the reference evaluates the body, and the ONNX emitter, given a fused
graph, emits the body's ops.

No fusion makes a cycle: a value a member computes is read outside the group only by ops that
run after the group's result in the run order (a fused node takes its result's place there),
so no path leaves the group and comes back into it. The anchor's value is never a result of
its own (the kernel overwrites it in place).
"""

from __future__ import annotations

from collections.abc import Callable

from ...ir import STRUCTURAL_OPS, Graph, Value
from ...ops import REGISTRY, Prop, has
from ...ops.slicing import _split_parts
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


def join_reason(graph: Graph, producer: Value, group: set[int], result: Value,
                later: Callable[[int], bool] | None = None) -> str | None:
    """Why `producer` (a value read by a group whose result is `result`) stays outside the
    group's kernel (None when it can join it). `later(node)`: whether that op runs after the
    group's result, so that it may read `producer` as one more result of the group's kernel;
    None: no op outside the group may read it (an anchor's value, which the kernel overwrites),
    nor may the model return it."""
    uses = users(graph, producer)
    if later is None and any(u == -1 for u, _ in uses):
        return "its result is a model output"
    outside = {u for u, _ in uses if u not in group and u != -1}
    early = outside if later is None else {u for u in outside if not later(u)}
    if early and later is None:
        return f"its result is also used by {len(early)} other op(s)"
    if early:
        return (f"its result is also used by {len(early)} other op(s) that run before the "
                f"fused result (a kernel's results are read after it)")
    if producer.type.shape != result.type.shape:
        return (f"its shape {shape_str(producer.type.shape)} differs from the fused result's "
                f"{shape_str(result.type.shape)}")
    return None


@graph_pass("fuse")
def fuse(graph: Graph, ctx: PassContext) -> Graph:
    """Elementwise chains -> one `fused` node each; a matmul or convolution followed by
    elementwise ops on its result (bias, residual add, activation) -> one `fused` node with
    that anchor (an epilogue). Groups grow from each not-yet-fused elementwise op, last first,
    taking in producers of the group's shape whose results only the group uses, or also the
    model or ops that run after the group's result (those values become more results of the
    fused node: `outputs` counts them), up to MAX_GROUP ops (the producers left over head
    groups of their own)."""
    taken: set[int] = set()
    order = graph.order()
    # positions in the run order, taken once: fusing removes members and adds fused nodes,
    # each at its result's position, so every other node keeps its place and every value
    # still flows from a lower position to a higher one
    position = {nid: i for i, nid in enumerate(order)}
    for sink in reversed(order):
        if sink in taken or not graph.g.has_node(sink) or elementwise_reason(graph, sink):
            continue
        result = Value(sink, 0, graph.node(sink)["types"][0])
        members = _grow(graph, sink, result, taken, position)
        _take_splits(graph, members, result, taken)
        anchor = _anchor(graph, members, result, taken, position)
        if len(members) < 2 and anchor is None:
            continue
        if anchor is not None:
            members.add(anchor)
        taken |= members
        fused, extra = _replace(graph, members, anchor, result, position)
        position[fused] = position[sink]
        ctx.count("epilogues" if anchor is not None else "chains")
        ctx.count("fused", len(members))
        if extra:
            ctx.count("outputs", extra)
    return graph


def _grow(graph: Graph, sink: int, result: Value, taken: set[int],
          position: dict[int, int]) -> set[int]:
    def later(nid: int) -> bool:
        return position[nid] > position[sink]

    members, frontier = {sink}, [sink]
    while frontier:
        for v in graph.operands(frontier.pop()):
            if v is None or v.node in members or v.node in taken or len(members) >= MAX_GROUP:
                continue
            if elementwise_reason(graph, v.node) is None and \
                    join_reason(graph, v, members, result, later) is None:
                members.add(v.node)
                frontier.append(v.node)
    return members


def _take_splits(graph: Graph, members: set[int], result: Value, taken: set[int]) -> None:
    """Add to `members` each split of an outside value, all along one axis, whose parts have
    the group's shape and are read by members only: the kernel reads them in place."""
    axis = None
    for v in _external(graph, members):
        nid = v.node
        if graph.op(nid) != "split" or nid in taken or nid in members or \
                len(members) >= MAX_GROUP:
            continue
        node, (source,) = graph.node(nid), graph.operands(nid)
        if source.node in members or source.type.shape == result.type.shape:
            continue
        if any(t.shape != result.type.shape for t in node["types"]):
            continue
        if any(u not in members for index in range(len(node["types"]))
               for u, _ in users(graph, Value(nid, index, None))):
            continue
        at, _sizes = _split_parts(source.type, node["attrs"])
        if axis is not None and at != axis:
            continue
        axis = at
        members.add(nid)


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
             position: dict[int, int]) -> tuple[int, int]:
    """Swap the members for one `fused` node holding them as its body: its results are
    `result`, then the members' values used outside the group, in run order. Returns the
    fused node and how many results it has besides `result`."""
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
    extras = [Value(nid, 0, graph.node(nid)["types"][0]) for nid in order
              if nid != result.node and nid != anchor
              and any(u not in members for u, _ in users(graph, Value(nid, 0, None)))]
    results = [result, *extras]
    body.outputs = [inner[key(v)] for v in results]
    body.output_names = ["out"] + [f"out{i}" for i in range(1, len(results))]
    first, last = graph.node(order[0]), graph.node(result.node)
    attrs = {"body": body, "anchor": body_anchor,
             "ops": tuple(graph.node(nid)["op"] for nid in order)}
    values = graph.add("fused", outside, attrs, [v.type for v in results], first["span"],
                       last["scope"])
    for old, new in zip(results, values, strict=True):
        replace_uses(graph, old, new)
    remove_unused(graph, [v.node for v in results])
    return values[0].node, len(extras)
