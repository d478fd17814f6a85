"""`kiln summary`: a torchinfo-style table of a model's block instances.

    print(format_summary(summarise_model(elaborated_model, sizes={"B": 1}, depth=2)))

One row per parameter-path prefix that holds a block instance (`features`, `features.0`,
`layer1.0.conv1`), nested by the number of path segments, in the order the forward first
reaches it. Each row counts its whole subtree: parameters, multiply-adds of one call (the op
records' `macs`, scan bodies times their length) and the bytes of its outputs, i.e. the values
its ops compute that ops outside it (or the model's outputs) read. Sizes are concrete where
`sizes` binds the symbols and formulas in them where not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

from .dims import Dim, DimError
from .elaborate.elaborator import ElaboratedModel
from .ir import Graph
from .types import NUMPY_DTYPES, TensorType


@dataclass
class Row:
    """One block instance (or a list of them, such as `features`) and its subtree's costs."""

    path: str
    block: str  # the block's name; "list" or "group" for a prefix that only groups instances
    outputs: list[TensorType] = field(default_factory=list)
    params: int = 0
    macs: Dim = field(default_factory=lambda: Dim.of(0))
    output_bytes: Dim = field(default_factory=lambda: Dim.of(0))

    @property
    def depth(self) -> int:
        return self.path.count(".") + 1


@dataclass
class Summary:
    """The rows of `kiln summary` and the model's totals."""

    name: str
    rows: list[Row]
    sizes: dict[str, int]
    params: int
    buffers: int
    param_bytes: int  # parameters and buffers
    macs: Dim
    input_bytes: Dim
    activation_bytes: Dim  # every result computed from the inputs (torchinfo's pass size)


def _within(scope: str, path: str) -> bool:
    return scope == path or scope.startswith(path + ".")


def _bytes(t: TensorType) -> Dim:
    size = Dim.of(NUMPY_DTYPES[t.dtype].itemsize)
    for d in t.shape:
        size = size * d
    return size


def _graphs(graph: Graph):
    """The graph and every scan body in it, outermost first."""
    yield from (g for g, _ in _graphs_with_owners(graph))


def _graphs_with_owners(graph: Graph, owner: str | None = None):
    """(graph, the scope of the scan node that runs it: None for the model's graph)."""
    yield graph, owner
    for nid in graph.order():
        body = graph.node(nid)["attrs"].get("body")
        if isinstance(body, Graph):
            yield from _graphs_with_owners(body, graph.node(nid)["scope"])


def _first_reached(model: ElaboratedModel) -> dict[str, int]:
    """Each scope's position in run order (scan bodies after their graph)."""
    order: dict[str, int] = {}
    for graph in _graphs(model.graph):
        for nid in graph.order():
            order.setdefault(graph.node(nid)["scope"], len(order))
    return order


def _outputs(graph: Graph, owner: str | None, path: str) -> list[tuple[int, int]]:
    """(node, result) of the values computed within `path` that are read outside it. A scan
    body's results are read by its scan node (of scope `owner`): outside `path` only when that
    node is (a GRU's own step carries are not the GRU's results)."""
    inside = {n for n in graph.order() if _within(graph.node(n)["scope"], path)
              and graph.op(n) not in ("param", "input", "constant")}
    out = [(u, d["src"]) for u, v, d in graph.g.edges(data=True) if u in inside and v not in inside]
    if owner is None or not _within(owner, path):
        out += [(v.node, v.index) for v in graph.outputs if v.node in inside]
    return sorted(set(out))


def summarise_model(model: ElaboratedModel, sizes: dict[str, int] | None = None,
              depth: int | None = None) -> Summary:
    """The rows (at most `depth` segments deep) and totals of an elaborated model."""
    sizes = dict(sizes or {})
    env = {s: Dim.of(n) for s, n in sizes.items()}
    prefixes: dict[str, str] = {}
    for path, block in model.blocks.items():
        parts = path.split(".") if path else []
        for i in range(1, len(parts)):
            # a prefix that is no instance groups some: `features = [...]` or `h.0`, `h.1`
            group = "list" if parts[i].isdigit() else "group"
            prefixes[".".join(parts[:i])] = prefixes.get(".".join(parts[:i]), group)
        if path:
            prefixes[path] = block
    reached = _first_reached(model)

    def first(path: str) -> tuple:
        seen = [i for scope, i in reached.items() if _within(scope, path)]
        return (min(seen) if seen else len(reached), path)

    paths = sorted((p for p in prefixes if depth is None or p.count(".") < depth), key=first)
    rows = [Row(p, prefixes[p]) for p in paths]
    macs = model.macs_by_scope()
    for row in reversed(rows):  # children first: a list's row takes its last child's outputs
        row.params = sum(_count(i.shape) for k, i in model.params.items()
                         if i.kind == "param" and k.startswith(row.path + "."))
        row.macs = sum((m for s, m in macs.items() if _within(s, row.path)), Dim.of(0))
        row.macs = row.macs.substitute(env)
        if row.block in ("list", "group"):
            # the functions between its blocks (`tanh` in `[conv, tanh, pool]`) run in the
            # list's parent's scope, so the list's result is its last child's
            last = [r for r in rows if r.path.startswith(row.path + ".")]
            row.outputs = last[-1].outputs if last else []
            row.output_bytes = last[-1].output_bytes if last else Dim.of(0)
            continue
        for graph, owner in _graphs_with_owners(model.graph):
            for nid, index in _outputs(graph, owner, row.path):
                t = graph.node(nid)["types"][index]
                row.outputs.append(t)
                row.output_bytes = row.output_bytes + _bytes(t)
        row.output_bytes = row.output_bytes.substitute(env)
    graph = model.graph
    computed = set().union(*(nx.descendants(graph.g, n) for n in graph.order()
                             if graph.op(n) == "input"))
    activations = sum((_bytes(t) for n in graph.order() if n in computed
                       for t in graph.node(n)["types"]), Dim.of(0))
    infos = model.params.values()
    return Summary(
        name=model.name,
        rows=rows,
        sizes=sizes,
        params=sum(_count(i.shape) for i in infos if i.kind == "param"),
        buffers=sum(_count(i.shape) for i in infos if i.kind != "param"),
        param_bytes=sum(_count(i.shape) * NUMPY_DTYPES[i.dtype].itemsize for i in infos),
        macs=sum(macs.values(), Dim.of(0)).substitute(env),
        input_bytes=sum((_bytes(p.type) for p in model.inputs), Dim.of(0)).substitute(env),
        activation_bytes=activations.substitute(env),
    )


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def number(d: Dim | int, count: Callable[[int], str] = "{:,}".format) -> str:
    """A count, symbolic terms as `117,600 × B`; `count` writes each coefficient (default:
    exactly, with thousands separators)."""
    d = Dim.of(d)
    parts = []
    for mono, coeff in sorted(d.terms, key=lambda mc: mc[0] == ()):
        factors = " × ".join((a if isinstance(a, str) else a.text()) + (f"^{p}" if p > 1 else "")
                             for a, p in mono)
        if not factors:
            parts.append(count(coeff))
        else:
            parts.append(factors if coeff == 1 else f"{count(coeff)} × {factors}")
    return " + ".join(parts).replace("+ -", "- ") or "0"


def shape_text(t: TensorType, sizes: dict[str, int]) -> str:
    """`f32[B, 6, 28, 28]`, each size evaluated where `sizes` binds its symbols."""
    dims = []
    for d in t.shape:
        try:
            dims.append(str(d.evaluate(sizes)))
        except DimError:
            dims.append(str(d))
    return f"{t.dtype}[{', '.join(dims)}]"


def _outputs_text(row: Row, sizes: dict[str, int]) -> str:
    texts = list(dict.fromkeys(shape_text(t, sizes) for t in row.outputs))
    return ", ".join(texts) if texts else "-"


def format_summary(s: Summary) -> str:
    """The table `kiln summary` prints, then the totals."""
    headers = ("layer (path)", "block", "output shape", "params", "mult-adds", "output bytes")
    rows = [("  " * (r.depth - 1) + r.path, r.block, _outputs_text(r, s.sizes), number(r.params),
             number(r.macs), number(r.output_bytes)) for r in s.rows]
    widths = [max(len(x[i]) for x in [headers, *rows]) for i in range(len(headers))]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    bound = ", ".join(f"{k}={v}" for k, v in s.sizes.items())
    out = [f"{s.name}" + (f" with {bound}" if bound else ""), line(headers),
           "-" * len(line(headers))]
    out += [line(r) for r in rows] or ["(no block instances)"]
    out += [
        "",
        f"total parameters:        {number(s.params)}",
        *([f"buffers:                 {number(s.buffers)}"] if s.buffers else []),
        f"parameter bytes:         {number(s.param_bytes)}" + (" (with buffers)" if s.buffers
                                                                 else ""),
        f"multiply-adds of a call: {number(s.macs)}",
        f"input bytes:             {number(s.input_bytes)}",
        f"activation bytes:        {number(s.activation_bytes)} (the results of every op "
        "on the inputs; the planned peak is smaller: kiln compile --report)",
    ]
    return "\n".join(out)
