"""The sizes of a call: `SizeCheck`, what every backend asks before it runs a graph.

At the call's sizes, every tensor of the graph must be within types.MAX_TENSOR_BYTES and every
size non-negative; a reduction without identity must not reduce an empty axis. Not a pass: the
runtime checks each call with the check of the graph it runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .dims import Dim
from .errors import KilnError, Span
from .types import MAX_TENSOR_BYTES, SIZE_LIMIT, TensorType, bytes_text, span_bytes

if TYPE_CHECKING:
    from .ir import Graph

TOO_LARGE_HINT = "the sizes of these inputs are too large for this model"
ALIGN = 64  # bytes: every buffer starts on a cache line (and an AVX-512 vector)


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
    # the op registry and the graph on use: a model loaded without its graph (from a library
    # or the compile cache) checks sizes with neither
    from .ir import Graph
    from .ops import Prop, has
    from .ops._common import normalize_axes

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
    from .ir import Graph

    for _nid, node in graph.g.nodes(data=True):
        for t in node["types"]:
            yield t, node["span"]
        for value in node["attrs"].values():
            if isinstance(value, Graph):
                yield from graph_tensors(value)


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
