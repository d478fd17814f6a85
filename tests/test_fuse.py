"""Fusion (codegen/llvm/fuse.py), memory planning (passes/memory.py) and the compile report.

The fuse pass fires on elementwise chains and on matmul/conv epilogues, leaves groups it must
not make alone, and keeps numerics: the fused graph agrees with the unoptimized one on the
reference, on the native target (one kernel per group) and through onnxruntime on the
emitted ONNX (the group's ops inline)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.compiler.codegen.llvm.packing import winograd_enabled
from kiln.compiler.codegen.llvm.pipeline import NATIVE_PIPELINE
from kiln.compiler.dims import Dim
from kiln.compiler.ir import Value
from kiln.compiler.passes import IRError, copy_graph, verify
from kiln.compiler.passes.edit import count_kernels, count_nodes
from kiln.compiler.passes.memory import place, plan
from kiln.compiler.pipelines import optimize
from kiln.compiler.report import report

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(7)
BEFORE_FUSE = [p.name for p in NATIVE_PIPELINE if p.name != "fuse"]


def model(body: str, signature: str, result: str) -> str:
    return f"model M {{\n  forward({signature}) -> {result} {{\n    {body}\n  }}\n}}\n"


def fused_groups(graph) -> list[tuple[str, ...]]:
    """The op names of each fused node, in run order."""
    return [graph.node(n)["attrs"]["ops"] for n in graph.order() if graph.op(n) == "fused"]


def top_ops(graph) -> Counter:
    return Counter(graph.op(n) for n in graph.g.nodes)


def optimized(src: str):
    m = kiln.compile(src, target="reference")
    graph, stats = optimize(m.model, params=m.params, verify=True)
    return m, graph, {s.name: s for s in stats}


def random_inputs(m, dims: dict) -> list[np.ndarray]:
    out = []
    for port in m.inputs:
        shape = port.type.concrete_shape(dims)
        if port.type.dtype == "bool":
            out.append(RNG.random(shape) < 0.5)
        elif port.type.dtype in ("i32", "i64"):
            out.append(RNG.integers(-20, 20, shape).astype(port.type.np_dtype))
        else:
            out.append(RNG.standard_normal(shape).astype(port.type.np_dtype))
    return out


def agree_everywhere(src: str, dims: dict, tol=1e-5) -> None:
    """-O1 (fused) on every target agrees with the unoptimized reference."""
    want_model = kiln.compile(src, target="reference", opt_level=0)
    _agree(src, want_model, random_inputs(want_model, dims), 1, tol)


def _agree(src, want_model, inputs, threads, tol):
    """Native on `threads` threads, the reference and onnxruntime (-O1, fused) agree with
    `want_model` (the unoptimized reference) on `inputs`, each result and its dtype."""
    want = want_model(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    for target, m in (("native", kiln.compile(src, target="native", threads=threads)),
                      ("reference", kiln.compile(src, target="reference")),
                      ("onnx", kiln.compile(src, target="onnx"))):
        got = m(*inputs)
        got = got if isinstance(got, tuple) else (got,)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, target
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol,
                                       atol=tol, err_msg=target)


# ---------------------------------------------------------------------------- the pass
CHAIN = model("return tanh(exp(x) * 2.0 + y) - 1.0", "x: f32[B, 5], y: f32[B, 5]", "f32[B, 5]")
MLP = model("return relu(x @ w + b)", "x: f32[B, 6], w: f32[6, 7], b: f32[7]", "f32[B, 7]")


def test_fuse_makes_one_node_of_an_elementwise_chain():
    _, graph, stats = optimized(CHAIN)
    assert fused_groups(graph) == [("exp", "mul", "add", "tanh", "sub")]
    assert top_ops(graph) == Counter(input=2, constant=2, fused=1)
    assert stats["fuse"].changes == {"chains": 1, "fused": 5}
    assert stats["fuse"].nodes_before == stats["fuse"].nodes_after  # ops are kept, inside


def test_fuse_heads_an_epilogue_with_its_matmul():
    _, graph, stats = optimized(MLP)
    assert fused_groups(graph) == [("matmul", "add", "relu")]
    (nid,) = graph.nodes_with_op("fused")
    body = graph.node(nid)["attrs"]["body"]
    assert body.op(graph.node(nid)["attrs"]["anchor"]) == "matmul"
    assert stats["fuse"].changes == {"epilogues": 1, "fused": 3}
    assert count_kernels(graph) == 1


# a transposed convolution heads its epilogue too (a DCGAN generator's conv_transpose + relu,
# its last layer's + tanh): the activation runs over its output in place, in its kernel
TRANSPOSED_ACT = """
model G {
  up = nn.ConvTranspose2d(CIN, COUT, 4, stride = 2, padding = 1)
  forward(x: f32[B, CIN, 5, 6]) -> f32[B, COUT, 10, 12] { return ACT(up(x)) }
}
"""


@pytest.mark.parametrize("cin, cout, act", [
    (3, 2, "relu"),     # the GEMM and scatter path
    (40, 12, "tanh"),   # Winograd F(4, 3) (4 C_out >= 32 channels)
])
def test_fuse_heads_an_epilogue_with_a_transposed_convolution(cin, cout, act):
    src = "import std.nn\n" + TRANSPOSED_ACT.replace("CIN", str(cin)).replace(
        "COUT", str(cout)).replace("ACT", act)
    _, graph, stats = optimized(src)
    assert fused_groups(graph) == [("conv_transpose", act)]
    (nid,) = graph.nodes_with_op("fused")
    body, anchor = graph.node(nid)["attrs"]["body"], graph.node(nid)["attrs"]["anchor"]
    assert body.op(anchor) == "conv_transpose"
    assert body.node(anchor)["attrs"].get("weight_layout") == (
        "winograd" if cin == 40 and winograd_enabled() else "packed")
    assert stats["fuse"].changes == {"epilogues": 1, "fused": 2}
    want_model = kiln.compile(src, target="reference", opt_level=0)
    native = kiln.compile(src, target="native")  # (the same seed: the same weights)
    for batch in (1, 3):
        x = RNG.standard_normal((batch, cin, 5, 6)).astype(np.float32)
        got, want = native(x), want_model(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, cin / 8))


@pytest.mark.parametrize("body, signature, why", [
    # e is also read by a sum the group's result needs: as a result of the group's kernel
    # it would be read before it is made (a cycle); it stays, alone
    ("e = exp(x)\n    return e / sum(e), e @ w", "x: f32[4, 4], w: f32[4, 4]", "two users"),
    # the matmul's result is a model output: it must be stored as it is
    ("m = x @ w\n    return m, relu(m)", "x: f32[4, 4], w: f32[4, 4]", "output"),
    # half-float matmuls have no epilogue
    ("return relu(x @ w)", "x: f16[4, 4], w: f16[4, 4]", "f16"),
])
def test_fuse_leaves_what_it_must_not_group(body, signature, why):
    result = "(f32[4, 4], f32[4, 4])" if why != "f16" else "f16[4, 4]"
    _, graph, _ = optimized(model(body, signature, result))
    for ops in fused_groups(graph):
        assert len(ops) >= 2
    if why == "two users":
        assert "exp" in top_ops(graph)
    if why == "output":
        assert "matmul" in top_ops(graph)
    if why == "f16":
        assert fused_groups(graph) == [] and "matmul" in top_ops(graph)


def test_fuse_does_not_take_in_a_smaller_broadcast_operand():
    src = model("return relu(x + exp(b))", "x: f32[B, 5], b: f32[5]", "f32[B, 5]")
    _, graph, _ = optimized(src)
    assert fused_groups(graph) == [("add", "relu")] and "exp" in top_ops(graph)


MOMENTUM = model("m2 = m * 0.9 + g\n    return p - m2 * 0.05, m2",
                 "p: f32[N], g: f32[N], m: f32[N]", "(f32[N], f32[N])")


def test_a_value_read_after_the_group_is_one_more_result_of_it():
    _, graph, stats = optimized(MOMENTUM)
    assert fused_groups(graph) == [("mul", "add", "mul", "sub")]
    (nid,) = graph.nodes_with_op("fused")
    assert [o.node for o in graph.outputs] == [nid, nid]  # the new weight, the new moment
    body = graph.node(nid)["attrs"]["body"]
    assert [body.op(o.node) for o in body.outputs] == ["sub", "add"]
    assert stats["fuse"].changes == {"chains": 1, "fused": 4, "outputs": 1}
    text = report(kiln.compile(MOMENTUM, target="reference").lowered())
    assert "fused mul+add+mul+sub  -> f32[N], f32[N]" in text
    assert "(result 2 too)" in text


def test_a_value_an_earlier_op_reads_stays_out():
    # the sum reads e and the result needs the sum: e cannot wait for the result's kernel
    src = model("e = exp(x)\n    return relu(e) - sum(e)", "x: f32[B, 4]", "f32[B, 4]")
    _, graph, _ = optimized(src)
    assert fused_groups(graph) == [("relu", "sub")] and "exp" in top_ops(graph)
    text = report(kiln.compile(src, target="reference").lowered())
    assert "also used by 1 other op(s) that run before the fused result" in text


def test_report_names_a_value_another_fused_kernel_computes():
    # m is the second result of the greater+where kernel; the cast after it reads it there
    src = model("m = x > 0.0\n    y = where(m, x, 0.0)\n    return sum(y), cast(m, dtype = \"f32\")",
                "x: f32[B, 4]", "(f32[], f32[B, 4])")
    text = report(kiln.compile(src, target="reference").lowered())
    assert "fused greater+where  -> f32[B, 4], bool[B, 4]" in text
    assert "greater is computed by a fused kernel of its own" in text


MULTI = [
    (MOMENTUM, {"N": 7}, 1),
    (MOMENTUM, {"N": 70001}, 2),  # the loop shared by two threads
    # broadcast operands: the loop nest stores each result at the same offset
    (model("a = x * r + c\n    return tanh(a) * 2.0, a, exp(a)",
           "x: f32[B, 6], r: f32[6], c: f32[B, 1]", "(f32[B, 6], f32[B, 6], f32[B, 6])"),
     {"B": 5}, 1),
    # an epilogue whose sum is a model output too: read in place, stored beside the result
    (model("h = x @ w + b\n    return relu(h), h", "x: f32[B, 6], w: f32[6, 7], b: f32[7]",
           "(f32[B, 7], f32[B, 7])"), {"B": 5}, 1),
    # a convolution's epilogue split by sample over two threads: every result moves with it
    ("import std.nn\n" + model("y = (x |> nn.Conv2d(3, 4, 3, padding = 1)) * 0.5\n"
                                "    return relu(y), y",
                                "x: f32[B, 3, 6, 6]", "(f32[B, 4, 6, 6], f32[B, 4, 6, 6])"),
     {"B": 16}, 2),
    # half floats: a stored result rounds as its own kernel would store it
    (model("a = x * 3.0 + y\n    return tanh(a) * y, a", "x: f16[B, 33], y: f16[B, 33]",
           "(f16[B, 33], f16[B, 33])"), {"B": 3}, 1),
]


@pytest.mark.parametrize("src, dims, threads", MULTI)
def test_groups_with_several_results_agree_on_every_target(src, dims, threads):
    want_model = kiln.compile(src, target="reference", opt_level=0)
    inputs = random_inputs(want_model, dims)
    want = want_model(*inputs)
    native = kiln.compile(src, target="native", threads=threads)
    graph = native.lowered().graph
    assert any(len(graph.node(n)["types"]) > 1 for n in graph.nodes_with_op("fused"))
    tol = 2e-3 if "f16" in src else 1e-5
    for target, m in (("native", native), ("reference", kiln.compile(src, target="reference")),
                      ("onnx", kiln.compile(src, target="onnx"))):
        for got, expected in zip(m(*inputs), want, strict=True):
            assert got.dtype == expected.dtype and got.shape == expected.shape, target
            np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                                       rtol=tol, atol=tol, err_msg=target)


def test_resnet18_convolutions_take_their_epilogues():
    src = "import std.cnn\n"
    m = kiln.compile(src, model="cnn.ResNet18", target="reference")
    graph, _ = optimize(m.model, params=m.params, verify=True)
    groups = Counter(fused_groups(graph))
    assert groups[("conv", "relu")] == 9 and groups[("conv", "add", "relu")] == 8
    assert groups[("matmul", "add")] == 1
    unfused, _ = optimize(m.model, params=m.params, passes=BEFORE_FUSE)
    assert count_kernels(graph) < count_kernels(unfused)
    assert count_nodes(graph) == count_nodes(unfused)


# ---------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("src, dims", [
    (CHAIN, {"B": 3}),
    (MLP, {"B": 5}),
    # broadcasting operands inside the group (a row, a column, a scalar)
    (model("return sigmoid(x * r + c) * 0.5", "x: f32[B, 6], r: f32[6], c: f32[B, 1]",
           "f32[B, 6]"), {"B": 4}),
    # half floats round between the ops, as separate kernels store them
    (model("return tanh(x * 3.0 + y) * y", "x: f16[B, 33], y: f16[B, 33]", "f16[B, 33]"),
     {"B": 3}),
    # ints and bools
    (model("return where(a > b, a * 2 - b, b % 3)", "a: i32[B, 9], b: i32[B, 9]", "i32[B, 9]"),
     {"B": 2}),
    # batched matmul, then a residual and an activation
    (model("return gelu(x @ w + x)", "x: f32[B, 8, 8], w: f32[B, 8, 8]", "f32[B, 8, 8]"),
     {"B": 3}),
])
def test_fused_groups_agree_on_every_target(src, dims):
    agree_everywhere(src, dims, 2e-3 if "f16" in src else 1e-5)


# ---------------------------------------------------------------------------- splits in place
# an LSTM's cell: the gates split in four, every part read by the cell alone
CELL = model("i, f, g, o = split(x, 4)\n    c2 = sigmoid(f) * c + sigmoid(i) * tanh(g)\n"
             "    return sigmoid(o) * tanh(c2), c2",
             "x: f32[B, 256], c: f32[B, 64]", "(f32[B, 64], f32[B, 64])")


def test_a_split_read_only_by_a_group_joins_it():
    _, graph, _ = optimized(CELL)
    assert "split" not in top_ops(graph)
    (ops,) = fused_groups(graph)
    assert ops[0] == "split" and ops.count("sigmoid") == 3
    (nid,) = graph.nodes_with_op("fused")
    assert [str(v.type) for v in graph.operands(nid)] == ["f32[B, 256]", "f32[B, 64]"]
    text = report(kiln.compile(CELL, target="reference").lowered())
    assert "fused split+" in text and "(parts read in place)" in text


@pytest.mark.parametrize("body, signature, result", [
    # a part is a model output: the split stays, and stores it
    ("a, b = split(x, 2)\n    return a * b, a", "x: f32[B, 8]", "(f32[B, 4], f32[B, 4])"),
    # a part another op reads (a sum, before the group's result)
    ("a, b = split(x, 2)\n    return a * b - sum(a)", "x: f32[B, 8]", "f32[B, 4]"),
    # parts of another shape than the group's: read broadcast, not in place
    ("a, b = split(x, 2, axis = 0)\n    return (a + y) * b", "x: f32[2, 4], y: f32[B, 4]",
     "f32[B, 4]"),
])
def test_a_split_the_group_cannot_read_in_place_stays(body, signature, result):
    src = model(body, signature, result)
    _, graph, _ = optimized(src)
    assert "split" in top_ops(graph)
    assert all("split" not in ops for ops in fused_groups(graph))
    text = report(kiln.compile(src, target="reference").lowered())
    assert "a split joins a fused kernel (which reads its parts in place) only when" in text
    want_model = kiln.compile(src, target="reference", opt_level=0)
    inputs = random_inputs(want_model, {"B": 3})
    _agree(src, want_model, inputs, 1, 1e-5)


SPLITS = [
    # the cell, its rows on one thread, and on two (B = 64: the rows' work pays for them)
    (CELL, [{"B": 1}, {"B": 64}], (1, 2)),
    # along a middle axis: a row is a part's [2, 5] block; r broadcast along the rows
    (model("a, b, c = split(x, 3, axis = 1)\n    return a * b + exp(c) * r",
           "x: f32[B, 6, 5], r: f32[2, 5]", "f32[B, 2, 5]"), [{"B": 3}, {"B": 4000}], (2,)),
    # along the first axis: one row
    (model("a, b = split(x, 2, axis = 0)\n    return tanh(a) - b * 0.5", "x: f32[6, N]",
           "f32[3, N]"), [{"N": 7}], (1,)),
    # an operand broadcast within the rows: the loop nest reads the parts (at 20000 rows,
    # in blocks of samples that the threads share: _batch_split moves the split operand too)
    (model("a, b = split(x, 2)\n    return a * s + b", "x: f32[B, 10], s: f32[B, 1]",
           "f32[B, 5]"), [{"B": 4}, {"B": 20000}], (1, 2)),
    # the cell over symbolic sizes: each part starts at a multiple of C, rows 4 C apart
    (CELL.replace("x: f32[B, 256], c: f32[B, 64]", "x: f32[B, 4 * C], c: f32[B, C]")
     .replace("f32[B, 64]", "f32[B, C]"), [{"B": 5, "C": 7}, {"B": 64, "C": 64}], (1, 2)),
    # integers and a comparison
    (model("a, b, c = split(x, 3)\n    return where(a > b, a * 2 - c, c % 5)", "x: i32[B, 9]",
           "i32[B, 3]"), [{"B": 4}], (1,)),
    # two splits, and a scalar
    (model("a, b = split(x, 2)\n    p, q = split(y, 2)\n    return a * p - b * q + 1.5",
           "x: f32[B, 12], y: f32[B, 12]", "f32[B, 6]"), [{"B": 5}], (1,)),
    # half floats: the parts load as their dtype
    (model("a, b = split(x, 2)\n    return tanh(a) * b", "x: f16[B, 66]", "f16[B, 33]"),
     [{"B": 3}], (1,)),
]


@pytest.mark.parametrize("src, sizes, threads", SPLITS)
def test_a_group_reading_split_parts_in_place_agrees(src, sizes, threads):
    _, graph, _ = optimized(src)
    assert "split" not in top_ops(graph)
    want_model = kiln.compile(src, target="reference", opt_level=0)
    for dims in sizes:
        inputs = random_inputs(want_model, dims)
        for t in threads:
            _agree(src, want_model, inputs, t, 2e-3 if "f16" in src else 1e-5)


def test_the_rows_of_a_costly_cell_are_shared_by_the_threads(monkeypatch):
    """The loop over rows starts the threads when its elements, weighed by the IR
    instructions of one, reach FLAT_PARALLEL adds' (a decision made at run time from the
    sizes): the cell at 64 rows of 64, an add of two parts only from FLAT_PARALLEL elements."""
    from kiln.compiler.codegen.llvm import machine
    from kiln.compiler.codegen.llvm.elementwise import FLAT_PARALLEL, LOOP_COST

    texts = []
    real = machine.ir_text
    monkeypatch.setattr(machine, "ir_text", lambda *a: texts.append(real(*a)) or texts[-1])
    monkeypatch.setenv("KILN_CACHE", "0")
    kiln.compile(CELL, threads=2)
    kiln.compile(model("a, b = split(x, 2)\n    return a + b", "x: f32[B, 128]", "f32[B, 64]"),
                 threads=2)
    costs = []
    for text in texts:
        fn = re.search(r'define internal void @"[^"]*_rows_parallel"\(.*?\n}', text, re.S)
        # work = rows * row length * cost, against the least work that pays for the threads
        work = re.search(r'= mul i64 %"[^"]+", (\d+)\n', fn.group(0)).group(1)  # the first
        assert re.search(rf'icmp slt i64 %"[^"]+", {FLAT_PARALLEL * LOOP_COST}\n', fn.group(0))
        costs.append(int(work))
    cell, add = costs
    assert add == LOOP_COST
    assert 64 * 64 * cell >= FLAT_PARALLEL * LOOP_COST > 64 * 64 * add


CONV = """
import std.nn
model C {
  forward(x: f32[B, 3, H, W]) -> f32[B, 8, H, W] {
    y = x |> nn.Conv2d(3, 8, 3, padding = 1)
    return relu(y + (y |> nn.Conv2d(8, 8, 1)))
  }
}
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_epilogue_split_by_sample_agrees(threads):
    ref = kiln.compile(CONV, target="reference", opt_level=0, seed=3)
    native = kiln.compile(CONV, target="native", seed=3, threads=threads)
    assert ("conv", "add", "relu") in fused_groups(native.lowered().graph)
    for batch, size in ((1, 5), (3, 7)):
        x = RNG.standard_normal((batch, 3, size, size)).astype(np.float32)
        np.testing.assert_allclose(native(x), ref(x), rtol=1e-4, atol=1e-5)


def test_fused_groups_inside_scan_bodies():
    src = (ROOT / "examples" / "lstm_classifier.kiln").read_text()
    m = kiln.compile(src, target="reference")
    graph, _ = optimize(m.model, params=m.params, verify=True)
    (scan,) = [n for n in graph.order() if graph.op(n) == "scan"][:1]
    assert fused_groups(graph.node(scan)["attrs"]["body"])
    want = kiln.compile(src, target="reference", opt_level=0)
    inputs = random_inputs(want, {"B": 2, "T": 5})
    inputs = [np.abs(i) % 50 if i.dtype.kind == "i" else i for i in inputs]
    for target in ("native", "onnx"):
        np.testing.assert_allclose(kiln.compile(src, target=target)(*inputs), want(*inputs),
                                   rtol=1e-4, atol=1e-5)


def test_emitted_onnx_has_no_more_nodes_and_passes_the_checker(tmp_path):
    src = "import std.cnn\n"
    sizes = []
    for level in (0, 1):
        m = kiln.compile(src, model="cnn.ResNet18", target="reference", opt_level=level)
        path = tmp_path / f"r{level}.onnx"
        m.export_onnx(path)
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        sizes.append(len(proto.graph.node))
    assert sizes[1] <= sizes[0]


# ---------------------------------------------------------------------------- conv layout
LAYOUTS = """
import std.nn
model L {
  forward(x: f32[B, 3, 9, 9], w: f32[4, 3, 3, 3]) {
    return relu(x |> nn.Conv2d(3, 4, 3)), conv(x, w)
  }
}
"""


def test_conv_layout_packs_weights_known_before_the_call():
    _, graph, stats = optimized(LAYOUTS)
    assert stats["conv_layout"].changes == {"packed": 1}
    convs = []
    for nid in graph.order():
        node = graph.node(nid)
        if node["op"] == "conv":
            convs.append(node["attrs"].get("weight_layout"))
        if node["op"] == "fused":
            body = node["attrs"]["body"]
            convs += [body.node(n)["attrs"].get("weight_layout") for n in body.order()
                      if body.op(n) == "conv"]
    assert sorted(convs, key=str) == [None, "packed"]  # the weight given as an input stays
    native = kiln.compile(LAYOUTS, seed=2)
    assert sum(name.startswith("prepack_a(") for name in native.native_arrays()) == 1
    plain = kiln.compile(LAYOUTS, seed=2, opt_level=0)
    assert not any(name.startswith("prepack_a(") for name in plain.native_arrays())
    x = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wanted = kiln.compile(LAYOUTS, target="reference", seed=2, opt_level=0)(x, w)
    for got, want in zip(native(x, w), wanted, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- memory plan
def test_memory_plan_reuses_dead_buffers_and_gives_a_peak_formula():
    src = model("a = exp(x)\n    b = a @ w\n    c = softmax(b, axis = -1)\n"
                "    return log_softmax(c @ w, axis = -1)",
                "x: f32[B, 4], w: f32[4, 4]", "f32[B, 4]")
    m = kiln.compile(src, target="reference")
    graph, _ = optimize(m.model, params=m.params)
    memory = plan(graph)
    assert len(memory.buffers) == 4  # exp, matmul, softmax, matmul; the result is an output
    assert memory.peak() == [Dim.of("B") * 32]  # two [B, 4] f32 tensors at once, at most
    assert memory.total() == Dim.of("B") * 64
    offsets, total = place([(b.type, b.born, b.dies) for b in memory.buffers], {"B": 16})
    assert total == 2 * 256 and len(set(offsets.tolist())) == 2


def test_plan_memory_leaves_its_plan_for_the_backend_and_verify_finds_it_stale():
    src = model("a = exp(x) @ w\n    return softmax(a @ w, axis = -1)",
                "x: f32[B, 4], w: f32[4, 4]", "f32[B, 4]")
    m = kiln.compile(src, target="reference")
    graph, stats = optimize(m.model, params=m.params, verify=True)
    memory = graph.memory
    assert memory is not None and memory.order == graph.order()
    assert {s.name: s for s in stats}["plan_memory"].changes["buffers"] == len(memory.buffers)
    assert copy_graph(graph).memory is None  # a copy may be edited: it starts unplanned
    first = graph.inputs[0]
    graph.add("neg", [Value(first, 0, graph.node(first)["types"][0])], {},
              [graph.node(first)["types"][0]])
    with pytest.raises(IRError, match="stale"):
        verify(graph)


def test_peak_formula_keeps_only_undominated_terms():
    src = model("a = x @ w\n    b = a @ v\n    return b @ u",
                "x: f32[B, 4], w: f32[4, T], v: f32[T, 2], u: f32[2, 3]", "f32[B, 3]")
    m = kiln.compile(src, target="reference")
    memory = plan(optimize(m.model, params=m.params)[0])
    peak = memory.peak()
    assert Dim.of("B") * Dim.of("T") * 4 + Dim.of("B") * 8 in peak
    assert all(not all(c >= 0 for _, c in (q - p).terms) for p in peak for q in peak if p != q)


# ---------------------------------------------------------------------------- the report
def test_report_lists_kernels_with_spans_reasons_and_peak():
    src = "import std.cnn\n"
    m = kiln.compile(src, model="cnn.ResNet18", target="reference")
    text = report(m.lowered())
    assert "fused conv+add+relu" in text
    assert "(weight packed)" in text  # conv_layout's choice, per convolution
    assert "<std>/cnn.kiln:" in text and "<std>/nn.kiln:" in text  # the ops' own lines
    assert "max_pool is not elementwise" in text
    assert "already has a matmul or convolution at its head" in text
    assert "planned peak activation memory: " in text and "*B" in text


def test_compile_report_on_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "compile", str(ROOT / "examples" / "mlp.kiln"),
         "--report", "-o", str(tmp_path / "mlp.onnx")],
        capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "MLP: the kernels the onnx backend runs, in order"
    assert any("fused matmul+add+relu" in line for line in lines)
    assert any("mlp.kiln:16" in line for line in lines)  # the first relu's line
    assert any("fused matmul+add " in line for line in lines)  # the scores' layer
    assert "no op left unfused next to a fusible neighbour" in out.stdout
    assert "planned peak activation memory: 4096*B bytes" in out.stdout
