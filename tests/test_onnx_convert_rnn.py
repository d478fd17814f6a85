"""The RNN, GRU and LSTM converters (compiler/onnx_import/convert_rnn.py) against onnxruntime:
every direction, both layouts, given and absent initial states and biases."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from _onnxconvert import build, check, one_node, run_kiln  # noqa: E402

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
T, B, IN, H = 4, 3, 5, 6


def inputs(op: str, directions: int, layout: int, bias: bool, initial: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = GATES[op]

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x = f(B, T, IN) if layout else f(T, B, IN)
    state = f(B, directions, H) if layout else f(directions, B, H)
    out = [x, f(directions, g * H, IN), f(directions, g * H, H),
           f(directions, 2 * g * H) if bias else None, None, state if initial else None]
    if op == "LSTM":
        out.append(f(*state.shape) if initial else None)
    while out[-1] is None:
        out.pop()
    return out


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions(op, direction):
    directions = 2 if direction == "bidirectional" else 1
    n_out = 3 if op == "LSTM" else 2
    check(op, inputs(op, directions, 0, True, True), n_out, hidden_size=H,
          direction=direction, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_batch_first_layout(op):
    """layout=1 (onnxruntime's CPU kernels refuse it): kiln's batch-first outputs are its
    sequence-first outputs on the same data, transposed as ONNX says."""
    n_out = 3 if op == "LSTM" else 2
    batch_first = inputs(op, 2, 1, True, True)
    seq_first = [a if k in (1, 2, 3, 4) else np.swapaxes(a, 0, 1)
                 for k, a in enumerate(batch_first)]
    attrs = dict(hidden_size=H, direction="bidirectional")
    got = run_kiln(one_node(op, batch_first, n_out, layout=1, **attrs),
                   [a for a in batch_first if a is not None])
    want = run_kiln(one_node(op, seq_first, n_out, **attrs),
                    [a for a in seq_first if a is not None])
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), rtol=1e-6)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), rtol=1e-6)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_no_bias_no_initial_state(op):
    check(op, inputs(op, 1, 0, False, False), 3 if op == "LSTM" else 2, hidden_size=H,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_reset_placement(linear_before_reset):
    check("GRU", inputs("GRU", 1, 0, True, True), 2, hidden_size=H,
          linear_before_reset=linear_before_reset, rtol=1e-4, atol=1e-5)


def test_rnn_relu():
    check("RNN", inputs("RNN", 1, 0, True, True), 2, hidden_size=H, activations=["Relu"],
          rtol=1e-4, atol=1e-5)


def test_unsupported_attributes_are_refused():
    from kiln.compiler.onnx_import.convert import Unsupported

    for kw in ({"activations": ["Sigmoid", "Relu", "Tanh"]}, {"input_forget": 1}):
        model = one_node("LSTM", inputs("LSTM", 1, 0, True, True), 3, hidden_size=H, **kw)
        with pytest.raises(Unsupported):
            build(model)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_clip(op):
    """clip bounds every gate's input: small enough here to be reached."""
    check(op, inputs(op, 1, 0, True, True), 3 if op == "LSTM" else 2, hidden_size=H,
          clip=0.7, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes(direction):
    directions = 2 if direction == "bidirectional" else 1
    args = inputs("LSTM", directions, 0, True, True)
    peepholes = np.random.default_rng(3).standard_normal((directions, 3 * H)).astype(np.float32)
    check("LSTM", [*args, peepholes], 3, hidden_size=H, direction=direction, rtol=1e-4,
          atol=1e-5)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_at_run_time(op, direction):
    """Sequences shorter than T (one empty): zeros past each length, the states of each
    sequence's own last step, a reverse direction starting there."""
    directions = 2 if direction == "bidirectional" else 1
    args = inputs(op, directions, 0, True, True)
    args[4] = np.array([T, 2, 0], np.int32)
    check(op, args, 3 if op == "LSTM" else 2, hidden_size=H, direction=direction,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_recurrent_weights_are_moved_once_and_remade_with_new_weights(op, tmp_path):
    """W and R as initializers [1, G*H, *] (an exporter's): natively their transposes are
    made once when the weights bind (named from the squeezed weight: `permute(perm=1_0):
    reshape(shape=...):in2`), not per call; they agree with onnxruntime, and new weights
    remake them (against onnxruntime on a file holding the new weights)."""
    import onnx
    from _onnxconvert import run_ort

    import kiln

    x, w, r, b, h0 = inputs(op, 1, 0, True, True)[:5]
    model = one_node(op, [x, w, r, b], 2 if op == "GRU" else 3, initializers={1: w, 2: r, 3: b},
                     hidden_size=H)
    path = tmp_path / "rnn.onnx"
    path.write_bytes(model.SerializeToString())
    native = kiln.compile(path, target="native")
    graph = native.lowered().graph
    derived = {graph.node(n)["attrs"].get("derived") for n in graph.order()
               if graph.op(n) == "constant"}
    assert f"permute(perm=1_0):reshape(shape={GATES[op] * H}_{H}):in2" in derived
    assert not [n for n in graph.order() if graph.op(n) == "permute"]  # none per call
    for got, want in zip(native(x), run_ort(model, [x]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    r2 = (r * 0.5 + 0.1).astype(np.float32)
    native.load_weights({**native.state_dict(), "in2": r2})
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    changed.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(r2, "in2"))
    for got, want in zip(native(x), run_ort(changed, [x]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
