"""Gradient rules of the training-mode ops (dropout, dropout_keyed, batch_norm in both modes)
against central finite differences in float64 (tests/_gradcheck.py), and a small net with
BatchNorm and Dropout against PyTorch autograd on the reference and native targets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference of the training-mode net")
from _gradcheck import backward, check_vjp  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kiln  # noqa: E402
from kiln.compiler.ops.random import keep_mask  # noqa: E402

KEY = np.array([11, 4], np.int64)


def f64(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return scale * rng.standard_normal(shape)


def test_dropout_eval_mode_passes_the_cotangent_through():
    check_vjp("dropout", f64(np.random.default_rng(0), 3, 4), p=0.3)


@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_dropout_keyed_gradient(p):
    """Linear in x for a fixed key: the finite differences see the one mask the rule reuses."""
    check_vjp("dropout_keyed", f64(np.random.default_rng(1), 4, 7), KEY, p=p, stream=2)


def test_dropout_keyed_gradient_reuses_the_forward_mask():
    x = f64(np.random.default_rng(2), 6, 9)
    (y,), (ct,), (dx, dkey) = backward("dropout_keyed", x, KEY, p=0.5, stream=7)
    keep = keep_mask(x.shape, KEY, 7, 0.5)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_array_equal(dx, np.where(keep, 2 * ct, 0))
    assert dkey is None


@pytest.mark.parametrize("shape", [(5, 2), (3, 4, 5), (2, 3, 2, 3), (2, 1, 1, 2)])
def test_batch_norm_stats_gradient(shape):
    """Its four rows (batch_norm's running statistics read the first two, of x and x) against
    finite differences, for x and dy apart and for x given as both."""
    rng = np.random.default_rng(len(shape))
    x, dy = f64(rng, *shape, scale=2.0), f64(rng, *shape)
    check_vjp("batch_norm_stats", x, dy)
    check_vjp("batch_norm_stats", x, x)


BN_SHAPES = st.sampled_from([(4, 3), (2, 3, 5), (3, 2, 2, 3), (2, 1, 1, 2)])


@settings(max_examples=12, deadline=None)
@given(shape=BN_SHAPES, training=st.booleans(), affine=st.sampled_from(["both", "weight",
                                                                          "bias", "none"]),
       seed=st.integers(0, 2**16))
def test_batch_norm_gradient(shape, training, affine, seed):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = f64(rng, *shape, scale=2.0) + 1.0
    mean = f64(rng, channels)
    var = rng.uniform(0.5, 2.0, channels)
    weight = f64(rng, channels) if affine in ("both", "weight") else None
    bias = f64(rng, channels) if affine in ("both", "bias") else None
    check_vjp("batch_norm", x, mean, var, weight, bias, training=training, eps=1e-3,
              rtol=1e-5, atol=1e-6)


NET = """
import std.nn
model Net {
  bn = nn.BatchNorm2d(3, momentum = 0.2)
  drop = nn.Dropout(DROP)
  fc = nn.Linear(12, 2)
  forward(x: f32[B, 3, 2, 2]) { return x * 2.0 |> bn |> relu |> flatten |> drop |> fc }
}
"""


class TorchNet(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3, momentum=0.2)
        self.drop = torch.nn.Dropout(p)
        self.fc = torch.nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(x * 2.0)).flatten(1)))


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("training", [False, True])
def test_a_batch_norm_net_gradients_match_torch(target, training):
    """Training mode with dropout 0 (the key fed, every element kept) and eval mode: the
    gradients of every parameter and the input, and the updated running statistics."""
    rng = np.random.default_rng(3)
    twin = TorchNet(0.0 if training else 0.5).train(training)
    model = kiln.compile(NET.replace("DROP", "0.0" if training else "0.5"), target=target,
                         training=training)
    with torch.no_grad():
        twin.bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(3).astype("f4")))
        twin.bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, 3).astype("f4")))
        twin.bn.weight.copy_(torch.from_numpy(rng.standard_normal(3).astype("f4")))
    model.load_weights({k: v.detach().numpy() for k, v in twin.state_dict().items()})
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    feed = {"x": x} | ({"rng_key": np.array([9, 9])} if training else {})
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    outs, grads, input_grads = model.vjp(**feed, cotangents=[dy] + [None] * len(model.updates))
    xt = torch.from_numpy(x).requires_grad_(True)
    y = twin(xt)
    (y * torch.from_numpy(dy)).sum().backward()
    first = outs[0] if training else outs
    np.testing.assert_allclose(first, y.detach().numpy(), rtol=1e-4, atol=1e-5)
    for path, p in twin.named_parameters():
        np.testing.assert_allclose(grads[path], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=path)
    np.testing.assert_allclose(input_grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    if training:
        index = model.updates["bn.running_var"]
        np.testing.assert_allclose(outs[index], twin.bn.running_var.numpy(), rtol=1e-5)


ODD_BN = """
import std.nn
model Bn {
  bn = nn.BatchNorm2d(5)
  forward(x: f32[B, 5, 7, 9]) { return x * 2.0 + 1.0 |> bn |> relu }
}
"""


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
@pytest.mark.parametrize("affine", [True, False])
def test_training_batch_norm_gradients_at_odd_sizes_match_torch(target, affine):
    """Training mode's rule (batch_norm_stats' per-channel sums, then one elementwise pass)
    at sizes that are no multiple of the vector width, against PyTorch autograd: the input's
    gradient, and the weight's and bias's with an affine BatchNorm."""
    rng = np.random.default_rng(5)
    src = ODD_BN if affine else ODD_BN.replace("BatchNorm2d(5)", "BatchNorm2d(5, affine = false)")
    model = kiln.compile(src, target=target, training=True)
    twin = torch.nn.BatchNorm2d(5, affine=affine).train()
    if affine:
        with torch.no_grad():
            twin.weight.copy_(torch.from_numpy(rng.standard_normal(5).astype("f4")))
            twin.bias.copy_(torch.from_numpy(rng.standard_normal(5).astype("f4")))
        model.load_weights({f"bn.{k}": v.detach().numpy()
                            for k, v in twin.state_dict().items()})
    x = (3.0 * rng.standard_normal((3, 5, 7, 9)) + 0.5).astype(np.float32)
    dy = rng.standard_normal((3, 5, 7, 9)).astype(np.float32)
    outs, grads, input_grads = model.vjp(x, cotangents=[dy] + [None] * len(model.updates))
    xt = torch.from_numpy(x).requires_grad_(True)
    y = torch.relu(twin(xt * 2.0 + 1.0))
    (y * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(outs[0], y.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(input_grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    for path, p in twin.named_parameters():
        np.testing.assert_allclose(grads[f"bn.{path}"], p.grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=path)
    assert affine == bool(grads)


WIDE_BN = """
import std.nn
model Wide {
  bn = nn.BatchNorm2d(20)
  forward(x: f32[B, 20, 21, 23]) { return x |> bn |> relu }
}
"""


def test_training_batch_norm_channels_on_threads_match_one_thread_and_torch():
    """Enough channels and values (20 x 4 x 21 x 23) for the forward and gradient kernels to
    share channels between two threads (blocks of 8 and 12 channels): the output, the new
    running statistics and every gradient equal one thread's exactly (a channel's sums are
    the same whoever takes it) and match PyTorch's."""
    rng = np.random.default_rng(9)
    twin = torch.nn.BatchNorm2d(20).train()
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(rng.standard_normal(20).astype("f4")))
        twin.bias.copy_(torch.from_numpy(rng.standard_normal(20).astype("f4")))
    weights = {f"bn.{k}": v.detach().numpy().copy() for k, v in twin.state_dict().items()}
    x = (2.0 * rng.standard_normal((4, 20, 21, 23)) - 0.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    runs = []
    for threads in (1, 2):
        model = kiln.compile(WIDE_BN, target="native", training=True, threads=threads)
        model.load_weights(weights)
        runs.append(model.vjp(x, cotangents=[dy] + [None] * len(model.updates)))
        updates = model.updates
    (outs, grads, input_grads), (outs2, grads2, input_grads2) = runs
    for a, b in zip(outs, outs2, strict=True):
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(input_grads2["x"], input_grads["x"])
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k])
    xt = torch.from_numpy(x).requires_grad_(True)
    y = torch.relu(twin(xt))
    (y * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(outs[0], y.detach().numpy(), rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(outs[updates[f"bn.{name}"]],
                                   getattr(twin, name).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    for path, p in twin.named_parameters():
        np.testing.assert_allclose(grads[f"bn.{path}"], p.grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=path)
