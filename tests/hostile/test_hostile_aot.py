"""Ahead-of-time libraries: new weights reach every array the code reads (or are refused,
changing nothing), and the files beside a library are checked against what it was built for."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _hostile import assert_kiln_error, random_weights, run_child

import kiln
from kiln import KilnError
from kiln.runtime.weights import load_weights, save_weights

pytestmark = pytest.mark.skipif(not shutil.which("cc"), reason="linking needs cc")

MLP = """
import std.nn
model M { forward(x: f32[B, 6]) -> f32[B, 3] { return x |> nn.Linear(6, 8) |> relu
                                                     |> nn.Linear(8, 3) } }
"""
CONV_BN = """
import std.nn
model C {
  conv = nn.Conv2d(2, 3, 3, padding = 1)
  bn = nn.BatchNorm2d(3)
  forward(x: f32[B, 2, 5, 5]) -> f32[B, 3, 5, 5] { return x |> conv |> bn } }
"""
X = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)


def _library(tmp_path, src, name="model"):
    from kiln.cli import main

    (tmp_path / f"{name}.kiln").write_text(src)
    assert main(["compile", str(tmp_path / f"{name}.kiln"), "--target", "native",
                 "-o", str(tmp_path / f"{name}.so")]) == 0
    return tmp_path / f"{name}.so"


def test_a_library_takes_new_weight_matrices(tmp_path):
    """The folded weight.T and its packed panels once kept the old values (the biases alone
    changed) while state_dict reported the new ones."""
    lib = kiln.load_compiled(_library(tmp_path, MLP))
    ref = kiln.compile(MLP, target="reference")
    for seed in (1, 2):
        w = random_weights(ref, seed)
        lib.load_weights(w)
        ref.load_weights(w)
        np.testing.assert_allclose(lib(X), ref(X), rtol=1e-5, atol=1e-6)
        for k, v in w.items():
            np.testing.assert_array_equal(lib.state_dict()[k], v)


def test_a_library_with_a_folded_batch_norm_takesrandom_weights(tmp_path):
    """The folded weight and bias are remade from the new conv and BatchNorm weights."""
    lib = kiln.load_compiled(_library(tmp_path, CONV_BN))
    ref = kiln.compile(CONV_BN, target="reference")
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    w = random_weights(ref)
    lib.load_weights(w)
    ref.load_weights(w)
    np.testing.assert_allclose(lib(x), ref(x), rtol=1e-4, atol=1e-5)


# statistics that are constants, not parameters: the folded weight cannot be remade by name
CONSTANT_STATS = """
import std.nn
model C {
  conv = nn.Conv2d(2, 3, 3, padding = 1)
  forward(x: f32[B, 2, 5, 5]) -> f32[B, 3, 5, 5] {
    return batch_norm(conv(x), zeros([3]), full([3], 2.0), none, none) } }
"""


def test_a_library_with_weights_folded_past_remaking_refuses_new_ones_and_changes_nothing(
        tmp_path):
    lib = kiln.load_compiled(_library(tmp_path, CONSTANT_STATS))
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    old, before = {k: v.copy() for k, v in lib.state_dict().items()}, lib(x)
    with pytest.raises(KilnError) as info:
        lib.load_weights(random_weights(lib))
    assert info.value.code == "K0403" and "BatchNorm" in info.value.message
    lib.save_weights(tmp_path / "after.safetensors")
    saved = load_weights(tmp_path / "after.safetensors")
    for k, v in old.items():
        np.testing.assert_array_equal(lib.state_dict()[k], v)
        np.testing.assert_array_equal(saved[k], v)
    np.testing.assert_array_equal(lib(x), before)


LOAD = """
import kiln
try:
    m = kiln.load_compiled({lib!r})
    import numpy as np
    print(m(np.ones((2, 6), np.float32)).sum())
except kiln.KilnError as e:
    print("KilnError", e.code, e.message)
"""


def _tamper_weights(lib, change):
    stem = lib.with_suffix("")
    stored = dict(load_weights(f"{stem}.safetensors"))
    change(stored)
    save_weights(f"{stem}.safetensors", stored)


def _tamper_meta(lib, change):
    path = lib.with_suffix(".kiln.json")
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


ATTACKS = {
    "shorter array": lambda lib: _tamper_weights(
        lib, lambda w: w.update({"0.bias": w["0.bias"][:2].copy()})),
    "other dtype": lambda lib: _tamper_weights(
        lib, lambda w: w.update({"0.bias": w["0.bias"].astype(np.float16)})),
    "missing array": lambda lib: _tamper_weights(lib, lambda w: w.pop("2.bias")),
    "smaller output": lambda lib: _tamper_meta(
        lib, lambda m: m["outputs"][0].update({"shape": ["B", "1"]})),
    "missing keys": lambda lib: _tamper_meta(lib, lambda m: m.pop("slots")),
    "not an object": lambda lib: lib.with_suffix(".kiln.json").write_text("[1, 2]"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_files_beside_a_library_that_it_was_not_built_with_are_refused(tmp_path, attack):
    """Once: a shorter or other-dtype array was read past its end (outputs of 1e28, NaN), a
    smaller output shape corrupted the heap, missing keys raised KeyError."""
    lib = _library(tmp_path, MLP)
    ATTACKS[attack](lib)
    assert_kiln_error(run_child(LOAD.format(lib=str(lib)), timeout=120), "K0403")
