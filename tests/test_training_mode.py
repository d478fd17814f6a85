"""Training mode (`kiln.compile(..., training=True)`) against PyTorch: BatchNorm's batch
statistics and running-statistics updates, dropout's seeded mask on every target, the model's
extra rng_key input and update outputs, and eval mode left as it was."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference of training mode")
from _stdlibtest import close, rand  # noqa: E402

import kiln  # noqa: E402
from kiln.compiler.errors import KilnError  # noqa: E402

TARGETS = ("reference", "native", "onnx")


def bn_model(block: str, x_type: str) -> str:
    return f"""
import std.nn
model Net {{
  bn = nn.{block}
  forward(x: {x_type}) {{ return bn(x) }}
}}
"""


def _torch_bn(block: str) -> torch.nn.Module:
    return eval(f"torch.nn.{block.replace('true', 'True').replace('false', 'False')}")


def _apply_updates(model, params: dict, outputs) -> dict:
    """The parameters with the model's update outputs written back (what a train step does)."""
    new = dict(params)
    for path, index in model.updates.items():
        new[path] = np.asarray(outputs[index])
    return new


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("block, x_type, shape", [
    ("BatchNorm1d(4, momentum = 0.3)", "f32[B, 4]", (6, 4)),
    ("BatchNorm1d(4, affine = false)", "f32[B, 4, L]", (3, 4, 5)),
    ("BatchNorm2d(3)", "f32[B, 3, H, W]", (2, 3, 4, 5)),
    ("BatchNorm2d(3, momentum = 0.9, eps = 0.01)", "f32[B, 3, H, W]", (4, 3, 2, 3)),
])
def test_batch_norm_training_matches_torch_over_three_steps(target, block, x_type, shape):
    rng = np.random.default_rng(0)
    twin = _torch_bn(block.replace(" = ", "="))
    with torch.no_grad():
        if twin.affine:
            twin.weight.copy_(torch.from_numpy(rand(rng, shape[1])))
            twin.bias.copy_(torch.from_numpy(rand(rng, shape[1])))
    twin.train()
    model = kiln.compile(bn_model(block, x_type), target=target, training=True)
    params = dict(model.params)
    if twin.affine:
        params["bn.weight"] = twin.weight.detach().numpy().copy()
        params["bn.bias"] = twin.bias.detach().numpy().copy()
    model.load_weights(params)
    assert set(model.updates) == {"bn.running_mean", "bn.running_var",
                                  "bn.num_batches_tracked"}
    for step in range(3):
        x = rand(rng, *shape, scale=2.0) + step
        outs = model(x)
        with torch.no_grad():
            want = twin(torch.from_numpy(x)).numpy()
        close(outs[0], want, rtol=1e-4, atol=1e-5)
        model.load_weights(_apply_updates(model, dict(model.params), outs))
    state = {k: v.numpy() for k, v in twin.state_dict().items()}
    for name in ("running_mean", "running_var"):
        close(model.params[f"bn.{name}"], state[name], rtol=1e-5, atol=1e-6)
    assert model.params["bn.num_batches_tracked"] == state["num_batches_tracked"] == 3


def test_eval_mode_is_unchanged_and_has_no_updates():
    src = bn_model("BatchNorm2d(3)", "f32[B, 3, 2, 2]")
    x = rand(np.random.default_rng(1), 5, 3, 2, 2)
    model = kiln.compile(src, target="reference")
    assert model.updates == {} and [p.name for p in model.inputs] == ["x"]
    twin = torch.nn.BatchNorm2d(3).eval()
    close(model(x), twin(torch.from_numpy(x)).detach().numpy())


def test_batch_norm_without_running_stats_updates_nothing():
    src = bn_model("BatchNorm2d(3, track_running_stats = false)", "f32[B, 3, 2, 2]")
    model = kiln.compile(src, target="native", training=True)
    x = rand(np.random.default_rng(2), 5, 3, 2, 2)
    assert model.updates == {}
    twin = torch.nn.BatchNorm2d(3, track_running_stats=False).train()
    close(model(x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-4)


def test_a_block_called_twice_updates_its_buffers_in_order():
    """Two training-mode calls chain their updates, as PyTorch's in-place ones do."""
    src = """
import std.nn
model Twice {
  bn = nn.BatchNorm1d(2)
  forward(a: f32[B, 2], b: f32[B, 2]) { return bn(a) + bn(b) }
}
"""
    rng = np.random.default_rng(3)
    a, b = rand(rng, 4, 2), rand(rng, 4, 2)
    model = kiln.compile(src, target="reference", training=True)
    outs = model(a, b)
    twin = torch.nn.BatchNorm1d(2).train()
    with torch.no_grad():
        close(outs[0], (twin(torch.from_numpy(a)) + twin(torch.from_numpy(b))).numpy(),
              rtol=1e-4)
    updated = _apply_updates(model, dict(model.params), outs)
    close(updated["bn.running_var"], twin.running_var.numpy())
    assert updated["bn.num_batches_tracked"] == 2


def test_training_is_a_compile_time_flag_of_the_language():
    src = """
model Flag {
  forward(x: f32[2]) { return x * 2 if training else x }
}
"""
    x = np.ones(2, np.float32)
    np.testing.assert_array_equal(kiln.compile(src, target="reference")(x), x)
    np.testing.assert_array_equal(kiln.compile(src, target="reference", training=True)(x),
                                  2 * x)


DROPOUT = """
import std.nn
model Drop {
  first = nn.Dropout(0.5)
  second = nn.Dropout(0.25)
  forward(x: f32[B, 64]) { return first(x), second(x) }
}
"""


def test_dropout_takes_a_key_input_and_draws_the_same_mask_on_every_target():
    x = rand(np.random.default_rng(4), 8, 64)
    key = np.array([17, 5], np.int64)
    results = {}
    for target in TARGETS:
        model = kiln.compile(DROPOUT, target=target, training=True)
        assert [str(p) for p in model.inputs] == ["x: f32[B, 64]", "rng_key: i64[2]"]
        results[target] = model(x, rng_key=key)
    for target in TARGETS[1:]:
        for got, want in zip(results[target], results["reference"], strict=True):
            np.testing.assert_array_equal(got == 0, want == 0)
            close(got, want)
    first, second = results["reference"]
    assert ((first == 0) != (second == 0)).any()  # two dropouts: two streams


def test_dropout_masks_change_with_the_step_and_repeat_with_the_key():
    model = kiln.compile(DROPOUT, target="native", training=True)
    x = np.ones((4, 64), np.float32)
    step0, again, step1 = (model(x, rng_key=np.array(k, np.int64))[0]
                           for k in ([3, 0], [3, 0], [3, 1]))
    np.testing.assert_array_equal(step0, again)
    assert (step0 != step1).any()
    assert set(np.unique(step0)) <= {0.0, 2.0}


def test_the_key_is_checked_like_any_input():
    model = kiln.compile(DROPOUT, target="native", training=True)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(KilnError) as info:
        model(x, rng_key=np.array([1, 2, 3], np.int64))
    assert info.value.code == "K0503"
    with pytest.raises(KilnError) as info:
        model(x, rng_key=np.array([1.0, 2.0]))
    assert info.value.code == "K0502"
    with pytest.raises(KilnError) as info:
        model(x)
    assert info.value.code == "K0501"


def test_dropout_in_eval_mode_is_the_identity_and_takes_no_key():
    model = kiln.compile(DROPOUT, target="native")
    x = rand(np.random.default_rng(5), 3, 64)
    assert [p.name for p in model.inputs] == ["x"]
    for y in model(x):
        np.testing.assert_array_equal(y, x)


def test_training_must_be_a_bool():
    with pytest.raises(KilnError) as info:
        kiln.compile(DROPOUT, target="reference", training=1)
    assert info.value.code == "K0602"


def test_dropout_masks_do_not_depend_on_the_thread_count():
    x = rand(np.random.default_rng(6), 16, 64)
    key = np.array([5, 8], np.int64)
    one, two = (kiln.compile(DROPOUT, target="native", training=True, threads=n)(x, rng_key=key)
                for n in (1, 2))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


SCAN_DROPOUT = """
import std.nn
model Loop {
  drop = nn.Dropout(0.5)
  forward(xs: f32[T, B, 64], h0: f32[B, 64]) {
    ys, h = scan SCAN carry (h = h0) {
      h = h + drop(x)
      emit drop(x) * 1.0
    }
    return ys, h
  }
}
"""


@pytest.mark.parametrize("scan", ["x in xs axis 0", "reverse x in xs axis 0",
                                  "(t, x) in xs axis 0"])
def test_dropout_in_a_scan_draws_a_mask_per_step_and_its_gradient_reuses_them(scan):
    """Each step of a scan draws its own masks (not the first step's again), the same on every
    target and for the same key, and the backward pass applies each step's own masks."""
    src = SCAN_DROPOUT.replace("SCAN", scan)
    xs, h0 = np.ones((5, 2, 64), np.float32), np.zeros((2, 64), np.float32)
    key = np.array([7, 3], np.int64)
    results = {t: kiln.compile(src, target=t, training=True)(xs, h0, rng_key=key)
               for t in TARGETS}
    ys, h = results["reference"]
    for target in TARGETS[1:]:
        for got, want in zip(results[target], (ys, h), strict=True):
            np.testing.assert_array_equal(got, want)
    assert set(np.unique(ys)) <= {0.0, 2.0}
    assert all((ys[t] != ys[0]).any() for t in range(1, 5))  # a new mask every step
    assert (h != ys.sum(0)).any()  # the carry's dropout is another stream than the emit's
    model = kiln.compile(src, target="native", training=True)
    np.testing.assert_array_equal(model(xs, h0, rng_key=key)[0], ys)  # the same for the key
    assert (model(xs, h0, rng_key=np.array([7, 4], np.int64))[0] != ys).any()
    cts = [np.ones_like(ys), np.zeros_like(h)]
    for target in TARGETS:
        model = kiln.compile(src, target=target, training=True)
        _outs, _grads, input_grads = model.vjp(xs, h0, rng_key=key, cotangents=cts)
        # d(sum ys)/dxs = each step's emitted mask * 2, as the forward drew it
        np.testing.assert_array_equal(input_grads["xs"], ys)
