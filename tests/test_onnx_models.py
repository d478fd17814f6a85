"""Whole models through ONNX: onnxruntime agrees with the reference at two sizes of each
symbolic dimension from one exported file; the file is valid and self-contained."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from _crosscheck import oracle
from _sizes import symbol_sizes

import kiln
from kiln import KilnError
from kiln.compiler.codegen import onnx as onnx_codegen

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.kiln"))
RTOL, ATOL = 1e-4, 1e-5  # f32 through different kernels; a wrong axis or epsilon is far off

from test_language import LINEAR, LSTM, SCAN_CAPTURE, SCAN_REVERSE  # noqa: E402  (shared sources)

MODELS = {
    "lstm": LSTM,
    "scan_reverse_index": SCAN_REVERSE,
    "scan_capture": SCAN_CAPTURE,
    "tied_lm_with_mask": """
block Embedding(n: int, d: int) {
  param weight: [n, d] = init.normal(std = 1.0)
  forward(i: i64[...]) -> [..., d] { return gather(weight, i, axis = 0) }
}
model LM(block_size: int = 8) {
  transformer.wte = Embedding(10, 4)
  param lm_head.weight: [10, 4] = init.zeros()
  tie lm_head.weight = transformer.wte.weight
  buffer(persistent = false) causal: bool[block_size, block_size] = tril(ones([block_size, block_size], dtype = "bool"))
  forward(tokens: i64[B, T]) -> f32[B, T, T] where T <= block_size {
    h = tokens |> transformer.wte
    scores = h @ transpose(h, -1, -2) / sqrt(4.0)
    scores = where(causal[:T, :T], scores, -inf)
    return softmax(scores, axis = -1) + arange(T) * 0.0
  }
}""",
    "shapes_and_dtypes": """
model M(d: int = 2) {
  forward(h: f32[B, T, 6], i: i64[B]) -> (f32[B, T, 2], f32[B, 3], i64[B], f32[B, T]) {
    flat = reshape(h, [B, -1])
    return h[..., :d], flat[:, 1:4], i * 2 + 1, mean(h, axis = -1) / T
  }
}""",
}


def inputs_for(model, sizes: dict[str, int], rng) -> dict[str, np.ndarray]:
    out = {}
    for p in model.inputs:
        env = symbol_sizes(model, sizes, 3)
        shape = tuple(d.evaluate(env) for d in p.type.shape)
        if p.type.dtype == "i64":  # ids (tokens, node indices): 0/1, valid for any vocabulary
            # or node count of two or more (examples/lstm_majority.kiln's vocabulary is 2)
            out[p.name] = rng.integers(0, min(2, *sizes.values()), size=shape).astype(np.int64)
        elif p.type.dtype == "bool":
            out[p.name] = rng.random(shape) < 0.5
        else:
            out[p.name] = rng.standard_normal(shape).astype(p.type.np_dtype)
    return out


def compare(source, sizes_list, tmp_path, **kw):
    ref = oracle(source, **kw)
    ort = kiln.compile(source, target="onnx", **kw)
    assert "CPUExecutionProvider" in ort.providers
    rng = np.random.default_rng(0)
    for sizes in sizes_list:
        feeds = inputs_for(ref, sizes, rng)
        want, got = ref(**feeds), ort(**feeds)
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        for w, g in zip(want, got):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    path = tmp_path / "model.onnx"
    ref.export_onnx(path)
    proto = onnx.load(path)
    assert onnx_codegen.check(proto) == []
    assert_parameters_named_by_path(ref, proto)
    exported = run_file(path, feeds)
    for w, g in zip(want, exported, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    return ref, proto


def run_file(path, feeds: dict) -> list[np.ndarray]:
    """The exported file run by onnxruntime alone (no kiln checks around it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _params_read(graph) -> set[str]:
    """The paths of the parameters a kiln graph (and the graphs nested in it) reads."""
    paths = set()
    for nid in graph.order():
        node = graph.node(nid)
        if node["op"] == "param":
            paths.add(node["attrs"]["path"])
        for value in node["attrs"].values():
            if hasattr(value, "order"):
                paths |= _params_read(value)
    return paths


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of an ONNX graph (or of its subgraphs) reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs):
                names |= _names_read(sub)
    return names


def assert_parameters_named_by_path(ref, proto: onnx.ModelProto) -> None:
    """Every persistent parameter the forward reads is an initializer under its dotted path
    (a tied one under its canonical path, once), and every initializer is read."""
    initializers = [i.name for i in proto.graph.initializer]
    assert len(initializers) == len(set(initializers))
    read = _params_read(ref.model.graph)
    for path in set(ref.state_dict()) & (read | set(ref.model.aliases)):
        assert ref.model.aliases.get(path, path) in initializers, path
    unused = set(initializers) - _names_read(proto.graph)
    assert not unused, f"initializers nothing reads: {sorted(unused)}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_agree_with_the_reference(path, tmp_path):
    compare(str(path), [{"B": 1, "N": 3, "E": 5, "T": 4}, {"B": 4, "N": 6, "E": 9, "T": 7}], tmp_path)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_language_models_agree_with_the_reference(name, tmp_path):
    compare(MODELS[name], [{"B": 1, "T": 2}, {"B": 3, "T": 5}], tmp_path)


def test_signature_names_dim_params_and_node_spans(tmp_path):
    ref, proto = compare(MODELS["shapes_and_dtypes"], [{"B": 2, "T": 3}], tmp_path)
    assert [i.name for i in proto.graph.input] == ["h", "i"]
    assert [o.name for o in proto.graph.output] == [p.name for p in ref.outputs]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["B", "T", 6]
    assert proto.opset_import[0].version >= 17
    sources = [
        p.value for n in proto.graph.node for p in n.metadata_props if p.key == "kiln.source"
    ]
    assert sources and all(s.startswith("<source>:") for s in sources)


def test_named_outputs_are_the_onnx_output_names(tmp_path):
    ref, proto = compare(str(ROOT / "examples" / "vae.kiln"), [{"B": 2}], tmp_path)
    assert [o.name for o in proto.graph.output] == ["recon", "mu", "logvar"]
    feeds = inputs_for(ref, {"B": 2}, np.random.default_rng(0))
    got = kiln.compile(str(ROOT / "examples" / "vae.kiln"), target="onnx")(**feeds)
    assert got._fields == ("recon", "mu", "logvar")


def test_port_names_never_clash_with_the_exporters_own_names(tmp_path):
    """The exporter names its constants and nodes' results `const__0`, `add__1`, ...; a model
    input or output may be named so too."""
    src = ("model M {\n  forward(const__0: f32[B]) -> (const__1: f32[B], add__2: f32[B]) {\n"
           "    return exp(-const__0) + 1.0, const__0 * 2.0\n  }\n}")
    _, proto = compare(src, [{"B": 2}], tmp_path)
    assert [o.name for o in proto.graph.output] == ["const__1", "add__2"]


def test_initializers_are_named_by_dotted_path(tmp_path):
    """Every example's parameters are checked by compare; here, the ones a Linear transposes
    and a BatchNorm reads, which the optimizer once folded into `const__N` initializers."""
    _, proto = compare(str(ROOT / "examples" / "lenet.kiln"), [{"B": 2}], tmp_path)
    names = {i.name for i in proto.graph.initializer}
    assert {"features.0.weight", "classifier.0.weight", "classifier.4.bias"} <= names
    bn = """
model M {
  conv = nn.Conv2d(1, 2, 3)
  bn = nn.BatchNorm2d(2)
  forward(x: f32[B, 1, 5, 5]) -> f32[B, 2, 3, 3] { return x |> conv |> bn }
}"""
    _, proto = compare("import std.nn\n" + bn, [{"B": 2}], tmp_path)
    (node,) = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert list(node.input[1:]) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    assert not any(i.name.startswith("const") for i in proto.graph.initializer)


def test_weights_loaded_later_reach_the_onnx_session(tmp_path):
    src = LINEAR + "model M { forward(x: f32[B, 3]) -> f32[B, 2] { return x |> Linear(3, 2) } }"
    m = kiln.compile(src, target="onnx")
    w = {"0.weight": np.ones((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}
    m.load_weights(w)
    np.testing.assert_allclose(m(np.ones((1, 3), np.float32)), [[3.0, 3.0]])


def test_optional_inputs_get_a_graph_per_set_given():
    src = """
model M {
  forward(x: f32[B, T], mask: bool[B, T]?) -> f32[B, T] {
    return where(mask, x, 0.0) if defined(mask) else x * 2
  }
}"""
    m = kiln.compile(src, target="onnx")
    x = np.ones((2, 3), np.float32)
    mask = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_allclose(m(x, mask), np.where(mask, x, 0))
    np.testing.assert_allclose(m(x), x * 2)


def test_exported_file_runs_with_only_onnxruntime_and_numpy(tmp_path):
    m = kiln.compile(str(ROOT / "examples" / "mlp.kiln"), target="reference")
    m.export_onnx(tmp_path / "mlp.onnx")
    x = np.random.default_rng(1).standard_normal((5, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", m(x))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np, onnxruntime as ort
        assert "kiln" not in sys.modules
        s = ort.InferenceSession({str(tmp_path / "mlp.onnx")!r}, providers=["CPUExecutionProvider"])
        (y,) = s.run(None, {{"x": np.load({str(tmp_path / "x.npy")!r})}})
        np.testing.assert_allclose(y, np.load({str(tmp_path / "want.npy")!r}), rtol=1e-4, atol=1e-6)
        print("ok", y.shape)
    """)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": _site_packages()},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok (5, 10)"


def _site_packages() -> str:
    import numpy
    import onnxruntime

    return ":".join({str(Path(mod.__file__).parents[1]) for mod in (numpy, onnxruntime)})


def test_a_construct_with_no_onnx_lowering_is_a_located_error(monkeypatch, tmp_path):
    from kiln.compiler.ops import REGISTRY

    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(REGISTRY["tanh"], onnx=None))
    src = "model M {\n  forward(x: f32[B]) -> f32[B] {\n    return tanh(x)\n  }\n}\n"
    with pytest.raises(KilnError) as info:
        kiln.compile(src, target="onnx")
    assert info.value.code == "K0701" and info.value.span.line == 3
    m = kiln.compile(src, target="reference")
    with pytest.raises(KilnError):
        m.export_onnx(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()  # never an invalid file


def test_large_models_use_external_data(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_codegen, "EXTERNAL_DATA_THRESHOLD", 1000)
    m = kiln.compile(str(ROOT / "examples" / "mlp.kiln"), target="reference")
    m.export_onnx(tmp_path / "mlp.onnx")
    assert (tmp_path / "mlp.onnx.data").exists()
    assert (tmp_path / "mlp.onnx").stat().st_size < 100_000
    import onnxruntime as ort

    s = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 784), np.float32)
    np.testing.assert_allclose(s.run(None, {"x": x})[0], m(x), rtol=1e-5, atol=1e-6)
