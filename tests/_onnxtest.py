"""Test helpers for ONNX emitters: export a one-op graph, validate it with onnx, run it in
onnxruntime (and in onnx's ReferenceEvaluator, a second oracle) and compare each with the op's
numpy reference on the same inputs, within tests/_tolerance.py's tolerance for the op.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from _optest import RefEnv, bind, type_of
from _tolerance import assert_agree
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from kiln.compiler.codegen.onnx import export
from kiln.compiler.elaborate.elaborator import Port
from kiln.compiler.ir import Graph
from kiln.compiler.ops import REGISTRY
from kiln.compiler.types import NUMPY_DTYPES

ort = pytest.importorskip("onnxruntime")

def one_op_model(op: str, in_types: list, attrs: dict, anchors: tuple = ()):
    """An ElaboratedModel-like object of one `op` node; inputs in0, in1... (absent optional ones
    left out), outputs out0, out1...; `anchors` are extra unused input types whose symbolic sizes
    the op's attributes may use (arange(T) needs T from somewhere)."""
    g = Graph()
    values = [None if t is None else g.add_input(f"in{i}", t, None) for i, t in enumerate(in_types)]
    for i, t in enumerate(anchors):
        g.add_input(f"anchor{i}", t, None)
    out_types = REGISTRY[op].infer(list(in_types), attrs)
    g.outputs = g.add(op, values, attrs, out_types, None)
    g.output_names = [f"out{i}" for i in range(len(out_types))]
    inputs = [Port(f"in{i}", t) for i, t in enumerate(in_types) if t is not None]
    inputs += [Port(f"anchor{i}", t) for i, t in enumerate(anchors)]
    outputs = [Port(name, t) for name, t in zip(g.output_names, out_types, strict=True)]
    return SimpleNamespace(name=op, graph=g, inputs=inputs, outputs=outputs)


def export_op(op: str, in_types: list, attrs: dict, anchors: tuple = ()) -> onnx.ModelProto:
    """The checked ONNX model of one op: full check and strict shape inference pass."""
    proto = export(one_op_model(op, in_types, attrs, anchors), {})
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def _f32_boundary(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose bf16 inputs and outputs are f32 outside, cast at the edge (exactly):
    onnxruntime's Python API takes and returns no bf16 arrays."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph, heads, tails = out.graph, [], []
    for ports, is_input in ((graph.input, True), (graph.output, False)):
        for port in ports:
            t = port.type.tensor_type
            if t.elem_type != TensorProto.BFLOAT16:
                continue
            inner, port.name, t.elem_type = port.name, port.name + "__f32", TensorProto.FLOAT
            if is_input:
                heads.append(helper.make_node("Cast", [port.name], [inner], to=TensorProto.BFLOAT16))
            else:
                tails.append(helper.make_node("Cast", [inner], [port.name], to=TensorProto.FLOAT))
    nodes = [*heads, *graph.node, *tails]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def run_ort(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run in onnxruntime on the CPU; bf16 goes in and comes out as numpy bf16 arrays."""
    model = _f32_boundary(proto)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {(name + "__f32" if x.dtype == NUMPY_DTYPES["bf16"] else name):
            (x.astype(np.float32) if x.dtype == NUMPY_DTYPES["bf16"] else x)
            for name, x in arrays.items()}
    outs = session.run(None, feed)
    kinds = [p.type.tensor_type.elem_type for p in proto.graph.output]
    return [o.astype(NUMPY_DTYPES["bf16"]) if k == TensorProto.BFLOAT16 else o
            for o, k in zip(outs, kinds, strict=True)]


def run_reference_evaluator(proto: onnx.ModelProto, arrays: dict) -> list[np.ndarray]:
    return [np.asarray(o) for o in ReferenceEvaluator(proto).run(None, arrays)]


def compare(proto, op: str, inputs: list, attrs: dict, env: dict | None = None,
            second_oracle: bool = True) -> list[np.ndarray]:
    """Run the exported `proto` on `inputs` in onnxruntime (and the ReferenceEvaluator) and
    assert both agree with the op's reference; returns the reference's outputs."""
    arrays = {f"in{i}": x for i, x in enumerate(inputs) if x is not None}
    for port in proto.graph.input:  # anchors: arrays of the sizes env binds
        if port.name.startswith("anchor"):
            dims = port.type.tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else env[d.dim_param] for d in dims]
            arrays[port.name] = np.zeros(shape, np.float32)
    with np.errstate(all="ignore"):  # NaN and inf inputs are the point
        expected = REGISTRY[op].reference(RefEnv(env), list(inputs), attrs)
        for out, exp in zip(run_ort(proto, arrays), expected, strict=True):
            assert_agree(out, exp, op, f"{op}: onnxruntime", target="onnx")
        if second_oracle:
            for out, exp in zip(run_reference_evaluator(proto, arrays), expected, strict=True):
                assert_agree(out, exp, op, f"{op}: ReferenceEvaluator", target="onnx")
    return expected


def check(op: str, *args, types=None, env=None, anchors=(), second_oracle=True, **kwargs):
    """Export `op` applied to args (arrays and attributes, as _optest.run), with input `types`
    (symbolic where given) when given; run and compare it. Returns the proto."""
    _, inputs, attrs = bind(op, args, kwargs)
    in_types = types if types is not None else [None if x is None else type_of(x) for x in inputs]
    proto = export_op(op, in_types, attrs, anchors)
    compare(proto, op, inputs, attrs, env, second_oracle)
    return proto
