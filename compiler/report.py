"""`kiln compile --report`: what the backend will run, where each piece came from, and why
neighbouring ops were not fused.

    print(report(lowered_model))

Three parts: the kernels in run order, each with the ops in it and their source spans (a
fused kernel lists every op of its group); the ops left unfused next to a fusible neighbour,
with the reason (passes/fuse.py's rules, worded for a user); and the planned peak activation
memory as a formula in the symbolic sizes (passes/memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import STRUCTURAL_OPS, Graph, Value
from .ops import Prop, has
from .passes.fuse import anchor_reason, elementwise_reason, join_reason
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
    number = 0
    for nid in graph.order():
        node = graph.node(nid)
        op = node["op"]
        if op in STRUCTURAL_OPS:
            continue
        number += 1
        if op == "fused":
            body: Graph = node["attrs"]["body"]
            inner = [n for n in body.order() if body.op(n) != "input"]
            name = "+".join(body.op(n) for n in inner)
            lines.append(f"{pad}{number:>3}  fused {name}  -> {node['types'][0]}")
            for n in inner:
                lines.append(f"{pad}       {body.op(n):<12} {_where(body.node(n)['span'])}"
                             f"{_layout(body.node(n), native)}")
            continue
        lines.append(f"{pad}{number:>3}  {op:<18} {_where(node['span'])}  -> "
                     f"{', '.join(map(str, node['types']))}{_layout(node, native)}")
        if op == "scan":
            lines.append(f"{pad}       body, once per step:")
            lines += kernels(node["attrs"]["body"], depth + 2, native)
    return lines


def _layout(node: dict, native: bool) -> str:
    """The conv_layout pass's choice, where it made one (only the native backend reads it)."""
    layout = node["attrs"].get("weight_layout")
    return f"  (weight {layout})" if layout and native else ""


def _inner_result(graph: Graph, nid: int) -> tuple[Graph, int]:
    """The (graph, node) that computes node `nid`'s result: a fused node's last body op."""
    if graph.op(nid) == "fused":
        body = graph.node(nid)["attrs"]["body"]
        return body, body.outputs[0].node
    return graph, nid


def _inner_reader(graph: Graph, nid: int, slot: int) -> tuple[Graph, int]:
    """The (graph, node) that reads input `slot` of node `nid`: in a fused node, the first
    body op reading that body input."""
    if graph.op(nid) != "fused":
        return graph, nid
    body = graph.node(nid)["attrs"]["body"]
    source = body.inputs[slot]
    readers = sorted(v for _, v in body.g.out_edges(source))
    return body, readers[0]


def unfused(graph: Graph) -> list[Unfused]:
    """Every edge between two kernels, one of them a lone op, where one side could be fused
    with the other, and why it was not (scan bodies included)."""
    out = []
    for u, v, d in graph.g.edges(data=True):
        ops = (graph.op(u), graph.op(v))
        if ops[0] in STRUCTURAL_OPS or "scan" in ops or ops == ("fused", "fused"):
            continue  # two fused kernels: each op there is fused already
        pg, pn = _inner_result(graph, u)
        cg, cn = _inner_reader(graph, v, d["dst"])
        reason = _reason(graph, Value(u, d["src"], graph.node(u)["types"][d["src"]]), v,
                         pg, pn, cg, cn)
        if reason is not None:
            out.append(Unfused((pg.op(pn), pg.node(pn)["span"]), (cg.op(cn), cg.node(cn)["span"]),
                               reason))
    for nid in graph.order():
        if graph.op(nid) == "scan":
            out += unfused(graph.node(nid)["attrs"]["body"])
    return out


def _reason(graph, value, consumer, pg, pn, cg, cn) -> str | None:
    consumer_ok = elementwise_reason(cg, cn) is None
    producer_elementwise = elementwise_reason(pg, pn) is None
    producer_anchor = anchor_reason(pg, pn) is None and graph.op(value.node) != "fused"
    result = Value(consumer, 0, graph.node(consumer)["types"][0])
    if consumer_ok:
        if not (producer_elementwise or producer_anchor):
            if has(pg.op(pn), Prop.ANCHOR):
                return anchor_reason(pg, pn)
            return f"{pg.op(pn)} is neither elementwise nor a matmul or convolution"
        why = join_reason(graph, value, {consumer}, result)
        if why is not None:
            return why
        if graph.op(value.node) == "fused":
            return "each is the result of its own fused kernel (groups do not merge)"
        if producer_anchor and graph.op(consumer) == "fused" and \
                graph.node(consumer)["attrs"]["anchor"] is not None:
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
