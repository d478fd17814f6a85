"""Passes as values: a pass is a name, a function Graph -> Graph and a docstring (as in TVM's
pass manager), with the context it runs in and the record of what it changed. The pipeline
that runs them is in `pipeline.py`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph
from .edit import nested_graphs

PassFn = Callable[[Graph, "PassContext"], Graph]


@dataclass
class PassContext:
    """What a pass may read (parameter values, limits) and where it counts its changes."""

    params: dict[str, np.ndarray] | None = None
    fold_limit: int = 1 << 20  # constant folding skips results with more elements
    counts: Counter = field(default_factory=Counter)

    def count(self, what: str, n: int = 1) -> None:
        """Record n changes of one kind ("folded", "removed", "merged", "fused"...)."""
        if n:
            self.counts[what] += n


@dataclass(frozen=True)
class Pass:
    """One graph rewrite. `run(graph, ctx)` returns the rewritten graph (it may edit `graph`
    in place and return it). `nested`: also run on every graph held in a node's attributes
    (scan bodies; fused kernels' subgraphs). `needs_params`: skipped when no parameter values
    are given. `level`: the lowest optimization level that runs it."""

    name: str
    run: PassFn
    doc: str
    nested: bool = True
    needs_params: bool = False
    level: int = 1

    def apply(self, graph: Graph, ctx: PassContext) -> Graph:
        """Run on the nested graphs first (bottom-up), then on `graph`."""
        if self.nested:
            for nid, attr, body in nested_graphs(graph):
                graph.node(nid)["attrs"][attr] = self.apply(body, ctx)
        return self.run(graph, ctx)


def graph_pass(name: str, *, nested: bool = True, needs_params: bool = False, level: int = 1):
    """Make a function (graph, ctx) -> graph a Pass; its docstring says what it rewrites."""

    def make(fn: PassFn) -> Pass:
        if not fn.__doc__:
            raise ValueError(f"pass {name}: every pass needs a docstring")
        return Pass(name, fn, fn.__doc__.strip(), nested, needs_params, level)

    return make


@dataclass(frozen=True)
class PassStats:
    """What one pass did: node counts (nested graphs included), its change counts, its time,
    and why it was skipped if it was."""

    name: str
    nodes_before: int
    nodes_after: int
    changes: dict[str, int]
    seconds: float
    skipped: str | None = None

    def __str__(self) -> str:
        done = self.skipped or ", ".join(f"{k} {v}" for k, v in self.changes.items()) or "-"
        return (f"{self.name:<16} {self.nodes_before:>6} -> {self.nodes_after:<6} "
                f"{self.seconds * 1e3:8.2f} ms  {done}")


def format_stats(stats: list[PassStats]) -> str:
    """The stats as a table, one pass a line."""
    head = f"{'pass':<16} {'nodes':>6}    {'after':<6} {'time':>11}  changes"
    return "\n".join([head, *map(str, stats)])
