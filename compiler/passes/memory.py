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
- `place(plan, dims)`: byte offsets in one workspace for concrete sizes, reusing the bytes of
  dead tensors (first fit, largest lifetimes not favoured: in run order), which the native
  backend uses for its arena.

`SizeCheck` is what every backend asks before a call: at the call's sizes, is every tensor of
the graph within types.MAX_TENSOR_BYTES, and every size non-negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dims import Dim
from ..errors import KilnError, Span
from ..ir import STRUCTURAL_OPS, Graph
from ..ops import Prop, has
from ..ops._common import normalize_axes
from ..types import MAX_TENSOR_BYTES, SIZE_LIMIT, TensorType, bytes_text, span_bytes
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
    their lifetimes."""
    order = graph.order()
    position = {nid: i for i, nid in enumerate(order)}
    last: dict[tuple[int, int], int] = {}  # the position of each value's last reader
    for u, v, d in graph.g.edges(data=True):
        k = (u, d["src"])
        last[k] = max(last.get(k, -1), position[v])
    outputs = {(o.node, o.index) for o in graph.outputs}
    buffers = []
    for step, nid in enumerate(order):
        node = graph.node(nid)
        if node["op"] in STRUCTURAL_OPS:
            continue
        for i, t in enumerate(node["types"]):
            if (nid, i) not in outputs:
                buffers.append(Buffer(nid, i, t, step, last.get((nid, i), step)))
    return MemoryPlan(order, buffers)


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


TOO_LARGE_HINT = "the sizes of these inputs are too large for this model"


def sizes_text(dims: dict[str, int]) -> str:
    """`B = 0, T = 4294967296`: the symbolic sizes of a call, for its error messages."""
    return ", ".join(f"{name} = {value}" for name, value in dims.items()) or "no sizes"


class SizeCheck:
    """The tensors of a graph (and of the graphs nested in its nodes: scan and fused bodies)
    whose sizes depend on symbolic sizes, each with the span of the op that makes it.

    A call checks them before any backend runs the graph: every size non-negative and every
    tensor spanning less than MAX_TENSOR_BYTES (types.span_bytes). Native code then never
    computes a size that wraps, and no backend is handed a tensor no memory could hold.
    Tensors of constant sizes were checked when they were made (Graph.add, K0304).
    """

    def __init__(self, tensors: list[tuple[TensorType, Span | None]],
                 reductions: list[tuple[str, tuple[Dim, ...], Span | None]] = ()):
        # (op, the sizes it reduces over, span) of each max/min/argmax/argmin whose reduced
        # sizes may be 0: over an empty axis they have no answer (numpy and torch refuse;
        # native code would give -inf and onnxruntime NaN), so such a call is a K0505
        self.reductions = [r for r in reductions if not all(
            isinstance(d, int) and d > 0 for d in r[1])]
        first: dict[TensorType, Span | None] = {}
        for t, span in tensors:
            if not t.is_concrete():
                first.setdefault(t, span)
        self.tensors = list(first.items())
        self._passed: set[tuple] = set()  # the sizes of calls that passed, not checked again

    @staticmethod
    def of(graph: Graph, more: list[TensorType] = ()) -> SizeCheck:
        """The check of `graph`'s tensors, and of the types `more` (those a backend keeps
        beside the graph: a library's signature and memory plan)."""
        return SizeCheck([*graph_tensors(graph), *((t, None) for t in more)],
                         list(graph_reductions(graph)))

    def check(self, dims: dict[str, int]) -> None:
        """Raise K0505 at the op making the first tensor these sizes put out of range."""
        key = tuple(sorted(dims.items()))
        if key in self._passed:
            return
        for t, span in self.tensors:
            sizes = [Dim.of(d).evaluate(dims) for d in t.shape]
            for d, n in zip(t.shape, sizes, strict=True):
                if n < 0:
                    raise KilnError("K0505", f"with these inputs ({sizes_text(dims)}) the size "
                                    f"{d} of a tensor {t} is {n}", span,
                                    hint="a size in the model is out of range for these inputs")
            spans = span_bytes(sizes, t.np_dtype.itemsize)
            if spans >= MAX_TENSOR_BYTES:
                raise KilnError("K0505", f"with these inputs ({sizes_text(dims)}) the tensor "
                                f"{t} spans {bytes_text(spans)} bytes; {SIZE_LIMIT}", span,
                                hint=TOO_LARGE_HINT)
        for op, reduced, span in self.reductions:
            for d in reduced:
                if Dim.of(d).evaluate(dims) == 0:
                    raise KilnError("K0505", f"{op}: with these inputs ({sizes_text(dims)}) "
                                    f"it reduces an empty axis ({d} = 0), which has no {op}",
                                    span)
        if len(self._passed) >= 256:
            self._passed.clear()
        self._passed.add(key)


def graph_reductions(graph: Graph):
    """(op, reduced sizes, span) of every Prop.NO_IDENTITY reduction in `graph` and the graphs
    its nodes hold."""
    for nid, node in graph.g.nodes(data=True):
        if has(node["op"], Prop.NO_IDENTITY):
            shape = graph.operands(nid)[0].type.shape
            axes = normalize_axes(node["attrs"].get("axis"), len(shape))
            yield node["op"], tuple(shape[a] for a in axes), node["span"]
        for value in node["attrs"].values():
            if isinstance(value, Graph):
                yield from graph_reductions(value)


def graph_tensors(graph: Graph):
    """(type, span) of every value made in `graph` and in the graphs its nodes hold."""
    for _nid, node in graph.g.nodes(data=True):
        for t in node["types"]:
            yield t, node["span"]
        for value in node["attrs"].values():
            if isinstance(value, Graph):
                yield from graph_tensors(value)


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
