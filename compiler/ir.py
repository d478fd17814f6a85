"""The graph IR: a networkx MultiDiGraph whose nodes are primitive ops and edges are tensors.

A node holds `op` (a registry name, or one of the structural ops `input`, `param`,
`constant`), `attrs`, `types` (one TensorType per output), `span` (where in the source it came
from), `scope` (the dotted path of the block instance that made it) and `arity` (how many input
slots it has; absent optional inputs have no edge). An edge `u -> v` carries `src` (u's output
index) and `dst` (v's input slot).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .dims import divisibility, know
from .errors import Span
from .interface import COMPARISONS, Constraint  # noqa: F401  (re-exported)
from .types import TensorType

STRUCTURAL_OPS = frozenset({"input", "param", "constant"})


class IRError(Exception):
    """The IR broke an invariant: a compiler bug, never a user mistake."""


@dataclass(frozen=True)
class Value:
    """One output of one node: the handle the elaborator passes around for a tensor."""

    node: int
    index: int
    type: TensorType


# the ONNX metadata key under which a model's divisibility facts (Graph.size_facts) travel,
# `X:k,Y:m`: written by the ONNX export, read by the ONNX import
SIZE_FACTS_KEY = "kiln.size_facts"


@dataclass
class Graph:
    """A dataflow graph of primitive ops; `scan` nodes hold a body Graph in their attrs."""

    g: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    inputs: list[int] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count())
    # the plan_memory pass's MemoryPlan (passes/memory.py), for backends; None until it runs,
    # and never copied: a copy may be edited, which makes the plan stale
    memory: Any = None

    def add(
        self,
        op: str,
        inputs: list[Value | None],
        attrs: dict | None,
        types: list[TensorType],
        span: Span | None = None,
        scope: str = "",
    ) -> list[Value]:
        """Add a node computing `types` from `inputs`; returns its output Values. A type too
        large for any call to run is refused here, where every tensor is made (K0304)."""
        for t in types:
            t.check_size(span)
        nid = next(self._ids)
        self.g.add_node(
            nid,
            op=op,
            attrs=dict(attrs or {}),
            types=list(types),
            span=span,
            scope=scope,
            arity=len(inputs),
        )
        for slot, value in enumerate(inputs):
            if value is not None:
                self.g.add_edge(value.node, nid, src=value.index, dst=slot)
        return [Value(nid, i, t) for i, t in enumerate(types)]

    def add_input(self, name: str, type_: TensorType, span: Span | None, optional=False) -> Value:
        (value,) = self.add("input", [], {"name": name, "optional": optional}, [type_], span)
        self.inputs.append(value.node)
        return value

    def size_facts(self) -> dict[str, int]:
        """The `where X % k == 0` constraints, {X: k}: true on every call, which checks them."""
        facts: dict[str, int] = {}
        for c in self.constraints:
            fact = divisibility(c.op, c.lhs, c.rhs)
            if fact is not None:
                know(facts, *fact)
        return facts

    def node(self, nid: int) -> dict:
        return self.g.nodes[nid]

    def op(self, nid: int) -> str:
        return self.g.nodes[nid]["op"]

    def operands(self, nid: int) -> list[Value | None]:
        """The Values feeding node `nid`, by input slot (None for an absent optional input)."""
        slots: list[Value | None] = [None] * self.g.nodes[nid]["arity"]
        for u, _v, data in self.g.in_edges(nid, data=True):
            slots[data["dst"]] = Value(u, data["src"], self.g.nodes[u]["types"][data["src"]])
        return slots

    def order(self) -> list[int]:
        """Nodes in a topological order that is stable (ties broken by creation order)."""
        return list(nx.lexicographical_topological_sort(self.g))

    def nodes_with_op(self, op: str) -> list[int]:
        return [n for n, d in self.g.nodes(data=True) if d["op"] == op]

    def params(self) -> list[int]:
        return self.nodes_with_op("param")

    def prune(self) -> None:
        """Remove nodes no output depends on (inputs are kept: they are the signature)."""
        live: set[int] = set(self.inputs)
        stack = [v.node for v in self.outputs]
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            stack.extend(self.g.predecessors(n))
        self.g.remove_nodes_from([n for n in list(self.g.nodes) if n not in live])

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def copy(self) -> Graph:
        """A structural copy: nodes, edges and nested graphs are new, constant arrays are
        shared (nothing writes into an array); new nodes get ids the copy has not used. The
        memory plan is not copied (a copy may be edited)."""
        g = nx.MultiDiGraph()
        for nid, data in self.g.nodes(data=True):
            attrs = {k: v.copy() if isinstance(v, Graph) else v for k, v in data["attrs"].items()}
            g.add_node(nid, **{**data, "attrs": attrs, "types": list(data["types"])})
        g.add_edges_from((u, v, dict(d)) for u, v, d in self.g.edges(data=True))
        next_id = max(self.g.nodes, default=-1) + 1
        return Graph(g, list(self.inputs), list(self.outputs), list(self.output_names),
                     list(self.constraints), itertools.count(next_id))


def holds_body(node: dict) -> bool:
    """Whether a node holds a body graph in its attributes (a scan's loop body, a fused
    group's ops)."""
    return any(isinstance(v, Graph) for v in node["attrs"].values())


class GraphVisitor:
    """Dispatch on the kind of a graph's node, one method per kind (as ast.NodeVisitor
    does), so that no walker of the IR switches on op names itself.

    `visit(graph, nid, *extra)` calls `visit_<kind>(graph, nid, node, *extra)`, where the kind
    is:
    - `input`, `param` or `constant`: a value the graph is given (STRUCTURAL_OPS); these
      default to `visit_leaf`, which does nothing;
    - the op's name for an op holding a body graph (`visit_scan`, `visit_fused`): what its
      body means is each walker's business; a walker without such a method treats the node
      as any op (its record's reference computes a scan, say);
    - `op`, for every other op (`visit_op`, which a walker defines: the op's record says what
      it does).
    """

    def visit(self, graph: Graph, nid: int, *extra: Any) -> Any:
        """The result of the method for node `nid`'s kind."""
        node = graph.g.nodes[nid]
        op = node["op"]
        if op in STRUCTURAL_OPS or holds_body(node):
            method = getattr(self, f"visit_{op}", self.visit_op)
        else:
            method = self.visit_op
        return method(graph, nid, node, *extra)

    def visit_input(self, graph: Graph, nid: int, node: dict, *extra: Any) -> Any:
        return self.visit_leaf(graph, nid, node, *extra)

    def visit_param(self, graph: Graph, nid: int, node: dict, *extra: Any) -> Any:
        return self.visit_leaf(graph, nid, node, *extra)

    def visit_constant(self, graph: Graph, nid: int, node: dict, *extra: Any) -> Any:
        return self.visit_leaf(graph, nid, node, *extra)

    def visit_leaf(self, graph: Graph, nid: int, node: dict, *extra: Any) -> Any:
        """A value the graph is given: no op runs."""
        return None

    def visit_op(self, graph: Graph, nid: int, node: dict, *extra: Any) -> Any:
        """An op its record describes."""
        raise NotImplementedError(f"{type(self).__name__} does not visit {node['op']}")
