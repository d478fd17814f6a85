"""Small graph edits the passes share: copying, finding uses, rewiring, evaluating
compile-time values, and canonical keys for attributes (new nodes: compiler/builder.py)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..dims import Dim
from ..errors import KilnError
from ..evaluate import ConstEnv
from ..ir import STRUCTURAL_OPS, Graph, GraphVisitor, IRError, Value
from ..ops import REGISTRY, OpError
from ..types import TensorType, dtype_of_numpy


def copy_graph(graph: Graph) -> Graph:
    """A structural copy (Graph.copy): nodes, edges and nested graphs are new, constant arrays
    are shared (passes never write into an array)."""
    return graph.copy()


def nested_graphs(graph: Graph) -> Iterator[tuple[int, str, Graph]]:
    """(node, attribute name, graph) for every graph held in a node's attributes: scan bodies
    now, fused kernels' subgraphs later."""
    for nid, data in list(graph.g.nodes(data=True)):
        for attr, value in data["attrs"].items():
            if isinstance(value, Graph):
                yield nid, attr, value


class _Ops(GraphVisitor):
    """How many ops each node counts for: one, and a scan its body's too; a fused node the ops
    it holds (fusing changes kernels, not ops)."""

    def visit_leaf(self, graph: Graph, nid: int, node: dict) -> int:
        return 1

    def visit_op(self, graph: Graph, nid: int, node: dict) -> int:
        return 1 + sum(count_nodes(body) for body in _bodies(node))

    def visit_fused(self, graph: Graph, nid: int, node: dict) -> int:
        body = node["attrs"]["body"]
        return len(body) - len(body.inputs)


class _Kernels(GraphVisitor):
    """How many kernels a backend runs for each node: none for a value the graph is given,
    one for an op or a fused group, and a scan its body's too."""

    def visit_leaf(self, graph: Graph, nid: int, node: dict) -> int:
        return 0

    def visit_op(self, graph: Graph, nid: int, node: dict) -> int:
        return 1

    def visit_scan(self, graph: Graph, nid: int, node: dict) -> int:
        return 1 + count_kernels(node["attrs"]["body"])


def _bodies(node: dict) -> list[Graph]:
    return [v for v in node["attrs"].values() if isinstance(v, Graph)]


def count_nodes(graph: Graph) -> int:
    """Nodes of `graph` and of every graph nested in it; a fused node counts as the ops it
    holds (`count_kernels` counts kernels)."""
    ops = _Ops()
    return sum(ops.visit(graph, nid) for nid in graph.g.nodes)


def count_kernels(graph: Graph) -> int:
    """The kernels a backend runs for `graph`: its nodes other than inputs, parameters and
    constants (a fused node is one kernel; a scan counts the kernels of its body too)."""
    kernels = _Kernels()
    return sum(kernels.visit(graph, nid) for nid in graph.g.nodes)


# uses -------------------------------------------------------------------------------------
def users(graph: Graph, value: Value) -> list[tuple[int, int]]:
    """(node, input slot) of every use of `value`; a graph output is node -1."""
    out = [(v, d["dst"]) for _, v, d in graph.g.out_edges(value.node, data=True)
           if d["src"] == value.index]
    out += [(-1, i) for i, o in enumerate(graph.outputs) if key(o) == key(value)]
    return out


def only_user(graph: Graph, value: Value) -> int | None:
    """The one node using `value` (once), or None when it has several uses or is an output."""
    uses = users(graph, value)
    return uses[0][0] if len(uses) == 1 and uses[0][0] != -1 else None


def key(value: Value) -> tuple[int, int]:
    return value.node, value.index


def replace_uses(graph: Graph, old: Value, new: Value) -> None:
    """Make every use of `old` (edges and graph outputs) read `new`, which must have its type
    and must not depend on `old`."""
    if old.type != new.type:
        raise IRError(f"cannot replace {old.type} (node {old.node}) by {new.type}")
    edges = [(u, v, k, d) for u, v, k, d in graph.g.out_edges(old.node, keys=True, data=True)
             if d["src"] == old.index]
    for u, v, k, d in edges:
        graph.g.remove_edge(u, v, k)
        graph.g.add_edge(new.node, v, src=new.index, dst=d["dst"])
    graph.outputs = [Value(new.node, new.index, o.type) if key(o) == key(old) else o
                     for o in graph.outputs]


def replace_node(graph: Graph, nid: int, values: list[Value]) -> int:
    """Replace every output of node `nid` by `values` (one per output), then remove it and
    the producers nothing else uses any more; returns how many nodes went."""
    for i, (t, new) in enumerate(zip(graph.node(nid)["types"], values, strict=True)):
        replace_uses(graph, Value(nid, i, t), new)
    return remove_unused(graph, [nid])


def remove_unused(graph: Graph, nids: list[int]) -> int:
    """Remove the nodes among `nids` that nothing uses, and then their producers that nothing
    uses; inputs stay. Returns how many nodes went."""
    outputs = {o.node for o in graph.outputs}
    removed, stack = 0, list(nids)
    while stack:
        nid = stack.pop()
        # succ[] is O(1); out_degree() counts every edge, and a model input read by each of
        # n ops would be counted once per removed reader: O(n^2) over a pass
        if (nid not in graph.g or nid in outputs or graph.g.succ[nid]
                or graph.op(nid) == "input"):
            continue
        stack.extend(graph.g.predecessors(nid))
        graph.g.remove_node(nid)
        removed += 1
    return removed


def outputs_of(graph: Graph, nid: int) -> list[Value]:
    return [Value(nid, i, t) for i, t in enumerate(graph.node(nid)["types"])]


# compile-time values ----------------------------------------------------------------------
def known_now(value: Any) -> bool:
    """Whether an attribute value is fully known at compile time: no symbolic size anywhere
    and no nested graph (a body may read parameters, which folding does not see)."""
    if isinstance(value, Dim):
        return value.is_const
    if isinstance(value, (list, tuple)):
        return all(known_now(v) for v in value)
    if isinstance(value, dict):
        return all(known_now(v) for v in value.values())
    return not isinstance(value, Graph)


def numel(t: TensorType) -> int | None:
    """Elements of a tensor of type t, or None when its shape is symbolic."""
    return math.prod(d.value for d in t.shape) if t.is_concrete() else None


def foldable(node: dict) -> bool:
    """Whether a node's results can be computed at compile time from constant inputs."""
    return known_now(node["attrs"]) and all(t.is_concrete() for t in node["types"])


def evaluate_node(node: dict, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Run one node's reference on compile-time arrays; None when it fails or when a result
    does not have the node's type (the run-time path then reports what is wrong)."""
    try:
        with np.errstate(all="ignore"):
            results = REGISTRY[node["op"]].reference(ConstEnv(), args, node["attrs"])
    except (OpError, KilnError, ValueError, IndexError, ArithmeticError):
        return None
    results = [np.asarray(r) for r in results]
    for r, t in zip(results, node["types"], strict=True):
        if dtype_of_numpy(r.dtype) != t.dtype or TensorType(t.dtype, r.shape) != t:
            return None
    return results


def constant_value(graph: Graph, value: Value, params: dict | None) -> np.ndarray | None:
    """The value of `value` if it depends only on constants and (given `params`) parameters;
    else None. Nothing is added to the graph."""
    memo: dict[int, list | None] = {}

    def run(nid: int) -> list | None:
        if nid not in memo:
            memo[nid] = compute(nid)
        return memo[nid]

    def compute(nid: int) -> list | None:
        node = graph.node(nid)
        op, attrs = node["op"], node["attrs"]
        if op == "constant":
            return [attrs["value"]]
        if op == "param":
            return [params[attrs["path"]]] if params and attrs["path"] in params else None
        if op in STRUCTURAL_OPS or not foldable(node):
            return None
        args = []
        for v in graph.operands(nid):
            results = None if v is None else run(v.node)
            if v is not None and results is None:
                return None
            args.append(None if v is None else results[v.index])
        return evaluate_node(node, args)

    results = run(value.node)
    return None if results is None else results[value.index]


# canonical keys ---------------------------------------------------------------------------
def attr_key(value: Any) -> Any:
    """A hashable key equal for equal attribute values and different for different ones:
    arrays by dtype, shape and bytes; floats by repr (0.0 is not -0.0, nan is nan); bools not
    ints; lists not tuples; nested graphs by identity."""
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("array", value.dtype.str, value.shape, digest)
    if isinstance(value, np.generic):
        return attr_key(np.asarray(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(attr_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, attr_key(v)) for k, v in value.items())))
    if isinstance(value, Graph):
        return ("graph", id(value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)
