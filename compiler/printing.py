"""The graph IR as text: DOT for Graphviz (scan bodies drawn as clusters)."""

from __future__ import annotations

from .ir import Graph, GraphVisitor

LEAF_STYLE = ', style=filled, fillcolor="#eef3fb"'  # the values a graph is given


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph, name: str = "model") -> str:
    """A DOT digraph of `graph`: one box per node, edges labelled by tensor type."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    _Dot(lines).emit(graph, "")
    lines.append("}")
    return "\n".join(lines)


def to_dot_pair(before: Graph, after: Graph, name: str = "model") -> str:
    """Two graphs side by side: as elaborated, and after the optimizer."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    dot = _Dot(lines)
    for prefix, graph, label in (("a_", before, "before"), ("b_", after, "after optimization")):
        title = _quote(f"{label} ({len(graph)} nodes)")
        lines.append(f"  subgraph cluster_{prefix} {{ label={title};")
        dot.emit(graph, prefix)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


class _Dot(GraphVisitor):
    """Appends the DOT lines of a graph's nodes to `lines`: one box each, headed by what the
    node is; a scan's body as a cluster beside it."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.clusters = 0  # scan bodies drawn so far: each cluster's prefix is unique

    def emit(self, graph: Graph, prefix: str) -> None:
        for nid in graph.order():
            self.visit(graph, nid, prefix)
            for u, _v, _d in graph.g.in_edges(nid, data=True):
                self.lines.append(f"  {prefix}n{u} -> {prefix}n{nid};")
        for i, out in enumerate(graph.outputs):
            name = graph.output_names[i] if i < len(graph.output_names) else f"out{i}"
            self.lines.append(f"  {prefix}out{i} [label={_quote('output ' + name)}, "
                              f"shape=ellipse];")
            self.lines.append(f"  {prefix}n{out.node} -> {prefix}out{i};")

    def box(self, prefix: str, nid: int, node: dict, head: str, style: str = "") -> None:
        """The node's box: `head`, its types, and where in the source it came from."""
        types = ", ".join(str(t) for t in node["types"])
        span = node["span"]
        where = f"\\n{span.file.rsplit('/', 1)[-1]}:{span.line}" if span else ""
        label = _quote(f"{head}\\n{types}{where}").replace("\\\\n", "\\n")  # DOT's line breaks
        self.lines.append(f"  {prefix}n{nid} [label={label}{style}];")

    def visit_input(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        self.box(prefix, nid, node, f"input {node['attrs']['name']}", LEAF_STYLE)

    def visit_param(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        attrs = node["attrs"]
        self.box(prefix, nid, node, f"{attrs['kind']} {attrs['path']}", LEAF_STYLE)

    def visit_constant(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        self.box(prefix, nid, node, "constant", LEAF_STYLE)

    def visit_fused(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        """One kernel: the ops it holds, in order."""
        self.box(prefix, nid, node, "fused " + "+".join(node["attrs"]["ops"]))

    def visit_scan(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        self.visit_op(graph, nid, node, prefix)
        self.clusters += 1
        sub = f"{prefix}s{self.clusters}_"
        self.lines.append(f'  subgraph cluster_{sub} {{ label="scan body"; style=dashed;')
        self.emit(node["attrs"]["body"], sub)
        self.lines.append("  }")

    def visit_op(self, graph: Graph, nid: int, node: dict, prefix: str) -> None:
        """The op and its attributes (not its body, nor arrays), shortened to 60 characters."""
        op, attrs = node["op"], node["attrs"]
        shown = {k: v for k, v in attrs.items() if k not in ("body",) and not hasattr(v, "shape")}
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        head = f"{op}({args})" if args else op
        if len(head) > 60:
            head = head[:57] + "..."
        self.box(prefix, nid, node, head)
