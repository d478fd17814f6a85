"""kiln's ONNX export writes ONNX's own operators where the graph computes one (issue 16):
every std.rnn configuration's scans become LSTM, GRU or RNN nodes, not Scan, and agree with
the reference in onnxruntime, from the exported file and through the onnx target; a scan that
is not exactly such a cell stays a Scan; a 2-D linear layer is a Gemm, a layer norm a
LayerNormalization. (codegen/onnx_patterns.py)"""

from __future__ import annotations

import functools
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from _stdlibtest import close, rand

import kiln

pytest.importorskip("onnxruntime")
from _onnximport import run_ort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IN, H, T, B = 3, 4, 5, 2  # input size, hidden size, steps, batch
LAYOUTS = [  # (num_layers, bidirectional, batch_first)
    (1, False, False), (1, True, False), (1, False, True), (2, True, True), (2, False, False),
]
CONFIGS = [(mode, {"num_layers": n, "bidirectional": bi, "batch_first": bf})
           for mode in ("RNN", "LSTM", "GRU") for n, bi, bf in LAYOUTS] + [
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ("RNN", {"bias": False}),
    ("LSTM", {"bias": False, "batch_first": True}),
    ("GRU", {"bias": False, "num_layers": 2}),
]


def config_id(config) -> str:
    mode, kw = config
    return mode + "".join(f"-{k}={v}" for k, v in kw.items())


@functools.cache
def rnn_program():
    return kiln.load(ROOT / "stdlib" / "rnn.kiln")


def op_types(proto: onnx.ModelProto) -> Counter:
    """How many nodes of each op type the model has, in its subgraphs (If, Scan) too."""
    found: Counter = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found[node.op_type] += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(proto.graph)
    return found


def exported(m, tmp_path: Path) -> tuple[Path, Counter]:
    path = tmp_path / "m.onnx"
    m.export_onnx(path)
    return path, op_types(onnx.load(str(path)))


def random_weights(m, rng) -> dict[str, np.ndarray]:
    """Weights larger than the default init, so that the gates saturate differently."""
    weights = {k: rand(rng, *v.shape, scale=0.5) for k, v in m.params.items()}
    m.load_weights(weights)
    return weights


def check_file(m, path: Path, feeds: dict[str, np.ndarray]) -> None:
    """onnxruntime on the exported file gives the reference's results."""
    want = m(**feeds)
    want = want if isinstance(want, tuple) else (want,)
    for got, w in zip(run_ort(path, feeds), want, strict=True):
        close(got, w)


@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_stdlib_rnn_exports_as_onnx_recurrent_ops(config, tmp_path):
    mode, kw = config
    args = {"input_size": IN, "hidden_size": H, **kw}
    m = kiln.compile(rnn_program(), model=mode, args=args, target="reference")
    weights = random_weights(m, np.random.default_rng(len(config_id(config))))
    path, ops = exported(m, tmp_path)
    directions = 2 if kw.get("bidirectional") else 1
    assert ops[mode] == kw.get("num_layers", 1) * directions and ops["Scan"] == 0, ops
    rng = np.random.default_rng(1)
    states = (kw.get("num_layers", 1) * directions, B, H)
    x = rand(rng, B, T, IN) if kw.get("batch_first") else rand(rng, T, B, IN)
    feeds = {"input": x, "h0": rand(rng, *states)}
    if mode == "LSTM":
        feeds["c0"] = rand(rng, *states)
    check_file(m, path, feeds)
    # the onnx target (its checked export, run by kiln), with and without initial states
    target = kiln.compile(rnn_program(), model=mode, args=args, target="onnx", weights=weights)
    for given in (feeds, {"input": x}):
        for got, want in zip(target(**given), m(**given), strict=True):
            close(got, want)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_no_steps_gives_the_initial_states(mode, tmp_path):
    """onnxruntime's LSTM gives zeros and its GRU aborts on an empty sequence: the export
    guards the op with an If on the step count, as it does a Scan."""
    m = kiln.compile(rnn_program(), model=mode, args={"input_size": IN, "hidden_size": H},
                     target="reference")
    path, ops = exported(m, tmp_path)
    assert ops[mode] == 1
    rng = np.random.default_rng(2)
    feeds = {"input": np.zeros((0, B, IN), np.float32), "h0": rand(rng, 1, B, H)}
    if mode == "LSTM":
        feeds["c0"] = rand(rng, 1, B, H)
    check_file(m, path, feeds)
    assert np.array_equal(run_ort(path, feeds)[1], feeds["h0"])


def test_lstm_with_projection_stays_a_scan(tmp_path):
    """ONNX's LSTM has no projection of h (proj_size): such a layer is a Scan."""
    m = kiln.compile(rnn_program(), model="LSTM",
                     args={"input_size": IN, "hidden_size": H, "proj_size": 2},
                     target="reference")
    path, ops = exported(m, tmp_path)
    assert ops["LSTM"] == 0 and ops["Scan"] == 1
    rng = np.random.default_rng(3)
    check_file(m, path, {"input": rand(rng, T, B, IN), "h0": rand(rng, 1, B, 2),
                         "c0": rand(rng, 1, B, H)})


# A hand-written layer: the input projection before the loop, as std.rnn, and a cell given as
# kiln lines; `{g}` gates, carrying h (and c where `{c}`). The exact cells are recognised; each
# change of one term is not.
HAND_WRITTEN = """
model Layer(hidden: int = 4) {{
  param w_ih: [{g} * hidden, 3] = init.uniform_fan_in(hidden)
  param w_hh: [{g} * hidden, hidden] = init.uniform_fan_in(hidden)
  param b_ih: [{g} * hidden] = init.uniform_fan_in(hidden)
  param b_hh: [{g} * hidden] = init.uniform_fan_in(hidden)
  forward(xs: [T, B, 3], h0: [B, hidden], c0: [B, hidden]) -> ([T, B, hidden], [B, hidden]) {{
    gx = xs @ w_ih.T + b_ih
    c = c0
    ys, h{c} = scan x in gx carry (h = h0{c_init}) {{
{cell}
      emit h
    }}
    return ys, h + c
  }}
}}"""
LSTM_CELL = """
      i, f, g, o = split(x + h @ w_hh.T + b_hh, 4, axis = -1)
      c = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h = sigmoid(o) * tanh(c)"""
GRU_CELL = """
      xr, xz, xn = split(x, 3, axis = -1)
      hr, hz, hn = split(h @ w_hh.T + b_hh, 3, axis = -1)
      r = sigmoid(xr + hr)
      z = sigmoid(xz + hz)
      n = tanh(xn + r * hn)
      h = (1 - z) * n + z * h"""
CELLS = [  # (gates, cell, ONNX op it is, or None: a Scan)
    pytest.param(4, LSTM_CELL, "LSTM", id="lstm"),
    pytest.param(4, LSTM_CELL.replace("* tanh(c)", "* c"), None, id="lstm-no-tanh-of-c"),
    pytest.param(4, LSTM_CELL.replace("sigmoid(f) * c", "sigmoid(f) * h"), None,
                 id="lstm-forgets-h"),
    pytest.param(4, LSTM_CELL.replace("i, f, g, o", "f, i, g, o"), "LSTM", id="lstm-other-order"),
    pytest.param(4, LSTM_CELL.replace("tanh(g)", "relu(g)"), None, id="lstm-relu"),
    pytest.param(3, GRU_CELL, "GRU", id="gru"),
    pytest.param(3, GRU_CELL.replace("(1 - z) * n + z * h", "z * n + (1 - z) * h"), None,
                 id="gru-z-swapped"),
    pytest.param(3, GRU_CELL.replace("r * hn", "hn"), None, id="gru-no-reset"),
    pytest.param(3, GRU_CELL.replace("split(x, 3", "split(x * 2.0, 3"), None, id="gru-scaled"),
]


@pytest.mark.parametrize("gates, cell, op", CELLS)
def test_only_exact_cells_are_recognised(gates, cell, op, tmp_path):
    lstm = gates == 4
    source = textwrap.dedent(HAND_WRITTEN.format(g=gates, cell=cell, c=", c" if lstm else "",
                                                 c_init=", c = c0" if lstm else ""))
    m = kiln.compile(source, target="reference")
    path, ops = exported(m, tmp_path)
    if op is None:
        assert ops["Scan"] == 1 and not {"LSTM", "GRU", "RNN"} & set(ops), ops
    else:
        assert ops[op] == 1 and ops["Scan"] == 0, ops
    rng = np.random.default_rng(4)
    random_weights(m, rng)
    m.export_onnx(path)
    check_file(m, path, {"xs": rand(rng, T, B, 3), "h0": rand(rng, B, H),
                         "c0": rand(rng, B, H)})


def test_reimported_lstm_exports_as_lstm_again(tmp_path):
    """kiln's import of its own LSTM (a scan in ONNX's gate order, i o f c) is recognised
    again: the round trip keeps the op."""
    m = kiln.compile(rnn_program(), model="LSTM", target="reference",
                     args={"input_size": IN, "hidden_size": H, "bidirectional": True})
    first, _ = exported(m, tmp_path)
    back = kiln.compile(first, target="reference")
    second = tmp_path / "second.onnx"
    back.export_onnx(second)
    ops = op_types(onnx.load(str(second)))
    assert ops["LSTM"] == 2 and ops["Scan"] == 0, ops
    rng = np.random.default_rng(5)
    feeds = {"input": rand(rng, T, B, IN), "h0": rand(rng, 2, B, H), "c0": rand(rng, 2, B, H)}
    check_file(m, second, feeds)


LINEAR_MODEL = """
import std.nn
model M {{
  lin = nn.Linear(8, 5)
  norm = nn.LayerNorm(5)
  forward(x: f32[{shape}, 8]) -> f32[{shape}, 5] {{
    return norm(relu(lin(x)))
  }}
}}"""


@pytest.mark.parametrize("shape, gemm", [("B", 1), ("B, T", 0)], ids=["2d", "3d"])
def test_linear_is_gemm_and_layer_norm_is_layer_normalization(shape, gemm, tmp_path):
    """A 2-D linear layer is one Gemm (a 3-D one stays MatMul + Add, as PyTorch exports it);
    a layer norm is LayerNormalization (opset 17 and later)."""
    m = kiln.compile(textwrap.dedent(LINEAR_MODEL.format(shape=shape)), target="reference")
    random_weights(m, np.random.default_rng(6))
    path, ops = exported(m, tmp_path)
    assert ops["Gemm"] == gemm and ops["MatMul"] == 1 - gemm, ops
    assert ops["LayerNormalization"] == 1, ops
    assert onnx.load(str(path)).opset_import[0].version >= 17
    x = rand(np.random.default_rng(7), *((3, 8) if gemm else (3, 2, 8)))
    check_file(m, path, {"x": x})


def test_a_product_used_twice_is_not_folded_into_a_gemm(tmp_path):
    source = """
    model M {
      param w: [5, 8] = init.uniform_fan_in(8)
      param b: [5] = init.uniform_fan_in(8)
      forward(x: f32[B, 8]) -> (f32[B, 5], f32[B, 5]) {
        y = x @ w.T
        return y + b, y
      }
    }"""
    m = kiln.compile(textwrap.dedent(source), target="reference")
    path, ops = exported(m, tmp_path)
    assert ops["Gemm"] == 0 and ops["MatMul"] == 1, ops
    check_file(m, path, {"x": rand(np.random.default_rng(8), 3, 8)})


def test_residual_adds_before_a_layer_norm_export_as_sum(tmp_path):
    """An add that only a layer norm reads is written as ONNX's Sum (the same operator), so
    that onnxruntime does not fuse it into its slow CPU SkipLayerNormalization; an add read
    elsewhere too, or a graph output, stays an Add; onnxruntime's results are the reference's."""
    m = kiln.compile(textwrap.dedent("""
        import std.nn
        model R {
          norm = nn.LayerNorm(8)
          forward(x: f32[B, T, 8], a: f32[B, T, 8]) -> (f32[B, T, 8], f32[B, T, 8],
                                                       f32[B, T, 8]) {
            s = x + a
            r = norm(s)
            return norm(x + r), r, s + norm(r + a)
          }
        }
        """), target="reference")
    random_weights(m, np.random.default_rng(0))
    path, ops = exported(m, tmp_path)
    # x + r and r + a feed only a norm; x + a feeds a norm and s + ..., s + ... is an output
    assert ops["Sum"] == 2 and ops["Add"] == 2, ops
    rng = np.random.default_rng(1)
    check_file(m, path, {"x": rand(rng, 2, 3, 8), "a": rand(rng, 2, 3, 8)})
