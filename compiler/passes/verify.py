"""What a legal graph is (as tinygrad's spec.py says it for its UOps), checked between passes:
`verify(graph)` raises IRError naming the node and the rule it breaks."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np

from ..dims import assuming
from ..ir import STRUCTURAL_OPS, Graph
from ..ops import REGISTRY, OpError
from ..types import TensorType, dtype_of_numpy
from .edit import IRError, nested_graphs
from .manager import PassContext, graph_pass

_FIELDS = ("op", "attrs", "types", "span", "scope", "arity")


def describe(graph: Graph, nid: int) -> str:
    node = graph.node(nid)
    where = f" at {node['span']}" if node.get("span") else ""
    scope = f" in {node['scope']}" if node.get("scope") else ""
    return f"node {nid} ({node.get('op')}{scope}{where})"


def verify(graph: Graph, infer: bool = True) -> None:
    """Check every invariant of the IR (and, with `infer`, every node's types against its op's
    shape rule), in `graph` and in every graph nested in it; raise IRError at the first break.
    Sizes compare under the graph's `where X % k == 0` facts."""
    with assuming(graph.size_facts()):
        _verify(graph, infer)


def _verify(graph: Graph, infer: bool) -> None:
    for nid in graph.g.nodes:
        _check_node(graph, nid)
    for u, v, d in graph.g.edges(data=True):
        src, dst = d.get("src"), d.get("dst")
        if not isinstance(src, int) or not 0 <= src < len(graph.node(u)["types"]):
            raise IRError(f"edge {u} -> {v} reads output {src!r}, which {describe(graph, u)} "
                          "does not have")
        if not isinstance(dst, int) or not 0 <= dst < graph.node(v)["arity"]:
            raise IRError(f"edge {u} -> {v} feeds slot {dst!r} of {describe(graph, v)}, "
                          f"whose arity is {graph.node(v)['arity']}")
    for nid in graph.g.nodes:
        _check_slots(graph, nid)
    _check_signature(graph)
    if not nx.is_directed_acyclic_graph(graph.g):
        cycle = [u for u, _v, *_ in nx.find_cycle(graph.g)]
        raise IRError(f"the graph has a cycle through nodes {cycle}")
    if graph.memory is not None and graph.memory.order != graph.order():
        raise IRError("the graph changed after plan_memory planned it: its memory plan is stale")
    if infer:
        for nid in graph.order():
            check_node_types(graph, nid)
    for nid, attr, body in nested_graphs(graph):
        try:
            _verify(body, infer)
        except IRError as err:
            raise IRError(f"in {attr} of {describe(graph, nid)}: {err}") from None


def _check_node(graph: Graph, nid: int) -> None:
    node = graph.node(nid)
    missing = [f for f in _FIELDS if f not in node]
    if missing:
        raise IRError(f"node {nid} lacks {', '.join(missing)}")
    op = node["op"]
    if op not in STRUCTURAL_OPS and op not in REGISTRY:
        raise IRError(f"{describe(graph, nid)}: unknown op {op!r}")
    if not node["types"] or not all(isinstance(t, TensorType) for t in node["types"]):
        raise IRError(f"{describe(graph, nid)}: its outputs need TensorTypes, got {node['types']}")
    if op in STRUCTURAL_OPS and node["arity"] != 0:
        raise IRError(f"{describe(graph, nid)}: a {op} node takes no inputs")
    if op == "param" and "path" not in node["attrs"]:
        raise IRError(f"{describe(graph, nid)}: a param node needs a path")
    if op == "constant":
        value = node["attrs"].get("value")
        (t,) = node["types"]
        if (not isinstance(value, np.ndarray) or dtype_of_numpy(value.dtype) != t.dtype
                or TensorType(t.dtype, value.shape) != t):
            raise IRError(f"{describe(graph, nid)}: its value is not an array of type {t}")


def _check_slots(graph: Graph, nid: int) -> None:
    """No slot fed twice; every required tensor argument of the op's signature fed."""
    node = graph.node(nid)
    fed = Counter(d["dst"] for _, _, d in graph.g.in_edges(nid, data=True))
    twice = [slot for slot, n in fed.items() if n > 1]
    if twice:
        raise IRError(f"{describe(graph, nid)}: input slot {twice[0]} is fed twice")
    rec = REGISTRY.get(node["op"])
    if rec is None:
        return
    kinds = _slot_kinds(rec, node["arity"])
    if kinds is None:
        raise IRError(f"{describe(graph, nid)}: arity {node['arity']} does not fit the "
                      f"signature of {rec.name}")
    for slot, kind in enumerate(kinds):
        if kind != "tensor?" and slot not in fed:
            raise IRError(f"{describe(graph, nid)}: required input slot {slot} has no edge")


def _slot_kinds(rec, arity: int) -> list[str] | None:
    """The kind of each input slot ("tensor" or "tensor?"); a tensor list takes what the fixed
    arguments leave. None when `arity` cannot fit the signature."""
    fixed = [a.kind for a in rec.args if a.kind in ("tensor", "tensor?")]
    listed = any(a.kind == "tensors" for a in rec.args)
    if arity < len(fixed) or (arity > len(fixed) and not listed):
        return None
    kinds: list[str] = []
    for a in rec.args:
        if a.kind in ("tensor", "tensor?"):
            kinds.append(a.kind)
        elif a.kind == "tensors":
            kinds.extend(["tensor"] * (arity - len(fixed)))
    return kinds


def _check_signature(graph: Graph) -> None:
    """Inputs are exactly the `input` nodes; outputs name existing values of the right type."""
    declared = set(graph.inputs)
    found = {n for n, d in graph.g.nodes(data=True) if d["op"] == "input"}
    if declared != found:
        raise IRError(f"graph inputs {sorted(declared)} differ from its input nodes "
                      f"{sorted(found)}")
    for i, out in enumerate(graph.outputs):
        if out.node not in graph.g or not 0 <= out.index < len(graph.node(out.node)["types"]):
            raise IRError(f"output {i} reads node {out.node} output {out.index}, which is gone")
        if graph.node(out.node)["types"][out.index] != out.type:
            raise IRError(f"output {i} is typed {out.type} but {describe(graph, out.node)} "
                          f"makes {graph.node(out.node)['types'][out.index]}")


def check_node_types(graph: Graph, nid: int) -> None:
    """Re-run the node's shape rule on its operands' types; its types must be what it gives."""
    node = graph.node(nid)
    if node["op"] in STRUCTURAL_OPS:
        return
    types = [v.type if v is not None else None for v in graph.operands(nid)]
    try:
        inferred = REGISTRY[node["op"]].infer(types, node["attrs"])
    except OpError as err:
        raise IRError(f"{describe(graph, nid)}: its shape rule rejects its operands "
                      f"({', '.join(map(str, types))}): {err.message}") from None
    if list(inferred) != list(node["types"]):
        shown = ", ".join(map(str, inferred))
        raise IRError(f"{describe(graph, nid)} is typed {', '.join(map(str, node['types']))} "
                      f"but its shape rule gives {shown}")


@graph_pass("check_types")
def check_types(graph: Graph, ctx: PassContext) -> Graph:
    """Shape/type inference check: re-run every op's shape rule on its operands' types and
    raise IRError where the result differs from the node's recorded types. Changes nothing."""
    for nid in graph.order():
        if graph.op(nid) not in STRUCTURAL_OPS:
            check_node_types(graph, nid)
            ctx.count("checked")
    return graph
