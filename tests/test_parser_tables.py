"""The LALR tables shipped beside the grammar (grammar/kiln.lark.json): made from this grammar,
loaded without running code, and parsing exactly as the parser built from the grammar."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import lark
import pytest
from lark import Token, Tree

from kiln.compiler.syntax import parser

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "stdlib").glob("*.kiln"), *(ROOT / "examples").glob("*.kiln")])


def shipped() -> str:
    return resources.files("kiln.grammar").joinpath(parser.TABLES).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def built():
    return parser.build_parser(parser._grammar())


def test_tables_are_made_from_this_grammar():
    header = json.loads(shipped())
    assert header["grammar_sha256"] == parser.grammar_digest(parser._grammar()), (
        "grammar/kiln.lark changed: run `python -m kiln.compiler.syntax.parser`")


def test_tables_load_only_for_the_lark_version_that_made_them():
    header = json.loads(shipped())
    loaded = parser.load_tables(shipped(), parser._grammar())
    assert (loaded is not None) == (header["lark"] == lark.__version__)
    other = json.dumps({**header, "lark": header["lark"] + ".other"})
    assert parser.load_tables(other, parser._grammar()) is None


def same(a, b, where: str) -> None:
    """Trees equal with every node's and token's position."""
    if isinstance(a, Tree):
        assert isinstance(b, Tree) and a.data == b.data, where
        if not a.meta.empty:
            assert (a.meta.line, a.meta.column, a.meta.end_line, a.meta.end_column) == (
                b.meta.line, b.meta.column, b.meta.end_line, b.meta.end_column), where
        assert len(a.children) == len(b.children), where
        for x, y in zip(a.children, b.children, strict=True):
            same(x, y, where)
    elif isinstance(a, Token):
        assert isinstance(b, Token), where
        assert (a.type, str(a), a.line, a.column) == (b.type, str(b), b.line, b.column), where
    else:
        assert a == b, where


@pytest.mark.skipif(json.loads(shipped())["lark"] != lark.__version__,
                    reason="the shipped tables are from another lark version: the grammar "
                    "builds the parser (test_tables_load_only_for_... checks the fallback)")
def test_loaded_parser_parses_as_the_built_one(built):
    loaded = parser.load_tables(shipped(), parser._grammar())
    for path in SOURCES:
        text = path.read_text()
        same(built.parse(text, start="start"), loaded.parse(text, start="start"), path.name)
    assert parser._parser() is not built and parser._parser().parse(
        "const A = 1\n", start="start") is not None


@pytest.mark.parametrize("damage", [
    lambda s: s[: len(s) // 2],                                         # truncated
    lambda s: json.dumps({**json.loads(s), "grammar_sha256": "0" * 64}),  # another grammar
    lambda s: json.dumps({**json.loads(s), "tables": {"__items__": 5}}),  # nonsense inside
    lambda s: json.dumps({**json.loads(s), "tables": [{"parser": 1}, {}]}),
    lambda s: "[]",
])
def test_damaged_tables_fall_back_to_the_grammar(damage):
    assert parser.load_tables(damage(shipped()), parser._grammar()) is None
