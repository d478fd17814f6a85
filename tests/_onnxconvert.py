"""Test helpers for the ONNX converters: a model's nodes built straight through
compiler/onnx_import/convert.py's CONVERTERS (no importer), run by the graph interpreter, and
compared with onnxruntime on the same model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from _onnxnodetests import build_graph

from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Graph

OPSET = onnx.defs.onnx_opset_version()


def build(model: onnx.ModelProto) -> Graph:
    """The model's graph built node by node with the converters (Unsupported propagates)."""
    return build_graph(model)[0]


def run_kiln(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs by kiln's graph interpreter."""
    graph = build(model)
    return run_graph(graph, inputs, {}, {})


def run_ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs by onnxruntime."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))


def one_node(op_type: str, inputs: list[np.ndarray | None], n_outputs: int = 1,
             initializers: dict[int, np.ndarray] | None = None, opset: int = OPSET,
             **attrs) -> onnx.ModelProto:
    """A model of one node: input i is a graph input, or an initializer when `initializers`
    gives its value (shapes, axes, pads...), or absent when None."""
    initializers = initializers or {}
    names, graph_inputs, inits = [], [], []
    for i, x in enumerate(inputs):
        if x is None and i not in initializers:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in initializers:
            inits.append(onnx.numpy_helper.from_array(np.asarray(initializers[i]), name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape))
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)  # what the installed onnxruntime reads
    return model


def check(op_type: str, inputs: list, n_outputs: int = 1, rtol: float = 1e-5,
          atol: float = 1e-6, **kw) -> None:
    """One node of `op_type` on `inputs` agrees between kiln's reference and onnxruntime
    (values, shapes and element types)."""
    model = one_node(op_type, inputs, n_outputs, **kw)
    feeds = [x for i, x in enumerate(inputs)
             if x is not None and i not in (kw.get("initializers") or {})]
    got, want = run_kiln(model, feeds), run_ort(model, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype, (op_type, g.dtype, w.dtype)
        assert g.shape == w.shape, (op_type, g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=op_type)
