"""The graph IR as text: DOT for Graphviz (scan bodies drawn as clusters)."""

from __future__ import annotations

from .ir import Graph


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(node: dict) -> str:
    op, attrs = node["op"], node["attrs"]
    types = ", ".join(str(t) for t in node["types"])
    if op == "input":
        head = f"input {attrs['name']}"
    elif op == "param":
        head = f"{attrs['kind']} {attrs['path']}"
    elif op == "constant":
        head = "constant"
    elif op == "fused":  # one kernel: the ops it holds, in order
        head = "fused " + "+".join(attrs["ops"])
    else:
        shown = {k: v for k, v in attrs.items() if k not in ("body",) and not hasattr(v, "shape")}
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        head = f"{op}({args})" if args else op
        if len(head) > 60:
            head = head[:57] + "..."
    where = f"\\n{node['span'].file.rsplit('/', 1)[-1]}:{node['span'].line}" if node["span"] else ""
    return f"{head}\\n{types}{where}"


def to_dot(graph: Graph, name: str = "model") -> str:
    """A DOT digraph of `graph`: one box per node, edges labelled by tensor type."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    counter = [0]
    _emit(graph, "", lines, counter)
    lines.append("}")
    return "\n".join(lines)


def to_dot_pair(before: Graph, after: Graph, name: str = "model") -> str:
    """Two graphs side by side: as elaborated, and after the optimizer."""
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    counter = [0]
    for prefix, graph, label in (("a_", before, "before"), ("b_", after, "after optimization")):
        title = _quote(f"{label} ({len(graph)} nodes)")
        lines.append(f"  subgraph cluster_{prefix} {{ label={title};")
        _emit(graph, prefix, lines, counter)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def _emit(graph: Graph, prefix: str, lines: list[str], counter: list[int]) -> None:
    for nid in graph.order():
        node = graph.node(nid)
        style = ""
        if node["op"] in ("input", "param", "constant"):
            style = ', style=filled, fillcolor="#eef3fb"'
        label = _quote(_label(node)).replace("\\\\n", "\\n")  # keep DOT's line breaks
        lines.append(f"  {prefix}n{nid} [label={label}{style}];")
        if node["op"] == "scan":
            counter[0] += 1
            sub = f"{prefix}s{counter[0]}_"
            lines.append(f'  subgraph cluster_{sub} {{ label="scan body"; style=dashed;')
            _emit(node["attrs"]["body"], sub, lines, counter)
            lines.append("  }")
        for u, _v, _d in graph.g.in_edges(nid, data=True):
            lines.append(f"  {prefix}n{u} -> {prefix}n{nid};")
    for i, out in enumerate(graph.outputs):
        name = graph.output_names[i] if i < len(graph.output_names) else f"out{i}"
        lines.append(f"  {prefix}out{i} [label={_quote('output ' + name)}, shape=ellipse];")
        lines.append(f"  {prefix}n{out.node} -> {prefix}out{i};")
