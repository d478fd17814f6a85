"""Model entries of the compile cache (runtime/modelcache.py): a warm kiln.compile of a model
file loads its code without the compiler, and gives what a cold compile gives: outputs,
initial values, weights, errors with their spans, and the graph on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kiln
from kiln.runtime.modelcache import CachedNativeModel

pytestmark = pytest.mark.skipif(not shutil.which("cc"), reason="a model entry is linked by cc")

BLOCKS = """
block Affine(n: int) {
  param weight: [n, n] = init.kaiming_normal()
  param bias: [n] = init.uniform(-0.5, 0.5)
  forward(x: f32[B, n]) -> f32[B, n] { return x @ weight + bias }
}
"""
MODEL = """
import std.nn
import "blocks.kiln"

model Tiny(n: int = 4) {
  forward(x: f32[B, n], i: i64[B]) -> f32[B, n] {
    return (x |> blocks.Affine(n) |> nn.Linear(n, n) |> relu) + nn.Embedding(3, n)(i)
  }
}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A model file importing a local file and the standard library, in a private cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KILN_CACHE", raising=False)
    (tmp_path / "blocks.kiln").write_text(BLOCKS)
    (tmp_path / "model.kiln").write_text(MODEL)
    return tmp_path / "model.kiln"


def inputs(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((3, n)).astype(np.float32), np.array([0, 2, 1])


def cold(path, **options):
    """The model compiled with every compile cache off."""
    old = os.environ.get("KILN_CACHE")
    os.environ["KILN_CACHE"] = "0"
    try:
        return kiln.compile(path, **options)
    finally:
        if old is None:
            del os.environ["KILN_CACHE"]
        else:
            os.environ["KILN_CACHE"] = old


def same_params(a, b) -> None:
    assert list(a.params) == list(b.params)
    for path in a.params:
        x, y = a.params[path], b.params[path]
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), path  # bit-identical


def test_a_second_compile_is_a_hit_that_gives_what_a_cold_compile_gives(tiny):
    first = kiln.compile(tiny)
    assert not isinstance(first, CachedNativeModel)  # the cold compile wrote the entry
    warm = kiln.compile(str(tiny))
    assert isinstance(warm, CachedNativeModel)
    reference = cold(tiny)
    same_params(warm, reference)
    assert warm.signature() == reference.signature()
    x, i = inputs()
    assert np.array_equal(warm(x, i), reference(x, i))
    assert np.array_equal(warm(x=x, i=i), reference(x, i))  # the general path too
    assert warm.native_arrays() == reference.native_arrays()


@pytest.mark.parametrize("seed", [0, 7])
def test_initial_values_on_a_hit_are_the_cold_compiles_for_every_seed(tiny, seed):
    kiln.compile(tiny)
    for _ in range(2):  # drawn, then from the entry's values for this seed
        warm = kiln.compile(tiny, seed=seed)
        assert isinstance(warm, CachedNativeModel)
        same_params(warm, cold(tiny, seed=seed))


def test_weights_on_a_hit_are_loaded_and_only_the_rest_is_drawn(tiny, tmp_path):
    kiln.compile(tiny)
    full = {k: np.full_like(v, 0.25) for k, v in cold(tiny).state_dict().items()}
    np.savez(tmp_path / "full.npz", **full)
    partial = {"0.weight": full["0.weight"]}
    for weights, strict in ((str(tmp_path / "full.npz"), True), (partial, False)):
        warm = kiln.compile(tiny, seed=3, weights=weights, strict=strict)
        assert isinstance(warm, CachedNativeModel)
        same_params(warm, cold(tiny, seed=3, weights=weights, strict=strict))
    with pytest.raises(kiln.KilnError) as warm_error:
        kiln.compile(tiny, weights=partial)  # strict: the missing keys, as a cold compile says
    with pytest.raises(kiln.KilnError) as cold_error:
        cold(tiny, weights=partial)
    assert str(warm_error.value) == str(cold_error.value)


@pytest.mark.parametrize("change", ["args", "model", "opt_level", "training", "edit model",
                                    "edit import", "seed", "threads", "touch"])
def test_every_part_of_the_key_misses_and_nothing_else_does(tiny, change):
    options = {"args": {"n": 4}}
    kiln.compile(tiny, **options)
    if change == "args":
        options = {"args": {"n": 5}}
    elif change == "model":
        options["model"] = "Tiny"  # the same model, named: a key of its own
    elif change == "opt_level":
        options["opt_level"] = 0
    elif change == "training":
        options["training"] = True
    elif change == "edit model":
        tiny.write_text(MODEL.replace("relu", "sigmoid"))
    elif change == "edit import":
        blocks = tiny.parent / "blocks.kiln"
        blocks.write_text(BLOCKS.replace("x @ weight + bias", "x @ weight - bias"))
    elif change == "seed":
        options["seed"] = 5
    elif change == "threads":
        options["threads"] = 1
    elif change == "touch":
        os.utime(tiny, (1, 1))
    model = kiln.compile(tiny, **options)
    hits = change in ("seed", "threads", "touch")
    assert isinstance(model, CachedNativeModel) == hits
    reference = cold(tiny, **options)
    same_params(model, reference)
    n = (options.get("args") or {}).get("n", 4)
    x, i = inputs(n)
    feed = (x, i, np.array([0, 1], np.int64))[:len(model.inputs)]  # training: rng_key
    assert all(np.array_equal(a, b) for a, b in zip(np.atleast_1d(model(*feed)),
                                                    np.atleast_1d(reference(*feed))))
    assert isinstance(kiln.compile(tiny, **options), CachedNativeModel)  # and now it hits


def test_an_edited_stdlib_file_misses(tiny, tmp_path):
    """A copy of std.nn imported locally: editing it is an edited import like any other."""
    import importlib.resources

    nn = importlib.resources.files("kiln.stdlib").joinpath("nn.kiln").read_text()
    (tmp_path / "nn.kiln").write_text(nn)
    tiny.write_text(MODEL.replace("import std.nn", 'import "nn.kiln"'))
    kiln.compile(tiny)
    assert isinstance(kiln.compile(tiny), CachedNativeModel)
    (tmp_path / "nn.kiln").write_text(nn.replace("init.uniform_fan_in(in_features)  if bias",
                                                 "init.uniform_fan_in(2 * in_features)  if bias"))
    model = kiln.compile(tiny)
    assert not isinstance(model, CachedNativeModel)
    same_params(model, cold(tiny))


def test_the_graph_is_elaborated_on_first_use(tiny, tmp_path):
    kiln.compile(tiny)
    warm, reference = kiln.compile(tiny), cold(tiny)
    assert warm.compilation is not None and warm.model.name == "Tiny"
    assert [s.name for s in warm.pass_stats] == [s.name for s in reference.pass_stats]
    x, i = inputs()
    cotangent = np.ones((3, 4), np.float32)
    out_w, grads_w, _ = warm.vjp(x, i, cotangents=[cotangent])
    out_c, grads_c, _ = reference.vjp(x, i, cotangents=[cotangent])
    assert np.array_equal(out_w, out_c)
    assert all(np.array_equal(grads_w[k], grads_c[k]) for k in grads_c)
    warm.export_onnx(tmp_path / "warm.onnx")
    reference.export_onnx(tmp_path / "cold.onnx")
    assert (tmp_path / "warm.onnx").read_bytes() == (tmp_path / "cold.onnx").read_bytes()
    assert warm.profile(x, i, repeat=1).kernels


def test_weights_saved_and_loaded_on_a_hit(tiny, tmp_path):
    kiln.compile(tiny)
    warm = kiln.compile(tiny)
    warm.save_weights(tmp_path / "w.safetensors")
    doubled = {k: v * 2 for k, v in warm.state_dict().items()}
    warm.load_weights(doubled)
    reference = cold(tiny, weights=doubled)
    x, i = inputs()
    assert np.array_equal(warm(x, i), reference(x, i))


def test_a_source_changed_before_the_graph_is_needed_is_an_error(tiny):
    kiln.compile(tiny)
    warm = kiln.compile(tiny)
    (tiny.parent / "blocks.kiln").write_text(BLOCKS + "\n# changed\n")
    with pytest.raises(kiln.KilnError) as info:
        warm.export_onnx(tiny.parent / "m.onnx")
    assert info.value.code == "K0970"
    x, i = inputs()
    assert warm(x, i).shape == (3, 4)  # the code it loaded still runs


def test_run_time_errors_on_a_hit_show_the_cold_compiles_span(tiny):
    kiln.compile(tiny)
    warm = kiln.compile(tiny)
    x, _ = inputs()
    errors = []
    for model in (warm, cold(tiny)):
        with pytest.raises(kiln.KilnError) as info:
            model(x, np.array([0, 1, 9]))  # an embedding index out of range
        errors.append(info.value)
    assert errors[0].code == "K0505" and errors[0].span is not None
    assert str(errors[0]) == str(errors[1])
    assert errors[0].span.source_line() == errors[1].span.source_line()
    with pytest.raises(kiln.KilnError) as info:
        warm(np.ones((3, 5), np.float32), np.array([0, 1, 2]))  # the wrong size
    assert info.value.code.startswith("K05")


def test_the_cache_switch_and_directory_are_honoured(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE", "0")
    kiln.compile(tiny)
    assert not isinstance(kiln.compile(tiny), CachedNativeModel)
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("KILN_CACHE")
    kiln.compile(tiny)
    assert list((tmp_path / "cache" / "models").glob("*.so"))
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "other"))
    assert not isinstance(kiln.compile(tiny), CachedNativeModel)


def test_source_text_and_other_targets_compile_the_long_way(tiny):
    text = tiny.read_text().replace('import "blocks.kiln"', "").replace(
        "blocks.Affine(n)", "nn.Linear(n, n)")
    for _ in range(2):
        assert not isinstance(kiln.compile(text), CachedNativeModel)
    assert not isinstance(kiln.compile(tiny, target="reference"), CachedNativeModel)


WARM = textwrap.dedent("""
    import sys, numpy as np, kiln
    m = kiln.compile(sys.argv[1])
    print(type(m).__name__)
    m(np.ones((2, 4), np.float32), np.array([0, 1]))
    heavy = sorted({n.split('.')[0] for n in sys.modules} & {'lark', 'networkx', 'llvmlite',
                                                           'onnx'})
    print(heavy)
""")


def test_a_hit_imports_no_parser_graph_library_llvm_or_onnx(tiny):
    kiln.compile(tiny)
    proc = subprocess.run([sys.executable, "-c", WARM, str(tiny)], capture_output=True,
                          text=True, env=os.environ, check=True)
    assert proc.stdout.split() == ["CachedNativeModel", "[]"], proc.stdout


def test_two_processes_compiling_at_once_are_safe(tiny):
    procs = [subprocess.Popen([sys.executable, "-c", WARM, str(tiny)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ)
             for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert isinstance(kiln.compile(tiny), CachedNativeModel)


CONV = """
import std.nn
model Conv {
  forward(x: f32[B, 3, 8, 8]) -> f32[B, 4, 8, 8] {
    return x |> nn.Conv2d(3, 4, 3, padding = 1) |> nn.BatchNorm2d(4) |> relu
  }
}
"""


def test_folded_and_packed_weights_on_a_hit_are_the_cold_compiles(tmp_path, monkeypatch):
    """A convolution's weight packed for the GEMM with a BatchNorm folded in: made once from
    the seed's values and kept with them; made from new weights after load_weights."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KILN_CACHE", raising=False)
    path = tmp_path / "conv.kiln"
    path.write_text(CONV)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for seed in (0, 0, 4, 4):  # cold, then hits: with the seed's kept arrays, or made
        model, reference = kiln.compile(path, seed=seed), cold(path, seed=seed)
        assert any("bn_" in n for n in model.native_arrays())  # a folded BatchNorm
        assert np.array_equal(model(x), reference(x))
    weights = {k: v + np.ones((), v.dtype) for k, v in reference.state_dict().items()}
    model.load_weights(weights)
    assert np.array_equal(model(x), cold(path, weights=weights)(x))


def test_call_time_constraints_on_a_hit_are_the_cold_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "where.kiln"
    path.write_text("model W {\n  forward(x: f32[B, T]) -> f32[B, T] where T <= 4 {\n"
                    "    return x * 2.0\n  }\n}\n")
    kiln.compile(path)
    warm = kiln.compile(path)
    assert isinstance(warm, CachedNativeModel)
    assert np.array_equal(warm(np.ones((2, 4), np.float32)), np.full((2, 4), 2, np.float32))
    errors = []
    for model in (warm, cold(path)):
        with pytest.raises(kiln.KilnError) as info:
            model(np.ones((2, 5), np.float32))
        errors.append(info.value)
    assert str(errors[0]) == str(errors[1]) and errors[0].span is not None


def test_an_entry_rebuilt_while_its_old_code_runs_is_loaded_anew(tiny):
    """A hit's library stays loaded while its model lives; the entry rebuilt after an import
    changed is a new library file, which the next compile loads (not the old one by name)."""
    kiln.compile(tiny)
    old = kiln.compile(tiny)
    assert isinstance(old, CachedNativeModel)
    (tiny.parent / "blocks.kiln").write_text(BLOCKS.replace("x @ weight + bias",
                                                            "x @ weight - bias"))
    assert not isinstance(kiln.compile(tiny), CachedNativeModel)  # rebuilt
    new = kiln.compile(tiny)
    assert isinstance(new, CachedNativeModel)
    x, i = inputs()
    assert np.array_equal(new(x, i), cold(tiny)(x, i))
    assert not np.array_equal(old(x, i), new(x, i))  # the old model runs its own code still
    assert len(list((tiny.parent / "cache" / "models").glob("*.so"))) == 1
