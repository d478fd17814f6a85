"""Backpropagation through `scan` (ops/control.py: the scan's gradient rule) against PyTorch
autograd: std.rnn's LSTM and GRU (two layers, bidirectional) and examples/lstm_classifier.kiln,
with the same state_dict, inputs and cotangents, on the reference and native targets; and a
hand-written scan using every feature of the construct."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch autograd is the reference")
from _stdlibtest import rand  # noqa: E402

import kiln  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IN, H, T, B = 3, 4, 5, 2
RTOL = 1e-4  # relative to the largest entry of each gradient (the bound)


@functools.cache
def rnn_program():
    return kiln.load(ROOT / "stdlib" / "rnn.kiln")


def assert_gradient(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Within RTOL of torch's gradient, relative to its largest entry."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.size == 0:  # a sequence of no steps
        return
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


class Classifier(torch.nn.Module):
    """examples/lstm_classifier.kiln in PyTorch (its header gives the layers)."""

    def __init__(self, vocab: int, embed: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embed)
        self.lstm = torch.nn.LSTM(embed, hidden, 2, batch_first=True, dropout=dropout,
                                  bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, tokens):
        _ys, (h_n, _c_n) = self.lstm(self.embedding(tokens))
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)
        return torch.log_softmax(self.fc(self.dropout(last)), dim=-1)


@pytest.mark.parametrize("training", [False, True])
def test_lstm_classifier_gradients_match_torch(training):
    """Eval mode, and training mode with dropout 0 (the key input is fed, the masks keep all)."""
    rng = np.random.default_rng(1)
    args = {"vocab_size": 11, "embed_dim": 3, "hidden_size": 4, "num_classes": 3,
            "dropout": 0.0 if training else 0.2}
    twin = Classifier(11, 3, 4, 3, args["dropout"]).train(training)
    model = kiln.compile(ROOT / "examples" / "lstm_classifier.kiln", target="reference",
                         args=args, training=training)
    model.load_weights({k: v.detach().numpy() for k, v in twin.state_dict().items()})
    tokens = rng.integers(0, 11, (B, T))
    feed = {"tokens": tokens} | ({"rng_key": np.array([0, 1])} if training else {})
    dy = rand(rng, B, 3)
    out, grads, _ = model.vjp(**feed, cotangents=[dy])
    y = twin(torch.from_numpy(tokens))
    (y * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert set(grads) == {k for k, _ in twin.named_parameters()}
    for path, p in twin.named_parameters():
        assert_gradient(grads[path], p.grad.numpy(), path)


def test_scan_gradient_matches_torch_on_a_reversed_indexed_loop():
    """A scan with two carries (one an integer), two sequences on different axes, a captured
    weight, the step index and the reverse order, against the same loop in PyTorch."""
    src = """
model Loop {
  param w: [3, 3] = init.normal()
  forward(xs: f32[T, 2, 3], ms: f32[2, T, 1, 1], h0: f32[2, 3]) {
    ys, h, n = scan reverse (t, x), m in xs, ms axis -3 carry (h = h0, n = 0) {
      h = tanh(x * m[:, 0] + h @ w) * cast(t + n, "f32")
      n = n + 1
      emit sin(h)
    }
    return ys, h
  }
}
"""
    rng = np.random.default_rng(2)
    feed = {"xs": rand(rng, 4, 2, 3), "ms": rand(rng, 2, 4, 1, 1), "h0": rand(rng, 2, 3)}
    for target in ("reference", "native"):
        model = kiln.compile(src, target=target)
        cts = [rand(rng, *y.shape) for y in model(**feed)]
        _outs, grads, input_grads = model.vjp(**feed, cotangents=cts)
        w = torch.tensor(np.asarray(model.params["w"], np.float64), requires_grad=True)
        xs, ms, h = (torch.tensor(v.astype(np.float64), requires_grad=True)
                     for v in feed.values())
        leaves, state, ys = [w, xs, ms, h], h, [None] * 4
        for n, t in enumerate(range(3, -1, -1)):
            state = torch.tanh(xs[t] * ms[:, t, 0] + state @ w) * (t + n)
            ys[t] = torch.sin(state)
        total = ((torch.stack(ys) * torch.from_numpy(cts[0].astype(np.float64))).sum()
                 + (state * torch.from_numpy(cts[1].astype(np.float64))).sum())
        total.backward()
        assert_gradient(grads["w"], leaves[0].grad.numpy(), f"{target} w")
        for name, leaf in zip(feed, leaves[1:], strict=True):
            assert_gradient(input_grads[name], leaf.grad.numpy(), f"{target} {name}")


SHARED_WEIGHT_LOOP = """
model Loop {
  param w: [3, 3] = init.normal()
  param b: [3] = init.normal()
  forward(xs: f32[XSHAPE], h0: f32[2, 3]) {
    ys, h = scan DIRECTION x in xs axis AXIS carry (h = h0) {
      h = tanh(x @ w + h @ w + b) + sum(h * b, axis = 0)
      emit h @ w.T
    }
    return ys, h
  }
}
"""


def shared_weight_loop(axis: int, reverse: bool, steps: int) -> tuple[str, tuple]:
    """A scan whose captured w is used three times (x @ w, h @ w, h @ w.T) and b twice (a
    broadcast add, a product summed over the batch): its weight gradients are sums over the
    steps of matmuls and sums, which the backward pass computes after its loop."""
    shape = (steps, 2, 3) if axis == 0 else (2, steps, 3)
    src = (SHARED_WEIGHT_LOOP.replace("XSHAPE", ", ".join(map(str, shape)))
           .replace("DIRECTION", "reverse" if reverse else "").replace("AXIS", str(axis)))
    return src, shape


def torch_shared_weight_loop(w, b, xs, h, axis: int, reverse: bool):
    steps = xs.shape[axis]
    ys = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        x = xs.select(axis, t)
        h = torch.tanh(x @ w + h @ w + b) + (h * b).sum(0)
        ys[t] = h @ w.T
    stacked = (torch.stack(ys, axis) if steps else
               torch.zeros(xs.shape[:2] + (3,), dtype=xs.dtype))
    return stacked, h


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize(("axis", "reverse", "steps"),
                         [(1, True, 5), (1, False, 1), (0, False, 4), (0, True, 1), (1, False, 0)])
def test_captured_weight_gradients_summed_after_the_loop_match_torch(target, axis, reverse,
                                                                      steps):
    """The weight gradients taken out of the reverse loop (one GEMM over all steps' rows, one
    sum) against PyTorch in float64: forward and reverse scans, over axis 0 and 1, one step
    and none."""
    src, shape = shared_weight_loop(axis, reverse, steps)
    rng = np.random.default_rng(3)
    model = kiln.compile(src, target=target)
    feed = {"xs": rand(rng, *shape), "h0": rand(rng, 2, 3)}
    cts = [rand(rng, *y.shape) for y in model(**feed)]
    _outs, grads, input_grads = model.vjp(**feed, cotangents=cts)
    w, b = (torch.tensor(np.asarray(model.params[k], np.float64), requires_grad=True)
            for k in ("w", "b"))
    xs, h0 = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in feed.values())
    ys, h = torch_shared_weight_loop(w, b, xs, h0, axis, reverse)
    total = sum((r * torch.from_numpy(c.astype(np.float64))).sum()
                for r, c in zip((ys, h), cts, strict=True))
    total.backward()
    def want(leaf):  # no step reads a weight of a loop of none: its gradient is zero
        return np.zeros(leaf.shape) if leaf.grad is None else leaf.grad.numpy()

    for name, leaf in (("w", w), ("b", b)):
        assert_gradient(grads[name], want(leaf), f"{target} {name}")
    for name, leaf in (("xs", xs), ("h0", h0)):
        assert_gradient(input_grads[name], want(leaf), f"{target} {name}")


def test_weight_gradients_are_not_carried_by_the_reverse_scan():
    """The reverse scan carries only the carries' cotangents: w's and b's gradients are
    computed after the loop (no per-step GEMM accumulating dW in the loop), and it reads the
    forward's saved gate values instead of computing them again."""
    from kiln.compiler.autodiff import grad

    src, _shape = shared_weight_loop(1, False, 4)
    model = kiln.compile(src, target="reference")
    graph, _layout = grad(model.compilation.model.graph)
    scans = [nid for nid in graph.order() if graph.op(nid) == "scan"]
    backward = [nid for nid in scans if graph.node(nid)["attrs"]["reverse"]]
    assert len(backward) == 1
    assert graph.node(backward[0])["attrs"]["n_carry"] == 1  # h's cotangent alone
    # the forward saves x @ w + h @ w + b (one chain, saved once): the backward reads it, and
    # no longer multiplies the saved h by w again
    body = graph.node(backward[0])["attrs"]["body"]
    names = {nid: body.node(nid)["attrs"].get("name") for nid in body.inputs}
    assert sum(str(n).startswith("saved:") for n in names.values()) == 1
    for nid in body.nodes_with_op("matmul"):
        operands = [names.get(v.node) for v in body.operands(nid)]
        assert operands[0] != "h" and operands[1] != "captured0", operands
