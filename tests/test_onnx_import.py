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
