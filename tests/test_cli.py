"""The `kiln` command line: --bind, --input with --cast, random and optional inputs, help,
--version, lazy start-up, and `kiln summary` against hand-computed and torch counts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _clitest import run

from kiln.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# two inputs sharing B, a second size N, and an optional input
TWO = """
model Two {
  forward(x: f32[B, 3], y: f32[B, N], m: f32[B, 3]?) -> f32[B, 3] {
    return (x + m if defined(m) else x) * sum(y, axis = 1, keepdims = true)
  }
}
"""


@pytest.fixture
def two(tmp_path) -> Path:
    path = tmp_path / "two.kiln"
    path.write_text(TWO)
    return path


def npy(tmp_path, name: str, array: np.ndarray) -> str:
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return f"{name}={path}"


# ------------------------------------------------------------------ --bind


def test_bind_unknown_symbol_is_refused_with_a_hint(capsys, two):
    code, _, err = run(capsys, "run", two, "--target", "reference", "--random-inputs",
                       "--bind", "b=4")
    assert code == 1
    assert "K0602" in err and "no symbolic size b" in err
    assert "did you mean B?" in err and "its symbolic sizes: B, N" in err


def test_bind_for_a_model_without_symbols(capsys, tmp_path):
    path = tmp_path / "fixed.kiln"
    path.write_text("model F { forward(x: f32[2, 3]) -> f32[2, 3] { return x } }")
    code, _, err = run(capsys, "run", path, "--target", "reference", "--random-inputs",
                       "--bind", "B=2")
    assert code == 1 and "K0602" in err and "nothing to bind" in err


def test_bind_sizes_the_random_inputs(capsys, two):
    code, out, _ = run(capsys, "run", two, "--target", "reference", "--random-inputs",
                       "--bind", "B=4", "--bind", "N=2")
    assert code == 0 and "float32[4, 3]" in out


def test_bind_given_twice_differently(capsys, two):
    code, _, err = run(capsys, "run", two, "--target", "reference", "--random-inputs",
                       "--bind", "B=4", "--bind", "B=5")
    assert code == 1 and "K0602" in err and "given twice" in err


# ------------------------------------------------------------------ --input and random inputs


def test_random_inputs_take_their_sizes_from_the_given_inputs(capsys, two, tmp_path):
    x = npy(tmp_path, "x", np.ones((5, 3), np.float32))
    code, out, err = run(capsys, "run", two, "--target", "reference", "--input", x,
                         "--random-inputs")
    assert code == 0, err
    assert "output: float32[5, 3]" in out


def test_a_bind_the_given_inputs_contradict(capsys, two, tmp_path):
    x = npy(tmp_path, "x", np.ones((5, 3), np.float32))
    code, _, err = run(capsys, "run", two, "--target", "reference", "--input", x,
                       "--random-inputs", "--bind", "B=4")
    assert code == 1 and "K0503" in err and "B = 5" in err and "--bind B=4" in err


def test_left_out_optional_inputs_are_named(capsys, two):
    code, _, err = run(capsys, "run", two, "--target", "reference", "--random-inputs")
    assert code == 0
    assert "without the optional inputs m: f32[B, 3]" in err and "--random-optional" in err


def test_random_optional_fills_optional_inputs(capsys, two, tmp_path):
    x = npy(tmp_path, "x", np.zeros((2, 3), np.float32))
    y = npy(tmp_path, "y", np.ones((2, 1), np.float32))
    out_file = tmp_path / "out.npz"
    code, _, err = run(capsys, "run", two, "--target", "reference", "--input", x, "--input", y,
                       "--random-optional", "-o", out_file)
    assert code == 0, err
    assert "optional" not in err
    # x = 0 and y sums to 1: the output is m itself, random and not all zero
    assert np.any(np.load(out_file)["output"] != 0)


def test_float64_input_is_refused_without_cast(capsys, two, tmp_path):
    x = npy(tmp_path, "x", np.ones((2, 3)))
    code, _, err = run(capsys, "run", two, "--target", "reference", "--input", x,
                       "--random-inputs")
    assert code == 1 and "K0502" in err and "float64" in err and "--cast" in err


def test_cast_converts_float64(capsys, two, tmp_path):
    x = npy(tmp_path, "x", np.full((2, 3), 0.5))
    y = npy(tmp_path, "y", np.ones((2, 2), np.int64))
    out_file = tmp_path / "out.npz"
    code, _, err = run(capsys, "run", two, "--target", "reference", "--input", x, "--input", y,
                       "--cast", "-o", out_file)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out_file)["output"], np.full((2, 3), 1.0, np.float32))


@pytest.mark.parametrize("array, want", [
    (np.array([[1.0, 2.0, 1e39]]), "1e+39 at index [0, 2] is out of f32's range"),
    (np.array([[1.0, np.inf, 3.0]], np.float32).astype(np.float64), None),  # inf stays inf
])
def test_cast_refuses_values_out_of_range(capsys, two, tmp_path, array, want):
    x = npy(tmp_path, "x", array)
    code, _, err = run(capsys, "run", two, "--target", "reference", "--input", x, "--cast",
                       "--random-inputs")
    if want is None:
        assert code == 0, err
    else:
        assert code == 1 and "K0502" in err and want in err


@pytest.mark.parametrize("values, dtype, want, message", [
    ([0.5], np.float64, "i64", "0.5 at index [0] is not a whole number"),
    ([np.nan], np.float64, "i32", "nan at index [0] is not a whole number"),
    ([2.0**63], np.float64, "i64", "is not a whole number in i64's range"),
    ([2**40], np.int64, "i32", "1099511627776 at index [0] is out of i32's range"),
    ([2**63], np.uint64, "i64", "is out of i64's range"),
    ([2**24 + 1], np.int64, "f32", "16777217 at index [0] is not exactly a f32"),
    ([70000.0], np.float64, "f16", "is out of f16's range"),
    ([2], np.int64, "bool", "2 at index [0] is neither 0 nor 1"),
])
def test_cast_array_refuses_lossy_conversions(values, dtype, want, message):
    from kiln import KilnError
    from kiln.inputs import cast_array

    with pytest.raises(KilnError) as info:
        cast_array(np.array(values, dtype), want, "x")
    assert info.value.code == "K0502" and message in str(info.value)


@pytest.mark.parametrize("values, dtype, want", [
    ([0.1, -3.0, 1e30], np.float64, "f32"),  # rounding is the conversion asked for
    ([3.0, -7.0], np.float64, "i32"),
    ([1, 0], np.int64, "bool"),
    ([2**24], np.int64, "f32"),
    ([1.5], np.float64, "bf16"),
])
def test_cast_array_keeps_values_that_fit(values, dtype, want):
    from kiln.compiler.types import NUMPY_DTYPES
    from kiln.inputs import cast_array

    out = cast_array(np.array(values, dtype), want, "x")
    assert out.dtype == NUMPY_DTYPES[want]
    np.testing.assert_allclose(out.astype(np.float64), np.array(values, np.float64), rtol=1e-6)


# ------------------------------------------------------------------ help, version, start-up


def _options(parser):
    import argparse

    for action in parser._actions:
        yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)


def test_every_option_has_help():
    missing = [f"{prog} {a.dest}" for prog, a in _options(build_parser()) if not a.help]
    assert missing == []


def test_help_text_has_no_escaped_percent(capsys):
    """A subcommand's description is printed as written: "%" (its one-line help in `kiln
    --help` is %-formatted, where "%%" reads "%")."""
    for args in (["--help"], ["profile", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        out = capsys.readouterr().out
        assert "%%" not in out and "% of this CPU" in " ".join(out.split())


def test_version(capsys):
    from kiln import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kiln {__version__}"


def test_help_imports_neither_numpy_nor_the_compiler():
    code = ("import sys\nfrom kiln.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'ml_dtypes', 'networkx', 'lark', 'kiln.api',"
            " 'kiln.compiler.ir') if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "HEAVY []" in result.stderr


def test_import_kiln_is_lazy_but_complete():
    code = ("import sys, kiln\nassert 'kiln.api' not in sys.modules\n"
            "from kiln import compile, load, load_compiled, KilnError\n"
            "assert kiln.KilnError is kiln.api.KilnError\nprint('OK')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert "OK" in result.stdout, result.stderr


# ------------------------------------------------------------------ kiln summary

MLP = """
import std.nn
model Small {
  forward(x: f32[B, 8]) -> f32[B, 3] {
    return x |> nn.Linear(8, 16) |> relu |> nn.Linear(16, 3)
  }
}
"""


def summary_rows(text: str) -> dict[str, list[str]]:
    """The table's cells by path: block, output shape, params, mult-adds, output bytes."""
    rows = {}
    for line in text.splitlines()[3:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def summary_totals(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z -]+):\s+(.+?)(?: \(.*)?$", text, re.M))


def test_summary_of_a_small_mlp_symbolic_and_bound(capsys, tmp_path):
    path = tmp_path / "mlp.kiln"
    path.write_text(MLP)
    code, out, err = run(capsys, "summary", path)
    assert code == 0, err
    rows = summary_rows(out)
    # 8*16 + 16 and 16*3 + 3 parameters; 8*16 and 16*3 multiply-adds per sample
    assert rows["0"] == ["Linear", "f32[B, 16]", "144", "128 × B", "64 × B"]
    assert rows["2"] == ["Linear", "f32[B, 3]", "51", "48 × B", "12 × B"]
    totals = summary_totals(out)
    assert totals["total parameters"] == "195"
    assert totals["parameter bytes"] == "780"
    assert totals["multiply-adds of a call"] == "176 × B"
    assert totals["input bytes"] == "32 × B"
    code, out, _ = run(capsys, "summary", path, "--bind", "B=5")
    assert code == 0
    assert summary_rows(out)["0"] == ["Linear", "f32[5, 16]", "144", "640", "320"]
    assert summary_totals(out)["multiply-adds of a call"] == "880"


LENET_LAYERS = {  # hand-computed: params = out*in*k*k + out; MACs = output elements * in*k*k
    "features.0": ("Conv2d", "f32[2, 6, 28, 28]", 6 * 25 + 6, 6 * 28 * 28 * 25 * 2),
    "features.2": ("AvgPool2d", "f32[2, 6, 14, 14]", 0, 0),
    "features.3": ("Conv2d", "f32[2, 16, 10, 10]", 16 * 6 * 25 + 16, 16 * 10 * 10 * 150 * 2),
    "features.5": ("AvgPool2d", "f32[2, 16, 5, 5]", 0, 0),
    "classifier.0": ("Linear", "f32[2, 120]", 400 * 120 + 120, 400 * 120 * 2),
    "classifier.2": ("Linear", "f32[2, 84]", 120 * 84 + 84, 120 * 84 * 2),
    "classifier.4": ("Linear", "f32[2, 10]", 84 * 10 + 10, 84 * 10 * 2),
}


def test_summary_of_lenet_matches_hand_counts(capsys):
    code, out, err = run(capsys, "summary", EXAMPLES / "lenet.kiln", "--bind", "B=2")
    assert code == 0, err
    rows = summary_rows(out)
    for path, (block, shape, params, macs) in LENET_LAYERS.items():
        assert rows[path][:4] == [block, shape, f"{params:,}", f"{macs:,}"], path
    assert rows["features"][2] == f"{156 + 2416:,}"
    totals = summary_totals(out)
    assert totals["total parameters"] == "61,706"
    assert totals["multiply-adds of a call"] == f"{2 * 416_520:,}"
    code, out, _ = run(capsys, "summary", EXAMPLES / "lenet.kiln", "--depth", "1")
    assert list(summary_rows(out)) == ["features", "classifier"]


def test_summary_shows_a_recurrent_block_results_not_its_scan_carries(capsys):
    """A GRU's row lists (output, h_n), not also the carry of the scan inside it, and a GRU
    applied inside the model's own scan shows the results the scan reads."""
    code, out, err = run(capsys, "summary", EXAMPLES / "seq2seq_attention.kiln",
                         "--bind", "B=2", "--bind", "S=5", "--bind", "T=4")
    assert code == 0, err
    rows = summary_rows(out)
    assert rows["encoder"][:2] == ["GRU", "f32[2, 5, 32], f32[1, 2, 32]"]
    assert rows["decoder"][:2] == ["GRU", "f32[2, 1, 32], f32[1, 2, 32]"]
    assert rows["encoder"][4] == f"{(2 * 5 * 32 + 2 * 32) * 4:,}"


def test_summary_parameter_counts_match_torch(capsys):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    lenet = nn.Module()
    lenet.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                   nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
    lenet.classifier = nn.Sequential(nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84),
                                     nn.Tanh(), nn.Linear(84, 10))
    code, out, _ = run(capsys, "summary", EXAMPLES / "lenet.kiln")
    assert code == 0
    rows = summary_rows(out)
    for name, module in lenet.named_modules():
        if name and sum(p.numel() for p in module.parameters()):
            assert rows[name][2] == f"{sum(p.numel() for p in module.parameters()):,}", name
    total = sum(p.numel() for p in lenet.parameters())
    assert summary_totals(out)["total parameters"] == f"{total:,}"


def test_summary_refuses_a_bad_depth_and_an_unknown_symbol(capsys):
    code, _, err = run(capsys, "summary", EXAMPLES / "lenet.kiln", "--depth", "0")
    assert code == 1 and "K0602" in err
    code, _, err = run(capsys, "summary", EXAMPLES / "lenet.kiln", "--bind", "T=3")
    assert code == 1 and "K0602" in err and "no symbolic size T" in err


@pytest.mark.parametrize("name, want", [
    (".", "it is a directory"),
    ("out.txt", "unsupported extension '.txt'"),
    ("out", "unsupported extension '(none)'"),
])
def test_run_output_names_the_outputs_file(capsys, two, tmp_path, monkeypatch, name, want):
    # `-o` names where the outputs go: refused (before the model runs) as an outputs file,
    # not as a "weights file", and a directory as a directory
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "run", two, "--target", "reference", "--random-inputs",
                         "--bind", "B=2", "--bind", "N=1", "-o", name)
    assert code == 1 and "K0403" in err and f"outputs file {name}: {want}" in err, err
    assert "weights file" not in err and "output:" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.kiln"]


# ------------------------------------------------------------------ graph, passes, -O

# `x * 1.0` the optimizer drops; add, relu and the last mul one kernel fuses
SCALED = """
model S {
  param w: [3] = init.normal()
  forward(x: f32[B, 3]) -> f32[B, 3] { return relu(x * 1.0 + w) * 2.0 }
}
"""


@pytest.fixture
def scaled(tmp_path) -> Path:
    path = tmp_path / "s.kiln"
    path.write_text(SCALED)
    return path


def clusters(dot: str) -> dict[str, str]:
    """The DOT text of each cluster of `kiln graph --passes` by its label."""
    parts = re.split(r'  subgraph cluster_\w+ \{ label="([^"]*)";', dot)
    return dict(zip(parts[1::2], parts[2::2]))


def test_graph_prints_the_elaborated_graph_as_dot(capsys, scaled, tmp_path):
    code, out, _ = run(capsys, "graph", scaled)
    assert code == 0 and out.startswith('digraph "S" {') and "cluster" not in out
    labels = re.findall(r'label="([a-z_]+)', out)
    assert labels.count("mul") == 2 and "relu" in labels and "fused" not in out
    assert "input x" in out and "param w" in out and 'label="output output"' in out
    dot = tmp_path / "g.dot"
    code, written, _ = run(capsys, "graph", scaled, "-o", dot)
    assert code == 0 and written.strip() == f"wrote {dot}" and dot.read_text() == out.strip("\n")


def test_graph_passes_draws_the_graph_before_and_after_the_optimizer(capsys, scaled):
    code, out, _ = run(capsys, "graph", scaled, "--passes")
    assert code == 0
    parts = clusters(out)
    assert list(parts) == ["before (8 nodes)", "after optimization (4 nodes)"]
    before, after = parts.values()
    assert "x * 1.0" not in after and re.findall(r'label="(\w+)', before).count("mul") == 2
    assert "fused add+relu+mul" in after and "fused" not in before


PIPELINE_LINE = re.compile(r"^(\w+)\s+\d+ -> \d+", re.MULTILINE)


def test_print_passes_reports_the_pipeline_of_the_target(capsys, scaled, tmp_path):
    code, out, _ = run(capsys, "run", scaled, "--target", "reference", "--random-inputs",
                       "--print-passes")
    assert code == 0 and "output: float32[1, 3]" in out
    native = PIPELINE_LINE.findall(out)
    assert native[0] == "check_types" and native[-1] == "plan_memory" and "fuse" in native
    assert "simplify" in native
    # an ONNX file is made by the ONNX pipeline: nothing fused, no memory plan
    code, out, _ = run(capsys, "compile", scaled, "-o", tmp_path / "s.onnx", "--print-passes")
    onnx = PIPELINE_LINE.findall(out)
    assert code == 0 and "simplify" in onnx and "fuse" not in onnx and "plan_memory" not in onnx
    assert set(onnx) < set(native)


def test_without_print_passes_no_pass_is_reported(capsys, scaled):
    code, out, _ = run(capsys, "run", scaled, "--target", "reference", "--random-inputs")
    assert code == 0 and PIPELINE_LINE.findall(out) == [] and "optimizer off" not in out


def test_O0_turns_the_optimizer_off(capsys, scaled, tmp_path):
    code, out, _ = run(capsys, "run", scaled, "--target", "reference", "--random-inputs",
                       "--print-passes", "-O0")
    assert code == 0 and "optimizer off (-O0)" in out and PIPELINE_LINE.findall(out) == []
    kernels = {}
    for level in ("0", "1"):
        code, out, _ = run(capsys, "compile", scaled, "-o", tmp_path / "s.so", "--report",
                           f"-O{level}")
        assert code == 0, out
        kernels[level] = re.findall(r"^\s+\d+\s+(\S.*?)\s{2,}", out, re.MULTILINE)
    assert kernels["0"] == ["mul", "add", "relu", "mul"]
    assert kernels["1"] == ["fused add+relu+mul"]


def test_O0_and_O1_compute_the_same_outputs(capsys, scaled, tmp_path):
    x = np.array([[1.0, -2.0, 0.5], [-1.0, 3.0, -0.25]], np.float32)
    results = {}
    for level in ("0", "1"):
        out_file = tmp_path / f"o{level}.npz"
        code, _, err = run(capsys, "run", scaled, "--input", npy(tmp_path, "x", x),
                           f"-O{level}", "-o", out_file)
        assert code == 0, err
        results[level] = np.load(out_file)["output"]
    np.testing.assert_allclose(results["0"], results["1"], rtol=1e-6)


# ------------------------------------------------------------------ kiln run's options

def run_outputs(capsys, tmp_path, *args) -> np.ndarray:
    """The output `kiln run ... -o` saves."""
    out_file = tmp_path / "out.npz"
    code, out, err = run(capsys, "run", *args, "-o", out_file)
    assert code == 0, err
    assert f"wrote {out_file}" in out
    return np.load(out_file)["output"]


def test_run_computes_the_given_input_with_the_given_weights(capsys, scaled, tmp_path):
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    w = np.array([0.5, 1.0, -1.0], np.float32)
    np.savez(tmp_path / "w.npz", w=w)
    got = run_outputs(capsys, tmp_path, scaled, "--target", "reference",
                      "--input", npy(tmp_path, "x", x), "--weights", tmp_path / "w.npz")
    np.testing.assert_allclose(got, np.maximum(x + w, 0) * 2, rtol=1e-6)


def test_run_weights_are_strict_unless_no_strict(capsys, scaled, tmp_path):
    x = np.ones((1, 3), np.float32)
    w = np.array([1.0, 2.0, 3.0], np.float32)
    np.savez(tmp_path / "w.npz", w=w, extra=np.zeros(2, np.float32))
    code, out, err = run(capsys, "run", scaled, "--target", "reference", "--input",
                         npy(tmp_path, "x", x), "--weights", tmp_path / "w.npz")
    assert code == 1 and "K0401" in err and "extra" in err and "output:" not in out
    got = run_outputs(capsys, tmp_path, scaled, "--target", "reference", "--input",
                      npy(tmp_path, "x", x), "--weights", tmp_path / "w.npz", "--no-strict")
    np.testing.assert_allclose(got, (x + w) * 2, rtol=1e-6)  # the matching key loaded


def test_run_seed_sets_the_initial_weights_and_the_random_inputs(capsys, scaled, tmp_path):
    x = np.ones((1, 3), np.float32)
    given = npy(tmp_path, "x", x)

    def output(*args):
        return run_outputs(capsys, tmp_path, scaled, "--target", "reference", *args)

    import kiln

    for seed in (0, 5):  # the weights are the seed's, as kiln.compile makes them
        w = kiln.compile(SCALED, target="reference", seed=seed).params["w"]
        np.testing.assert_allclose(output("--input", given, "--seed", str(seed)),
                                   np.maximum(x + w, 0) * 2, rtol=1e-6)
    same = output("--random-inputs", "--bind", "B=4", "--seed", "3")
    assert same.shape == (4, 3)
    np.testing.assert_array_equal(same, output("--random-inputs", "--bind", "B=4", "--seed", "3"))
    assert not np.array_equal(same, output("--random-inputs", "--bind", "B=4", "--seed", "4"))


def test_run_targets_agree(capsys, scaled, tmp_path):
    x = np.array([[1.0, -2.0, 0.5], [0.0, 4.0, -3.0]], np.float32)
    given = npy(tmp_path, "x", x)
    results = {target: run_outputs(capsys, tmp_path, scaled, "--target", target, "--input",
                                   given) for target in ("reference", "native", "onnx")}
    for target in ("native", "onnx"):
        np.testing.assert_allclose(results[target], results["reference"], rtol=1e-6)


# ------------------------------------------------------------------ compile: native output


@pytest.mark.parametrize("suffix, system", [(".dylib", "macOS"), (".dll", "Windows")])
@pytest.mark.parametrize("target", [[], ["--target", "native"]])
def test_compile_refuses_a_library_for_another_system(capsys, two, tmp_path, suffix, system,
                                                      target):
    """Native output is a Linux x86-64 shared object: a macOS or Windows library name is a
    K0602 before anything is built, with or without --target native."""
    out = tmp_path / f"two{suffix}"
    code, _, err = run(capsys, "compile", two, "-o", out, *target)
    assert code == 1
    assert "error[K0602]" in err and f"not a {system} library" in err and "two.so" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.kiln"]


# ------------------------------------------------------------------ kiln run model.so
def test_run_a_compiled_library(capsys, tmp_path):
    """`kiln run model.so` runs the library as compiled, gives the model file's outputs for
    the same inputs and weights (--weights over the library's own), and refuses the options
    only a source has rather than ignoring them."""
    from kiln.runtime.weights import save_weights

    source, lib = EXAMPLES / "mlp.kiln", tmp_path / "mlp.so"
    assert run(capsys, "compile", source, "-o", lib, "--seed", "3")[0] == 0
    rng = np.random.default_rng(0)
    x = npy(tmp_path, "x", rng.standard_normal((3, 784)).astype(np.float32))
    import kiln

    params = kiln.compile(source, target="reference").params
    weights = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.05
               for k, v in params.items()}
    save_weights(tmp_path / "w.safetensors", weights)
    outs = {}
    for name, target, extra in (("lib", lib, []), ("src", source, ["--seed", "3"]),
                                ("lib_w", lib, ["--weights", tmp_path / "w.safetensors"]),
                                ("src_w", source, ["--weights", tmp_path / "w.safetensors"])):
        code, _, err = run(capsys, "run", target, "--input", x, *extra, "-o",
                           tmp_path / f"{name}.npz")
        assert code == 0, err
        outs[name] = np.load(tmp_path / f"{name}.npz")["output"]
    np.testing.assert_allclose(outs["lib"], outs["src"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["lib_w"], outs["src_w"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs["lib"], outs["lib_w"])  # the given weights were used
    for option in (["--arg", "hidden=2"], ["--model", "MLP"], ["--target", "reference"],
                   ["-O", "0"], ["--precision", "bf16"], ["--print-passes"]):
        code, _, err = run(capsys, "run", lib, "--random-inputs", *option)
        assert code == 1 and "error[K0602]" in err and "compiled library" in err, err
        assert option[0] in err, err
