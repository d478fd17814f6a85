"""std.rnn (RNN, LSTM, GRU) against two independent oracles, and examples/lstm_classifier.kiln.

- PyTorch: torch.nn.RNN/LSTM/GRU with its state_dict loaded strictly into the kiln block (the
  block is compiled on its own, so its parameter names are exactly torch's keys).
- The published ONNX semantics, without torch: onnxruntime's own LSTM/GRU/RNN operators, built
  with onnx.helper from the same weights (PyTorch's gate order converted to ONNX's: LSTM i, o, f, c;
  GRU z, r, h with linear_before_reset = 1), one ONNX node per layer.
- The ONNX target (`target="onnx"`) against the reference interpreter on the example.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import OPTIMIZED, REFERENCE, check_opt_levels, oracle
from _stdlibtest import close, rand

import kiln
from kiln import KilnError

ROOT = Path(__file__).resolve().parent.parent
RNN_FILE = ROOT / "stdlib" / "rnn.kiln"
EXAMPLE = ROOT / "examples" / "lstm_classifier.kiln"

IN, H, T, B = 3, 4, 5, 2  # input size, hidden size, steps, batch
MODES = ["RNN", "LSTM", "GRU"]
LAYOUTS = [  # (num_layers, bidirectional, batch_first)
    (1, False, False), (1, True, False), (1, False, True), (1, True, True),
    (2, False, False), (2, True, False), (2, False, True), (2, True, True),
]
LAYOUT_IDS = [f"L{n}{'-bi' if bi else ''}{'-bf' if bf else ''}" for n, bi, bf in LAYOUTS]


# ---------------------------------------------------------------------------- helpers
@functools.cache
def program():
    return kiln.load(RNN_FILE)


def compile_block(mode: str, **args):
    return kiln.compile(program(), model=mode, args={"input_size": IN, "hidden_size": H, **args}, target="reference")


def randomize(m, rng) -> dict[str, np.ndarray]:
    """Random weights larger than the default init, so that the gates saturate differently."""
    weights = {k: rand(rng, *v.shape, scale=0.5) for k, v in m.params.items()}
    m.load_weights(weights)
    return weights


def states_shape(layers, bi, size=H):
    return (layers * (2 if bi else 1), B, size)


def input_of(rng, batch_first):
    return rand(rng, B, T, IN) if batch_first else rand(rng, T, B, IN)


# ---------------------------------------------------------------------------- structure
def test_parameter_names_and_shapes_are_pytorchs():
    m = compile_block("LSTM", num_layers=2, bidirectional=True)
    want = {}
    for k in range(2):
        for sfx in ("", "_reverse"):
            want[f"weight_ih_l{k}{sfx}"] = (4 * H, IN if k == 0 else 2 * H)
            want[f"weight_hh_l{k}{sfx}"] = (4 * H, H)
            want[f"bias_ih_l{k}{sfx}"] = (4 * H,)
            want[f"bias_hh_l{k}{sfx}"] = (4 * H,)
    assert {k: v.shape for k, v in m.params.items()} == want
    assert list(m.params) == list(want)  # torch's state_dict order
    gru = compile_block("GRU", bias=False)
    assert {k: v.shape for k, v in gru.params.items()} == {
        "weight_ih_l0": (3 * H, IN), "weight_hh_l0": (3 * H, H)}
    rnn = compile_block("RNN", num_layers=2)
    assert {k: v.shape for k, v in rnn.params.items()} == {
        "weight_ih_l0": (H, IN), "weight_hh_l0": (H, H), "bias_ih_l0": (H,), "bias_hh_l0": (H,),
        "weight_ih_l1": (H, H), "weight_hh_l1": (H, H), "bias_ih_l1": (H,), "bias_hh_l1": (H,)}


@pytest.mark.parametrize("mode", MODES)
def test_init_is_uniform_fan_in_hidden(mode):
    """Every weight and bias ~ U(-1/sqrt(hidden), 1/sqrt(hidden)), as PyTorch's reset_parameters."""
    hidden = 16
    m = kiln.compile(program(), model=mode, args={"input_size": 8, "hidden_size": hidden}, target="reference")
    bound = 1 / math.sqrt(hidden)
    for name, v in m.params.items():
        assert np.abs(v).max() <= bound, name
        assert np.abs(v).max() > 0.8 * bound, name  # spread over the whole interval
        assert abs(float(v.mean())) < 0.25 * bound, name


@pytest.mark.parametrize("mode", MODES)
def test_output_types(mode):
    m = compile_block(mode, num_layers=2, bidirectional=True, batch_first=True)
    outs = m(np.zeros((B, T, IN), np.float32))
    assert outs[0].shape == (B, T, 2 * H)
    for s in outs[1:]:
        assert s.shape == (4, B, H)
    assert len(outs) == (3 if mode == "LSTM" else 2)


def test_bad_arguments_are_errors():
    with pytest.raises(KilnError) as err:
        compile_block("RNN", nonlinearity="sigmoid")
    assert err.value.code == "K0204"
    with pytest.raises(KilnError) as err:
        compile_block("LSTM", proj_size=H)
    assert err.value.code == "K0204"
    with pytest.raises(KilnError) as err:
        compile_block("GRU", num_layers=0)
    assert err.value.code == "K0204"


def test_batch_of_initial_state_must_match_the_input():
    m = compile_block("GRU")
    with pytest.raises(KilnError):
        m(np.zeros((T, B, IN), np.float32), np.zeros((1, B + 1, H), np.float32))


# ---------------------------------------------------------------------------- vs PyTorch
def torch_module(mode, **kw):
    torch = pytest.importorskip("torch")
    cls = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[mode]
    return cls(IN, H, **kw).eval()


def load_torch(m, module):
    m.load_weights({k: v.detach().numpy() for k, v in module.state_dict().items()})  # strict


def run_torch(module, x, h0=None, c0=None):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if isinstance(module, torch.nn.LSTM):
            hx = None if h0 is None else (torch.from_numpy(h0), torch.from_numpy(c0))
            y, (h, c) = module(xt, hx)
            return y.numpy(), h.numpy(), c.numpy()
        y, h = module(xt, None if h0 is None else torch.from_numpy(h0))
        return y.numpy(), h.numpy()


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_torch(mode, layout):
    layers, bi, bf = layout
    kw = {"num_layers": layers, "bidirectional": bi, "batch_first": bf}
    module = torch_module(mode, **kw)
    m = compile_block(mode, **kw)
    load_torch(m, module)
    rng = np.random.default_rng(layers * 4 + bi * 2 + bf)
    x = input_of(rng, bf)
    for got, want in zip(m(x), run_torch(module, x), strict=True):
        close(got, want)
    # with initial states
    h0 = rand(rng, *states_shape(layers, bi))
    if mode == "LSTM":
        c0 = rand(rng, *states_shape(layers, bi))
        got, want = m(x, h0, c0), run_torch(module, x, h0, c0)
    else:
        got, want = m(x, h0), run_torch(module, x, h0)
    for g, w in zip(got, want, strict=True):
        close(g, w)


@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
@pytest.mark.parametrize("case", [
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}),
    ("RNN", {"bias": False}),
    ("LSTM", {"bias": False, "num_layers": 2}),
    ("GRU", {"bias": False, "bidirectional": True}),
    ("LSTM", {"proj_size": 2, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 3, "batch_first": True}),
    ("GRU", {"num_layers": 2, "dropout": 0.5}),   # inter-layer dropout: the identity in eval
], ids=["rnn-relu", "rnn-nobias", "lstm-nobias", "gru-nobias", "lstm-proj", "lstm-proj-bf",
        "gru-dropout"])
def test_variants_match_torch(case):
    mode, kw = case
    module = torch_module(mode, **kw)
    m = compile_block(mode, **kw)
    load_torch(m, module)
    rng = np.random.default_rng(7)
    x = input_of(rng, kw.get("batch_first", False))
    for got, want in zip(m(x), run_torch(module, x), strict=True):
        close(got, want)


def test_lstm_initial_states_one_at_a_time():
    """h0 or c0 alone: the other is zeros (torch needs both, so pass zeros there)."""
    module = torch_module("LSTM", num_layers=2)
    m = compile_block("LSTM", num_layers=2)
    load_torch(m, module)
    rng = np.random.default_rng(3)
    x, s = rand(rng, T, B, IN), rand(rng, 2, B, H)
    zero = np.zeros_like(s)
    for got, want in zip(m(x, h0=s), run_torch(module, x, s, zero), strict=True):
        close(got, want)
    for got, want in zip(m(x, c0=s), run_torch(module, x, zero, s), strict=True):
        close(got, want)


# ---------------------------------------------------------------------------- vs ONNX's operators
def _blocks(w, order, n):
    """Reorder the gate blocks (each n rows) of a PyTorch weight into ONNX's order."""
    return np.concatenate([w[g * n:(g + 1) * n] for g in order], axis=0)


ONNX_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}  # torch i,f,g,o -> i,o,f,c


def onnx_layer(mode, weights, k, bi, x, h0, c0=None, nonlinearity="tanh"):
    """One layer through onnxruntime's ONNX operator: x [T, B, in] -> (y [T, B, D*H], h, c)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    sfxs = ["", "_reverse"] if bi else [""]
    order = ONNX_GATES[mode]

    def stacked(name):
        return np.stack([_blocks(weights[f"{name}_l{k}{s}"], order, H) for s in sfxs])

    W, R = stacked("weight_ih"), stacked("weight_hh")
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    inputs = ["X", "W", "R"]
    if f"bias_ih_l{k}" in weights:
        inits.append(numpy_helper.from_array(
            np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1), "B"))
        inputs.append("B")
    else:
        inputs.append("")
    inputs += ["", "initial_h"]
    feeds = {"X": x, "initial_h": h0}
    if mode == "LSTM":
        inputs.append("initial_c")
        feeds["initial_c"] = c0
    attrs = {"hidden_size": H, "direction": "bidirectional" if bi else "forward"}
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    if mode == "RNN":
        attrs["activations"] = [nonlinearity.capitalize()] * len(sfxs)
    outputs = ["Y", "Y_h"] + (["Y_c"] if mode == "LSTM" else [])
    node = helper.make_node(mode, inputs, outputs, **attrs)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info(n, f32, v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info(n, f32, ["?"] * (4 if n == "Y" else 3)) for n in outputs],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    y = outs[0]  # [T, D, B, H] -> [T, B, D*H]
    y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return y, outs[1], (outs[2] if mode == "LSTM" else None)


def onnx_reference(mode, weights, layers, bi, bf, x, h0, c0, nonlinearity="tanh"):
    D = 2 if bi else 1
    y = x.transpose(1, 0, 2) if bf else x
    hs, cs = [], []
    for k in range(layers):
        c = None if c0 is None else c0[k * D:(k + 1) * D]
        y, h, c = onnx_layer(mode, weights, k, bi, y, h0[k * D:(k + 1) * D], c, nonlinearity)
        hs.append(h)
        cs.append(c)
    y = y.transpose(1, 0, 2) if bf else y
    out = [y, np.concatenate(hs)]
    return out + ([np.concatenate(cs)] if mode == "LSTM" else [])


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_onnx_operators(mode, layout):
    """The published semantics (ONNX's LSTM/GRU/RNN), with no torch involved."""
    layers, bi, bf = layout
    m = compile_block(mode, num_layers=layers, bidirectional=bi, batch_first=bf)
    rng = np.random.default_rng(100 + layers * 4 + bi * 2 + bf)
    weights = randomize(m, rng)
    x = input_of(rng, bf)
    h0 = rand(rng, *states_shape(layers, bi))
    c0 = rand(rng, *states_shape(layers, bi)) if mode == "LSTM" else None
    want = onnx_reference(mode, weights, layers, bi, bf, x, h0, c0)
    got = m(x, h0, c0) if mode == "LSTM" else m(x, h0)
    for g, w in zip(got, want, strict=True):
        close(g, w)
    # zero initial states when h0 (and c0) are left out
    zero = np.zeros_like(h0)
    want = onnx_reference(mode, weights, layers, bi, bf, x, zero, zero if c0 is not None else None)
    for g, w in zip(m(x), want, strict=True):
        close(g, w)


@pytest.mark.parametrize("case", [
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ("RNN", {"bias": False, "num_layers": 2}),
    ("LSTM", {"bias": False, "bidirectional": True}),
    ("GRU", {"bias": False, "num_layers": 2, "batch_first": True}),
], ids=["rnn-relu", "rnn-nobias", "lstm-nobias", "gru-nobias"])
def test_variants_match_onnx_operators(case):
    mode, kw = case
    m = compile_block(mode, **kw)
    rng = np.random.default_rng(11)
    weights = randomize(m, rng)
    layers, bi, bf = kw.get("num_layers", 1), kw.get("bidirectional", False), kw.get(
        "batch_first", False)
    x = input_of(rng, bf)
    zero = np.zeros(states_shape(layers, bi), np.float32)
    want = onnx_reference(mode, weights, layers, bi, bf, x, zero,
                          zero if mode == "LSTM" else None, kw.get("nonlinearity", "tanh"))
    for g, w in zip(m(x), want, strict=True):
        close(g, w)


# ---------------------------------------------------------------------------- the example
SIZES = [(1, 3), (4, 6)]  # (B, T)
EXAMPLE_ARGS = {"vocab_size": 20, "embed_dim": 6, "hidden_size": 5}


@functools.cache
def example(target="reference"):
    return kiln.compile(EXAMPLE, args=EXAMPLE_ARGS, target=target)


def tokens(b, t, seed):
    return np.random.default_rng(seed).integers(0, 20, (b, t))


def test_example_signature():
    m = example()
    assert m.signature() == "LSTMClassifier(tokens: i64[B, T]) -> f32[B, 4]"
    assert "lstm.weight_hh_l1_reverse" in m.params and "fc.bias" in m.params


@pytest.mark.parametrize("size", SIZES, ids=[f"B{b}-T{t}" for b, t in SIZES])
def test_example_matches_torch(size):
    torch = pytest.importorskip("torch")

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(20, 6)
            self.lstm = torch.nn.LSTM(6, 5, 2, batch_first=True, dropout=0.2,
                                      bidirectional=True)
            self.fc = torch.nn.Linear(10, 4)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.embedding(ids))
            return torch.log_softmax(self.fc(torch.cat([h[-2], h[-1]], dim=-1)), dim=-1)

    torch.manual_seed(0)
    module = Classifier().eval()
    m = kiln.compile(EXAMPLE, args={"vocab_size": 20, "embed_dim": 6, "hidden_size": 5}, target="reference")
    load_torch(m, module)
    ids = tokens(*size, seed=sum(size))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    close(m(ids), want)


@pytest.mark.parametrize("size", SIZES, ids=[f"B{b}-T{t}" for b, t in SIZES])
def test_example_onnx_target_matches_reference(size):
    ids = tokens(*size, seed=sum(size))
    close(example("onnx")(ids), oracle(EXAMPLE, args=EXAMPLE_ARGS)(ids))


@pytest.mark.parametrize("mode", MODES)
def test_onnx_target_matches_reference(mode):
    args = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    ref = oracle(program(), model=mode, args={"input_size": IN, "hidden_size": H, **args})
    onnx_m = kiln.compile(program(), model=mode, target="onnx",
                          args={"input_size": IN, "hidden_size": H, **args})
    rng = np.random.default_rng(5)
    x, h0 = rand(rng, B, T, IN), rand(rng, 4, B, H)
    for g, w in zip(onnx_m(x), ref(x), strict=True):
        close(g, w)
    for g, w in zip(onnx_m(x, h0), ref(x, h0), strict=True):
        close(g, w)


# ---------------------------------------------------------------------------- -O0 vs -O1
# (the examples' sweep runs an LSTM and a GRU on native code)
@pytest.mark.parametrize("mode, targets", [("RNN", OPTIMIZED), ("LSTM", REFERENCE),
                                           ("GRU", REFERENCE)])
def test_optimized_targets_match_the_unoptimized_reference(mode, targets):
    args = {"input_size": IN, "hidden_size": H, "num_layers": 2, "bidirectional": True}
    check_opt_levels(program(), mode, args=args, sizes={"T": T, "B": B}, targets=targets)
