"""Backpropagation through `scan` (ops/control.py: the scan's gradient rule) against PyTorch
autograd: std.rnn's LSTM and GRU (two layers, bidirectional) and examples/lstm_classifier.kiln,
with the same state_dict, inputs and cotangents, on the reference and native targets; and a
hand-written scan against finite differences in float64."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from _stdlibtest import rand

import kiln

ROOT = Path(__file__).resolve().parent.parent
IN, H, T, B = 3, 4, 5, 2
RTOL = 1e-4  # relative to the largest entry of each gradient (the bound)


@functools.cache
def rnn_program():
    return kiln.load(ROOT / "stdlib" / "rnn.kiln")


def assert_gradient(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Within RTOL of torch's gradient, relative to its largest entry."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(float(np.max(np.abs(want))), 1e-6)
    error = float(np.max(np.abs(got - want))) / scale
    assert error <= RTOL, f"{what}: relative error {error:.2e}"


def torch_gradients(module, inputs: list[np.ndarray], outputs, cotangents) -> tuple[dict, list]:
    """Torch's gradients of sum(outputs(inputs) * cotangents) for every parameter and input."""
    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    module.zero_grad()
    results = outputs(module, *tensors)
    total = sum((r * torch.from_numpy(c)).sum() for r, c in zip(results, cotangents, strict=True))
    total.backward()
    return ({k: p.grad.numpy() for k, p in module.named_parameters()},
            [t.grad.numpy() for t in tensors])


def lstm_outputs(module, x, h0, c0):
    y, (h, c) = module(x, (h0, c0))
    return y, h, c


def gru_outputs(module, x, h0):
    y, h = module(x, h0)
    return y, h


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_rnn_gradients_match_torch(mode, target):
    rng = np.random.default_rng(0)
    module = getattr(torch.nn, mode)(IN, H, num_layers=2, bidirectional=True)
    with torch.no_grad():  # weights larger than the default init: gates saturate differently
        for p in module.parameters():
            p.copy_(torch.from_numpy(rand(rng, *p.shape, scale=0.5)))
    model = kiln.compile(rnn_program(), model=mode, target=target,
                         args={"input_size": IN, "hidden_size": H, "num_layers": 2,
                               "bidirectional": True})
    model.load_weights({k: v.detach().numpy() for k, v in module.state_dict().items()})
    inputs = [rand(rng, T, B, IN)] + [rand(rng, 4, B, H) for _ in range(2 if mode == "LSTM"
                                                                           else 1)]
    cotangents = [rand(rng, *y.shape) for y in model(*inputs)]
    _outs, grads, input_grads = model.vjp(*inputs, cotangents=cotangents)
    want, want_inputs = torch_gradients(
        module, inputs, lstm_outputs if mode == "LSTM" else gru_outputs, cotangents)
    assert set(grads) == set(want)
    for path, g in want.items():
        assert_gradient(grads[path], g, path)
    for port, g in zip(model.inputs, want_inputs, strict=True):
        assert_gradient(input_grads[port.name], g, port.name)
