"""The grammar and the AST builder stay in step; the parser's newline rules hold."""

from __future__ import annotations

import kiln
from kiln.compiler.syntax import ast as A
from kiln.compiler.syntax.build import ASTBuilder, parse_module
from kiln.compiler.syntax.parser import _parser


def test_every_grammar_rule_has_an_ast_builder_method():
    missing = []
    for rule in _parser().rules:
        name = str(rule.alias or rule.origin.name)
        if name.startswith("_") or (rule.alias is None and rule.options.expand1):
            continue  # inlined rules produce no tree node of their own
        if not hasattr(ASTBuilder, name):
            missing.append(name)
    assert not missing, f"grammar rules with no AST builder method: {sorted(set(missing))}"


def test_newlines_inside_brackets_and_before_pipes_are_insignificant():
    module = parse_module(
        "model M(a: int = 1,\n        b: int = 2) {\n"
        "  forward(x: f32[B,\n                 4]) -> f32[B, 4] {\n"
        "    y = x\n      |> relu\n      |> tanh\n"
        "    if true {\n      y = y\n    }\n    else {\n      y = -y\n    }\n"
        "    return y\n  }\n}\n",
        "t.kiln",
    )
    (block,) = module.items
    assert isinstance(block, A.BlockDef) and [p.name for p in block.params] == ["a", "b"]
    fwd = block.members[0]
    assert isinstance(fwd.body[0].value, A.Pipe) and isinstance(fwd.body[1], A.If)
    assert fwd.body[1].other  # the else on its own line belongs to the if


def test_spans_point_into_the_source():
    module = parse_module("const X = 1 +\\\n  foo\n", "t.kiln")
    const = module.items[0]
    assert (const.span.line, const.span.col) == (1, 1)
    assert (const.value.right.span.line, const.value.right.span.col) == (2, 3)


def test_interpolated_names_parse_their_expressions_with_spans():
    module = parse_module("block L { param w_l{k + 1}x: [2] = init.zeros() }\n", "t.kiln")
    member = module.items[0].members[0]
    (part,) = member.name.parts
    assert isinstance(part, A.InterpName) and part.pieces[0] == "w_l" and part.pieces[2] == "x"
    expr = part.pieces[1]
    assert isinstance(expr, A.BinOp) and expr.span.col == 21


def test_keywords_stay_usable_as_names_where_unambiguous():
    m = kiln.compile(
        "model M(block: int = 2) {\n"
        "  forward(x: f32[N], mask: bool[N]) -> f32[N] {\n"
        "    reverse = where(mask, x, 0.0)\n    axis = 0\n"
        "    return sum(reverse, axis = axis, keepdims = true) * block + x * 0.0\n  }\n}\n"
    , target="reference")
    import numpy as np

    x = np.arange(3, dtype=np.float32)
    out = m(x, np.array([True, False, True]))
    np.testing.assert_allclose(out, np.full(3, 4.0))
