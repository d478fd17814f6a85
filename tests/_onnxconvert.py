"""Test helpers for the ONNX converters: a model's nodes built straight through
compiler/onnx_import/convert.py's CONVERTERS (no importer), run by the graph interpreter, and
compared with onnxruntime on the same model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from kiln.compiler.builder import GraphBuilder
from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Graph
from kiln.compiler.onnx_import.convert import (
    CONVERTERS,
    OnnxNode,
    Unsupported,
    convert_node,
)
from kiln.compiler.onnx_import.convert_base import kiln_dtype
from kiln.compiler.onnx_import.convert_function import decode_attribute
from kiln.compiler.types import TensorType, dtype_of_numpy

OPSET = onnx.defs.onnx_opset_version()


def build(model: onnx.ModelProto) -> Graph:
    """The model's graph built node by node with the converters, no importer between
    (Unsupported and KilnError propagate)."""
    graph = Graph()
    gb = GraphBuilder(graph)
    values, consts = {}, {}
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if dtype_of_numpy(array.dtype) in (None, "f64"):
            raise Unsupported(f"initializer {init.name}: element type {array.dtype}")
        values[init.name], consts[init.name] = gb.constant(array), array
    for vi in model.graph.input:
        if vi.name in values:
            continue
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
                      for d in t.shape.dim)
        values[vi.name] = graph.add_input(
            vi.name, TensorType(kiln_dtype(t.elem_type, vi.name), shape), None)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    for index, proto in enumerate(model.graph.node):
        if proto.domain not in ("", "ai.onnx") or proto.op_type not in CONVERTERS:
            raise Unsupported(f"no converter for {proto.domain or 'ai.onnx'}.{proto.op_type}")
        node = OnnxNode(
            name=proto.name, op_type=proto.op_type, domain=proto.domain, index=index,
            opset=opsets.get(proto.domain or "", 1),
            attrs={a.name: decode_attribute(a) for a in proto.attribute},
            inputs=[values[n] if n else None for n in proto.input],
            consts=[consts.get(n) for n in proto.input], outputs=list(proto.output))
        outs = convert_node(gb, node)
        for name, value in zip(proto.output, outs, strict=False):
            if name and value is not None:
                values[name] = value
    graph.outputs = [values[o.name] for o in model.graph.output]
    graph.output_names = [o.name for o in model.graph.output]
    return graph


def run_kiln(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs by kiln's graph interpreter."""
    return run_graph(build(model), inputs, {}, {})


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
