"""Whole-model gradients: `model.vjp` on every target against PyTorch autograd with the same
weights (loaded by name), inputs and cotangents (the MLP here; the convolutional models,
LeNet-5 among them, in test_grad_nn_models.py with `check_against_torch`); the reverse-mode
transform's own contract (compiler/autodiff.py); and the errors a vjp call can raise."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import KilnError
from kiln.compiler.autodiff import grad, loss_grad
from kiln.compiler.evaluate import run_graph

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGETS = ["reference", "native", "onnx"]
# f32 gradients against float64 autograd, relative to each parameter's largest gradient
RTOL = 1e-4


def assert_grad_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Relative error (max |got - want| over max |want|) at most RTOL (for a gradient or an
    updated running statistic)."""
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


def check_against_torch(model, module, inputs, cotangents, extra: dict | None = None):
    """model.vjp and the torch module's autograd agree on outputs, every parameter's gradient
    and every float input's; in training mode also on the updated buffers (the running
    statistics torch's forward updated in place).

    `inputs` go to both, `extra` (by name) to the kiln model alone: what the twin holds itself
    (a graph's edge_index) or does without (the training-mode rng_key). The module's own
    mode (train/eval) is the model's."""
    torch = pytest.importorskip("torch")
    model.load_weights({k: v.detach().numpy().astype(np.float32) if v.is_floating_point()
                        else v.numpy() for k, v in module.state_dict().items()})
    module.to(torch.float64)
    padded = list(cotangents) + [None] * len(model.updates)  # updates take no cotangent
    outs, grads, in_grads = model.vjp(*inputs, **(extra or {}), cotangents=padded)
    t_outs, t_grads, t_in = torch_grads(module, inputs, cotangents)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for got, want in zip(outs[:len(t_outs)], t_outs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(t_grads)
    for path, want in t_grads.items():
        assert_grad_close(grads[path], want, path)
    names = [p.name for p in model.inputs if p.name in in_grads]
    for name, want in zip(names, t_in, strict=True):
        assert_grad_close(in_grads[name], want, f"input {name}")
    state = module.state_dict()
    for path, index in model.updates.items():
        want = state[path].numpy()
        if want.dtype.kind == "f":
            assert_grad_close(outs[index], want, f"updated {path}")
        else:
            np.testing.assert_array_equal(outs[index], want, err_msg=f"updated {path}")


# ---------------------------------------------------------------------------- MLP
@functools.cache
def mlp(target: str):
    return kiln.compile(EXAMPLES / "mlp.kiln", target=target, args={"hidden": 24})


def torch_mlp():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 10))


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


# ---------------------------------------------------------------------------- backend rules
# every rule's backward graph, lowered to native code and exported to ONNX (onnxruntime: a
# third oracle), against the reference's: one model
# with an output and a parameter of its own per expression (one compile for all of them)
EXPRESSIONS = [
    "relu(x * w)", "abs(x - w)", "exp(x * w)", "log(abs(x * w) + 1.0)", "sqrt(abs(x) + w * w)",
    "rsqrt(abs(x) + w * w + 0.5)", "reciprocal(x * x + w * w + 1.0)", "sin(x * w)",
    "cos(x * w)", "tanh(x * w)", "sigmoid(x * w)", "erf(x * w)", "silu(x * w)", "gelu(x * w)",
    'gelu(x * w, approximate = "tanh")', "elu(x * w, alpha = 0.5)",
    "leaky_relu(x * w, negative_slope = 0.2)", "softplus(x * w, beta = 2.0, threshold = 1.0)",
    "hard_sigmoid(x * w * 3.0)", "hard_swish(x * w * 3.0)", "clip(x * w, min = -0.5, max = 0.5)",
    "maximum(x, w)", "minimum(x, w)", "pow(abs(x) + 0.5, w)", "x % (abs(w) + 2.0)",
    "where(x > 0.0, x * w, w)", "softmax(x * w, axis = -1)", "log_softmax(x * w, axis = 0)",
    "sum(x * w, axis = 1)", "mean(x * w)", "max(x * w, axis = 1)", "min(x * w, axis = 0)",
    "prod(x * w, axis = 1)", "logsumexp(x * w, axis = 1)", "x @ w", "(x * w) / (w * w + 1.0)",
    "floor(x * w) + x * w", "cast(cast(x * w, dtype = \"f16\"), dtype = \"f32\")",
]


# native code for all of them takes a minute of LLVM: these cover each kind of backward node
# (masks by where, sizes as values, broadcast_to, reductions with keepdims, 1-D matmul; the
# MLP's tests add relu, softmax, 2-D matmul and sums over the batch)
NATIVE = ["clip(x * w, min = -0.5, max = 0.5)", "hard_swish(x * w * 3.0)", "maximum(x, w)",
          "pow(abs(x) + 0.5, w)", "mean(x * w)", "max(x * w, axis = 1)", "prod(x * w, axis = 1)",
          "x @ w"]


def rules_model(expressions: list[str]) -> str:
    params = "\n".join(f"  param w{i}: [4] = init.normal()" for i in range(len(expressions)))
    outs = ", ".join(re.sub(r"\bw\b", f"w{i}", e) for i, e in enumerate(expressions))
    return f"model Rules {{\n{params}\n  forward(x: f32[B, 4]) {{\n    return ({outs})\n  }}\n}}\n"


def test_native_expressions_are_listed():
    assert set(NATIVE) <= set(EXPRESSIONS)


@pytest.mark.parametrize("target, expressions", [("native", NATIVE), ("onnx", EXPRESSIONS)])
def test_rules_run_on_the_backends_as_on_the_reference(target, expressions):
    src = rules_model(expressions)
    ref, other = (kiln.compile(src, target=t, seed=1) for t in ("reference", target))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    outs = ref(x)
    cts = [rng.standard_normal(np.shape(o)).astype(np.float32) for o in outs]
    (_, r_grads, r_in), (_, o_grads, o_in) = (m.vjp(x, cotangents=cts) for m in (ref, other))
    for i, expr in enumerate(expressions):
        assert np.any(r_grads[f"w{i}"] != 0), expr
        np.testing.assert_allclose(o_grads[f"w{i}"], r_grads[f"w{i}"], rtol=2e-4, atol=2e-5,
                                   err_msg=expr)
    np.testing.assert_allclose(o_in["x"], r_in["x"], rtol=2e-4, atol=1e-4)


def test_export_onnx_with_gradients_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = mlp("reference")
    path = tmp_path / "mlp_grad.onnx"
    model.export_onnx(path, gradients=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "cotangent:output"]
    names = [o.name for o in session.get_outputs()]
    assert names == ["output"] + [f"grad:{p}" for p in model.params] + ["grad:x"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 784)).astype(np.float32)
    dy = rng.standard_normal((3, 10)).astype(np.float32)
    results = dict(zip(names, session.run(names, {"x": x, "cotangent:output": dy}), strict=True))
    outs, grads, in_grads = model.vjp(x, cotangents=[dy])
    np.testing.assert_allclose(results["output"], outs, rtol=1e-5, atol=1e-6)
    for path_, g in grads.items():
        assert_grad_close(results[f"grad:{path_}"], g.astype(np.float64), path_)
    assert_grad_close(results["grad:x"], in_grads["x"].astype(np.float64), "x")


# ---------------------------------------------------------------------------- weights, variants
@pytest.mark.parametrize("target", TARGETS)
def test_vjp_follows_load_weights(target):
    model = kiln.compile(EXAMPLES / "mlp.kiln", target=target, args={"hidden": 8})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 784)).astype(np.float32)
    dy = rng.standard_normal((2, 10)).astype(np.float32)
    before = model.vjp(x, cotangents=[dy])[1]["4.weight"]  # (4.bias's is dy's sum whatever)
    new = {k: v * 2 for k, v in model.params.items()}
    model.load_weights(new)
    ref = kiln.compile(EXAMPLES / "mlp.kiln", target="reference", args={"hidden": 8},
                       weights=new)
    after, want = (m.vjp(x, cotangents=[dy])[1] for m in (model, ref))
    assert not np.allclose(after["4.weight"], before)
    for path, g in want.items():
        np.testing.assert_allclose(after[path], g, rtol=1e-4, atol=1e-6, err_msg=path)


MASKED = """
model Masked {
  param w: [4] = init.normal()
  forward(x: f32[B, 4], scale: f32[B, 4]?) -> f32[B, 4] {
    y = x * w
    if defined(scale) {
      y = y * scale
    }
    return y
  }
}
"""


@pytest.mark.parametrize("target", TARGETS)
def test_vjp_with_and_without_an_optional_input(target):
    model = kiln.compile(MASKED, target=target)
    w = model.params["w"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    s = np.full((2, 4), 3.0, np.float32)
    dy = np.ones((2, 4), np.float32)
    _, grads, in_grads = model.vjp(x, cotangents=[dy])
    np.testing.assert_allclose(grads["w"], x.sum(0), rtol=1e-6)
    assert set(in_grads) == {"x"}
    _, grads, in_grads = model.vjp(x, scale=s, cotangents=[dy])
    np.testing.assert_allclose(grads["w"], (3 * x).sum(0), rtol=1e-6)
    np.testing.assert_allclose(in_grads["scale"], x * w, rtol=1e-6)
    assert set(in_grads) == {"x", "scale"}


@pytest.mark.parametrize("target", TARGETS)
def test_outputs_that_are_inputs_or_params_and_unread_params(target):
    src = """
model Pass {
  param w: [3] = init.ones()
  param unread: [2] = init.ones()
  buffer stat: [3] = init.zeros()
  forward(x: f32[B, 3]) -> (a: f32[B, 3], b: f32[3], c: f32[B, 3]) { return (x, w, x) }
}
"""
    model = kiln.compile(src, target=target)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    cts = [np.ones((2, 3), np.float32), np.full(3, 2.0, np.float32),
           np.full((2, 3), 3.0, np.float32)]
    _, grads, in_grads = model.vjp(x, cotangents=cts)
    assert set(grads) == {"w", "unread"}  # every param, read or not; no buffer
    np.testing.assert_array_equal(grads["w"], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(grads["unread"], [0.0, 0.0])
    np.testing.assert_array_equal(in_grads["x"], np.full((2, 3), 4.0))  # two uses add up
