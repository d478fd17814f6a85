"""The graph optimizer: each pass fires on its pattern (small kiln models, compared by op counts
and structure), leaves other graphs alone, and keeps the numbers of the unoptimized graph on
the reference interpreter; the pipeline never changes its input; `verify` catches broken IR and
names the pass that broke it."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import check_opt_levels

import kiln
from kiln.compiler.codegen.llvm.pipeline import NATIVE_PIPELINE
from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Value
from kiln.compiler.passes import (
    IRError,
    Pass,
    count_nodes,
    format_stats,
    graph_pass,
    verify,
)
from kiln.compiler.passes.edit import attr_key, nested_graphs
from kiln.compiler.pipelines import PIPELINES, optimize
from kiln.compiler.types import TensorType

ROOT = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------------------- helpers
@functools.cache
def program(src: str):
    return kiln.load(src)


def elaborate(src: str, model: str | None = None):
    return program(src).elaborate(model)


@functools.cache
def initial_params(src: str, model: str | None = None) -> dict:
    return dict(kiln.compile(program(src), model=model, target="reference").params)


def ops(graph) -> Counter:
    """Op counts of `graph` and of the graphs nested in it."""
    counts = Counter(d["op"] for _, d in graph.g.nodes(data=True))
    for _, _, body in nested_graphs(graph):
        counts += ops(body)
    return counts


def structure(graph) -> tuple:
    """Everything about a graph's nodes and edges, to show that it did not change."""
    nodes = sorted((n, d["op"], attr_key({k: v for k, v in d["attrs"].items() if k != "body"}),
                    tuple(d["types"])) for n, d in graph.g.nodes(data=True))
    edges = sorted((u, v, d["src"], d["dst"]) for u, v, d in graph.g.edges(data=True))
    return nodes, edges, tuple(graph.inputs), tuple(graph.outputs)


def feeds(model, dims: dict, rng) -> list:
    """Random arrays for the graph's inputs, in graph order."""
    out = []
    for nid in model.graph.inputs:
        t = model.graph.node(nid)["types"][0]
        shape = t.concrete_shape(dims)
        if t.dtype == "bool":
            out.append(rng.random(shape) < 0.3)
        elif t.dtype in ("i32", "i64"):
            out.append(rng.integers(0, 50, shape).astype(t.np_dtype))
        else:
            out.append(rng.standard_normal(shape).astype(t.np_dtype))
    return out


def check_numerics(model, graph, params: dict, dims: dict, seed: int = 0) -> None:
    """The optimized `graph` computes what the model's graph computes, on random inputs."""
    args = feeds(model, dims, np.random.default_rng(seed))
    want = run_graph(model.graph, args, params, dims)
    got = run_graph(graph, args, params, dims)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def run_pass(src: str, name: str, model: str | None = None, params: dict | None = None,
             dims: dict | None = None):
    """Run one pass (verified) on a model; check numerics; return (before, after, stats)."""
    m = elaborate(src, model)
    graph, stats = optimize(m, passes=[name], params=params, verify=True)
    if dims is not None:
        check_numerics(m, graph, params or initial_params(src, model), dims)
    return m.graph, graph, stats[0]


def forward(body: str, signature: str = "x: f32[B, 3]", result: str | None = "f32[B, 3]") -> str:
    """A one-model source whose forward is `body` (its result type left out with None)."""
    lines = "\n".join("    " + line for line in body.strip().splitlines())
    arrow = f" -> {result}" if result else ""
    return f"model M() {{\n  forward({signature}){arrow} {{\n{lines}\n  }}\n}}\n"


DIMS = {"B": 2, "T": 5}


# ---------------------------------------------------------------------------- the manager
def test_pipeline_passes_are_named_documented_and_unique():
    names = [p.name for p in NATIVE_PIPELINE]
    assert names == ["check_types", "fold_constants", "simplify", "merge_split_projections",
                     "hoist_scan_invariants", "share_batch_statistics", "fold_batch_norm",
                     "fold_weight_layout", "transposed_operands", "strided_products", "cse",
                     "dce", "conv_layout", "fuse", "plan_memory"]
    assert PIPELINES["native"] is NATIVE_PIPELINE
    assert [p.name for p in PIPELINES["onnx"]] == ["check_types", "fold_constants", "simplify",
                                                   "merge_split_projections",
                                                   "hoist_scan_invariants",
                                                   "share_batch_statistics", "cse", "dce"]
    assert all(isinstance(p, Pass) and p.doc for p in NATIVE_PIPELINE)
    with pytest.raises(ValueError, match="docstring"):
        graph_pass("undocumented")(lambda graph, ctx: graph)


def test_optimize_copies_and_level_zero_runs_nothing():
    src = forward("return dropout(x * 1.0 + 0.0)")
    m = elaborate(src)
    before = structure(m.graph)
    graph, stats = optimize(m)
    assert structure(m.graph) == before  # the caller's graph is never edited
    assert ops(graph)["dropout"] == 0 and ops(m.graph)["dropout"] == 1
    same, none = optimize(m, level=0)
    assert none == [] and same is not m.graph and structure(same) == before


def test_stats_record_every_pass():
    src = forward("return exp(ones([3])) * x * 1.0")
    _, stats = optimize(elaborate(src))
    assert [s.name for s in stats] == [p.name for p in NATIVE_PIPELINE]
    fold = stats[1]
    assert fold.changes == {"folded": 2} and fold.nodes_after < fold.nodes_before
    assert fold.seconds >= 0
    assert next(s for s in stats if s.name == "fold_batch_norm").skipped == \
        "skipped: no params given"
    table = format_stats(stats)
    assert "fold_constants" in table and "x*1 -> x 1" in table


# ---------------------------------------------------------------------------- verify
def broken_pass(edit) -> Pass:
    @graph_pass("breaker")
    def breaker(graph, ctx):
        """Breaks the IR on purpose."""
        edit(graph)
        return graph

    return breaker


def first(graph, op: str) -> int:
    return graph.nodes_with_op(op)[0]


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.node(first(g, "relu")).update(op="frobnicate"), "unknown op 'frobnicate'"),
    (lambda g: g.node(first(g, "relu")).update(types=[TensorType("f32", (7,))]),
     "but its shape rule gives f32"),
    (lambda g: g.g.remove_edges_from(list(g.g.in_edges(first(g, "relu")))),
     "required input slot 0 has no edge"),
    (lambda g: g.g.add_edge(first(g, "relu"), first(g, "exp"), src=0, dst=0),
     "slot 0 is fed twice"),
    (lambda g: g.g.add_edge(first(g, "relu"), first(g, "exp"), src=3, dst=0),
     "reads output 3"),
    (lambda g: g.g.add_edge(first(g, "exp"), first(g, "relu"), src=0, dst=1),
     "whose arity is 1"),
    (lambda g: g.g.remove_node(g.outputs[0].node), "which is gone"),
    (lambda g: g.inputs.clear(), "differ from its input nodes"),
])
def test_verify_names_the_pass_that_broke_the_ir(edit, message):
    m = elaborate(forward("return exp(relu(x))"))
    verify(m.graph)
    with pytest.raises(IRError, match=message) as err:
        optimize(m, passes=[broken_pass(edit)], verify=True)
    assert "after pass 'breaker'" in str(err.value)
    optimize(m, passes=[broken_pass(edit)], verify=False)  # unverified, it goes unnoticed


def test_the_suite_verifies_every_optimization():
    """tests/conftest.py sets KILN_VERIFY_IR=1: optimize verifies unasked, so every kiln.compile
    and CLI command in the suite checks the IR after each pass."""
    m = elaborate(forward("return exp(relu(x))"))
    with pytest.raises(IRError, match="after pass 'breaker'"):
        optimize(m, passes=[broken_pass(lambda g: g.inputs.clear())])


def test_verify_finds_a_cycle_and_checks_scan_bodies():
    m = elaborate(SCAN)
    graph, _ = optimize(m, level=0)
    (scan,) = graph.nodes_with_op("scan")
    body = graph.node(scan)["attrs"]["body"]
    tanh = first(body, "tanh")
    body.node(tanh)["types"] = [TensorType("f16", body.node(tanh)["types"][0].shape)]
    with pytest.raises(IRError, match=r"in body of node \d+ \(scan"):
        verify(graph)
    graph, _ = optimize(elaborate(forward("return exp(x) + x")), level=0)
    exp, add = first(graph, "exp"), first(graph, "add")
    graph.g.remove_edges_from(list(graph.g.in_edges(exp)))
    graph.g.add_edge(add, exp, src=0, dst=0)
    with pytest.raises(IRError, match="cycle through nodes"):
        verify(graph)


def test_check_types_accepts_elaborated_models_and_rejects_wrong_types():
    m = elaborate(forward("return x @ transpose(x, 0, 1) @ x"))
    _, graph, stats = run_pass(forward("return x @ transpose(x, 0, 1) @ x"), "check_types")
    assert stats.changes == {"checked": 3} and structure(graph) == structure(m.graph)
    mm = first(graph, "matmul")
    graph.node(mm)["types"] = [TensorType("f32", ("B", 7))]
    with pytest.raises(IRError, match=r"matmul.*is typed f32\[B, 7\] but its shape rule gives f32\[B, B\]"):
        optimize(graph, passes=["check_types"])


# ---------------------------------------------------------------------------- fold_constants
def test_fold_constants_fires_on_constant_subexpressions():
    src = forward("""
        c = exp(ones([3])) * 2.0 + arange(3)
        return x * c + sum(full([2, 2], 0.5))
    """)
    before, after, stats = run_pass(src, "fold_constants", dims=DIMS)
    assert stats.changes == {"folded": 8}  # ones exp mul arange cast add full sum
    assert ops(before)["exp"] == 1 and ops(after)["exp"] == 0
    assert ops(after) == Counter(input=1, constant=2, mul=1, add=1)


def test_fold_constants_leaves_symbolic_huge_and_input_dependent_nodes():
    src = forward("""
        big = zeros([1100, 1000])
        return x + zeros([B, 3]) + sum(big) + exp(x)
    """)
    before, after, stats = run_pass(src, "fold_constants", dims=DIMS)
    assert stats.changes == {"too large": 1}
    assert structure(after) == structure(before)


# ---------------------------------------------------------------------------- simplify
@pytest.mark.parametrize("expr, gone, rule", [
    ("x * 1", "mul", "x*1 -> x"),
    ("1.0 * x", "mul", "x*1 -> x"),
    ("x + 0", "add", "x+0 -> x"),
    ("x - 0", "sub", "x-0 -> x"),
    ("x / 1", "div", "x/1 -> x"),
    ("-(-x)", "neg", "-(-x) -> x"),
    ("transpose(transpose(x, 0, 1), 1, 0)", "transpose", "permute(permute(x)) -> permute(x) or x"),
    ("reshape(x, [B, 3])", "reshape", "reshape to x's shape -> x"),
    ("reshape(flatten(x, start = 0), [B, 3])", "flatten", "reshape(reshape(x)) -> reshape(x) or x"),
    ("cast(x, \"f32\")", "cast", "cast to x's dtype -> x"),
    ("dropout(x, p = 0.3)", "dropout", "dropout (inference) -> x"),
    ("x[:, :]", "slice", "x[:, ...] -> x"),
    ("x[..., 0:3]", "slice", "x[:, ...] -> x"),
    ("pad(x, [0, 0, 0, 0])", "pad", "pad by zeros -> x"),
    ("pad(x, [0, 0], mode = \"reflect\")", "pad", "pad by zeros -> x"),
    ("x ** 1", "pow", "x**1 -> x"),
])
def test_simplify_rule_fires(expr, gone, rule):
    before, after, stats = run_pass(forward(f"return relu({expr})"), "simplify", dims=DIMS)
    assert ops(before)[gone] >= 1 and ops(after)[gone] == 0
    assert stats.changes == {rule: 1}
    assert ops(after) == Counter(input=1, relu=1)


def test_a_square_becomes_a_product_of_the_same_value():
    """x ** 2 -> x * x (a pow per element is a libm call no loop vectorises; mse_loss's
    square and its gradient's x ** 1 were 60 % of a small model's train step), bit-equal to
    numpy's power; an exponent that broadcasts x, or another constant, stays a pow."""
    before, after, stats = run_pass(forward("return relu(x ** 2)"), "simplify", dims=DIMS)
    assert stats.changes == {"x**2 -> x*x": 1}
    assert ops(after) == Counter(input=1, mul=1, relu=1)
    for expr in ("x ** 3", "x ** 0.5", "x ** full([2, B, 3], 2.0)", "2 ** x"):
        _, after, stats = run_pass(forward(f"return {expr}", result=None), "simplify",
                                   dims=DIMS)
        assert stats.changes == {} and ops(after)["pow"] == 1, expr
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32) * 1e3
    for target in ("reference", "native"):
        m = kiln.compile(forward("return x ** 2", result=None), target=target)
        np.testing.assert_array_equal(m(x), np.power(x, np.float32(2)))


def test_simplify_merges_chains():
    src = forward("""
        y = reshape(flatten(reshape(x, [B, 3, 1]), start = 0), [3, B])
        z = permute(transpose(unsqueeze(x, 0), 0, 2), [1, 2, 0])
        return transpose(y, 0, 1) + squeeze(z, 1)
    """)
    before, after, stats = run_pass(src, "simplify", dims=DIMS)
    assert stats.changes == {"reshape(reshape(x)) -> reshape(x) or x": 2,
                             "permute(permute(x)) -> permute(x) or x": 1}
    assert ops(after)["reshape"] == 1 and ops(after)["flatten"] == 0
    assert ops(after)["permute"] == 1 and ops(after)["transpose"] == 1


@pytest.mark.parametrize("expr", [
    "x * 2", "x + 1", "2 - x", "0 - x", "0.0 - x", "zeros([3]) - x", "1 / x", "x[0] * ones([2, 3])", "transpose(x, 0, 1)",
    "reshape(x, [3, B])", "cast(x, \"f16\")", "x[1:]", "x[:, ::-1]", "x[:, none]",
    "-x", "transpose(transpose(x, 0, 1), 0, 1) + transpose(x, 0, 1)[:, 0]",
    "pad(x, [1, -1])",  # x's shape, moved by one: no identity
])
def test_simplify_leaves_other_expressions(expr):
    src = forward(f"return {expr}", result=None)
    before, after, stats = run_pass(src, "simplify", dims=DIMS)
    if "transpose(transpose" in expr:  # the identity pair still goes; the shared one stays
        assert stats.changes == {"permute(permute(x)) -> permute(x) or x": 1}
        return
    assert stats.changes == {} and structure(after) == structure(before)


@pytest.mark.parametrize("expr, matmuls, permutes", [
    # (x^T @ w)^T, the weight gradient a linear layer's rule makes: w^T @ x, no transpose left
    ("transpose(matmul(transpose(x, 0, 1), w), 0, 1)", 1, 1),
    ("transpose(matmul(x, w2), 0, 1)", 1, 2),                       # w2^T @ x^T
])
def test_simplify_transposes_a_product_through_its_operands(expr, matmuls, permutes):
    src = forward(f"return {expr}", signature="x: f32[B, 3], w: f32[B, 4], w2: f32[3, 4]",
                  result=None)
    before, after, stats = run_pass(src, "simplify", dims=DIMS)
    assert stats.changes.get("(a @ b)^T -> b^T @ a^T") == 1
    assert ops(after)["matmul"] == matmuls
    assert ops(after)["permute"] + ops(after)["transpose"] == permutes


# Multi-head attention as std.transformer writes it: one projection split into queries, keys
# and values, each into 4 heads of 8; the heads merged again after the product with v.
ATTENTION = forward("""
    q, k, v = split(x, 3, axis = -1)
    n = dim(x, 0)
    l = dim(x, 1)
    qh = transpose(reshape(q, [n, l, 4, 8]), 1, 2) * 0.3
    s = qh @ transpose(reshape(k, [n, l, 4, 8]), 1, 2).T
    o = softmax(s, axis = -1) @ transpose(reshape(v, [n, l, 4, 8]), 1, 2)
    return reshape(transpose(o, 1, 2), [n, l, 32])
""", signature="x: f32[B, T, 96]", result="f32[B, T, 32]")


def test_strided_products_read_and_write_attention_heads_in_place():
    _, after, stats = run_pass(ATTENTION, "strided_products", dims=DIMS)
    assert stats.changes == {"matmul of views -> matmul_strided": 2,
                             "matmul_strided, softmax, matmul_strided -> attention_strided": 1}
    counts = ops(after)
    assert counts["attention_strided"] == 1
    for op in ("matmul", "matmul_strided", "softmax", "split", "transpose", "permute", "mul",
               "reshape"):
        assert counts[op] == 0, op  # no copy left: one kernel reads x and writes the result
    (node,) = [n for _, n in after.g.nodes(data=True) if n["op"] == "attention_strided"]
    views = {k: [str(d) for d in node["attrs"][k]] for k in ("q_view", "k_view", "v_view",
                                                             "c_view")}
    # q, k and v's heads: rows 96 apart, heads 8 apart, k^T read with rows of stride 1; the
    # result written merged into [B, T, 32]: rows 32 apart; the scale after q @ k^T
    assert views == {"q_view": ["0", "96*T", "8", "96", "1"],
                     "k_view": ["32", "96*T", "8", "1", "96"],
                     "v_view": ["64", "96*T", "8", "96", "1"],
                     "c_view": ["0", "32*T", "8", "32", "1"]}
    assert node["attrs"]["alpha"] == pytest.approx(0.3)
    for sizes in ({"B": 2, "T": 5}, {"B": 1, "T": 1}, {"B": 3, "T": 2}, {"B": 2, "T": 0}):
        check_opt_levels(ATTENTION, sizes=sizes)
    # enough heads' work for two threads to share them, each with its own scores
    x = np.random.default_rng(2).standard_normal((3, 64, 96)).astype(np.float32)
    want = kiln.compile(ATTENTION, target="reference", opt_level=0)(x)
    np.testing.assert_allclose(kiln.compile(ATTENTION, target="native", threads=2)(x), want,
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scores, fused", [
    ("where(keep, s, -inf)", True),                   # a causal mask [T, T], every head's
    ("where(keep, -inf, s)", True),                   # filled where it is true
    ("where(keep, s * 0.125, -inf)", True),           # a scale after the product, then a mask
    ("s / 8.0", True),                                # a scale by division
    ("s + pad[:, none, none, :]", True),              # a key-padding bias [B, 1, 1, T]
    ("where(keys, -1e9, s / 8.0) + pad[:, none, none, :]", True),  # all three
    ("where(keys, -inf, where(keep, -inf, s))", True),  # two masks filled alike: their union
    ("where(keys, s, -inf) + pad[:, none, none, :]", True),  # a mask and a bias
    ("where(keys, -inf, where(keep, s, -inf))", False),  # two masks of opposite kinds
    ("where(col, s, -inf)", False),                   # a mask broadcast along the keys
    ("where(keep, s, s * 2.0)", False),               # no constant to fill with
    ("where(keep, s, -inf) * 2.0", False),            # a scale after the mask
    ("s + s", False),                                 # the scores read twice
])
def test_strided_products_fold_masks_and_biases_into_attention(scores, fused):
    """What runs between the scores' product and the softmax, when the attention kernel
    does it: a scale by a constant, a bool mask's where with a constant, an f32 bias, each
    a view of its own tensor broadcast over the heads; against the unoptimised graph."""
    src = ATTENTION.replace("o = softmax(s, axis = -1)", f"o = softmax({scores}, axis = -1)")
    src = src.replace("x: f32[B, T, 96]", "x: f32[B, T, 96], keep: bool[T, T], pad: f32[B, T], "
                      "keys: bool[B, 1, 1, T], col: bool[T, 1]")
    _, after, _ = run_pass(src, "strided_products", dims=DIMS)
    counts = ops(after)
    assert counts["attention_strided"] == int(fused)
    if fused:
        for op in ("matmul_strided", "softmax", "where", "add", "div", "mul", "slice"):
            assert counts[op] == 0, op
    for sizes in ({"B": 2, "T": 5}, {"B": 1, "T": 1}, {"B": 3, "T": 19}):
        check_opt_levels(src, sizes=sizes)
    if fused:  # enough heads' work for two threads, each with its rows of mask and bias
        rng = np.random.default_rng(3)
        inputs = [rng.standard_normal((3, 64, 96)).astype(np.float32),
                  rng.random((64, 64)) < 0.7, rng.standard_normal((3, 64)).astype(np.float32),
                  rng.random((3, 1, 1, 64)) < 0.3, rng.random((64, 1)) < 0.9]
        want = kiln.compile(src, target="reference", opt_level=0)(*inputs)
        np.testing.assert_allclose(kiln.compile(src, target="native", threads=2)(*inputs), want,
                                   rtol=RTOL, atol=ATOL)


def test_strided_products_keep_scores_that_are_read_twice():
    """Attention whose weights are a result too (need_weights): the scores are stored, so
    the two products stay apart, each reading its views in place."""
    src = ATTENTION.replace("    o = softmax(s, axis = -1) @", "    w = softmax(s, axis = -1)\n    o = w @")
    src = src.replace("return reshape(transpose(o, 1, 2), [n, l, 32])",
                      "return reshape(transpose(o, 1, 2), [n, l, 32]), w").replace(
        " -> f32[B, T, 32]", "")
    _, after, stats = run_pass(src, "strided_products", dims=DIMS)
    counts = ops(after)
    assert counts["matmul_strided"] == 2 and counts["softmax"] == 1
    assert counts["attention_strided"] == 0
    check_opt_levels(src, sizes=DIMS)


def test_attention_takes_queries_in_blocks_of_scores():
    """300 queries by 5000 keys: the scores of 24 queries fill the kernel's block (2**17
    floats, whole tiles of rows), so it runs 13 blocks, the last of 12 rows, each with its
    rows of a [Q, S] mask; against the unoptimized graph. Then 2**37 keys of depth 0 (no
    element anywhere): even one tile of rows' scores would pass 2**40 floats, refused
    (K0505) before allocating, not a size that overflowed."""
    from kiln.compiler.errors import KilnError

    src = forward("return softmax(where(keep, (q * 0.5) @ k, -inf), axis = -1) @ "
                  "transpose(w, 1, 2)", signature="q: f32[B, Q, D], k: f32[B, D, S], "
                  "w: f32[B, N, S], keep: bool[Q, S]", result=None)
    model = kiln.compile(src, target="native")
    assert ops(model.lowered().graph)["attention_strided"] == 1
    rng = np.random.default_rng(7)
    q, k, w = (rng.standard_normal(shape).astype(np.float32)
               for shape in ((2, 300, 8), (2, 8, 5000), (2, 8, 5000)))
    keep = rng.random((300, 5000)) < 0.5
    keep[:, 0] = True
    want = kiln.compile(src, target="reference", opt_level=0)(q, k, w, keep)
    np.testing.assert_allclose(model(q, k, w, keep), want, rtol=RTOL, atol=ATOL)
    src = forward("return softmax((q * 0.5) @ k, axis = -1) @ transpose(w, 1, 2)",
                  signature="q: f32[B, Q, D], k: f32[B, D, S], w: f32[B, N, S]", result=None)
    model = kiln.compile(src, target="native")
    assert ops(model.lowered().graph)["attention_strided"] == 1
    empty = np.ones((1, 0, 1 << 37), np.float32)
    with pytest.raises(KilnError, match="too large to hold") as info:
        model(np.ones((1, 3, 0), np.float32), empty, empty)
    assert info.value.code == "K0505"
    small = model(np.ones((1, 3, 0), np.float32), empty[:, :, :5], empty[:, :, :5])
    assert small.shape == (1, 3, 0)  # the same kernel, sizes it holds


def test_strided_products_leave_a_gather_out_of_range_to_its_error():
    """A constant index past its axis is no view: the gather stays and reports it."""
    from kiln.compiler.errors import KilnError

    src = forward("return gather(x, 3, axis = 1) @ y", signature="x: f32[B, 3, 2, 3, 5], "
                  "y: f32[B, 2, 5, 4]", result=None)
    model = kiln.compile(src, target="native")
    assert ops(model.lowered().graph)["gather"] == 1
    with pytest.raises(KilnError, match="gather: an index is out of range"):
        model(np.ones((1, 3, 2, 3, 5), np.float32), np.ones((1, 2, 5, 4), np.float32))


@pytest.mark.parametrize("expr, rewritten", [
    ("permute(x4, [0, 1, 3, 2]) @ p4", True),         # A transposed: rows of stride 1
    ("permute(x4, [0, 1, 3, 2])[:, :, :1] @ p4", True),  # a slice of a transposed A
    ("x4[:, :, ::2] @ y4", True),                     # every other row of A
    ("x5[:, 1] @ y4", True),                          # one index of an axis, dropped
    ("gather(x5, 2, axis = 1) @ y4", True),           # the same, as ONNX's Gather
    ("x4[:, :, ::-1] @ y4", False),                   # a reversed axis: copied
    ("gather(x5, -1, axis = 1) @ y4", True),          # counted from the end
    ("transpose(t4, 1, 2) @ y4", True),               # A of one row a batch (a row kernel)
    ("transpose(u4, 1, 2) @ permute(w4, [0, 2, 3, 1])", True),  # two rows, B transposed
    ("transpose(x4 @ y4, 1, 2)", True),               # the result written through a view
    ("transpose(z4, 2, 3) @ permute(w4, [0, 2, 3, 1])", True),  # A and B both transposed
    # merged axes that are not one run of strides: A is the permute's copy, B a view
    ("reshape(permute(v4, [0, 2, 1, 3]), [B, 4, 6]) @ transpose(m3, 1, 2)", True),
    ("(x4 * 0.7) @ y4", True),                        # the scale alone: after the product
    ("(x4 * x4) @ y4", False),                        # not a constant scale
    ("(x4 * inf) @ y4", False),                       # an infinite scale: NaN before the sum
    ("x4 @ y4", False),                               # nothing to read in place
    ("reshape(x4, [B, 2, 3, 5]) @ y4", False),        # a reshape copies nothing already
    ("permute(x4, [0, 1, 3, 2]) @ y3", False),        # a broadcast batch
])
def test_strided_products_read_views_in_place(expr, rewritten):
    src = forward(f"return {expr}", signature=(
        "x4: f32[B, 2, 3, 5], y4: f32[B, 2, 5, 4], p4: f32[B, 2, 3, 4], y3: f32[2, 3, 4], "
        "t4: f32[B, 1, 2, 5], u4: f32[B, 2, 2, 5], w4: f32[B, 4, 2, 5], z4: f32[B, 2, 5, 2], "
        "v4: f32[B, 4, 2, 3], m3: f32[B, 3, 6], x5: f32[B, 3, 2, 3, 5]"), result=None)
    _, after, stats = run_pass(src, "strided_products", dims=DIMS)
    assert bool(stats.changes) == rewritten
    assert ops(after)["matmul_strided"] == int(rewritten)
    check_opt_levels(src, sizes=DIMS)


def test_strided_products_leave_a_result_read_twice_and_keep_a_shared_operand():
    src = forward("""
        y = transpose(a, 1, 2) @ b
        return transpose(y, 1, 2), y, transpose(a, 1, 2) + 1.0
    """, signature="a: f32[B, 3, 2, 4], b: f32[B, 2, 4, 5]", result=None)
    _, after, stats = run_pass(src, "strided_products", dims=DIMS)
    counts = ops(after)
    # y is read as it is: the product writes it whole; transpose(a)'s other reader keeps it
    assert counts["matmul_strided"] == 1 and counts["transpose"] == 2
    check_opt_levels(src, sizes=DIMS)


@pytest.mark.parametrize("seed", range(40))
def test_views_are_numpy_layouts(seed):
    """A random chain of permutes, slices, single indices and reshapes of a tensor, numpy's
    copying reshapes included: where View follows it, each element's offset (its sub-axes'
    digits times their strides) is numpy's element; a reshape numpy makes without a copy
    View follows with a stride per axis, numpy's; a merge of axes that are not one run
    (numpy copies) it follows too, and a later reshape splits them apart again."""
    from kiln.compiler.dims import Dim
    from kiln.compiler.passes.views import View

    def offsets(view):  # each element's offset, as an array of the view's shape
        total = np.full([d.value for d in view.shape], view.offset.value, dtype=np.int64)
        for axis, parts in enumerate(view.parts):
            rest, along = np.arange(view.shape[axis].value), 0
            for size, stride in reversed(parts):
                along = along + rest % size.value * stride.value
                rest = rest // size.value
            at = [1] * len(view.shape)
            at[axis] = -1
            total = total + np.reshape(along, at)
        return total

    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 5, size=rng.integers(2, 5)))
    base = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    arr, view = base, View.whole(tuple(Dim.of(d) for d in shape))
    for _ in range(5):
        kind = rng.integers(4)
        if kind == 0:
            perm = [int(p) for p in rng.permutation(arr.ndim)]
            arr, view = arr.transpose(perm), view.permuted(perm)
        elif kind in (1, 2) and arr.ndim > 1:
            axis = int(rng.integers(arr.ndim))
            cut = int(rng.integers(arr.shape[axis]))
            made = view.sliced(axis, Dim.of(cut), Dim.of(1 if kind == 2 else arr.shape[axis] - cut))
            if made is None:  # only an axis of several sub-axes
                assert view.strides is None
                break
            if kind == 2:  # x[..., cut, ...]: the axis dropped
                arr = np.take(arr, cut, axis=axis)
                made = made.reshaped(tuple(Dim.of(d) for d in arr.shape))
            else:
                arr = np.take(arr, range(cut, arr.shape[axis]), axis=axis)
            view = made
        else:
            new, left, how = [], int(np.prod(arr.shape)), rng.integers(3)
            if how == 0:  # a size-1 axis added
                new = [*arr.shape, 1]
            elif how == 1:  # sizes that divide what is left, then the rest
                while len(new) < 3 and left > 1:
                    d = int(rng.choice([d for d in (1, 2, 3, 4, 6) if left % d == 0]))
                    new, left = [*new, d], left // d
                new.append(left)
            else:  # each axis split in two where it can be (undoes an earlier merge)
                for d in arr.shape:
                    first = int(rng.choice([f for f in (1, 2, 3) if d % f == 0]))
                    new += [first, d // first]
            new = tuple(new)
            strided = view.strides is not None and np.shares_memory(
                np.lib.stride_tricks.as_strided(
                    base.reshape(-1)[view.offset.value:], shape=arr.shape,
                    strides=[s.value * 8 for s in view.strides]).reshape(new), base)
            made = view.reshaped(tuple(Dim.of(d) for d in new))
            arr = arr.reshape(new)
            if strided:  # numpy needs no copy: nor does View, one stride per axis
                assert made is not None and made.strides is not None
            if made is None:
                break
            view = made
        assert tuple(d.value for d in view.shape) == arr.shape
        np.testing.assert_array_equal(offsets(view), arr)
        if view.strides is not None:
            got = np.lib.stride_tricks.as_strided(
                base.reshape(-1)[view.offset.value:], shape=arr.shape,
                strides=[s.value * 8 for s in view.strides])
            np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("batch", [1, 3])
def test_views_split_merged_heads_of_a_symbolic_batch(batch):
    """PyTorch's export of multi-head attention: [L, B, 3E] -> one of q, k, v by a constant
    index, [L, B*H, D] (B and the heads merged, not one run), [B*H, L, D], then [B, H, L, D]:
    View follows B symbolic through the merge and splits it again into one stride per axis,
    numpy's elements for each B."""
    from kiln.compiler.dims import Dim
    from kiln.compiler.passes.views import View

    B, L, H, D = Dim.of("B"), Dim.of(5), Dim.of(2), Dim.of(3)
    view = View.whole((L, B, Dim.of(3) * H * D)).reshaped((L, B, Dim.of(3), H * D))
    view = view.permuted([2, 0, 1, 3]).sliced(0, Dim.of(1), Dim.of(1)).reshaped((L, B, H * D))
    merged = view.reshaped((L, B * H, D))
    assert merged.strides is None  # B's stride is not H times the heads'
    split = merged.permuted([1, 0, 2]).reshaped((B, H, L, D))
    assert split.strides is not None
    base = np.arange(5 * batch * 18).reshape(5, batch, 18)
    want = base.reshape(5, batch, 3, 6).transpose(2, 0, 1, 3)[1].reshape(5, batch * 2, 3)
    want = want.transpose(1, 0, 2).reshape(batch, 2, 5, 3)
    env = {"B": batch}
    got = np.lib.stride_tricks.as_strided(
        base.reshape(-1)[split.offset.evaluate(env):], shape=want.shape,
        strides=[s.evaluate(env) * 8 for s in split.strides])
    np.testing.assert_array_equal(got, want)
    # a symbolic size is not split by a constant that may not divide it
    assert View.whole((B * Dim.of(2), D)).reshaped((Dim.of(4), B // Dim.of(2), D)) is None


@pytest.mark.parametrize("body, rewritten", [
    # every part of each split added to the other's same part: one add, one split
    ("return (a + d) * sigmoid(b + e) - tanh(f + c)", True),  # in either order
    ("return (a + d) * a", False),                    # a part read twice
    ("return (a + e) * (b + d)", False),               # parts paired across
    ("return (a + d) * (b + e)", True),                # c and f read by nothing: summed
    ("return (a + d) * (b + e) - c", False),           # c read by another op
])
def test_simplify_adds_split_parts_before_the_split(body, rewritten):
    """split(x)[i] + split(y)[i] for every i -> split(x + y)[i] (an imported LSTM's gates:
    its input projection's and its recurrent product's parts), with cse making the adds and
    splits one; numerics against the unsimplified graph."""
    src = forward("a, b, c = split(x, 3, axis = -1)\nd, e, f = split(y, 3, axis = -1)\n"
                  + body, signature="x: f32[B, 12], y: f32[B, 12]", result="f32[B, 4]")
    m = elaborate(src, None)
    graph, stats = optimize(m, passes=["simplify", "cse", "dce"], verify=True)
    check_numerics(m, graph, initial_params(src, None), DIMS)
    assert ("split(x)[i] + split(y)[i] -> split(x + y)[i]" in stats[0].changes) == rewritten
    assert ops(graph)["split"] == (1 if rewritten else 2)
    assert ops(graph)["add"] == (1 if rewritten else body.count("+"))


@pytest.mark.parametrize("expr", [
    "transpose(y, 0, 1) + y[0, 0]",              # the product has another use
    "transpose(matmul(x3, w3), 0, 1)",           # not the last two axes
    "transpose(matmul(x3, w2), 1, 2)",           # a broadcast batch
])
def test_simplify_leaves_other_transposed_products(expr):
    src = forward(f"y = matmul(x, w2)\nreturn {expr}", signature="x: f32[B, 3], w2: f32[3, 4], "
                  "x3: f32[2, B, 3], w3: f32[2, 3, 4]", result=None)
    _, _, stats = run_pass(src, "simplify", dims=DIMS)
    assert "(a @ b)^T -> b^T @ a^T" not in stats.changes


@pytest.mark.parametrize("expr, rewritten", [
    ("matmul(transpose(x, 0, 1), w)", "matmul_at"),   # x^T @ w: the GEMM reads x transposed
    ("matmul(transpose(w, 0, 1), x)", "matmul_at"),
    ("matmul(x, transpose(w4, 0, 1))", "matmul_bt"),  # x @ w^T: it packs w's rows
    ("matmul(x3, transpose(w4, 0, 1))", "matmul_bt"),  # rows of a batch
    ("matmul(x, w2)", None),                          # no transpose
    ("matmul(transpose(x, 0, 1), x3)", None),         # a batched b
    ("matmul(x3, transpose(x3, 1, 2))", None),        # a batched w
])
def test_transposed_operands_reads_a_transposed_operand_in_place(expr, rewritten):
    src = forward(f"return {expr}", signature="x: f32[B, 3], w: f32[B, 4], w2: f32[3, 4], "
                  "w4: f32[4, 3], x3: f32[2, B, 3]", result=None)
    _, after, stats = run_pass(src, "transposed_operands", dims=DIMS)
    assert bool(stats.changes) == (rewritten is not None)
    for op in ("matmul_at", "matmul_bt"):
        assert ops(after)[op] == int(op == rewritten)


# Every rule's pattern and its near misses (the constant on the other side, a broadcasting
# constant, an op that looks like a no-op but rounds): each result of the whole pipeline, on
# native code and on the reference, is the unoptimized graph's.
NEAR_MISSES = forward("""
    p = d * d + 1.0
    return (0 - x, 0.0 - x, zeros([3]) - x, x - zeros([3]), 1 - x, x - 1,
            0 + x, x + zeros([2, B, 3]), 1 * x, x * 0, 0 * x, 1.0 / p, p / 1, 2 / p,
            -(-x), -x, -(x - 0), transpose(transpose(x, 0, 1), 1, 0),
            reshape(flatten(x, start = 0), [3, B]), cast(cast(x, "f16"), "f32"),
            x[:, ::-1], x[1:], x[:, :], dropout(x, p = 0.3),
            transpose(matmul(transpose(x, 0, 1), d), 0, 1), transpose(matmul(x, w), 0, 1))
""", signature="x: f32[B, 3], d: f32[B, 3], w: f32[3, 5]", result=None)


def test_rewrites_keep_the_unoptimized_results():
    check_opt_levels(NEAR_MISSES)


# ---------------------------------------------------------------------------- fold_batch_norm
CONV_BN = """
import std.nn
model ConvBN(bias: bool = false, share: bool = false) {
  conv = nn.Conv2d(3, 8, 3, padding = 1, bias = bias)
  bn = nn.BatchNorm2d(8)
  forward(x: f32[B, 3, 6, 6]) -> f32[B, 8, 6, 6] {
    y = conv(x)
    return relu(bn(y)) + y  if share else relu(bn(y))
  }
}
model LinearBN(bias: bool = true) {
  fc = nn.Linear(5, 4, bias = bias)
  bn = nn.BatchNorm1d(4)
  forward(x: f32[B, 5]) -> f32[B, 4] { return bn(fc(x)) }
}
model DeconvBN(groups: int = 1) {
  deconv = nn.ConvTranspose2d(4, 6, 3, stride = 2, groups = groups)
  bn = nn.BatchNorm2d(6)
  forward(x: f32[B, 4, 5, 5]) -> f32[B, 6, 11, 11] { return bn(deconv(x)) }
}
model BatchStats() {
  conv = nn.Conv2d(3, 8, 3)
  bn = nn.BatchNorm2d(8, track_running_stats = false)
  forward(x: f32[B, 3, 6, 6]) -> f32[B, 8, 4, 4] { return bn(conv(x)) }
}
"""


def random_bn_stats(model, params: dict, seed: int = 1,
                    variances: tuple[float, float] = (1e-3, 1e-2)) -> dict:
    """Params with every batch norm's statistics and affine made non-trivial: by default
    running variances of the order of 100 eps, so a folding that drops or misplaces eps is
    off by far more than the tolerance."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for path, info in model.params.items():
        if not info.owner.startswith("BatchNorm") or path.endswith("num_batches_tracked"):
            continue
        if path.endswith("running_var"):
            low, high = variances
        else:
            low, high = (0.5, 2.0) if path.endswith("weight") else (-0.5, 0.5)
        out[path] = rng.uniform(low, high, info.shape).astype(np.float32)
    return out


@pytest.mark.parametrize("model, args, folded_into", [
    ("ConvBN", {}, "conv"),
    ("ConvBN", {"bias": True}, "conv"),
    ("DeconvBN", {}, "conv_transpose"),
    ("DeconvBN", {"groups": 2}, "conv_transpose"),
    ("LinearBN", {}, "matmul"),
    ("LinearBN", {"bias": False}, "matmul"),
])
def test_fold_batch_norm_fires(model, args, folded_into):
    m = program(CONV_BN).elaborate(model, args)
    params = random_bn_stats(m, dict(kiln.compile(program(CONV_BN), model, args=args, target="reference").params))
    graph, (stats,) = optimize(m, passes=["fold_batch_norm"], params=params, verify=True)
    assert stats.changes["folded"] == 1
    assert ops(m.graph)["batch_norm"] == 1 and ops(graph)["batch_norm"] == 0
    assert ops(graph)[folded_into] == 1 and ops(graph)["param"] == 0  # weights are constants now
    assert ops(graph)["constant"] == 2  # the folded weight and bias
    check_numerics(m, graph, params, {"B": 3})


@pytest.mark.parametrize("model, args", [("ConvBN", {"share": True}), ("BatchStats", {})])
def test_fold_batch_norm_leaves_shared_layers_and_batch_statistics(model, args):
    m = program(CONV_BN).elaborate(model, args)
    params = dict(kiln.compile(program(CONV_BN), model, args=args, target="reference").params)
    graph, (stats,) = optimize(m, passes=["fold_batch_norm"], params=params, verify=True)
    assert stats.changes == {} and structure(graph) == structure(m.graph)


def test_fold_batch_norm_needs_params():
    m = program(CONV_BN).elaborate("ConvBN")
    graph, stats = optimize(m, verify=True)
    folded = next(s for s in stats if s.name == "fold_batch_norm")
    assert folded.skipped and ops(graph)["batch_norm"] == 1


# ---------------------------------------------------------------------------- hoisting
HOIST = """
model M() {
  param w: [4, 3] = init.normal(0.0, 1.0)
  param v: [4] = init.normal(0.0, 1.0)
  forward(xs: f32[T, B, 3], ids: i64[2]) -> (f32[T, B, 4], f32[B, 4], f32[T, B, 4]) {
    outs, h = scan (t, x) in xs carry (h = zeros([B, 4])) {
      k = exp(v) * 2.0                      # invariant, read only by the next one
      h = tanh(x @ w.T + h * k)             # w.T invariant: matmul(x, w.T) is not
      picked = gather(w, ids % 4, axis = 0) # invariant but may fail: stays in the loop
      emit h + sum(picked) + cast(t, "f32")
    }
    inner = scan x in xs {
      m = scan r in x { emit r @ w.T }      # nested: w.T leaves both loops
      emit m
    }
    return outs, h, inner
  }
}
"""


def test_hoist_moves_what_no_step_changes_out_of_the_loop():
    before, after, stats = run_pass(HOIST, "hoist_scan_invariants", dims={"T": 4, "B": 3})
    # transpose, exp, mul and mod; the innermost transpose twice (to the middle loop, out)
    assert stats.changes["hoisted"] == 6
    scans = [nid for nid in after.g if after.op(nid) == "scan"]
    for sid in scans:
        body = after.node(sid)["attrs"]["body"]
        assert "transpose" not in ops(body) and "exp" not in ops(body)
        # each hoisted value is one more captured input of the scan, fed from outside
        added = len(body.inputs) - len(before.node(sid)["attrs"]["body"].inputs)
        operands = after.operands(sid)
        assert added >= 1 and len(operands) == len(before.operands(sid)) + added
        assert None not in operands
    outer = Counter(d["op"] for _, d in after.g.nodes(data=True))
    assert outer["transpose"] == 2 and outer["exp"] == 1
    assert outer["gather"] == 0 and ops(after)["gather"] == 1  # index checks stay in the loop


def test_hoisting_keeps_compiled_results():
    """Through the whole pipeline (the hoisted transposes become folded weights) and on both
    runtimes that compile the optimized graph."""
    native, ref = (kiln.compile(HOIST, target=t) for t in ("native", "reference"))
    unopt = kiln.compile(HOIST, target="reference", opt_level=0)
    rng = np.random.default_rng(3)
    xs, ids = rng.standard_normal((5, 2, 3)).astype(np.float32), np.array([3, 1])
    for got, want in zip(native(xs, ids), unopt(xs, ids), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(ref(xs, ids), unopt(xs, ids), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- merged projections
PROJECTIONS = """
model P {
  param w: [9, 4]
  param b: [9]
  forward(x: f32[B, T, 4], y: f32[B, T, 4]) -> (f32[B, T, 3], f32[B, T, 3], f32[B, T, 3],
                                             f32[B, T, 3], f32[B, T, 3]) {
    wq, wk, wv = split(w, 3, axis = 0)
    bq, bk, bv = split(b, 3)
    xt = transpose(x, 0, 1)
    q = transpose(transpose(x, 0, 1) @ wq.T + bq, 0, 1)
    k = transpose(xt @ wk.T + bk, 0, 1)
    v = x @ wv.T + bv
    u1, u2, u3 = split(w, 3, axis = 0)
    return q, k, v, y @ u1.T, x @ u2.T + y @ u3.T
  }
}
"""


def test_products_by_one_weights_parts_merge_into_one():
    """q, k, v of one input (the same value, or the same transpose of it written twice)
    become one product by the whole weight, split after it, with the bias added before the
    split; products of different inputs stay apart."""
    _, after, stats = run_pass(PROJECTIONS, "merge_split_projections", dims={"B": 2, "T": 5})
    assert stats.changes == {}  # q, k and v read x in two layouts: no merge
    src = PROJECTIONS.replace("transpose(transpose(x, 0, 1) @ wq.T + bq, 0, 1)",
                              "transpose(xt @ wq.T + bq, 0, 1)").replace(
        "    v = x @ wv.T + bv", "    v = transpose(transpose(x, 0, 1) @ wv.T + bv, 0, 1)")
    before, after, stats = run_pass(src, "merge_split_projections", dims={"B": 2, "T": 5})
    assert stats.changes == {"products merged": 1, "biases merged": 1}
    assert ops(before)["matmul"] == 6 and ops(after)["matmul"] == 4
    native, unopt = kiln.compile(src), kiln.compile(src, target="reference", opt_level=0)
    exported = kiln.compile(src, target="onnx")
    rng = np.random.default_rng(5)
    x, y = (rng.standard_normal((2, 5, 4)).astype(np.float32) for _ in range(2))
    for model in (native, exported):
        model.load_weights(dict(unopt.params))
        for got, want in zip(model(x, y), unopt(x, y), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


COLUMN_PROJECTIONS = """
model P {
  param r: [4, 9]
  param b: [9]
  forward(h: f32[B, 4], x: f32[B, 4]) -> (f32[B, 3], f32[B, 3]) {
    rz, rr, rh = split(r, 3, axis = -1)
    bz, br, bh = split(b, 3)
    z = sigmoid(h @ rz + bz)
    n = tanh(sigmoid(h @ rr + br) * (h @ rh + bh))
    c1, c2, c3 = split(r, 3, axis = 1)
    return (1.0 - z) * n + z * h[:, :3], h @ c1 + x @ c2 + h @ c3
  }
}
"""


def test_products_by_one_weights_columns_merge_into_one():
    """h @ split(R, axis = -1)_i for every part i (an imported GRU's gates, R^T split by
    columns) become one product by R, split after it, the bias added before the split; the
    parts of a second split read by two inputs stay apart."""
    before, after, stats = run_pass(COLUMN_PROJECTIONS, "merge_split_projections",
                                    dims={"B": 3})
    assert stats.changes == {"products merged": 1, "biases merged": 1}
    assert ops(before)["matmul"] == 6 and ops(after)["matmul"] == 4
    native, unopt = (kiln.compile(COLUMN_PROJECTIONS),
                     kiln.compile(COLUMN_PROJECTIONS, target="reference", opt_level=0))
    native.load_weights(dict(unopt.params))
    rng = np.random.default_rng(6)
    h, x = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    for got, want in zip(native(h, x), unopt(h, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- cse and dce
def test_cse_merges_equal_expressions():
    src = forward("""
        a = relu(x) * 2.0 + softmax(x, axis = 0)
        b = relu(x) * 2.0 + softmax(x, axis = 1)
        return a + b + (x > 0)
    """, result="f32[B, 3]")
    before, after, stats = run_pass(src, "cse", dims=DIMS)
    assert stats.changes == {"merged": 3}  # relu, the constant 2.0, the product
    assert ops(after)["relu"] == 1 and ops(after)["softmax"] == 2  # different axes stay apart
    assert ops(before)["constant"] == ops(after)["constant"] + 1


def test_cse_keys_tell_apart_what_python_equality_merges():
    assert attr_key(True) != attr_key(1)
    assert attr_key(0.0) != attr_key(-0.0) and attr_key(float("nan")) == attr_key(float("nan"))
    assert attr_key(np.zeros(3, np.float32)) != attr_key(np.zeros(3, np.float64))
    assert attr_key(np.zeros(3)) == attr_key(np.zeros(3)) != attr_key(np.zeros((3, 1)))
    assert attr_key([1, 2]) != attr_key((1, 2))


def test_cse_leaves_distinct_expressions():
    src = forward("return relu(x) + exp(x) + relu(exp(2.0 * x) - x)")
    before, after, stats = run_pass(src, "cse", dims=DIMS)
    assert stats.changes == {} and structure(after) == structure(before)


def test_dce_removes_unused_nodes_and_keeps_inputs():
    m = elaborate(forward("return relu(x)"))
    graph, _ = optimize(m, level=0)
    x = Value(graph.inputs[0], 0, graph.node(graph.inputs[0])["types"][0])
    (dead,) = graph.add("exp", [x], {}, [x.type])
    graph.add("neg", [dead], {}, [x.type])
    graph, (stats,) = optimize(graph, passes=["dce"], verify=True)
    assert stats.changes == {"removed": 2} and ops(graph) == Counter(input=1, relu=1)
    _, (stats,) = optimize(graph, passes=["dce"])
    assert stats.changes == {}


# ---------------------------------------------------------------------------- scan bodies
SCAN = """
model S() {
  forward(x: f32[B, T, 4]) -> f32[B, T, 4] {
    ys, h = scan xt in x axis 1 carry (h = x[:, 0] * 0.5) {
      h = dropout(tanh(xt * 1 + h * exp(zeros([4])))) + relu(xt) * relu(xt)
      emit h
    }
    return ys
  }
}
"""


def test_passes_run_inside_scan_bodies():
    m = elaborate(SCAN)
    graph, stats = optimize(m, verify=True, passes=[p.name for p in NATIVE_PIPELINE if p.name != "fuse"])
    body = graph.node(first(graph, "scan"))["attrs"]["body"]
    assert ops(body) == Counter(input=2, add=2, tanh=1, relu=1, mul=1)
    assert count_nodes(graph) < count_nodes(m.graph)
    assert {s.name: s.changes for s in stats}["cse"] == {"merged": 1}
    check_numerics(m, graph, {}, DIMS)


# ---------------------------------------------------------------------------- whole models
@functools.cache
def resnet18():
    src = "import std.cnn\n"
    return elaborate(src, "cnn.ResNet18"), initial_params(src, "cnn.ResNet18")


def test_resnet18_folds_every_batch_norm():
    m, params = resnet18()
    # variances near 1: twenty layers each scaling by 1/sqrt(1e-3) would grow the values to
    # 1e13, past what f32 sums keep to the tolerance (the shallow models above see eps)
    params = random_bn_stats(m, params, variances=(0.5, 2.0))
    graph, stats = optimize(m, params=params, verify=True)
    assert ops(m.graph)["batch_norm"] == 20 and ops(graph)["batch_norm"] == 0
    assert ops(graph)["conv"] == 20
    assert {s.name: s.changes for s in stats}["fold_batch_norm"]["folded"] == 20
    check_numerics(m, graph, params, {"B": 2, "H": 32, "W": 32})


def test_transformer_classifier():
    m = elaborate((ROOT / "examples" / "transformer_classifier.kiln").read_text())
    params = initial_params((ROOT / "examples" / "transformer_classifier.kiln").read_text())
    graph, stats = optimize(m, params=params, verify=True)
    assert ops(m.graph)["dropout"] > 0 and ops(graph)["dropout"] == 0
    assert count_nodes(graph) < count_nodes(m.graph)
    assert stats[-1].nodes_after == count_nodes(graph)
    check_numerics(m, graph, params, {"B": 3, "T": 7})


def test_fold_weight_layout_makes_transposed_weights_once():
    src = """
block Linear(i: int, o: int) {
  param weight: [o, i] = init.normal()
  forward(x: [B, i]) -> [B, o] { return x @ weight.T }
}
model M { forward(x: f32[B, 6]) -> f32[B, 4] { return x |> Linear(6, 5) |> relu |> Linear(5, 4) } }
"""
    m = kiln.compile(src, target="reference")
    graph, stats = optimize(m.model, params=m.params)
    ops = [graph.op(n) for n in graph.order()]
    assert "transpose" not in ops and "param" not in ops  # both weights now constants
    (layout,) = [s for s in stats if s.name == "fold_weight_layout"]
    assert layout.changes == {"folded": 2}
    from kiln.compiler.derived import resolve

    made = [graph.node(n)["attrs"] for n in graph.order() if graph.op(n) == "constant"]
    # each names how new weights remake it (weights are data: no code is built for them)
    assert sorted(a["derived"] for a in made) == ["permute(perm=1_0):0.weight",
                                                  "permute(perm=1_0):2.weight"]
    for attrs in made:
        np.testing.assert_array_equal(resolve(attrs["derived"], m.params.__getitem__),
                                      attrs["value"])
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    want = run_graph(m.model.graph, [x], m.params, {"B": 3})
    np.testing.assert_array_equal(run_graph(graph, [x], m.params, {"B": 3})[0], want[0])
    graph, stats = optimize(m.model)  # without weights the pass has nothing to fold
    assert "transpose" in [graph.op(n) for n in graph.order()]
