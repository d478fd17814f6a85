"""The CLI options tests/test_cli.py does not cover, each by its effect: `kiln params`'
multiply-adds against hand counts (and the API's), `kiln graph` (DOT, -o, --passes),
--print-passes, -O0/-O1, and `kiln run`'s --target, --seed, --weights, --no-strict, --model,
--arg and -o."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from _clitest import run

import kiln
from kiln.compiler.dims import Dim

# A linear layer and a convolution whose multiply-adds are counted by hand below.
SMALL = """
import std.nn
model Small {
  fc = nn.Linear(8, 16)
  conv = nn.Conv2d(2, 3, 3)
  forward(x: f32[B, 8], img: f32[B, 2, 4, 4]) -> (f32[B, 16], f32[B, 3, 2, 2]) {
    return fc(x), conv(img)
  }
}
"""
FC_MACS = 8 * 16              # per sample: one multiply-add per weight (the bias is an add)
CONV_MACS = (3 * 2 * 2) * (2 * 3 * 3)  # per sample: outputs C*OH*OW, each C_in*kh*kw

# Two models: --model picks one, --arg sizes the first; `x * 1.0` is what -O1 simplifies away.
MODELS = """
model Scaled(n: int = 3) {
  param w: [n, 4] = init.normal()
  forward(x: f32[B, 4]) -> f32[B, n] { return relu(x @ w.T * 1.0) }
}
model Twice { forward(x: f32[B, 2]) -> f32[B, 2] { return x * 2.0 } }
"""


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.kiln"
    path.write_text(SMALL)
    return path


@pytest.fixture
def models(tmp_path) -> Path:
    path = tmp_path / "models.kiln"
    path.write_text(MODELS)
    return path


def ok(capsys, *args) -> str:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return out


# ---------------------------------------------------------------------------- multiply-adds
def test_params_prints_hand_counted_multiply_adds(capsys, small):
    out = ok(capsys, "params", small)
    macs = dict(re.findall(r"^  (\S+)\s+(.+)$", out.split("multiply-adds of one call:")[1],
                           re.MULTILINE))
    assert macs == {"fc": f"{FC_MACS} × B", "conv": f"{CONV_MACS} × B",
                    "total": f"{FC_MACS + CONV_MACS} × B"}


def test_the_api_counts_the_same_multiply_adds(small):
    by_scope = kiln.load(small).elaborate().macs_by_scope()
    total = sum(by_scope.values(), Dim.of(0))
    assert total.evaluate({"B": 3}) == 3 * (FC_MACS + CONV_MACS)
    fc = sum((m for s, m in by_scope.items() if s.split(".")[0] == "fc"), Dim.of(0))
    assert fc.evaluate({"B": 1}) == FC_MACS


# ---------------------------------------------------------------------------- kiln graph
def dot_ops(dot: str, prefix: str = "") -> list[str]:
    """The op of every node of a DOT graph (of one cluster, by its node-name prefix)."""
    return re.findall(rf'^\s*{prefix}n\d+ \[label="(\w+)', dot, re.MULTILINE)


def test_graph_prints_the_elaborated_graph_as_dot(capsys, models):
    out = ok(capsys, "graph", models, "--model", "Scaled")
    assert out.startswith('digraph "Scaled" {')
    assert sorted(dot_ops(out)) == ["constant", "input", "matmul", "mul", "param", "relu",
                                    "transpose"]


def test_graph_writes_a_dot_file(capsys, models, tmp_path):
    printed = ok(capsys, "graph", models)
    out = ok(capsys, "graph", models, "-o", tmp_path / "g.dot")
    assert out.strip() == f"wrote {tmp_path / 'g.dot'}"
    assert (tmp_path / "g.dot").read_text() == printed.rstrip("\n")


def test_graph_passes_draws_the_graph_before_and_after_optimization(capsys, models):
    out = ok(capsys, "graph", models, "--model", "Scaled", "--passes")
    assert 'label="before (' in out and 'label="after optimization (' in out
    before, after = dot_ops(out, "a_"), dot_ops(out, "b_")
    assert "mul" in before and "mul" not in after  # x * 1.0 simplified
    assert "transpose" in before and "transpose" not in after  # w.T folded into a constant
    assert len(after) < len(before)


# ---------------------------------------------------------------------------- -O, --print-passes
def pass_table(out: str) -> dict[str, str]:
    """--print-passes' table: pass name -> its changes column."""
    rows = re.findall(r"^(\w+)\s+\d+ -> \d+\s+[\d.]+ ms  (.*)$", out, re.MULTILINE)
    return dict(rows)


def test_print_passes_reports_every_pass_and_what_it_did(capsys, models):
    from kiln.compiler.pipelines import PIPELINES

    out = ok(capsys, "run", models, "--model", "Scaled", "--random-inputs", "--print-passes")
    table = pass_table(out)
    assert list(table) == [p.name for p in PIPELINES["native"]]
    assert table["simplify"] == "x*1 -> x 1"
    assert table["fold_weight_layout"] == "folded 1"
    assert re.search(r"^output: float32\[1, 3\]", out, re.MULTILINE)  # and it ran


def test_print_passes_of_an_onnx_export_lists_the_onnx_pipeline(capsys, models, tmp_path):
    from kiln.compiler.pipelines import PIPELINES

    out = ok(capsys, "compile", models, "--model", "Scaled", "--target", "onnx",
             "-o", tmp_path / "m.onnx", "--print-passes")
    assert list(pass_table(out)) == [p.name for p in PIPELINES["onnx"]]


def onnx_ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_opt_level_zero_turns_the_optimizer_off(capsys, models, tmp_path):
    out = ok(capsys, "run", models, "--model", "Scaled", "--random-inputs", "--print-passes",
             "-O0", "-o", tmp_path / "o0.npz")
    assert "optimizer off (-O0)" in out and not pass_table(out)
    ok(capsys, "run", models, "--model", "Scaled", "--random-inputs", "-O1",
       "-o", tmp_path / "o1.npz")
    o0, o1 = np.load(tmp_path / "o0.npz"), np.load(tmp_path / "o1.npz")
    np.testing.assert_allclose(o0["output"], o1["output"], rtol=1e-6)
    # what the exported file holds: the multiplication by one only at -O0
    for level, has_mul in (("-O0", True), ("-O1", False)):
        path = tmp_path / f"m{level}.onnx"
        ok(capsys, "compile", models, "--model", "Scaled", "-o", path, level)
        assert ("Mul" in onnx_ops(path)) == has_mul


# ---------------------------------------------------------------------------- kiln run
def run_outputs(capsys, tmp_path, *args) -> np.ndarray:
    """`kiln run ... -o out.npz`'s one output."""
    out = tmp_path / "out.npz"
    ok(capsys, "run", *args, "-o", out)
    return np.load(out)["output"]


def test_run_model_and_arg_pick_and_size_the_model(capsys, models):
    out = ok(capsys, "run", models, "--random-inputs")  # the file's last model
    assert re.search(r"^output: float32\[1, 2\]", out, re.MULTILINE)
    out = ok(capsys, "run", models, "--model", "Scaled", "--arg", "n=5", "--random-inputs",
             "--bind", "B=2")
    assert re.search(r"^output: float32\[2, 5\]", out, re.MULTILINE)


@pytest.mark.parametrize("target", ["reference", "onnx"])
def test_run_targets_agree_with_native(capsys, models, tmp_path, target):
    args = (models, "--model", "Scaled", "--random-inputs", "--bind", "B=3")
    native = run_outputs(capsys, tmp_path, *args)
    other = run_outputs(capsys, tmp_path, *args, "--target", target)
    assert native.shape == (3, 3)
    np.testing.assert_allclose(other, native, rtol=1e-5, atol=1e-6)
    if target == "onnx":  # it ran where it was sent: the ONNX target's own pipeline
        from kiln.compiler.pipelines import PIPELINES

        out = ok(capsys, "run", *args, "--target", target, "--print-passes")
        assert list(pass_table(out)) == [p.name for p in PIPELINES["onnx"]]


def test_run_seed_sets_the_weights_and_the_random_inputs(capsys, models, tmp_path):
    args = (models, "--model", "Scaled", "--random-inputs", "--bind", "B=4")
    first = run_outputs(capsys, tmp_path, *args, "--seed", "1")
    np.testing.assert_array_equal(run_outputs(capsys, tmp_path, *args, "--seed", "1"), first)
    assert not np.allclose(run_outputs(capsys, tmp_path, *args, "--seed", "2"), first)
    # the random inputs alone change too: Twice has no weights
    twice = (models, "--random-inputs", "--bind", "B=4")
    assert not np.array_equal(run_outputs(capsys, tmp_path, *twice, "--seed", "1"),
                              run_outputs(capsys, tmp_path, *twice, "--seed", "2"))


def test_run_weights_and_no_strict(capsys, models, tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    np.savez(tmp_path / "w.npz", w=w)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)
    args = (models, "--model", "Scaled", "--input", f"x={tmp_path / 'x.npy'}")
    got = run_outputs(capsys, tmp_path, *args, "--weights", tmp_path / "w.npz")
    np.testing.assert_allclose(got, np.maximum(x @ w.T, 0), rtol=1e-6)
    # a file with an extra entry: refused when strict, its known entries used when not
    np.savez(tmp_path / "extra.npz", w=w, unknown=np.zeros(2, np.float32))
    code, _, err = run(capsys, "run", *args, "--weights", tmp_path / "extra.npz")
    assert code != 0 and "K0401" in err and "unknown" in err
    got = run_outputs(capsys, tmp_path, *args, "--weights", tmp_path / "extra.npz", "--no-strict")
    np.testing.assert_allclose(got, np.maximum(x @ w.T, 0), rtol=1e-6)
