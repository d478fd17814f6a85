"""Weights given to a model: values that do not fit, in-place edits, ties holding NaN, odd
Python values in a dict, refused loads (nothing changes), and new weights without new code."""

from __future__ import annotations

import numpy as np
import pytest
from _hostile import random_weights

import kiln
from kiln import KilnError

TARGETS = ["native", "reference", "onnx"]
LINEAR = """
import std.nn
model M { forward(x: f32[B, 3]) -> f32[B, 2] { return x |> nn.Linear(3, 4) |> relu
                                                     |> nn.Linear(4, 2) } }
"""
TIED = """
model T {
  param a: [2, 3] = init.normal()
  param b: [2, 3] = init.normal()
  tie b = a
  forward(x: f32[B, 3]) -> f32[B, 2] { return x @ b.T } }
"""
X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)


def _error(call) -> KilnError:
    with pytest.raises(KilnError) as info:
        call()
    return info.value


@pytest.mark.parametrize("target", TARGETS)
def test_a_value_that_does_not_fit_the_dtype_is_refused(target):
    m = kiln.compile(LINEAR, target=target)
    before = m(X)
    w = {k: v.astype(np.float64) for k, v in random_weights(m).items()}
    w["2.bias"][1] = 1e300  # an f64 that would be inf in f32
    err = _error(lambda: m.load_weights(w))
    assert err.code == "K0402" and "2.bias" in err.message and "fit" in err.message, str(err)
    np.testing.assert_array_equal(m(X), before)
    w["2.bias"][1] = np.inf  # an infinity is a value f32 holds: it loads
    m.load_weights(w)
    assert np.isinf(m.state_dict()["2.bias"][1])


@pytest.mark.parametrize("target", TARGETS)
def test_a_refused_load_changes_nothing(target, tmp_path):
    m = kiln.compile(LINEAR, target=target)
    old, before = {k: v.copy() for k, v in m.state_dict().items()}, m(X)
    w = random_weights(m)
    w["2.weight"] = w["2.weight"].astype(np.int32)  # one bad key among good ones
    _error(lambda: m.load_weights(w))
    m.save_weights(tmp_path / "w.safetensors")
    saved = kiln.compile(LINEAR, target="reference", weights=tmp_path / "w.safetensors")
    for k, v in old.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)
        np.testing.assert_array_equal(saved.state_dict()[k], v)
    np.testing.assert_array_equal(m(X), before)


@pytest.mark.parametrize("target", TARGETS)
def test_state_dict_is_read_only_so_every_target_runs_what_it_reports(target):
    m = kiln.compile(LINEAR, target=target)
    before = m(X)
    sd = m.state_dict()
    with pytest.raises(ValueError):
        sd["0.weight"][0, 0] = 100.0
    with pytest.raises(ValueError):
        m.params["0.bias"][:] = 1.0
    with pytest.raises(TypeError):
        m.params["0.bias"] = np.ones(4, np.float32)
    np.testing.assert_array_equal(m(X), before)
    mine = random_weights(m)
    m.load_weights(mine)
    mine["0.bias"][:] = 50.0  # the caller's arrays stay theirs: the model took a copy
    assert not np.any(m.state_dict()["0.bias"] == 50.0)


@pytest.mark.parametrize("target", TARGETS)
def test_kiln_reloads_its_own_file_when_a_tied_tensor_holds_nan(target, tmp_path):
    m = kiln.compile(TIED, target=target)
    w = m.state_dict()["a"].copy()
    w[0, 1] = np.nan
    m.load_weights({"a": w})
    m.save_weights(tmp_path / "t.safetensors")
    m.load_weights(tmp_path / "t.safetensors")  # both names, equal bytes: NaN equals itself
    assert np.isnan(m.state_dict()["b"][0, 1])
    w2 = w.copy()
    w2[1, 1] += 1.0
    err = _error(lambda: m.load_weights({"a": w, "b": w2}))
    assert err.code == "K0402" and "differ" in err.message


@pytest.mark.parametrize("target", TARGETS)
def test_odd_python_values_in_a_weights_dict_are_kiln_errors(target):
    m = kiln.compile(LINEAR, target=target)
    good = random_weights(m)
    ragged = {**good, "0.bias": [[1.0, 2.0], [3.0]]}
    err = _error(lambda: m.load_weights(ragged))
    assert err.code == "K0402" and "0.bias" in err.message, str(err)
    err = _error(lambda: m.load_weights({**good, 7: np.zeros(2, np.float32)}))
    assert err.code == "K0401" and "7" in err.message, str(err)
    err = _error(lambda: m.load_weights({**good, "0.bias": object()}))
    assert err.code == "K0402" and "0.bias" in err.message, str(err)
    nested = {**good, "0.bias": good["0.bias"].tolist()}  # a plain list that fits loads
    m.load_weights(nested)
    np.testing.assert_array_equal(m.state_dict()["0.bias"], good["0.bias"])


@pytest.mark.parametrize("target", TARGETS)
def test_torch_tensors_load_detached_and_bf16_where_lossless(target):
    torch = pytest.importorskip("torch")
    m = kiln.compile(LINEAR, target=target)
    good = random_weights(m)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in good.items()}
    m.load_weights(tensors)  # requires_grad: its values are taken (detached)
    np.testing.assert_array_equal(m.state_dict()["0.weight"], good["0.weight"])
    halves = {k: torch.tensor(v).to(torch.bfloat16) for k, v in good.items()}
    m.load_weights(halves)  # bf16 into f32 is exact
    np.testing.assert_array_equal(m.state_dict()["0.weight"],
                                  halves["0.weight"].float().numpy())
    err = _error(lambda: m.load_weights({**good, "0.bias": torch.zeros(4, dtype=torch.int64)}))
    assert err.code == "K0402" and "0.bias" in err.message


def test_new_weights_build_no_code(monkeypatch):
    """weight.T is data derived from the weight, not part of the code: new weights remake it
    (and its packed panels) without any code generation."""
    m = kiln.compile(LINEAR, target="native")
    monkeypatch.setattr("kiln.compiler.driver.compile_object", None)  # no building allowed now
    ref = kiln.compile(LINEAR, target="reference")
    for seed in (1, 2):
        w = random_weights(m, seed)
        m.load_weights(w)
        ref.load_weights(w)
        np.testing.assert_allclose(m(X), ref(X), rtol=1e-5, atol=1e-6)


BATCH_NORMS = ("import std.nn\nmodel C {\n"
               "  conv = nn.Conv2d(2, 3, 3, padding = 1, bias = false)\n"
               "  bn = nn.BatchNorm2d(3)\n  conv2 = nn.Conv2d(3, 3, 3, padding = 1, bias = false)\n"
               "  bn2 = nn.BatchNorm2d(3)\n  forward(x: f32[B, 2, 5, 5]) -> f32[B, 3, 5, 5] {\n"
               "    return x |> conv |> bn |> relu |> conv2 |> bn2 }\n}\n")
# statistics that are constants, not parameters: the folded weight cannot be remade by name
CONSTANT_STATS = """
import std.nn
model C {
  conv = nn.Conv2d(2, 3, 3, padding = 1)
  forward(x: f32[B, 2, 5, 5]) -> f32[B, 3, 5, 5] {
    return batch_norm(conv(x), zeros([3]), full([3], 2.0), none, none) } }
"""


@pytest.mark.parametrize("src, forbidden", [
    (BATCH_NORMS, "kiln.compiler.driver.compile_object"),
    (CONSTANT_STATS, "kiln.compiler.codegen.llvm.machine.machine_code")])
def test_folded_batch_norms_take_new_weights_without_building_code(src, forbidden, monkeypatch):
    """A BatchNorm folded into a convolution is remade from new weights by name (no build at
    all); one folded from constants optimizes the graph again, and the code is the same (the
    compile cache has it). Once the two folded biases, both zero at first, merged into one
    constant (cse), so new weights gave other code: a second full LLVM build."""
    m = kiln.compile(src, target="native")
    ref = kiln.compile(src, target="reference")
    monkeypatch.setattr(forbidden, None)  # no building allowed now
    w = random_weights(m)
    m.load_weights(w)
    ref.load_weights(w)
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(m(x), ref(x), rtol=1e-4, atol=1e-5)
