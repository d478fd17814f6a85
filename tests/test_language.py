"""Language constructs end to end: each model is checked against an independent numpy result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kiln
from kiln import KilnError
from kiln.compiler.dims import Dim, assuming, divisibility
from kiln.runtime.aot import parse_dim

ROOT = Path(__file__).resolve().parents[1]

RNG = np.random.default_rng(1234)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def build(src: str, **kw):
    return kiln.compile(textwrap.dedent(src), **kw, target="reference")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


LINEAR = """
block Linear(in_features: int, out_features: int, bias: bool = true) {
  param weight: [out_features, in_features] = init.kaiming_uniform(a = sqrt(5))
  param bias: [out_features] = init.uniform_fan_in(in_features)  if bias
  forward(x: [..., in_features]) -> [..., out_features] {
    y = x @ weight.T
    return y + bias  if defined(bias) else y
  }
}
"""


def test_pipeline_numbering_and_numerics():
    m = build(
        LINEAR
        + """
    model MLP(hidden: int = 16) {
      forward(x: f32[B, 8]) -> f32[B, 3] {
        return x |> Linear(8, hidden) |> relu |> Linear(hidden, hidden, bias = false)
                 |> tanh |> Linear(hidden, 3) |> softmax(axis = -1)
      }
    }"""
    )
    assert sorted(m.params) == ["0.bias", "0.weight", "2.weight", "4.bias", "4.weight"]
    p = m.params
    for batch in (1, 5):
        x = randn(batch, 8)
        h = np.maximum(x @ p["0.weight"].T + p["0.bias"], 0)
        h = np.tanh(h @ p["2.weight"].T)
        z = h @ p["4.weight"].T + p["4.bias"]
        e = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(m(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_model_arguments_and_bound_of_pytorch_default_init():
    m = build(
        LINEAR
        + """
    model M(hidden: int = 4) {
      forward(x: f32[B, 100]) -> f32[B, hidden] { return x |> fc: Linear(100, hidden) }
    }""",
        args={"hidden": 300},
    )
    w = m.params["fc.weight"]
    assert w.shape == (300, 100)
    bound = 1 / np.sqrt(100)  # kaiming_uniform(a = sqrt(5)) on fan_in 100
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound


def test_member_list_numbering_counts_primitive_stages_and_nests():
    m = build(
        LINEAR
        + """
    model M {
      main = [Linear(4, 4), relu, ops.dropout(p = 0.1), [Linear(4, 4), tanh], Linear(4, 2)]
      layers = [Linear(2, 2) for i in range(2)] + [sigmoid]
      forward(x: f32[B, 4]) -> f32[B, 2] { return x |> main |> layers }
    }"""
    )
    assert sorted(k for k in m.params if k.endswith("weight")) == [
        "layers.0.weight",
        "layers.1.weight",
        "main.0.weight",
        "main.3.0.weight",
        "main.4.weight",
    ]
    p = m.params
    x = randn(3, 4)

    def lin(name, v):
        return v @ p[name + ".weight"].T + p[name + ".bias"]

    h = np.tanh(lin("main.3.0", np.maximum(lin("main.0", x), 0)))
    h = lin("layers.1", lin("layers.0", lin("main.4", h)))
    np.testing.assert_allclose(m(x), sigmoid(h), rtol=1e-5, atol=1e-6)


def test_explicit_stage_names_do_not_advance_the_counter():
    m = build(
        LINEAR
        + """
    model M {
      forward(x: f32[B, 4]) -> f32[B, 4] {
        y = x |> first: Linear(4, 4) |> relu |> Linear(4, 4)
        return Linear(4, 4)(y)
      }
    }"""
    )
    assert {k.split(".")[0] for k in m.params} == {"first", "1", "2"}


def test_instance_applied_twice_shares_parameters():
    m = build(
        LINEAR
        + """
    model M {
      fc = Linear(3, 3)
      forward(x: f32[B, 3]) -> f32[B, 3] { return fc(fc(x)) }
    }"""
    )
    p = m.params
    x = randn(2, 3)
    once = x @ p["fc.weight"].T + p["fc.bias"]
    np.testing.assert_allclose(m(x), once @ p["fc.weight"].T + p["fc.bias"], rtol=1e-5)
    assert sorted(p) == ["fc.bias", "fc.weight"]


def test_interpolated_and_dotted_member_names():
    m = build("""
    model M(n: int = 3) {
      for k in range(n) {
        param weight_l{k}: [2, 2] = init.normal(std = 1.0)
      }
      transformer.scale = 2.0
      forward(x: f32[B, 2]) -> f32[B, 2] {
        for k in range(n) {
          x = x @ weight_l{k}
        }
        return x * transformer.scale
      }
    }""")
    p = m.params
    assert sorted(p) == ["weight_l0", "weight_l1", "weight_l2"]
    x = randn(4, 2)
    np.testing.assert_allclose(
        m(x), x @ p["weight_l0"] @ p["weight_l1"] @ p["weight_l2"] * 2, rtol=1e-5
    )


def test_tie_makes_one_tensor_under_two_names(tmp_path):
    m = build("""
    block Embedding(n: int, d: int) {
      param weight: [n, d] = init.normal(std = 1.0)
      forward(i: i64[...]) -> [..., d] { return gather(weight, i, axis = 0) }
    }
    block Head(d: int, n: int) {
      param weight: [n, d] = init.zeros()
      forward(x: [..., d]) -> [..., n] { return x @ weight.T }
    }
    model LM {
      transformer.wte = Embedding(10, 4)
      lm_head = Head(4, 10)
      tie lm_head.weight = transformer.wte.weight
      forward(tokens: i64[B, T]) -> f32[B, T, 10] {
        return tokens |> transformer.wte |> lm_head
      }
    }""")
    assert list(m.params) == ["transformer.wte.weight"]
    w = m.params["transformer.wte.weight"]
    tokens = np.array([[1, 2, 3]], dtype=np.int64)
    np.testing.assert_allclose(m(tokens), w[tokens] @ w.T, rtol=1e-5)
    path = tmp_path / "lm.safetensors"
    m.save_weights(path)
    from kiln.runtime.weights import load_weights

    saved = load_weights(path)
    assert set(saved) == {"transformer.wte.weight", "lm_head.weight"}
    new_w = randn(10, 4)
    m.load_weights({"lm_head.weight": new_w})  # either key is accepted
    np.testing.assert_array_equal(m.params["transformer.wte.weight"], new_w)


def test_init_overrides_by_block_type_and_by_path_nearest_ancestor_wins():
    m = build(
        LINEAR
        + """
    block Pair {
      a = Linear(2, 2)
      b = Linear(2, 2)
      init Linear.weight = init.constant(2.0)
      forward(x: f32[B, 2]) -> f32[B, 2] { return b(a(x)) }
    }
    model M {
      p = Pair
      q = Pair
      init Linear.weight = init.constant(1.0)
      init Linear.bias = init.constant(3.0)
      init q.*.bias = init.constant(5.0)
      forward(x: f32[B, 2]) -> f32[B, 2] { return q(p(x)) }
    }"""
    )
    p = m.params
    assert np.all(p["p.a.weight"] == 2.0) and np.all(p["q.b.weight"] == 2.0)  # nearest wins
    assert np.all(p["p.a.bias"] == 3.0)
    assert np.all(p["q.a.bias"] == 5.0)  # the later, more specific override at the root


def test_block_valued_arguments_with_partial_application():
    m = build(
        LINEAR
        + """
    block Scaled(n: int, scale: float = 1.0) {
      forward(x: [B, n]) -> [B, n] { return x * scale }
    }
    block Stack(n: int, depth: int, block: Block = Scaled) {
      layers = [block(n) for i in range(depth)]
      forward(x: [B, n]) -> [B, n] { return x |> layers }
    }
    model M {
      s = Stack(3, 2, block = Scaled(scale = 3.0))
      forward(x: f32[B, 3]) -> f32[B, 3] { return s(x) }
    }"""
    )
    x = randn(2, 3)
    np.testing.assert_allclose(m(x), x * 9.0, rtol=1e-6)


def test_consts_fns_and_compile_time_control_flow():
    m = build("""
    const SCALE = 2 ** 3
    fn affine(x, a, b = 1.0) { return x * a + b }
    model M(use_tanh: bool = false) {
      const half = SCALE // 2
      forward(x: f32[B, 4]) -> f32[B, 4] {
        y = affine(x, half)
        if use_tanh {
          y = tanh(y)
        } else {
          y = sigmoid(y)
        }
        for i in range(3) {
          y = y + i
        }
        return y |> affine(0.5, b = 0.0) if SCALE > 4 else y
      }
    }""")
    x = randn(2, 4)
    np.testing.assert_allclose(m(x), (sigmoid(x * 4 + 1) + 3) * 0.5, rtol=1e-5)


def test_require_reports_at_the_requirement_with_the_instantiation_chain():
    with pytest.raises(KilnError) as info:
        build("""
        block Heads(d: int, h: int) {
          require d % h == 0, "d must divide into heads"
          forward(x: [B, d]) -> [B, d] { return x }
        }
        model M { forward(x: f32[B, 6]) -> f32[B, 6] { return x |> Heads(6, 4) } }""")
    err = info.value
    assert err.code == "K0204" and "d must divide into heads" in err.message
    assert err.span.line == 3
    assert any("Heads" in n for n in err.notes)


def test_optional_input_and_defined():
    m = build("""
    model M {
      forward(x: f32[B, T], mask: bool[B, T]?) -> f32[B, T] {
        return where(mask, x, 0.0) if defined(mask) else x * 2
      }
    }""")
    assert m.inputs[1].optional
    x = randn(2, 3)
    mask = np.array([[True, False, True], [False, False, True]])
    np.testing.assert_allclose(m(x, mask), np.where(mask, x, 0))
    np.testing.assert_allclose(m(x), x * 2)


def test_multiple_outputs_and_symbolic_sizes_as_values():
    m = build("""
    model M {
      forward(x: f32[B, T]) -> (f32[B, T], i64[T], f32[B, 1]) {
        positions = arange(T)
        mean = sum(x, axis = -1, keepdims = true) / T
        return x - mean, positions, zeros([B, 1]) + dim(x, 0)
      }
    }""")
    x = randn(3, 5)
    a, b, c = m(x)
    np.testing.assert_allclose(a, x - x.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b, np.arange(5))
    np.testing.assert_array_equal(c, np.full((3, 1), 3.0))


def test_where_constraints_compile_time_and_call_time():
    src = """
    model M(block_size: int = 8) {
      forward(x: f32[B, T]) -> f32[B, T] where T <= block_size { return x }
    }"""
    m = build(src)
    m(randn(1, 8))
    with pytest.raises(KilnError) as info:
        m(randn(1, 9))
    assert info.value.code == "K0504"
    with pytest.raises(KilnError) as info:
        build("""
        model M { forward(x: f32[B, 6]) -> f32[B, 6] where 6 % 4 == 0 { return x } }""")
    assert info.value.code == "K0205"


def test_indexing_and_slicing():
    m = build("""
    model M(d: int = 2) {
      forward(h: f32[B, 5, 6], idx: i64[K]) -> (f32[B, 5, 2], f32[B, 6], f32[B, 3, 3], f32[K, 5, 6]) {
        return h[..., :d], h[:, -1], h[:, ::2, 1:4], h[idx]
      }
    }""")
    h = randn(4, 5, 6)
    idx = np.array([3, 0, -1], dtype=np.int64)
    a, b, c, d = m(h, idx)
    np.testing.assert_array_equal(a, h[..., :2])
    np.testing.assert_array_equal(b, h[:, -1])
    np.testing.assert_array_equal(c, h[:, ::2, 1:4])
    np.testing.assert_array_equal(d, h[idx])


LSTM = """
block LSTMLayer(input_size: int, hidden_size: int) {
  param weight_ih_l0: [4 * hidden_size, input_size] = init.uniform_fan_in(hidden_size)
  param weight_hh_l0: [4 * hidden_size, hidden_size] = init.uniform_fan_in(hidden_size)
  param bias_ih_l0: [4 * hidden_size] = init.uniform_fan_in(hidden_size)
  param bias_hh_l0: [4 * hidden_size] = init.uniform_fan_in(hidden_size)

  forward(xs: [T, B, input_size]) -> ([T, B, hidden_size], [B, hidden_size], [B, hidden_size]) {
    ys, h, c = scan x in xs carry (h = zeros([B, hidden_size]), c = zeros([B, hidden_size])) {
      gates = x @ weight_ih_l0.T + bias_ih_l0 + h @ weight_hh_l0.T + bias_hh_l0
      i, f, g, o = split(gates, 4, axis = -1)
      c = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h = sigmoid(o) * tanh(c)
      emit h
    }
    return ys, h, c
  }
}
model Tagger {
  forward(xs: f32[T, B, 3]) -> (f32[T, B, 5], f32[B, 5], f32[B, 5]) {
    return xs |> rnn: LSTMLayer(3, 5)
  }
}
"""


def numpy_lstm(p, xs, prefix="rnn."):
    wi, wh = p[prefix + "weight_ih_l0"], p[prefix + "weight_hh_l0"]
    b = p[prefix + "bias_ih_l0"] + p[prefix + "bias_hh_l0"]
    h = np.zeros((xs.shape[1], wh.shape[1]), np.float32)
    c = np.zeros_like(h)
    ys = []
    for x in xs:
        i, f, g, o = np.split(x @ wi.T + h @ wh.T + b, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def test_scan_lstm_matches_a_numpy_loop_at_two_lengths():
    m = build(LSTM)
    for t, b in ((1, 2), (7, 3)):
        xs = randn(t, b, 3)
        for got, want in zip(m(xs), numpy_lstm(m.params, xs), strict=False):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


SCAN_REVERSE = """
model M {
  forward(xs: f32[B, T, 2], ms: f32[B, T]) -> (f32[B, T, 2], f32[B, T], f32[B, 2]) {
    ys, ts, acc = scan reverse (t, x), m in xs, ms axis 1 carry (acc = zeros([B, 2])) {
      acc = acc + x * unsqueeze(m, -1)
      emit acc, cast(t, "f32") + m * 0.0
    }
    return ys, ts, acc
  }
}"""

SCAN_CAPTURE = LINEAR + """
model M {
  forward(xs: f32[T, B, 3], bias: f32[3]) -> f32[T, B, 3] {
    scale = bias * 2.0
    ys, h = scan x in xs carry (h = zeros([B, 3])) {
      h = tanh(Linear(3, 3)(x) + h + scale)
      emit h
    }
    return ys
  }
}"""


def test_scan_reverse_axis_index_and_several_sequences():
    m = build(SCAN_REVERSE)
    xs, ms = randn(2, 4, 2), randn(2, 4)
    ys, ts, acc = m(xs, ms)
    want = np.zeros((2, 4, 2), np.float32)
    run = np.zeros((2, 2), np.float32)
    for t in reversed(range(4)):
        run = run + xs[:, t] * ms[:, t, None]
        want[:, t] = run
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ts, np.tile(np.arange(4, dtype=np.float32), (2, 1)))
    np.testing.assert_allclose(acc, run, rtol=1e-5, atol=1e-6)


def test_scan_body_uses_outer_tensors_and_a_shared_block_instance():
    m = build(SCAN_CAPTURE)
    assert sorted(m.params) == ["0.bias", "0.weight"]  # one instance for every step
    xs, bias = randn(3, 2, 3), randn(3)
    p = m.params
    h = np.zeros((2, 3), np.float32)
    want = []
    for x in xs:
        h = np.tanh(x @ p["0.weight"].T + p["0.bias"] + h + bias * 2)
        want.append(h)
    np.testing.assert_allclose(m(xs, bias), np.stack(want), rtol=1e-5, atol=1e-6)


def test_element_types_and_promotion():
    m = build("""
    model M {
      forward(i: i64[N], x: f32[N], b: bool[N]) -> (f32[N], i64[N], f32[N]) {
        return x + i, i * 2 + 1, where(b, x, 1)
      }
    }""")
    i, x, b = np.arange(4, dtype=np.int64), randn(4), np.array([True, False, True, False])
    a, c, d = m(i, x, b)
    assert a.dtype == np.float32 and c.dtype == np.int64
    np.testing.assert_allclose(a, x + i)
    np.testing.assert_array_equal(c, i * 2 + 1)
    np.testing.assert_allclose(d, np.where(b, x, 1))


def test_buffers_param_from_tensor_expression_and_persistence(tmp_path):
    m = build("""
    model M(n: int = 4) {
      buffer(persistent = false) mask: bool[n, n] = tril(ones([n, n], dtype = "bool"))
      buffer count: i64[] = init.zeros()
      param scale: [n] = arange(n) * 0.5
      forward(x: f32[B, n, n]) -> f32[B, n, n] { return where(mask, x, 0.0) * scale }
    }""")
    np.testing.assert_allclose(m.params["scale"], np.arange(4) * 0.5)
    x = randn(2, 4, 4)
    np.testing.assert_allclose(
        m(x), np.where(np.tril(np.ones((4, 4), bool)), x, 0) * np.arange(4) * 0.5
    )
    m.save_weights(tmp_path / "w.npz")
    from kiln.runtime.weights import load_weights

    assert set(load_weights(tmp_path / "w.npz")) == {"count", "scale"}


def test_imports_of_stdlib_and_local_files(tmp_path):
    (tmp_path / "blocks.kiln").write_text(LINEAR)
    (tmp_path / "model.kiln").write_text(
        textwrap.dedent("""
    import "blocks.kiln"
    import "blocks.kiln": Linear
    model M {
      forward(x: f32[B, 2]) -> f32[B, 2] { return x |> blocks.Linear(2, 2) |> Linear(2, 2) }
    }""")
    )
    m = kiln.compile(str(tmp_path / "model.kiln"), target="reference")
    assert sorted(m.params) == ["0.bias", "0.weight", "1.bias", "1.weight"]


def test_initial_weights_are_a_function_of_seed_and_path_across_processes():
    src = LINEAR + (
        "model M { forward(x: f32[B, 4]) -> f32[B, 4] { return x |> Linear(4, 4) |> Linear(4, 4) } }"
    )
    code = (
        "import hashlib, kiln\n"
        f"m = kiln.compile({src!r}, seed=7)\n"
        "print(hashlib.sha256(m.params['0.weight'].tobytes()"
        " + m.params['1.weight'].tobytes()).hexdigest())\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64
    a, b = kiln.compile(src, seed=7, target="reference"), kiln.compile(src, seed=8, target="reference")
    assert not np.array_equal(a.params["0.weight"], a.params["1.weight"])  # paths differ
    assert not np.array_equal(a.params["0.weight"], b.params["0.weight"])  # seeds differ
    np.testing.assert_array_equal(
        a.params["0.weight"], kiln.compile(src, seed=7, target="reference").params["0.weight"]
    )


# ---------------------------------------------------------------------------- where facts in sizes
UNET_LEVEL = """
model Up {
  forward(x: f32[B, 2, H, W]) -> f32[B, 4, H, W] %s {
    down = max_pool(max_pool(x, 2), 2)                           # [B, 2, H//4, W//4]
    up = conv_transpose(down, ones([2, 2, 4, 4]), stride = 4)    # [B, 2, 4*(H//4), 4*(W//4)]
    return concat([up, x], axis = 1)
  }
}"""


def test_where_facts_let_an_upsampled_path_meet_its_skip():
    with pytest.raises(KilnError) as info:  # without the facts, 4*(H//4) is not H
        build(UNET_LEVEL % "")
    assert info.value.code == "K0301" and "4*(H//4)" in info.value.message
    assert "`where H % 4 == 0, W % 4 == 0`" in info.value.hint
    with pytest.raises(KilnError) as info:  # a result checked against its declared type
        build(UNET_LEVEL.replace("f32[B, 4, H, W]", "f32[B, 2, H, W]").replace(
            "concat([up, x], axis = 1)", "up") % "where W % 2 == 0")
    assert info.value.code == "K0301" and "but [B, 2, H, W] is expected" in info.value.message
    assert info.value.hint.endswith("`where H % 4 == 0, W % 4 == 0`")
    m = build(UNET_LEVEL % "where H % 4 == 0, W % 2 == 0, W % 4 == 0")
    assert str(m.outputs[0].type) == "f32[B, 4, H, W]"
    graph = m.model.graph
    (up,) = graph.nodes_with_op("conv_transpose")  # spelled as the size it equals, not 4*(H//4)
    assert str(graph.node(up)["types"][0]) == "f32[B, 2, H, W]"
    x = randn(2, 2, 8, 12)
    down = x.reshape(2, 2, 2, 4, 3, 4).max(axis=(3, 5))
    up = np.repeat(np.repeat(down.sum(axis=1, keepdims=True), 4, axis=2), 4, axis=3)
    want = np.concatenate([np.repeat(up, 2, axis=1), x], axis=1)
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["reference", "onnx", "native"])
def test_where_facts_are_checked_on_every_call(target):
    m = kiln.compile(UNET_LEVEL % "where H % 4 == 0, W % 4 == 0", target=target)
    m(randn(1, 2, 4, 8))
    for shape in [(1, 2, 6, 8), (1, 2, 4, 10)]:
        with pytest.raises(KilnError) as info:
            m(randn(*shape))
        assert info.value.code == "K0504"


def test_unet_example_refuses_sizes_not_multiples_of_4():
    m = kiln.compile(ROOT / "examples" / "unet.kiln", target="reference")
    assert str(m.inputs) == "[x: f32[B, 3, H, W]]"
    assert m(randn(1, 3, 8, 4)).shape == (1, 2, 8, 4)
    with pytest.raises(KilnError) as info:
        m(randn(1, 3, 10, 8))
    assert info.value.code == "K0504"
    assert info.value.message.endswith("H % 4 == 0 does not hold for these inputs (H = 10: 2 == 0)")


def test_where_facts_prove_constraints_of_blocks():
    src = """
    block Halve {
      forward(x: f32[N, C, L]) -> f32[N, C, L // 2] where L %% 2 == 0 { return max_pool(x, 2) }
    }
    model M { forward(x: f32[B, 1, T]) -> f32[B, 1, T // 4] %s { return x |> Halve |> Halve } }
    """
    assert build(src % "where T % 4 == 0").model.graph.constraints[1:] == []  # proven
    m = build(src % "")  # without the fact, each Halve's constraint is checked at call time
    assert [c.text for c in m.model.graph.constraints] == ["L % 2 == 0"] * 2


def test_sizes_compare_under_divisibility_facts():
    H, W = Dim.of("H"), Dim.of("W")
    assert (H // 2) // 2 == H // 4  # always: floor of a floor
    assert 2 * (H // 4) != H // 2
    with assuming({"H": 4}):
        assert 2 * (H // 4) == H // 2 and 4 * (H // 4) == H and (H + 1) // 2 == H // 2
        assert H % 2 == 0 and H % 8 != 0 and H // 2 != H // 4
        assert 2 * (W // 2) != W  # only H is known to be even
        with assuming({"H": 3}):  # facts combine: H % 12 == 0
            assert H // 12 * 12 == H
    assert 4 * (H // 4) != H  # the facts are gone with the block
    assert divisibility("==", H % 4, Dim.of(0)) == ("H", 4)
    assert divisibility("==", Dim.of(0), W % 2) == ("W", 2)
    assert divisibility("<=", H % 4, Dim.of(0)) is None
    assert divisibility("==", (H + 1) % 4, Dim.of(0)) is None


# ---------------------------------------------------------------------------- printing sizes
@pytest.mark.parametrize("dim, text", [
    (lambda H, W: 2 * (H // 4), "2*(H//4)"),
    (lambda H, W: -(H // 2), "-(H//2)"),
    (lambda H, W: W * (H // 2), "W*(H//2)"),
    (lambda H, W: (H // 2) ** 2, "(H//2)**2"),
    (lambda H, W: H - H % 3, "H - H%3"),
    (lambda H, W: (H + 1) // 2 * 3, "3*((H + 1)//2)"),
    (lambda H, W: 2 * H * W + 1, "2*H*W + 1"),
])
def test_sizes_print_with_the_parentheses_they_need(dim, text):
    d = dim(Dim.of("H"), Dim.of("W"))
    assert str(d) == text
    assert parse_dim(text) == d


def _dims():
    leaves = st.one_of(st.integers(-5, 9).map(Dim.of), st.sampled_from("BHW").map(Dim.of))

    def grow(sub):
        den = st.integers(1, 5)
        return st.one_of(
            st.tuples(sub, sub).map(lambda ab: ab[0] + ab[1]),
            st.tuples(sub, sub).map(lambda ab: ab[0] - ab[1]),
            st.tuples(sub, sub).map(lambda ab: ab[0] * ab[1]),
            st.tuples(sub, den).map(lambda ad: ad[0] // ad[1]),
            st.tuples(sub, den).map(lambda ad: ad[0] % ad[1]),
            sub.map(lambda a: -a),
        )

    return st.recursive(leaves, grow, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_dims(), st.fixed_dictionaries({s: st.integers(0, 40) for s in "BHW"}))
def test_printed_sizes_read_back_as_the_same_size(d, env):
    text = str(d)
    assert parse_dim(text) == d, text
    assert eval(text, {}, env) == d.evaluate(env), text  # kiln reads sizes as Python does


# ---------------------------------------------------------------------------- named outputs
NAMED = """
model M {
  forward(x: f32[B, 3]) -> (total: f32[B], f32[B, 3], doubled: f32[B, 3]) {
    return sum(x, axis = -1), -x, 2 * x
  }
}"""


def test_outputs_named_in_the_signature():
    m = build(NAMED)
    assert [p.name for p in m.outputs] == ["total", "output_1", "doubled"]
    x = randn(2, 3)
    out = m(x)
    assert out._fields == ("total", "output_1", "doubled")
    np.testing.assert_allclose(out.total, x.sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(out.doubled, 2 * x)
    total, neg, doubled = out  # still a tuple in signature order
    np.testing.assert_array_equal(neg, -x)
    assert m.signature() == (
        "M(x: f32[B, 3]) -> (total: f32[B], output_1: f32[B, 3], doubled: f32[B, 3])"
    )


def test_unnamed_outputs_keep_their_names_and_a_plain_tuple():
    m = build("model M { forward(x: f32[B]) -> (f32[B], f32[B]) { return x, -x } }")
    assert [p.name for p in m.outputs] == ["output_0", "output_1"]
    assert type(m(randn(2))) is tuple
    one = build("model M { forward(x: f32[B]) -> (y: f32[B]) { return -x } }")
    assert [p.name for p in one.outputs] == ["y"] and isinstance(one(randn(2)), np.ndarray)
    assert one.signature() == "M(x: f32[B]) -> (y: f32[B])"


def test_result_names_on_a_block_only_document():
    m = build("""
    block Split { forward(x: [B, 4]) -> (lo: [B, 2], hi: [B, 2]) { return x[:, :2], x[:, 2:] } }
    model M { forward(x: f32[B, 4]) -> f32[B, 2] { lo, hi = x |> Split
      return hi - lo } }""")
    x = randn(3, 4)
    np.testing.assert_array_equal(m(x), x[:, 2:] - x[:, :2])
    assert [p.name for p in m.outputs] == ["output"]


@pytest.mark.parametrize("result, clash", [
    ("(x: f32[B], f32[B])", "an input"),
    ("(a: f32[B], a: f32[B])", "another output"),
    ("(output_1: f32[B], f32[B])", "another output"),
    ("(w: f32[B], f32[B])", "a parameter"),
])
def test_output_names_must_be_new(result, clash):
    src = f"""model M {{
      param w: [1] = init.ones()
      forward(x: f32[B]) -> {result} {{ return x * w, -x }}
    }}"""
    with pytest.raises(KilnError) as info:
        build(src)
    assert info.value.code == "K0106" and clash in info.value.message
    assert info.value.span.line == 3


def test_named_outputs_name_the_cli_npz_and_check(tmp_path):
    path = tmp_path / "m.kiln"
    path.write_text(NAMED)
    out = tmp_path / "out.npz"
    run = subprocess.run([sys.executable, "-m", "kiln.cli", "run", str(path), "--random-inputs",
                          "--target", "reference", "-o", str(out)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(np.load(out)) == ["doubled", "output_1", "total"]
    check = subprocess.run([sys.executable, "-m", "kiln.cli", "check", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert "output total: f32[B]" in check.stdout and "output doubled: f32[B, 3]" in check.stdout


# ---------------------------------------------------------------------------- readable ports
def test_ports_print_as_a_signature():
    m = build("""model M {
      forward(x: f32[B, 784], mask: bool[B]?) -> (recon: f32[B, 784], f32[B]) {
        return x, sum(x, axis = -1)
      }
    }""")
    assert str(m.inputs) == "[x: f32[B, 784], mask: bool[B]?]"
    assert repr(m.outputs) == "[recon: f32[B, 784], output_1: f32[B]]"
    assert str(m.outputs[0]) == "recon: f32[B, 784]"


def test_where_facts_decide_comparisons_of_sizes_and_known_tells_a_known_size():
    """Under `where H % 4 == 0`, `H % 2 == 0` is decided at compile time (each call checks
    the fact); without a fact it cannot be (K0203). known(v) is true for numbers and sizes
    known at compile time, false for symbolic ones."""
    src = """
model M {
  forward(x: f32[B, H]) -> f32[B, H] %s {
    return x * 2.0 if H %% 2 == 0 else x
  }
}"""
    with pytest.raises(KilnError) as info:
        build(src % "")
    assert info.value.code == "K0203" and "H%2 == 0" in info.value.message
    m = kiln.compile(src % "where H % 4 == 0", target="reference")
    np.testing.assert_array_equal(m(np.ones((1, 8), np.float32)), np.full((1, 8), 2.0))
    with pytest.raises(KilnError) as info:  # the fact the decision rests on, checked
        m(np.ones((1, 6), np.float32))
    assert info.value.code == "K0504"
    known = build("""
model K {
  forward(x: f32[B, 3]) -> f32[B, 3] {
    _, c = shape(x)
    require known(c) and known(3) and known(2.5) and not known(B), "known()"
    return x
  }
}""")
    assert str(known.outputs[0].type) == "f32[B, 3]"
