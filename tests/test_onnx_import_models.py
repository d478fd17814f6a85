"""Models exported by PyTorch's ONNX exporter (issue 17): MLP, LeNet, a small ResNet, LSTM,
GRU, a Transformer encoder layer, a GCN written with gather and scatter-add, DCGAN's
generator. Each imports, runs on the reference and native targets, and agrees with
onnxruntime on the same file."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the models are exported with PyTorch")
pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")
from _onnximport import run_ort  # noqa: E402
from _torchmodels import cases, export  # noqa: E402

import kiln  # noqa: E402

MODELS = list(cases())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model's file and example inputs, exported once for the module."""
    directory = tmp_path_factory.mktemp("torch-onnx")
    made: dict = {}

    def get(name: str):
        if name not in made:
            made[name] = export(name, directory)
        return made[name]

    return get


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("name", MODELS)
def test_agrees_with_onnxruntime(exported, name, target):
    path, feeds = exported(name)
    (want,) = run_ort(path, feeds)
    model = kiln.compile(path, target=target)
    got = model(**feeds)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "lenet", "dcgan"])
def test_dynamic_batch(exported, name):
    """A model exported with a dynamic batch takes any batch size (here one not exported)."""
    path, feeds = exported(name)
    model = kiln.compile(path, target="native")
    assert model.inputs[0].type.shape[0].symbol == "batch"
    x = np.concatenate([feeds["in0"]] * 3)
    (want,) = run_ort(path, {"in0": x})
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-5)


def test_parameters_keep_pytorch_names(exported):
    path, _ = exported("resnet")
    model = kiln.compile(path, target="reference")
    # BatchNorm folded into the convolutions by the exporter: what is left is named
    # by the exporter; the classifier keeps its module path
    assert "fc.weight" in model.params and "fc.bias" in model.params


@pytest.mark.parametrize("name", MODELS)
def test_kiln_import_compiles_back(exported, name, tmp_path, capsys):
    """`kiln import` writes source and weights that compile back to the ONNX file's model."""
    from _clitest import run

    path, feeds = exported(name)
    code, out, err = run(capsys, "import", path, "-o", tmp_path / "model.kiln")
    assert code == 0, err
    source = (tmp_path / "model.kiln").read_text()
    assert source.count("\n") < 400 and "model " in source
    model = kiln.compile(tmp_path / "model.kiln", target="reference",
                         weights=tmp_path / "model.safetensors")
    imported = kiln.compile(path, target="reference")
    assert [p.type for p in model.inputs] == [p.type for p in imported.inputs]
    (want,) = run_ort(path, feeds)
    np.testing.assert_allclose(model(*feeds.values()), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, calls", [("resnet", 2), ("transformer2", 2)])
def test_kiln_import_writes_repeated_layers_as_a_block(exported, name, calls, tmp_path):
    """A ResNet's two identical basic blocks, a Transformer's two layers: one `block`
    definition, one instance called once per repetition with the model's params, and the
    source computes what the ONNX file does on both targets."""
    from kiln.api import write_kiln_source

    path, feeds = exported(name)
    out = tmp_path / "model.kiln"
    write_kiln_source(path, out)
    source = out.read_text()
    assert source.count("\nblock Block1 {") + source.startswith("block Block1 {") == 1
    assert "block1 = Block1" in source and source.count("= block1(") == calls
    assert "Block2" not in source
    (want,) = run_ort(path, feeds)
    for target in ("reference", "native"):
        model = kiln.compile(out, target=target, weights=tmp_path / "model.safetensors")
        np.testing.assert_allclose(model(*feeds.values()), want, rtol=1e-4, atol=1e-5)
