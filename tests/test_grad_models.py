"""Whole-model gradients: `model.vjp` on the reference and native targets against PyTorch
autograd with the same weights (loaded by name), inputs and cotangents; the reverse-mode
transform's own contract (compiler/autodiff.py); and the errors a vjp call can raise."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import KilnError
from kiln.compiler.autodiff import grad, loss_grad
from kiln.compiler.evaluate import run_graph

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = ["reference", "native"]
# f32 gradients against float64 autograd, relative to each parameter's largest gradient
RTOL = 1e-4


def assert_grad_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Relative error (max |got - want| over max |want|) at most RTOL."""
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    assert err <= RTOL, f"{what}: relative error {err:.2e}"


def torch_grads(module, inputs: list[np.ndarray], cotangents: list[np.ndarray]):
    """(outputs, {param name: grad}, [input grads]) of a torch module in float64."""
    torch = pytest.importorskip("torch", reason="PyTorch autograd is the gradient reference")
    xs = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in inputs]
    outs = module(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [torch.tensor(c.astype(np.float64)) for c in cotangents])
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    return [o.detach().numpy() for o in outs], grads, [x.grad.numpy() for x in xs]


def check_against_torch(model, module, inputs, cotangents):
    """model.vjp and the torch module's autograd agree on outputs, every parameter's gradient
    and every input's."""
    torch = pytest.importorskip("torch")
    model.load_weights({k: v.detach().numpy().astype(np.float32)
                        for k, v in module.state_dict().items()})
    module.to(torch.float64)
    outs, grads, in_grads = model.vjp(*inputs, cotangents=cotangents)
    t_outs, t_grads, t_in = torch_grads(module, inputs, cotangents)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for got, want in zip(outs, t_outs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(t_grads)
    for path, want in t_grads.items():
        assert_grad_close(grads[path], want, path)
    for port, want in zip(model.inputs, t_in, strict=True):
        assert_grad_close(in_grads[port.name], want, f"input {port.name}")


# ---------------------------------------------------------------------------- MLP
@functools.cache
def mlp(target: str):
    return kiln.compile(EXAMPLES / "mlp.kiln", target=target, args={"hidden": 24})


def torch_mlp():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 10), nn.Softmax(-1))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_matches_torch_autograd(target, batch):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    dy = rng.standard_normal((batch, 10)).astype(np.float32)
    check_against_torch(mlp(target), torch_mlp(), [x], [dy])


# ---------------------------------------------------------------------------- the transform
SCALE = """
model Scale {
  param w: [4] = init.normal()
  param unused: [3] = init.ones()
  buffer count: [1] = init.zeros()
  forward(x: f32[B, 4], k: i64[B]) -> (y: f32[B, 4], n: i64[B], z: f32[]) {
    y = x * w + x
    return (y, k + 1, sum(y * y) + sum(unused * 0.0))
  }
}
"""


def test_grad_adds_cotangents_and_gradients_and_leaves_its_argument_alone():
    model = kiln.load(SCALE).elaborate()
    before = (len(model.graph), list(model.graph.outputs), list(model.graph.inputs))
    graph, layout = grad(model.graph, ["w", "unused"], ["x"])
    assert (len(model.graph), list(model.graph.outputs), list(model.graph.inputs)) == before
    assert layout.cotangents == ("cotangent:y", None, "cotangent:z")
    assert layout.params == ("w", "unused") and layout.inputs == ("x",)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype("f4")
    dy, dz = rng.standard_normal((3, 4)).astype(np.float32), np.float32(0.5)
    k = np.arange(3)
    outs = run_graph(graph, [x, k, dy, np.asarray(dz)], {"w": w, "unused": np.ones(3, "f4")},
                     {"B": 3})
    y = x * w + x
    ct_y = dy + dz * 2 * y  # y feeds the output and z = sum(y^2): the uses add up
    np.testing.assert_allclose(outs[0], y, rtol=1e-6)
    np.testing.assert_allclose(outs[layout.param_output("w")], np.sum(ct_y * x, 0), rtol=1e-5)
    np.testing.assert_allclose(outs[layout.param_output("unused")], 0)  # * 0.0: zero
    np.testing.assert_allclose(outs[layout.input_output("x")], ct_y * (w + 1), rtol=1e-5)


def test_loss_grad_seeds_one_and_keeps_params():
    src = """
    model Loss {
      param w: [4] = init.ones()
      forward(x: f32[B, 4]) -> f32[] { return mean(x * w) }
    }
    """
    model = kiln.load(src).elaborate()
    graph, layout = loss_grad(model.graph)
    assert layout.cotangents == (None,) and layout.params == ("w",)
    assert [graph.node(n)["attrs"]["name"] for n in graph.inputs] == ["x"]
    assert graph.params(), "parameters stay param nodes"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    outs = run_graph(graph, [x], {"w": np.ones(4, np.float32)}, {"B": 2})
    np.testing.assert_allclose(outs[1], x.mean(0) / 4 * 1, rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_vjp_with_symbolic_batch_and_integer_outputs(target):
    model = kiln.compile(SCALE, target=target)
    w = model.params["w"]
    for batch in (1, 4):
        x = np.ones((batch, 4), np.float32)
        dy = np.full((batch, 4), 2.0, np.float32)
        outs, grads, in_grads = model.vjp(x, np.arange(batch), cotangents=[dy, None, None])
        np.testing.assert_allclose(outs.y, x * w + x, rtol=1e-6)
        np.testing.assert_allclose(grads["w"], np.full(4, 2.0 * batch), rtol=1e-6)
        np.testing.assert_allclose(in_grads["x"], np.broadcast_to(2 * (w + 1), (batch, 4)),
                                   rtol=1e-6)
        assert set(grads) == {"w", "unused"} and set(in_grads) == {"x"}


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cotangents, code, words", [
    ([np.ones((2, 4), np.float64), None, None], "K0502", "cotangent:y must be f32"),
    ([np.ones((3, 4), np.float32), None, None], "K0503", "cotangent:y must have the shape"),
    ([np.ones((2, 4), np.float32)], "K0501", "3 outputs"),
    ([None, np.ones(2, np.int64), None], "K0502", "takes no cotangent"),
    (np.ones((2, 4), np.float32), "K0501", "must be a list"),
])
def test_bad_cotangents_are_refused(target, cotangents, code, words):
    model = kiln.compile(SCALE, target=target)
    with pytest.raises(KilnError) as info:
        model.vjp(np.ones((2, 4), np.float32), np.arange(2), cotangents=cotangents)
    assert info.value.code == code and words in info.value.message, str(info.value)


def test_vjp_needs_cotangents_unless_the_outputs_are_losses():
    model = kiln.compile(SCALE, target="reference")
    with pytest.raises(KilnError, match="vjp needs cotangents"):
        model.vjp(np.ones((2, 4), np.float32), np.arange(2))
    loss = kiln.compile("model L { param w: [2] = init.ones()\n"
                        "  forward(x: f32[2]) -> f32[] { return sum(x * w) } }",
                        target="reference")
    out, grads, in_grads = loss.vjp(np.array([3.0, 4.0], np.float32))
    np.testing.assert_allclose(grads["w"], [3.0, 4.0])
    np.testing.assert_allclose(in_grads["x"], [1.0, 1.0])


def test_no_rule_is_an_error_naming_op_span_and_parameter():
    src = """
model Bins {
  param width: [4] = init.ones()
  forward(x: f32[B, 4]) -> f32[B, 4] {
    return x // width
  }
}
"""
    model = kiln.compile(src, target="reference")
    with pytest.raises(KilnError) as info:
        model.vjp(np.ones((2, 4), np.float32), cotangents=[np.ones((2, 4), np.float32)])
    err = info.value
    assert err.code == "K0801" and "floor_div" in err.message and "parameter width" in err.message
    assert (err.span.line, err.span.col) == (5, 12)


def test_no_rule_is_no_error_off_the_differentiated_path():
    """An index computed with argmax (an integer) needs no gradient rule."""
    src = """
model Pick {
  param w: [4] = init.ones()
  forward(x: f32[4]) -> (y: f32[4], i: i64[]) { return (x * w, argmax(x // 2.0)) }
}
"""
    model = kiln.compile(src, target="reference")
    _, grads, _ = model.vjp(np.ones(4, np.float32), cotangents=[np.ones(4, np.float32), None])
    np.testing.assert_allclose(grads["w"], 1.0)
