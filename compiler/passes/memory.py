"""Memory planning: which intermediate tensors are alive at each step, and where they go.

The last pass of the pipeline, `plan_memory`, runs it on the final graph (fusion decides which
values are intermediates at all) and leaves the plan on the graph (`Graph.memory`) for the
backend: the native one lays out its workspace arena from it. `plan(graph)` gives every
intermediate tensor (a value computed by an op that is not a graph output) its size as a
formula in the symbolic sizes and its lifetime in the graph's run order: born at the op that
computes it, dead after the last op that reads it. From it:

- `MemoryPlan.peak()`: the planned peak activation memory as a formula, the largest sum of the
  sizes alive at one step (a max of polynomials; those another dominates for every value of the
  sizes are dropped);
- `MemoryPlan.views`: results that are another value's bytes (a reshape, flatten, squeeze or
  unsqueeze: the same elements in the same row-major order) get no buffer of their own; the
  value they view lives until their last reader instead (a native kernel would only copy);
- `place(plan, dims)`: byte offsets in one workspace for concrete sizes, reusing the bytes of
  dead tensors (first fit, largest lifetimes not favoured: in run order), which the native
  backend uses for its arena.

Before a call every backend checks the call's sizes with compiler/sizes.SizeCheck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..dims import Dim
from ..errors import KilnError
from ..ir import STRUCTURAL_OPS, Graph
from ..ops.registry import Prop, has
from ..sizes import TOO_LARGE_HINT, sizes_text
from ..types import MAX_TENSOR_BYTES, TensorType, bytes_text
from .manager import PassContext, graph_pass

ALIGN = 64  # bytes: every buffer starts on a cache line (and an AVX-512 vector)


@dataclass(frozen=True)
class Buffer:
    """One intermediate tensor: output `index` of node `node`, alive from step `born` to step
    `dies` (inclusive) of the run order."""

    node: int
    index: int
    type: TensorType
    born: int
    dies: int

    @property
    def bytes(self) -> Dim:
        """Its size in bytes, as a formula (before alignment)."""
        size = Dim.of(self.type.np_dtype.itemsize)
        for d in self.type.shape:
            size = size * Dim.of(d)
        return size


@dataclass
class MemoryPlan:
    """The intermediates of one graph with their lifetimes, in the order they are made."""

    order: list[int]
    buffers: list[Buffer]
    # (node, index) of a view -> the (node, index) whose memory it is (never itself a view)
    views: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def live_sums(self) -> list[Dim]:
        """The bytes alive at each step of the run order."""
        sums = [Dim.of(0) for _ in self.order]
        for buf in self.buffers:
            for step in range(buf.born, buf.dies + 1):
                sums[step] = sums[step] + buf.bytes
        return sums

    def peak(self) -> list[Dim]:
        """The peak activation memory: the max of these formulas (distinct, none dominated by
        another for every value of the sizes)."""
        candidates: list[Dim] = []
        for total in self.live_sums():
            if any(_at_most(total, other) for other in candidates):
                continue
            candidates = [c for c in candidates if not _at_most(c, total)]
            candidates.append(total)
        return candidates or [Dim.of(0)]

    def peak_text(self) -> str:
        terms = self.peak()
        return str(terms[0]) if len(terms) == 1 else f"max({', '.join(map(str, terms))})"

    def total(self) -> Dim:
        """The bytes of all intermediates together (what no reuse would need)."""
        total = Dim.of(0)
        for buf in self.buffers:
            total = total + buf.bytes
        return total


def _at_most(a: Dim, b: Dim) -> bool:
    """Whether a <= b for every non-negative value of the sizes: every coefficient of b - a
    is non-negative."""
    return all(c >= 0 for _, c in (b - a).terms)


def plan(graph: Graph) -> MemoryPlan:
    """The intermediates of `graph` (its own; a scan body's are the scan's business) with
    their lifetimes, views (`views`) resolved to the value they view."""
    order = graph.order()
    position = {nid: i for i, nid in enumerate(order)}
    last: dict[tuple[int, int], int] = {}  # the position of each value's last reader
    for u, v, d in graph.g.edges(data=True):
        k = (u, d["src"])
        last[k] = max(last.get(k, -1), position[v])
    outputs = {(o.node, o.index) for o in graph.outputs}
    views = _views(graph, order, outputs)
    for view, base in views.items():  # the viewed bytes stay until the view's last reader
        last[base] = max(last.get(base, -1), last.get(view, position[view[0]]))
    buffers = []
    for step, nid in enumerate(order):
        node = graph.node(nid)
        if node["op"] in STRUCTURAL_OPS:
            continue
        for i, t in enumerate(node["types"]):
            if (nid, i) not in outputs and (nid, i) not in views:
                buffers.append(Buffer(nid, i, t, step, last.get((nid, i), step)))
    return MemoryPlan(order, buffers, views)


def _views(graph: Graph, order: list[int], outputs: set[tuple[int, int]]
           ) -> dict[tuple[int, int], tuple[int, int]]:
    """The results that need no memory of their own: an op that keeps its operand's elements in
    their row-major order (Prop.RESHAPE) views the operand's bytes, unless the result is a
    graph output (the caller's own array). Each maps to the value at the end of its chain."""
    views: dict[tuple[int, int], tuple[int, int]] = {}
    for nid in order:
        op = graph.op(nid)
        if op in STRUCTURAL_OPS or not has(op, Prop.RESHAPE) or (nid, 0) in outputs:
            continue
        operand = graph.operands(nid)[0]
        if operand is None:
            continue
        source = (operand.node, operand.index)
        views[(nid, 0)] = views.get(source, source)
    return views


def aligned_bytes(t: TensorType, dims: dict[str, int]) -> int:
    """The bytes of a tensor at the sizes `dims`, rounded up to ALIGN (exact: Python ints)."""
    n = math.prod(Dim.of(d).evaluate(dims) for d in t.shape)
    return -(-max(n * t.np_dtype.itemsize, 1) // ALIGN) * ALIGN


def place(lives: list[tuple[TensorType, int, int]], dims: dict[str, int]
          ) -> tuple[np.ndarray, int]:
    """Offsets in one workspace for tensors (type, born, dies) listed in birth order, at the
    sizes `dims`: each goes in the lowest gap between the tensors still alive at its birth
    that fits it (first fit). Returns (offsets, workspace bytes); a workspace of
    MAX_TENSOR_BYTES or more is refused (K0505), as a tensor that large would be."""
    offsets = []
    live: list[tuple[int, int, int]] = []  # (offset, size, dies)
    total = 0
    for t, born, dies in lives:
        size = aligned_bytes(t, dims)
        live = sorted(x for x in live if x[2] >= born)  # those still needed at this step
        offset = 0
        for start, length, _ in live:
            if offset + size <= start:
                break
            offset = max(offset, start + length)
        offsets.append(offset)
        live.append((offset, size, dies))
        total = max(total, offset + size)
    if total >= MAX_TENSOR_BYTES:
        raise KilnError("K0505", f"with these inputs ({sizes_text(dims)}) the intermediate "
                        f"tensors of one call need {bytes_text(total)} bytes together; the "
                        f"workspace of a call must be less than {bytes_text(MAX_TENSOR_BYTES)}",
                        hint=TOO_LARGE_HINT)
    return np.array(offsets, dtype=np.int64), total


@graph_pass("plan_memory", nested=False)
def plan_memory(graph: Graph, ctx: PassContext) -> Graph:
    """Plan the intermediates' memory: lifetimes in run order, sizes as formulas (`plan`),
    left on the graph as `graph.memory` for the backend. Changes no node; counts the
    buffers, and those that can reuse the bytes of one that died before they were made.
    The model's graph only: a scan body's intermediates are the scan's own buffers."""
    graph.memory = plan(graph)
    ctx.count("buffers", len(graph.memory.buffers))
    ctx.count("reusable", _reusable(graph.memory))
    return graph


def _reusable(memory: MemoryPlan) -> int:
    """Buffers made after some other buffer died: they can take its place."""
    first_death = min((b.dies for b in memory.buffers), default=None)
    return sum(1 for b in memory.buffers if first_death is not None and b.born > first_death)
