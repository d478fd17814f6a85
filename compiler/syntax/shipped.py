"""The standard library's syntax trees, shipped beside its sources as JSON.

Parsing the standard library is most of a small model's compile: std.nn alone takes about
80 ms of Lark, a ResNet's two modules 150 ms, and every compile in a process parsed them
again. Each `stdlib/NAME.kiln` ships with `NAME.kiln.ast.json`, its AST as nested lists
(a node is its class name and its fields in order, a span its four positions, a tuple
["T", ...]), written by `python -m kiln.compiler.syntax.shipped`. It is used only when made
from this very source text by this very parser (the sha256 of the text; a digest of the
grammar and of the code that builds the AST), else the source is parsed as without it.
Reading it constructs AST classes and nothing else: an unknown tag, a wrong field count or
damaged JSON falls back to parsing. Within a process each module is read once
(`std_module`): its AST is frozen, so compiles share it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
from importlib import resources
from pathlib import Path

from ..errors import Span
from . import ast as A
from .build import parse_module
from .parser import _grammar
from .parser import grammar_digest as _text_digest  # sha256 of a text's UTF-8

FORMAT = 1
SUFFIX = ".ast.json"
# what the AST of a source text depends on besides the text: the grammar and the code that
# turns its parse tree into AST nodes (the limits it checks literals against among it)
_SYNTAX = ("syntax/ast.py", "syntax/build.py", "syntax/parser.py", "limits.py")

_NODES: dict[str, type] = {
    c.__name__: c for c in vars(A).values()
    if isinstance(c, type) and dataclasses.is_dataclass(c) and issubclass(c, A.Node)
}
_FIELDS = {name: len(dataclasses.fields(c)) - 1 for name, c in _NODES.items()}  # less span
_RESERVED = ("S", "T", "F")  # span, tuple, a float JSON lacks
assert not set(_RESERVED) & set(_NODES)

_lock = threading.Lock()
_memo: dict[tuple[str, str], A.Module] = {}


@functools.cache
def syntax_digest() -> str:
    """sha256 over the grammar and the modules that build an AST from it ("" when one of
    them cannot be read, as in an install without sources: then nothing shipped is used)."""
    h = hashlib.sha256(f"kiln-ast-{FORMAT}\0{_text_digest(_grammar())}".encode())
    compiler = Path(__file__).resolve().parent.parent
    try:
        for rel in _SYNTAX:
            h.update(rel.encode() + b"\0" + hashlib.sha256((compiler / rel).read_bytes()).digest())
    except OSError:
        return ""
    return h.hexdigest()


def encode(module: A.Module) -> list:
    """`module` as nested lists of JSON's types (ValueError for a value it cannot hold)."""

    def enc(o):
        if isinstance(o, Span):
            return ["S", o.line, o.col, o.end_line, o.end_col]
        if isinstance(o, A.Node):
            return [type(o).__name__, enc(o.span),
                    *(enc(getattr(o, f.name)) for f in dataclasses.fields(o)[1:])]
        if isinstance(o, tuple):
            return ["T", *(enc(v) for v in o)]
        if o is None or isinstance(o, bool | int | str):
            return o
        if isinstance(o, float):
            return o if o == o and abs(o) != float("inf") else ["F", repr(o)]
        raise ValueError(f"an AST field holds a {type(o).__name__}: {o!r}")

    return enc(module)


def decode(tree, text: str, filename: str) -> A.Module:
    """The Module that `encode` gave `tree`, its spans in `filename` with `text` as source;
    ValueError, TypeError or KeyError for anything that is not such a tree."""

    def dec(o):
        if isinstance(o, list):
            tag = o[0]
            if tag == "S":
                if len(o) != 5 or not all(type(v) is int for v in o[1:]):
                    raise ValueError("a span is four integers")
                return Span(filename, o[1], o[2], o[3], o[4], text)
            if tag == "T":
                return tuple(dec(v) for v in o[1:])
            if tag == "F":
                if o[1:] not in (["nan"], ["inf"], ["-inf"]):
                    raise ValueError("a float JSON lacks is nan, inf or -inf")
                return float(o[1])
            if _FIELDS[tag] != len(o) - 2:
                raise ValueError(f"{tag} has {_FIELDS[tag]} fields")
            span = dec(o[1])
            if not isinstance(span, Span):
                raise ValueError("a node's first field is its span")
            return _NODES[tag](span, *(dec(v) for v in o[2:]))
        if o is None or isinstance(o, bool | int | float | str):
            return o
        raise ValueError(f"unexpected {type(o).__name__} in an AST")

    module = dec(tree)
    if not isinstance(module, A.Module) or module.path != filename:
        raise ValueError(f"not the module {filename}")
    return module


def dumps(module: A.Module, text: str) -> str:
    """The shipped file for `module`, parsed from `text`."""
    return json.dumps({"format": FORMAT, "syntax_sha256": syntax_digest(),
                       "source_sha256": _text_digest(text), "ast": encode(module)},
                      separators=(",", ":"), allow_nan=False)


def loads(shipped: str, text: str, filename: str) -> A.Module | None:
    """The AST in `shipped` (what `dumps` wrote) when it was made from `text` by this parser,
    else None."""
    try:
        header = json.loads(shipped)
        digest = syntax_digest()
        if (not isinstance(header, dict) or header.get("format") != FORMAT or not digest
                or header.get("syntax_sha256") != digest
                or header.get("source_sha256") != _text_digest(text)):
            return None
        return decode(header["ast"], text, filename)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None  # damaged: the source gives the AST, as without the file


def _stdlib():
    return resources.files("kiln.stdlib")


def std_module(name: str, text: str, filename: str) -> A.Module:
    """std.NAME's AST from `text`: from its shipped file when that was made from this text,
    else parsed; once per process for each (text, filename)."""
    key = (filename, _text_digest(text))
    with _lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    module = None
    try:
        shipped = _stdlib().joinpath(f"{name}.kiln{SUFFIX}")
        if shipped.is_file():
            module = loads(shipped.read_text(encoding="utf-8"), text, filename)
    except (OSError, UnicodeDecodeError):
        module = None
    if module is None:
        module = parse_module(text, filename)
    with _lock:
        return _memo.setdefault(key, module)


def main() -> None:
    """Write stdlib/NAME.kiln.ast.json for every stdlib/NAME.kiln (after changing either,
    the grammar or the AST builder)."""
    root = Path(str(_stdlib()))
    for source in sorted(root.glob("*.kiln")):
        text = source.read_text(encoding="utf-8")
        module = parse_module(text, f"<std>/{source.name}")
        target = source.with_name(source.name + SUFFIX)
        target.write_text(dumps(module, text), encoding="utf-8")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
