"""Repeated subgraphs of an imported graph, for `kiln import` to write as blocks (a ResNet's
basic blocks, a Transformer's layers).

The forward of such a model is a chain: values every path from the input to the output passes
through (the output's dominators) cut it into segments, each computed from the cut before it,
weights and constants alone. A run of consecutive units (one or more segments) with the same
structure (the same ops, attributes, types and wiring; the weights may differ) is one block
called once per unit:

    instances = repeated_units(graph)    # [Unit(...), ...], each with its block's `key`

A unit's `args` are what its ops read from outside it: the cut it starts from first, then
every other read of a weight, constant or outer value in order (a weight read twice is two
arguments, so units that share a weight and units that do not have the same signature).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ..ir import Graph, Value

MIN_OPS = 3  # a unit of fewer ops is clearer written inline than as a block
MAX_UNIT_SEGMENTS = 32  # the longest unit looked for: bounds the search on long chains


@dataclass(frozen=True)
class Unit:
    """One call of a block: its ops (in the graph's order), its result, its arguments."""

    key: tuple  # the structure: units of one block have equal keys
    nodes: tuple[int, ...]
    result: Value
    args: tuple[Value, ...]


def repeated_units(graph: Graph) -> list[Unit]:
    """The units of the graph's forward that repeat (at least twice in a row), longest
    repeating stretch first; none for a graph without one input and one output."""
    segments = _segments(graph)
    if segments is None:
        return []
    order = {nid: k for k, nid in enumerate(graph.order())}
    found: list[Unit] = []
    taken = [False] * len(segments)
    # each segment's ops, attributes and types: units whose segments differ here differ, so
    # only candidates that agree are compared in full
    shapes = [_segment_key(graph, ops, order) for _, ops, _ in segments]

    def run_at(i: int, length: int) -> list[Unit]:
        """The units of `length` segments repeating from segment i on (none taken yet)."""
        run: list[Unit] = []
        while i + length <= len(segments) and not any(taken[i:i + length]):
            if run and shapes[i:i + length] != shapes[i - length:i]:
                break
            unit = _unit(graph, segments[i:i + length], order)
            if unit is None or (run and unit.key != run[0].key):
                break
            run.append(unit)
            i += length
        return run

    for length in range(min(len(segments) // 2, MAX_UNIT_SEGMENTS), 0, -1):
        i = 0
        while i + 2 * length <= len(segments):
            # a run starts here: of it and its shifts by less than a unit, one that repeats
            # and whose units start where a skip connection branches (their first argument
            # read most: a residual block's own boundary), then the longest
            if shapes[i:i + length] != shapes[i + length:i + 2 * length] \
                    or len(run_at(i, length)) < 2:
                i += 1
                continue
            runs = [(run_at(i + o, length), i + o) for o in range(length)]
            run, at = max(runs, key=lambda r: (len(r[0]) >= 2, _reads_of_start(graph, r[0]),
                                               len(r[0])))
            if len(run) >= 2:
                found += run
                end = at + len(run) * length
                taken[at:end] = [True] * (end - at)
                i = end
            else:
                i += 1
    return found


def _segment_key(graph: Graph, ops: list[int], order: dict[int, int]) -> tuple:
    return tuple((graph.op(n), _attrs_key(graph.node(n)["attrs"]),
                  tuple(str(t) for t in graph.node(n)["types"]))
                 for n in sorted(ops, key=order.__getitem__))


def _reads_of_start(graph: Graph, run: list[Unit]) -> int:
    if not run:
        return 0
    unit = run[0]
    inside = set(unit.nodes)
    return sum(1 for _, v in graph.g.out_edges(unit.args[0].node) if v in inside)


def _segments(graph: Graph) -> list[tuple[Value, list[int], Value]] | None:
    """(the cut it starts from, its ops, its result) for each segment of the forward, in
    order; None unless the graph has one input and one output."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return None
    source, sink = graph.inputs[0], graph.outputs[0].node
    flow = graph.g.subgraph(nx.descendants(graph.g, source) | {source})
    if sink not in flow:
        return None
    dominators = nx.immediate_dominators(flow, source)
    chain = [sink]
    while chain[-1] != source:
        chain.append(dominators[chain[-1]])
    chain.reverse()
    if any(len(graph.node(c)["types"]) != 1 for c in chain):
        return None
    cut_of: dict[int, int] = {}  # each op of the flow: the last cut before it
    cuts = set(chain)
    for nid in nx.topological_sort(flow):
        if nid == source:
            continue
        up = dominators[nid]
        cut_of[nid] = up if up in cuts else cut_of[up]
    after: dict[int, list[int]] = {c: [] for c in chain}  # each cut: the ops it leads to
    for n, c in cut_of.items():
        if n not in cuts:
            after[c].append(n)
    segments = []
    for start, end in zip(chain, chain[1:]):
        ops = after[start] + [end]
        segments.append((Value(start, 0, graph.node(start)["types"][0]), ops,
                         Value(end, 0, graph.node(end)["types"][0])))
    return segments


def _unit(graph: Graph, segments: list, order: dict[int, int]) -> Unit | None:
    """The unit of consecutive `segments`, with its structural key; None where it is not
    one (fewer than MIN_OPS ops, a scan's body in it, or a value of it read outside it)."""
    start, result = segments[0][0], segments[-1][2]
    nodes = sorted({n for _, ops, _ in segments for n in ops}, key=order.__getitem__)
    inside = set(nodes)
    if len(nodes) < MIN_OPS:
        return None
    local: dict[tuple[int, int], int] = {}
    args: list[Value] = [start]
    key: list = []
    for k, nid in enumerate(nodes):
        node = graph.node(nid)
        if any(isinstance(v, Graph) for v in node["attrs"].values()):
            return None  # a body: its structure is not compared
        if nid != result.node and any(u not in inside for _, u in graph.g.out_edges(nid)):
            return None
        wiring = []
        for v in graph.operands(nid):
            if v is None:
                wiring.append(None)
            elif v.node in inside:
                wiring.append(("op", local[(v.node, v.index)]))
            elif v.node == start.node:
                wiring.append(("arg", 0))
            else:
                args.append(v)
                wiring.append(("arg", len(args) - 1, str(v.type)))
        for i in range(len(node["types"])):
            local[(nid, i)] = k * 64 + i
        key.append((node["op"], _attrs_key(node["attrs"]), tuple(wiring),
                    tuple(str(t) for t in node["types"])))
    key.append(("start", str(start.type)))
    if not all(_plain(v.type) for v in (*args, result)):
        return None
    return Unit(tuple(key), tuple(nodes), result, tuple(args))


def _plain(t) -> bool:
    """Whether every size of a type is a number or one symbol: what a block's forward
    signature binds (a size such as `4*batch` it could not bind from an argument)."""
    return all(d.is_const or str(d).isidentifier() for d in t.shape)


def _attrs_key(attrs: dict) -> str:
    """The attributes as text (constants by value: arrays are passed as arguments)."""
    return repr(sorted((k, repr(v)) for k, v in attrs.items()))


__all__ = ["Unit", "repeated_units"]
