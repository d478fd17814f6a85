"""The standard library's ASTs shipped as JSON (compiler/syntax/shipped.py): made from the
sources and the parser at hand, equal to what parsing gives, span for span, never trusted
when damaged or made from another text, and what a compile actually reads."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest

import kiln
from kiln.compiler.errors import Span
from kiln.compiler.syntax import ast as A
from kiln.compiler.syntax import shipped
from kiln.compiler.syntax.build import parse_module

ROOT = Path(__file__).resolve().parent.parent
STD = sorted(p.name[: -len(".kiln")] for p in (ROOT / "stdlib").glob("*.kiln"))
EXAMPLES = sorted((ROOT / "examples").glob("*.kiln"))


def source(name: str) -> str:
    return resources.files("kiln.stdlib").joinpath(f"{name}.kiln").read_text(encoding="utf-8")


def shipped_text(name: str) -> str:
    return resources.files("kiln.stdlib").joinpath(f"{name}.kiln{shipped.SUFFIX}").read_text(
        encoding="utf-8")


def spans(node):
    """Every span in `node`, depth first."""
    if isinstance(node, Span):
        yield node
    elif isinstance(node, A.Node):
        for f in dataclasses.fields(node):
            yield from spans(getattr(node, f.name))
    elif isinstance(node, tuple):
        for v in node:
            yield from spans(v)


def same(a, b, text: str) -> None:
    assert a == b
    pa, pb = list(spans(a)), list(spans(b))
    assert len(pa) == len(pb) > 10
    for x, y in zip(pa, pb, strict=True):
        assert (x.file, x.line, x.col, x.end_line, x.end_col) == (
            y.file, y.line, y.col, y.end_line, y.end_col)
        assert y.source == text  # the caret line of an error in std comes from its text


def test_every_stdlib_module_ships_its_ast_made_from_this_source_and_parser():
    assert STD, "no stdlib modules found"
    for name in STD:
        text = source(name)
        header = json.loads(shipped_text(name))
        assert header["source_sha256"] != "" and header["syntax_sha256"] == shipped.syntax_digest(
        ), (f"the grammar or the AST builder changed: run `python -m kiln.compiler.syntax."
            f"shipped` ({name})")
        assert shipped.loads(shipped_text(name), text, f"<std>/{name}.kiln") is not None, (
            f"stdlib/{name}.kiln changed: run `python -m kiln.compiler.syntax.shipped`")


@pytest.mark.parametrize("name", STD)
def test_the_shipped_ast_is_the_parsed_one_span_for_span(name):
    text = source(name)
    filename = f"<std>/{name}.kiln"
    same(parse_module(text, filename), shipped.loads(shipped_text(name), text, filename), text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_any_module_round_trips_through_json(path):
    """Every AST class the examples use (more than the stdlib's) encodes and decodes."""
    text = path.read_text(encoding="utf-8")
    module = parse_module(text, str(path))
    tree = json.loads(json.dumps(shipped.encode(module), allow_nan=False))
    same(module, shipped.decode(tree, text, str(path)), text)


def test_floats_json_lacks_round_trip():
    text = "const A = 1\n"
    base = parse_module(text, "f.kiln")
    for value in (float("inf"), float("-inf"), 1e-300, 0.1, -0.0):
        const = base.items[0]
        literal = A.Literal(const.value.span, value)
        module = dataclasses.replace(base, items=(dataclasses.replace(const, value=literal),))
        tree = json.loads(json.dumps(shipped.encode(module), allow_nan=False))
        back = shipped.decode(tree, text, "f.kiln").items[0].value.value
        assert back == value and str(back) == str(value)
    nan = dataclasses.replace(base, items=(dataclasses.replace(
        base.items[0], value=A.Literal(base.items[0].span, float("nan"))),))
    back = shipped.decode(shipped.encode(nan), text, "f.kiln").items[0].value.value
    assert back != back


def test_a_value_json_cannot_hold_is_refused_when_writing():
    module = parse_module("const A = 1\n", "f.kiln")
    bad = dataclasses.replace(module, items=(dataclasses.replace(
        module.items[0], value=A.Literal(module.items[0].span, [1, 2])),))
    with pytest.raises(ValueError, match="list"):
        shipped.encode(bad)


def _edit(name: str, change) -> str:
    header = json.loads(shipped_text(name))
    change(header)
    return json.dumps(header)


def _first_node(header, tag):
    """The first list in header["ast"] whose tag is `tag` (a node, a span or a tuple)."""
    stack = [header["ast"]]
    while stack:
        o = stack.pop()
        if isinstance(o, list):
            if o and o[0] == tag:
                return o
            stack.extend(reversed(o))
    raise AssertionError(tag)


def _deep(s: str) -> str:
    """`s` with its AST replaced by lists nested far deeper than any parser recurses."""
    header = json.loads(s)
    head = json.dumps({k: v for k, v in header.items() if k != "ast"})[:-1]
    return head + ', "ast": ' + "[" * 100000 + "]" * 100000 + "}"


@pytest.mark.parametrize("damage", [
    lambda s, t: (s[: len(s) // 2], t),                                     # truncated
    lambda s, t: (s, t.replace("block", "block ", 1)),                      # another source
    lambda s, t: (_edit("nn", lambda h: h.update(syntax_sha256="0" * 64)), t),
    lambda s, t: (_edit("nn", lambda h: h.update(format=shipped.FORMAT + 1)), t),
    lambda s, t: (_edit("nn", lambda h: _first_node(h, "BlockDef").__setitem__(0, "Exec")), t),
    lambda s, t: (_edit("nn", lambda h: _first_node(h, "Name").append(1)), t),   # a field more
    lambda s, t: (_edit("nn", lambda h: _first_node(h, "S").__setitem__(1, "1")), t),
    lambda s, t: (_edit("nn", lambda h: _first_node(h, "Name").__setitem__(1, ["T"])), t),
    lambda s, t: (_edit("nn", lambda h: h.update(ast=["Name", ["S", 1, 1, 1, 2], "x"])), t),
    lambda s, t: (_edit("nn", lambda h: _first_node(h, "T").append({})), t),
    lambda s, t: (_edit("nn", lambda h: h.update(ast="Module")), t),
    lambda s, t: (_deep(s), t),
    lambda s, t: ("[" * 100000 + "]" * 100000, t),
    lambda s, t: ("[]", t),
])
def test_a_damaged_or_foreign_file_is_never_trusted(damage):
    shipped_nn, text = damage(shipped_text("nn"), source("nn"))
    assert shipped.loads(shipped_nn, text, "<std>/nn.kiln") is None
    assert shipped.loads(shipped_text("nn"), source("nn"), "<std>/other.kiln") is None


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(shipped, "_memo", {})


def test_a_compile_reads_the_shipped_ast_and_parses_only_the_users_file(fresh, monkeypatch):
    parsed = []

    def no_std(text, filename):
        parsed.append(filename)
        raise AssertionError(f"parsed {filename}")

    monkeypatch.setattr(shipped, "parse_module", no_std)
    first = kiln.compile(ROOT / "examples" / "lenet.kiln", target="reference", seed=0)
    assert parsed == [] and set(shipped._memo) and all(
        f.startswith("<std>/") for f, _ in shipped._memo)
    held = dict(shipped._memo)
    again = kiln.compile(ROOT / "examples" / "lenet.kiln", target="reference", seed=0)
    assert shipped._memo == held  # read once per process
    assert [p.shape for p in first.params.values()] == [p.shape for p in again.params.values()]


def test_a_stale_shipped_file_falls_back_to_parsing(fresh, monkeypatch, tmp_path):
    """Another std text than the shipped file was made from (an edited stdlib): parsed, the
    same AST as from the source, and an error in it points into that text."""
    real = resources.files("kiln.stdlib")
    for p in real.iterdir():
        if p.name.endswith((".kiln", shipped.SUFFIX)):
            (tmp_path / p.name).write_bytes(p.read_bytes())
    edited = "# edited\n" + source("nn")  # every line one further down
    (tmp_path / "nn.kiln").write_text(edited, encoding="utf-8")
    monkeypatch.setattr(shipped, "_stdlib", lambda: tmp_path)
    parsed = []
    original = shipped.parse_module

    def counting(text, filename):
        parsed.append(filename)
        return original(text, filename)

    monkeypatch.setattr(shipped, "parse_module", counting)
    module = shipped.std_module("nn", edited, "<std>/nn.kiln")
    assert parsed == ["<std>/nn.kiln"]
    same(parse_module(edited, "<std>/nn.kiln"), module, edited)
    assert shipped.std_module("nn", edited, "<std>/nn.kiln") is module and len(parsed) == 1
    (tmp_path / "nn.kiln.ast.json").write_text("{damaged", encoding="utf-8")
    monkeypatch.setattr(shipped, "_memo", {})
    same(parse_module(source("nn"), "<std>/nn.kiln"),
         shipped.std_module("nn", source("nn"), "<std>/nn.kiln"), source("nn"))
    assert parsed == ["<std>/nn.kiln"] * 2

