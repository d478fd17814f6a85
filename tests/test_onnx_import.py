"""ONNX import (issue 17): an ONNX file compiled through the driver on every target, with its
signature (dim_params as symbols), its parameters by ONNX name, and the CLI commands."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _clitest import run
from _onnximport import make_model, mlp_model, run_ort, save
from onnx import TensorProto, helper

import kiln
from kiln.compiler.driver import Compilation, Weights
from kiln.compiler.onnx_import import OnnxProgram, load_onnx

pytest.importorskip("onnxruntime")


@pytest.fixture
def mlp_file(tmp_path):
    return save(mlp_model(), tmp_path / "tiny_mlp.onnx")


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_mlp_agrees_with_onnxruntime(mlp_file, target):
    model = kiln.compile(mlp_file, target=target)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    (want,) = run_ort(mlp_file, {"x": x})
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x=x[:2]), want[:2], rtol=1e-5, atol=1e-5)


def test_signature_and_params(mlp_file):
    model = kiln.compile(mlp_file, target="reference")
    assert model.signature() == "TinyMlp(x: f32[N, 4]) -> (y: f32[N, 3])"
    assert list(model.params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in mlp_model().graph.initializer}
    for name, value in inits.items():
        np.testing.assert_array_equal(model.params[name], value)


def test_weights_load_by_onnx_name(mlp_file, tmp_path):
    model = kiln.compile(mlp_file, target="reference")
    state = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    model.load_weights(state)
    assert not model(np.ones((2, 4), np.float32)).any()
    reloaded = kiln.compile(mlp_file, target="reference", weights=state)
    assert not reloaded(np.ones((2, 4), np.float32)).any()


def test_model_proto_and_load(mlp_file):
    program = kiln.load(mlp_file)
    assert isinstance(program, OnnxProgram) and program.model_names == ["TinyMlp"]
    model = kiln.compile(mlp_model(), target="reference")  # an onnx.ModelProto in memory
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(model(x), run_ort(mlp_file, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_compilation_of_graph(mlp_file):
    program = load_onnx(mlp_file)
    compilation = Compilation.of_graph(program.name, program.graph, program.params,
                                       target="reference")
    lowered = compilation.lowered(Weights.of(program.params))
    assert [p.name for p in lowered.inputs] == ["x"]
    assert lowered.symbols == ["N"]


def test_model_name_and_args_are_checked(mlp_file):
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(mlp_file, model="Other")
    assert err.value.code == "K0601"
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(mlp_file, args={"hidden": 3})
    assert err.value.code == "K0602"
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(mlp_file, training=True)
    assert err.value.code == "K0602" and "no training mode" in err.value.message


def test_symbols_are_identifiers(tmp_path):
    """dim_params become --bind-able identifiers; an axis with neither size nor name gets a
    symbol of its own; one dim_param on two inputs is one symbol."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [("a", TensorProto.FLOAT, ["batch size", None]),
                               ("b", TensorProto.FLOAT, ["batch size", 1])],
                       [("y", TensorProto.FLOAT, None)])
    compiled = kiln.compile(save(model, tmp_path / "m.onnx"), target="reference")
    assert compiled.signature() == "M(a: f32[batch_size, a_1], b: f32[batch_size, 1]) -> " \
        "(y: f32[batch_size, a_1])"


def test_cli(mlp_file, tmp_path, capsys):
    code, out, err = run(capsys, "check", mlp_file)
    assert code == 0, err
    assert "input  x: f32[N, 4]" in out and "output y: f32[N, 3]" in out
    code, out, _ = run(capsys, "params", mlp_file)
    assert code == 0 and "fc1.weight" in out and "total parameters: 67" in out
    code, out, err = run(capsys, "run", mlp_file, "--random-inputs", "--bind", "N=3",
                         "--target", "reference")
    assert code == 0, err
    assert "y: float32[3, 3]" in out
    code, out, err = run(capsys, "compile", mlp_file, "-o", tmp_path / "out" / "m.onnx")
    assert code == 1 and "cannot write" in err  # no such directory: refused, as for .kiln
    code, out, err = run(capsys, "compile", mlp_file, "-o", tmp_path / "m2.onnx")
    assert code == 0, err
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(run_ort(tmp_path / "m2.onnx", {"x": x})[0],
                               run_ort(mlp_file, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_aot_library(mlp_file, tmp_path, capsys):
    code, out, err = run(capsys, "compile", mlp_file, "-o", tmp_path / "m.so")
    assert code == 0, err
    library = kiln.load_compiled(tmp_path / "m.so")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(library(x), run_ort(mlp_file, {"x": x})[0], rtol=1e-5,
                               atol=1e-5)


def test_kiln_import_names_and_constants(tmp_path, capsys):
    """Names that are not kiln identifiers (PyTorch's `0.weight`, `onnx::Mul_3`, an input
    `input.1`, a member named like an op or keyword) are made identifiers; a constant of
    one value is written in the source, others go to the weights file; a slice is indexing."""
    rng = np.random.default_rng(0)
    inits = {"0.weight": rng.standard_normal((4, 4)).astype(np.float32),
             "for.bias": rng.standard_normal(4).astype(np.float32),
             "relu": rng.standard_normal(4).astype(np.float32),
             "onnx::Mul_3": np.full(4, 0.5, np.float32),
             "table": np.arange(4, dtype=np.float32),
             "starts": np.array([1], np.int64), "ends": np.array([3], np.int64),
             "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("MatMul", ["input.1", "0.weight"], ["a"]),
             helper.make_node("Add", ["a", "for.bias"], ["b"]),
             helper.make_node("Mul", ["b", "onnx::Mul_3"], ["c"]),
             helper.make_node("Add", ["c", "table"], ["d"]),
             helper.make_node("Sub", ["d", "relu"], ["e"]),
             helper.make_node("Slice", ["e", "starts", "ends", "axes"], ["f"]),
             helper.make_node("Constant", [], ["order"], value=onnx.numpy_helper.from_array(
                 np.array([1, 0], np.int64))),
             helper.make_node("Gather", ["f", "order"], ["out.0"], axis=1)]
    model = make_model(nodes, [("input.1", TensorProto.FLOAT, ["batch", 4])],
                       [("out.0", TensorProto.FLOAT, ["batch", 2])], inits)
    path = save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, "import", path, "-o", tmp_path / "m.kiln")
    assert code == 0, err
    source = (tmp_path / "m.kiln").read_text()
    for line in ("param _0.weight: f32[4, 4]", "param for_.bias: f32[4]",
                 "param relu_: f32[4]", "param onnx__Mul_3: f32[4]",
                 "forward(input_1: f32[batch, 4]) -> (out_0: f32[batch, 2])", "[:, 1:3]",
                 "buffer c5: i64[2]"):
        assert line in source, source
    compiled = kiln.compile(tmp_path / "m.kiln", target="reference",
                            weights=tmp_path / "m.safetensors")
    assert compiled.params["c5"].tolist() == [1, 0]  # from the weights file
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), run_ort(path, {"input.1": x})[0], rtol=1e-5)


def test_kiln_import_refuses_a_bad_output(mlp_file, tmp_path, capsys):
    code, _, err = run(capsys, "import", mlp_file, "-o", tmp_path / "m.txt")
    assert code == 1 and "K0602" in err
    code, _, err = run(capsys, "import", mlp_file, "-o", tmp_path / "none" / "m.kiln")
    assert code == 1 and "K0907" in err
    assert not list(tmp_path.glob("*.kiln"))


def test_kiln_import_fixes_sizes_with_arg(tmp_path, capsys):
    """`kiln import --arg seq=3` writes the source with that input size fixed (a Reshape to
    the size the exporter saw converts only so); a name no input has is K0602, nothing
    written."""
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((4, 2)).astype(np.float32),
             "shape": np.array([-1, 3, 2], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["y"])]
    model = make_model(nodes, [("x", TensorProto.FLOAT, ["batch", "seq", 4])],
                       [("y", TensorProto.FLOAT, ["batch", "seq", 2])], inits)
    path = save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, "import", path, "-o", tmp_path / "m.kiln", "--arg", "seq=3")
    assert code == 0, err
    source = (tmp_path / "m.kiln").read_text()
    assert "forward(x: f32[batch, 3, 4])" in source, source
    compiled = kiln.compile(tmp_path / "m.kiln", target="native",
                            weights=tmp_path / "m.safetensors")
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), run_ort(path, {"x": x})[0], rtol=1e-5, atol=1e-6)
    code, _, err = run(capsys, "import", path, "-o", tmp_path / "n.kiln", "--arg", "sq=3")
    assert code == 1 and "K0602" in err and "sq" in err
    assert not (tmp_path / "n.kiln").exists()


@pytest.mark.parametrize("stash_type, refused", [(1, False), (0, True)])
def test_attribute_no_converter_reads_must_be_default(stash_type, refused):
    """Range's converter never reads stash_type (opset 27): its default imports, another
    value is refused by name, never ignored."""
    nodes = [helper.make_node("Range", ["s", "l", "d"], ["y"], stash_type=stash_type)]
    inits = {"s": np.array(1, np.int64), "l": np.array(7, np.int64),
             "d": np.array(2, np.int64)}
    model = make_model(nodes, [], [("y", TensorProto.INT64, [3])], inits, opset=27)
    if not refused:
        np.testing.assert_array_equal(kiln.compile(model, target="reference")(), [1, 3, 5])
        return
    with pytest.raises(kiln.KilnError) as info:
        kiln.compile(model, target="reference")
    assert info.value.code == "K0906" and "stash_type=0" in info.value.message


def test_attribute_outside_the_schema_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], slope=0.5)],
                       [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT, [2])])
    with pytest.raises(kiln.KilnError, match="slope=0.5"):
        kiln.compile(model, target="reference")
