"""Generate docs/stdlib.md from the standard library's sources.

    python -m kiln.stdlib_docs > docs/stdlib.md

Each block, model and fn is listed with its signature (as written in the source), its forward
signature, and the `#` comment lines directly above it.
"""

from __future__ import annotations

import sys
from importlib import resources

from kiln.compiler.syntax import ast as A
from kiln.compiler.syntax.build import parse_module

HEADER = """# The kiln standard library

Generated from `stdlib/*.kiln` by `python -m kiln.stdlib_docs`; do not edit by hand.
Import a module with `import std.NAME` (then `NAME.Block(...)`) or pick names with
`import std.NAME: Block, other`. Parameter names follow PyTorch's, so a PyTorch `state_dict`
saved as safetensors loads as it is.
"""


def _text(source: str, span) -> str:
    lines = source.splitlines()
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1 : span.end_col - 1]
    first = lines[span.line - 1][span.col - 1 :]
    middle = lines[span.line : span.end_line - 1]
    last = lines[span.end_line - 1][: span.end_col - 1]
    return " ".join(part.strip() for part in (first, *middle, last))


def _comment_above(source: str, line: int) -> str:
    lines = source.splitlines()
    out: list[str] = []
    i = line - 2
    while i >= 0 and lines[i].lstrip().startswith("#"):
        text = lines[i].lstrip()[1:].strip()
        if not text.startswith("---"):  # section rules are not documentation
            out.append(text)
        i -= 1
    return " ".join(reversed(out))


def _signature(source: str, item) -> str:
    params = ", ".join(_text(source, p.span) for p in item.params)
    return f"{item.name}({params})" if item.params else item.name


def _forward(source: str, block: A.BlockDef) -> str | None:
    for member in block.members:
        if isinstance(member, A.Forward):
            lines = source.splitlines()[member.span.line - 1 : member.span.end_line]
            parts = []
            for line in lines:  # the header may span lines; it ends at the body's `{`
                code = line.split("#")[0]
                parts.append(code.split("{")[0].strip())
                if "{" in code:
                    break
            return " ".join(p for p in parts if p).replace("( ", "(").replace(" )", ")")
    return None


def module_docs(name: str, source: str) -> str:
    module = parse_module(source, f"std/{name}.kiln")
    intro = []
    for line in source.splitlines():
        if not line.startswith("#"):
            break
        intro.append(line[2:] if line.startswith("# ") else line[1:])
    out = [f"## std.{name}", "", "\n".join(intro).strip(), ""]
    for item in module.items:
        if not isinstance(item, (A.BlockDef, A.FnDef)) or item.name.startswith("_"):
            continue
        kind = item.kind if isinstance(item, A.BlockDef) else "fn"
        out.append(f"### `{kind} {_signature(source, item)}`")
        out.append("")
        doc = _comment_above(source, item.span.line)
        if doc:
            out.append(doc)
            out.append("")
        if isinstance(item, A.BlockDef):
            fwd = _forward(source, item)
            if fwd:
                out.append(f"`{fwd}`")
                out.append("")
    return "\n".join(out)


def generate() -> str:
    files = sorted(
        p for p in resources.files("kiln.stdlib").iterdir() if p.name.endswith(".kiln")
    )
    parts = [HEADER]
    for f in files:
        parts.append(module_docs(f.name[:-5], f.read_text(encoding="utf-8")))
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(generate())
