"""Test helpers for ONNX import: small ONNX models built with onnx.helper (no exporter needed),
written to files, and onnxruntime's outputs for the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def mlp_model(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """x: f32[batch, 4] -> Gemm(8) -> Relu -> MatMul(3) -> Add -> y: f32[batch, 3], with
    initializers named as PyTorch names them (`fc1.weight`)."""
    rng = np.random.default_rng(seed)
    inits = {
        "fc1.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "fc1.bias": rng.standard_normal(8).astype(np.float32),
        "fc2.weight": rng.standard_normal((8, 3)).astype(np.float32),
        "fc2.bias": rng.standard_normal(3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1/Gemm",
                         transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="act/Relu"),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["m"], name="fc2/MatMul"),
        helper.make_node("Add", ["m", "fc2.bias"], ["y"], name="fc2/Add"),
    ]
    return make_model(nodes, [("x", TensorProto.FLOAT, [batch, 4])],
                      [("y", TensorProto.FLOAT, [batch, 3])], inits)


def make_model(nodes, inputs, outputs, inits: dict[str, np.ndarray] | None = None,
               opset: int = OPSET, name: str = "g") -> onnx.ModelProto:
    """A model of `nodes`; inputs and outputs as (name, element type, shape) triples."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what the installed onnxruntime reads
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write `model` to `path` (unchecked: hostile tests write broken graphs on purpose)."""
    path.write_bytes(model.SerializeToString())
    return path


def run_ort(path: Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for the model in `path`."""
    import onnxruntime as ort

    source = str(path) if isinstance(path, Path) else path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
