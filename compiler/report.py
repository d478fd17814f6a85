"""`kiln compile --report`: what the backend will run, where each piece came from, and why
neighbouring ops were not fused.

    print(report(lowered_model))

Three parts: the kernels in run order, each with the ops in it and their source spans (a
fused kernel lists every op of its group); the ops left unfused next to a fusible neighbour,
with the reason (codegen/llvm/fuse.py's rules, worded for a user); and the planned peak activation
memory as a formula in the symbolic sizes (passes/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .codegen.llvm.fuse import anchor_reason, elementwise_reason, join_reason
from .ir import Graph, GraphVisitor, Value
from .ops import Prop, has
from .passes.memory import ALIGN, plan


@dataclass(frozen=True)
class Unfused:
    """An op `consumer` reading the result of `producer` in another kernel, and why."""

    producer: tuple[str, object]  # (op, span)
    consumer: tuple[str, object]
    reason: str


def _where(span) -> str:
    return str(span) if span is not None else "(no source)"


def kernels(graph: Graph, depth: int = 0, native: bool = True) -> list[str]:
    """One line per kernel in run order (and per op of a fused kernel), scan bodies indented;
    `native`: with the weight layouts the native backend follows."""
    lines = []
    pad = "  " * depth
    describe = _KernelLines(native, depth)
    number = 0
    for nid in graph.order():
        kernel = describe.visit(graph, nid)  # None for a value the graph is given
        if kernel is None:
            continue
        number += 1
        head, *more = kernel
        lines.append(f"{pad}{number:>3}  {head}")
        lines += more
    return lines


class _KernelLines(GraphVisitor):
    """A kernel's line (its op, source and result types) and the lines under it: a fused
    kernel's ops, a scan's body."""

    def __init__(self, native: bool, depth: int):
        self.native, self.depth = native, depth
        self.pad = "  " * depth + "       "  # under the kernel's number

    def visit_fused(self, graph: Graph, nid: int, node: dict) -> list[str]:
        body: Graph = node["attrs"]["body"]
        inner = [n for n in body.order() if body.op(n) != "input"]
        name = "+".join(body.op(n) for n in inner)
        # a group's other results (values the model or later kernels read): its ops say so
        extra = {o.node: i for i, o in enumerate(body.outputs) if i}
        return [f"fused {name}  -> {', '.join(map(str, node['types']))}"] + [
            f"{self.pad}{body.op(n):<12} {_where(body.node(n)['span'])}"
            f"{_layout(body.node(n), self.native)}"
            f"{'  (parts read in place)' if body.op(n) == 'split' else ''}"
            f"{f'  (result {extra[n] + 1} too)' if n in extra else ''}" for n in inner]

    def visit_scan(self, graph: Graph, nid: int, node: dict) -> list[str]:
        return [*self.visit_op(graph, nid, node), f"{self.pad}body, once per step:",
                *kernels(node["attrs"]["body"], self.depth + 2, self.native)]

    def visit_op(self, graph: Graph, nid: int, node: dict) -> list[str]:
        return [f"{node['op']:<18} {_where(node['span'])}  -> "
                f"{', '.join(map(str, node['types']))}{_layout(node, self.native)}"]


def _layout(node: dict, native: bool) -> str:
    """The conv_layout pass's choice, where it made one (only the native backend reads it)."""
    layout = node["attrs"].get("weight_layout")
    return f"  (weight {layout})" if layout and native else ""


@dataclass(frozen=True)
class _End:
    """One end of an edge between two kernels, as the fusion rules see it: the op there (in
    a fused kernel, the body op computing its result, or reading the operand), and the fused
    node when the kernel is one."""

    graph: Graph
    nid: int
    group: dict | None = None


class _Ends(GraphVisitor):
    """The producing end of an edge from result `src` (`slot` None) or the consuming end of
    input `slot`; None where fusion rules do not apply: a value the graph is given, a scan
    (its body's edges are judged on their own)."""

    def visit_fused(self, graph: Graph, nid: int, node: dict, slot: int | None,
                    src: int = 0) -> _End:
        body = node["attrs"]["body"]
        if slot is None:
            return _End(body, body.outputs[src].node, node)
        readers = sorted(v for _, v in body.g.out_edges(body.inputs[slot]))
        return _End(body, readers[0], node)  # the first body op reading that body input

    def visit_scan(self, graph: Graph, nid: int, node: dict, slot: int | None,
                   src: int = 0) -> None:
        return None

    def visit_op(self, graph: Graph, nid: int, node: dict, slot: int | None,
                 src: int = 0) -> _End:
        return _End(graph, nid)


class _LoopBodies(GraphVisitor):
    """The unfused edges inside a node's body whose ops run as kernels of their own (a
    scan's); none elsewhere."""

    def visit_scan(self, graph: Graph, nid: int, node: dict) -> list[Unfused]:
        return unfused(node["attrs"]["body"])

    def visit_op(self, graph: Graph, nid: int, node: dict) -> list[Unfused]:
        return []

    visit_fused = visit_leaf = visit_op


def unfused(graph: Graph) -> list[Unfused]:
    """Every edge between two kernels, one of them a lone op, where one side could be fused
    with the other, and why it was not (scan bodies included)."""
    out = []
    ends = _Ends()
    position = {nid: i for i, nid in enumerate(graph.order())}
    for u, v, d in graph.g.edges(data=True):
        producer, consumer = ends.visit(graph, u, None, d["src"]), ends.visit(graph, v, d["dst"])
        if producer is None or consumer is None or (
                producer.group is not None and consumer.group is not None):
            continue  # two fused kernels: each op there is fused already
        value = Value(u, d["src"], graph.node(u)["types"][d["src"]])
        reason = _reason(graph, value, v, producer, consumer, position)
        if reason is not None:
            pg, pn, cg, cn = producer.graph, producer.nid, consumer.graph, consumer.nid
            out.append(Unfused((pg.op(pn), pg.node(pn)["span"]), (cg.op(cn), cg.node(cn)["span"]),
                               reason))
    bodies = _LoopBodies()
    for nid in graph.order():
        out += bodies.visit(graph, nid)
    return out


def _reason(graph: Graph, value: Value, consumer: int, producer_end: _End,
            consumer_end: _End, position: dict[int, int]) -> str | None:
    pg, pn, cg, cn = producer_end.graph, producer_end.nid, consumer_end.graph, consumer_end.nid
    consumer_ok = elementwise_reason(cg, cn) is None
    producer_elementwise = elementwise_reason(pg, pn) is None
    producer_anchor = anchor_reason(pg, pn) is None and producer_end.group is None
    result = Value(consumer, 0, graph.node(consumer)["types"][0])
    if consumer_ok:
        if not (producer_elementwise or producer_anchor):
            if pg.op(pn) == "split":
                return ("a split joins a fused kernel (which reads its parts in place) only "
                        "when every part has the kernel's shape and only the kernel reads it")
            if has(pg.op(pn), Prop.ANCHOR):
                return anchor_reason(pg, pn)
            return f"{pg.op(pn)} is neither elementwise nor a matmul or convolution"
        # another reader of an elementwise op's value may read it as one more result of
        # the fused kernel when it runs after the kernel's result; an anchor's, never
        later = (lambda u: position[u] > position[consumer]) if producer_elementwise else None
        why = join_reason(graph, value, {consumer}, result, later)
        if why is not None:
            return why
        if producer_end.group is not None:
            return (f"{pg.op(pn)} is computed by a fused kernel of its own (an op joins one "
                    f"kernel; groups do not merge)")
        if producer_anchor and consumer_end.group is not None and \
                consumer_end.group["attrs"]["anchor"] is not None:
            return "the fused kernel already has a matmul or convolution at its head"
        if producer_anchor and value.type.dtype != result.type.dtype:
            return f"the result is {result.type.dtype}, the {pg.op(pn)} computes f32"
        return "not fused (no rule joins them)"
    if producer_elementwise:
        return elementwise_reason(cg, cn)
    return None


def report(model, target: str = "native") -> str:
    """The report for a lowered (optimized) ElaboratedModel."""
    graph: Graph = model.graph
    lines = [f"{model.name}: the kernels the {target} backend runs, in order"]
    lines += kernels(graph, native=target == "native")
    gaps = unfused(graph)
    lines.append("")
    if gaps:
        lines.append("left unfused next to a fusible neighbour:")
        counts: dict[str, int] = {}
        for gap in gaps:  # a block used n times gives the same line n times: say it once
            (p_op, p_span), (c_op, c_span) = gap.producer, gap.consumer
            line = (f"  {c_op} at {_where(c_span)} does not take in {p_op} at "
                    f"{_where(p_span)}: {gap.reason}")
            counts[line] = counts.get(line, 0) + 1
        lines += [line if n == 1 else f"{line} (x{n})" for line, n in counts.items()]
    else:
        lines.append("no op left unfused next to a fusible neighbour")
    memory = graph.memory if graph.memory is not None else plan(graph)
    lines += [
        "",
        f"planned peak activation memory: {memory.peak_text()} bytes",
        f"  (intermediates alive at once; all {len(memory.buffers)} intermediates together "
        f"would take {memory.total()} bytes; each buffer is rounded up to {ALIGN} bytes)",
    ]
    return "\n".join(lines)
