"""compiler/onnx_import/convert*.py: each converter, on a one-node model, against onnxruntime
(kiln's graph interpreter runs what the converter built), and its refusals (Unsupported).

The ONNX node tests (test_onnx_node_tests.py) cover the ops broadly; these cases pin the
attribute values and edge cases the converters compose primitives for.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _onnxconvert import OPSET, build, check, one_node, run_kiln, run_ort
from _onnximport import make_model
from onnx import TensorProto, helper

import kiln
from kiln.compiler.builder import GraphBuilder
from kiln.compiler.ir import Graph
from kiln.compiler.onnx_import.convert import CONVERTERS, OnnxNode, Unsupported
from kiln.compiler.onnx_import.convert_base import fold
from kiln.compiler.types import TensorType

RNG = np.random.default_rng(17)
ORT_OPSET = min(OPSET, 21)  # the newest opset the installed onnxruntime runs every op of


def f32(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ints(low, high, *shape, dtype=np.int64) -> np.ndarray:
    return RNG.integers(low, high, shape).astype(dtype)


I64 = np.int64
CASES = [
    # op, inputs, attributes and initializers (shape inputs), outputs
    ("Div", [ints(-9, 9, 4, 5), np.array([3, -3, 2, -2, 7], I64)], {}),
    ("Mod", [ints(-9, 9, 4, 5), np.array([3, -3, 2, -2, 7], I64)], {}),
    ("Mod", [ints(-9, 9, 4, 5), np.array([3, -3, 2, -2, 7], I64)], {"fmod": 1}),
    ("Mod", [f32(4, 5) * 5, np.array([3, -3, 2, -2, 0.5], np.float32)], {"fmod": 1}),
    ("Round", [np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -3.51], np.float32)], {}),
    ("Pow", [np.abs(f32(3, 4)) + 0.5, np.array(2, I64)], {}),
    ("Clip", [ints(-9, 9, 3, 4), np.array(-2, I64), np.array(5, I64)], {"initializers": "12"}),
    ("Clip", [f32(3, 4), None, np.array(0.25, np.float32)], {"initializers": "2"}),
    ("HardSigmoid", [f32(3, 4) * 4], {"alpha": 0.3, "beta": 0.4}),
    ("Selu", [f32(3, 4)], {}),
    ("Celu", [f32(3, 4)], {"alpha": 2.0}),
    ("Shrink", [f32(3, 4)], {"lambd": 0.6, "bias": 0.2}),
    ("PRelu", [f32(2, 3, 4), np.array([[0.1], [0.2], [0.3]], np.float32)], {}),
    ("IsInf", [np.array([1, np.inf, -np.inf, np.nan], np.float32)], {"detect_negative": 0}),
    ("Mean", [f32(3, 4), f32(4), f32(3, 1)], {}),
    ("Gemm", [f32(5, 3), f32(4, 5), f32(4)], {"transA": 1, "transB": 1, "alpha": 0.5,
                                              "beta": 2.0}),
    ("Hardmax", [np.array([[1, 3, 3, 0], [2, 2, 1, 0]], np.float32)], {"axis": 0}),
    ("ArgMax", [np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)],
     {"axis": 1, "select_last_index": 1, "keepdims": 0}),
    ("ArgMin", [np.array([[1, 0, 3, 0], [2, 2, 1, 1]], np.float32)],
     {"axis": 1, "select_last_index": 1}),
    ("Conv", [f32(1, 2, 7, 6), f32(3, 2, 3, 3), f32(3)], {"pads": [0, 1, 2, 1],
                                                          "strides": [2, 1]}),
    ("Conv", [f32(1, 2, 7, 6), f32(4, 1, 3, 2)], {"auto_pad": "SAME_LOWER", "group": 2,
                                                  "strides": [2, 2]}),
    ("ConvTranspose", [f32(1, 2, 4, 3), f32(2, 3, 3, 3), f32(3)],
     {"pads": [1, 0, 0, 2], "strides": [2, 2], "output_padding": [1, 1]}),
    ("ConvTranspose", [f32(1, 2, 4, 3), f32(2, 3, 3, 3)], {"output_shape": [9, 7],
                                                          "strides": [2, 2]}),
    ("MaxPool", [f32(1, 2, 7, 6)], {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}),
    ("AveragePool", [f32(1, 2, 7, 6)], {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}),
    ("AveragePool", [f32(1, 2, 7, 6)], {"kernel_shape": [3, 3], "pads": [1, 2, 1, 0],
                                        "count_include_pad": 1}),
    # 3-D pools and dilated averages: one 1-D pass per spatial axis
    ("AveragePool", [f32(1, 2, 7, 6)], {"kernel_shape": [3, 2], "dilations": [2, 3],
                                        "pads": [2, 1, 0, 1], "strides": [2, 1]}),
    ("AveragePool", [f32(1, 2, 6, 5, 7)], {"kernel_shape": [3, 2, 2], "dilations": [1, 2, 2],
                                           "pads": [1, 1, 0, 1, 0, 1], "strides": [2, 1, 3],
                                           "ceil_mode": 1}),
    ("AveragePool", [f32(2, 1, 5, 6, 4)], {"kernel_shape": [2, 3, 2], "pads": [1, 1, 1, 1, 1, 1],
                                           "count_include_pad": 1, "strides": [2, 2, 2],
                                           "ceil_mode": 1}),
    ("MaxPool", [f32(1, 2, 6, 5, 7)], {"kernel_shape": [3, 2, 2], "dilations": [1, 2, 2],
                                       "pads": [1, 1, 0, 1, 0, 1], "strides": [2, 1, 3]}),
    ("MaxPool", [f32(1, 2, 5, 6, 7)], {"kernel_shape": [2, 2, 3], "strides": [2, 2, 2],
                                       "ceil_mode": 1}),
    ("MaxPool", [f32(2, 3, 7, 6)], {"kernel_shape": [3, 2], "dilations": [1, 2],
                                    "pads": [1, 0, 1, 1], "strides": [2, 1], "n_outputs": 2}),
    ("MaxPool", [np.round(f32(1, 2, 5, 6))], {"kernel_shape": [2, 3], "strides": [2, 2],
                                              "ceil_mode": 1, "n_outputs": 2}),  # ties
    ("MaxPool", [f32(2, 2, 5, 4)], {"kernel_shape": [2, 2], "storage_order": 1,
                                    "n_outputs": 2}),
    ("LpPool", [f32(1, 2, 7, 6)], {"kernel_shape": [3, 2], "dilations": [2, 1], "p": 3,
                                   "pads": [1, 0, 1, 1]}),
    ("LpPool", [f32(1, 2, 5, 4, 6)], {"kernel_shape": [2, 2, 2], "strides": [2, 1, 2]}),
    ("BatchNormalization", [f32(2, 3, 4, 2), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.5],
     {"training_mode": 1, "momentum": 0.8, "epsilon": 1e-3, "n_outputs": 3}),
    ("LRN", [f32(2, 5, 3, 4)], {"size": 5, "alpha": 0.01, "beta": 0.6, "bias": 2.0}),
    ("LRN", [f32(1, 7, 2, 3)], {"size": 3}),  # onnxruntime's: odd sizes, 4-D inputs
    ("Asin", [np.array([-1, -0.999, -0.5, 0, 1e-4, 0.7, 0.9999, 1], np.float32)], {}),
    ("Acos", [np.array([-1, -0.999, -0.5, 0, 1e-4, 0.7, 0.9999, 1], np.float32)], {}),
    ("Atan", [f32(3, 4) * 10], {}),
    ("Einsum", [f32(2, 3, 4), f32(2, 4, 5)], {"equation": "bij,bjk->bik"}),
    ("Einsum", [f32(3, 4), f32(4, 5)], {"equation": "ij,jk"}),
    ("Einsum", [f32(3, 2, 5, 4), f32(3, 2, 6, 4)], {"equation": "bhqd, bhkd -> bhqk"}),
    ("Einsum", [f32(2, 1, 3, 4), f32(2, 1, 4, 2)], {"equation": "...ij,...jk->...ik"}),
    ("Einsum", [f32(3, 4), f32(5)], {"equation": "ij,k->kji"}),
    ("Einsum", [f32(3, 4), f32(3, 4)], {"equation": "ij,ij->i"}),
    ("Einsum", [f32(2, 3, 4), f32(2, 4, 5), f32(5, 6)], {"equation": "aij,ajk,kl->il"}),
    ("Einsum", [ints(-5, 5, 3, 4, 2)], {"equation": "ijk->"}),
    ("Einsum", [f32(3, 4, 2)], {"equation": "ijk->kj"}),
    ("LayerNormalization", [f32(2, 3, 4), f32(4), f32(4)], {"axis": -1, "epsilon": 1e-3}),
    ("LayerNormalization", [f32(2, 3, 4), f32(3, 4)], {"axis": 1}),
    ("Slice", [f32(5, 6), np.array([-1, 9], I64), np.array([-2**63, 1], I64),
               np.array([0, 1], I64), np.array([-2, -3], I64)], {"initializers": "1234"}),
    ("Pad", [f32(3, 4), np.array([1, 2, 2, 0], I64)], {"mode": "reflect",
                                                       "initializers": "1"}),
    ("Pad", [f32(3, 4), np.array([1, -1, 0, 2], I64), np.array(0.5, np.float32)],
     {"initializers": "12"}),
    ("OneHot", [np.array([[0, -1], [5, 2]], I64), np.array(4, I64),
                np.array([-1.0, 2.0], np.float32)], {"axis": 0, "initializers": "1"}),
    ("GatherND", [f32(3, 4, 2), np.array([[-1, 0], [2, 3]], I64)], {}),
    ("GatherND", [f32(2, 4, 3, 2), np.array([[[1, -1], [3, 0]], [[0, 2], [-2, 1]]], I64)],
     {"batch_dims": 1}),
    ("GatherND", [f32(2, 3, 4, 5), ints(-4, 4, 2, 3, 2, 1)], {"batch_dims": 2}),
    ("GatherElements", [f32(3, 4), ints(-3, 3, 2, 4)], {"axis": 0}),
    ("ScatterElements", [f32(4, 5), np.array([[0, 3, -1]], I64), f32(1, 3)],
     {"axis": 0, "reduction": "add"}),
    ("ScatterND", [f32(4, 3), np.array([[1], [-1]], I64), f32(2, 3)], {"reduction": "mul"}),
    ("Reshape", [f32(2, 3, 4), np.array([0, -1], I64)], {"initializers": "1"}),
    ("Expand", [f32(3, 1), np.array([2, 1, 4], I64)], {"initializers": "1"}),
    ("Split", [f32(7, 2)], {"axis": 0, "num_outputs": 3, "n_outputs": 3}),
    ("DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", [f32(1, 2, 4, 6)], {"blocksize": 2}),
    ("CumSum", [ints(-5, 5, 3, 4), np.array(1, I64)], {"exclusive": 1, "reverse": 1,
                                                       "initializers": "1"}),
    ("ReduceSumSquare", [f32(3, 4, 2), np.array([0, -1], I64)], {"keepdims": 0,
                                                                 "initializers": "1"}),
    ("ReduceMax", [np.zeros((2, 0, 3), np.float32), np.array([1], I64)],
     {"initializers": "1"}),
    ("Resize", [f32(1, 1, 3, 4), np.array([], np.float32), np.array([1, 1, 2.0, 1.5],
                                                                   np.float32)],
     {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
      "nearest_mode": "round_prefer_ceil", "initializers": "12"}),
    ("Resize", [f32(1, 2, 4, 4), np.array([], np.float32), np.array([1, 1, 0.6, 0.8],
                                                                   np.float32)],
     {"mode": "linear", "coordinate_transformation_mode": "asymmetric", "initializers": "12"}),
    ("Resize", [f32(1, 2, 4, 7), None, None, np.array([5, 3], I64)],
     {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller",
      "initializers": "3"}),
    ("Resize", [f32(3, 5), None, None, np.array([7, 3], I64)],
     {"mode": "cubic", "axes": [1, 0], "keep_aspect_ratio_policy": "not_larger",
      "exclude_outside": 1, "cubic_coeff_a": -0.5, "initializers": "3"}),
    ("MaxUnpool", [f32(1, 2, 2, 3), RNG.permutation(48)[:12].reshape(1, 2, 2, 3)],
     {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("MaxUnpool", [f32(2, 1, 3), RNG.permutation(12)[:6].reshape(2, 1, 3)],
     {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),
    ("Dropout", [f32(3, 4)], {"n_outputs": 2}),
    ("TopK", [np.array([[3, 1, 3, -np.inf], [2, 2, -np.inf, 2], [0, 5, 5, 1]], np.float32).T,
              np.array([3], I64)], {"axis": 0, "n_outputs": 2, "initializers": "1"}),
    ("TopK", [ints(-3, 3, 2, 6), np.array([4], I64)], {"largest": 0, "n_outputs": 2,
                                                      "initializers": "1"}),
    ("DFT", [f32(2, 8, 3, 1), None, np.array(1, I64)], {"onesided": 1, "initializers": "2"}),
    ("DFT", [f32(2, 5, 2), np.array(7, I64), np.array(-2, I64)], {"initializers": "12"}),
    ("STFT", [f32(2, 20, 1), np.array(3, I64), f32(6), np.array(6, I64)],
     {"initializers": "13"}),
    ("STFT", [f32(1, 16, 2), np.array(4, I64), None, np.array(5, I64)],
     {"onesided": 0, "initializers": "13"}),
    ("MelWeightMatrix", [np.array(6, np.int32), np.array(16, np.int32),
                         np.array(8000, np.int32), np.array(100, np.float32),
                         np.array(3500, np.float32)], {"initializers": "01234"}),
    ("Col2Im", [f32(1, 8, 12), np.array([4, 5], I64), np.array([2, 2], I64)],
     {"strides": [2, 1], "pads": [1, 0, 1, 0], "initializers": "12"}),
]


def _case_id(case) -> str:
    op, _, kw = case
    return op + "".join(f"-{k}" for k in kw if k not in ("initializers", "n_outputs"))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_converter_agrees_with_onnxruntime(case):
    op, inputs, kw = case
    kw = dict(kw)
    fixed = {int(i): inputs[int(i)] for i in kw.pop("initializers", "")}
    n_outputs = kw.pop("n_outputs", 1)
    check(op, inputs, n_outputs, initializers=fixed, opset=ORT_OPSET, rtol=1e-4, atol=1e-5,
          **kw)


def _node(gb_inputs, op_type: str, consts=None, opset: int = OPSET, **attrs) -> OnnxNode:
    return OnnxNode(name="n", op_type=op_type, domain="", index=0, opset=opset, attrs=attrs,
                    inputs=list(gb_inputs), consts=list(consts or [None] * len(gb_inputs)),
                    outputs=["y"])


@pytest.mark.parametrize("op_type, attrs, why", [
    ("Pad", {"mode": "wrap"}, "wider than the axis"),
    ("Dropout", {}, "training mode"),
    ("Cast", {"to": TensorProto.UINT64}, "UINT64"),
    ("Resize", {"coordinate_transformation_mode": "tf_crop_and_resize"}, "constant roi"),
    ("Resize", {"keep_aspect_ratio_policy": "fit"}, "keep_aspect_ratio_policy"),
    ("Einsum", {"equation": "ijkk->i"}, "diagonal"),
    ("Einsum", {"equation": "ij->i"}, "rank 4"),
])
def test_refusals_say_what_kiln_lacks(op_type, attrs, why):
    graph = Graph()
    gb = GraphBuilder(graph)
    x = graph.add_input("x", TensorType("f32", (1, 1, 3, 3)), None)
    extra = {"Pad": [gb.constant(np.array([0, 0, 0, 5, 0, 0, 0, 5], np.int64))],
             "Dropout": [gb.constant(np.array(0.5, np.float32)),
                         gb.constant(np.array(True))],
             "Resize": [None, gb.constant(np.ones(4, np.float32))]}.get(op_type, [])
    node = _node([x, *extra], op_type, **attrs)
    before = len(graph)
    with pytest.raises(Unsupported, match=why):
        CONVERTERS[op_type](gb, node)
    assert len(graph) >= before  # a refusal may leave dead nodes: the importer drops them


def test_shape_of_symbolic_sizes_is_a_runtime_value():
    """Shape of an input with a symbolic batch: the batch at run time, the rest constants."""
    graph = Graph()
    gb = GraphBuilder(graph)
    x = graph.add_input("x", TensorType("f32", ("B", 3)), None)
    (shape,) = CONVERTERS["Shape"](gb, _node([x], "Shape"))
    assert shape.type == TensorType("i64", (2,))
    assert fold(graph, shape) is None  # not known at import time
    from kiln.compiler.evaluate import run_graph

    graph.outputs, graph.output_names = [shape], ["s"]
    (got,) = run_graph(graph, [np.zeros((5, 3), np.float32)], {}, {"B": 5})
    assert got.tolist() == [5, 3]


def test_shape_arithmetic_folds_for_reshape():
    """Reshape(x, Concat(Shape(x)[:1], [-1])) with constant sizes: the shape folds at import
    time, so the Reshape converts."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], end=1),
         helper.make_node("Concat", ["s", "minus1"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]),
        opset_imports=[helper.make_opsetid("", ORT_OPSET)])
    x = f32(2, 3, 4)
    (got,) = run_kiln(model, [x])
    np.testing.assert_array_equal(got, x.reshape(2, 12))
    assert build(model).outputs[0].type == TensorType("f32", (2, 12))


def test_function_ops_expand_their_definition():
    """An op ONNX defines as a function of others, without a converter of its own, converts
    through its function body (here MeanVarianceNormalization)."""
    x = f32(2, 3, 4, 5)
    check("MeanVarianceNormalization", [x], opset=ORT_OPSET, rtol=1e-4, atol=1e-5)



def _dynamic_model() -> onnx.ModelProto:
    """x [batch, 3, 4] -> reshaped to [batch, 12] by a shape computed from Shape(x) as
    PyTorch's exporter writes it (Gather, Unsqueeze, Concat), expanded through its
    Where(Equal(shape, -1), 1, shape) pattern, and a ConstantOfShape of [batch, 2] added."""
    i64 = TensorProto.INT64

    def const(name, values):
        return helper.make_tensor(name, i64, [len(values)], values)

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Concat", ["b1", "twelve"], ["target"], axis=0),
        helper.make_node("Equal", ["target", "minus1s"], ["is_free"]),
        helper.make_node("Where", ["is_free", "ones", "target"], ["expand_to"]),
        helper.make_node("Expand", ["flat", "expand_to"], ["y0"]),
        helper.make_node("Concat", ["b1", "two"], ["zshape"], axis=0),
        helper.make_node("ConstantOfShape", ["zshape"], ["z"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Slice", ["y0", "zero1", "two", "one_axis"], ["y1"]),
        helper.make_node("Add", ["y1", "z"], ["y"]),
    ]
    inits = [helper.make_tensor("zero", i64, [], [0]), const("axes0", [0]),
             const("minus1", [-1]), const("twelve", [12]), const("minus1s", [-1, -1]),
             const("ones", [1, 1]), const("two", [2]), const("zero1", [0])]
    inits.append(const("one_axis", [1]))
    graph = helper.make_graph(
        nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ORT_OPSET)])


@pytest.mark.parametrize("target", ["reference", "native"])
def test_shapes_computed_from_a_symbolic_batch(target):
    """Shape arithmetic on a symbolic batch converts (sizes.py): the reshape, expand and
    filled tensor take the batch of each call."""
    import kiln

    model = _dynamic_model()
    compiled = kiln.compile(model, target=target)
    assert str(compiled.inputs[0].type.shape[0]) == "batch"
    for batch in (1, 5):
        x = f32(batch, 3, 4)
        (want,) = run_ort(model, [x])
        np.testing.assert_allclose(compiled(x), want, rtol=1e-6)


def test_undecided_size_comparison_is_not_taken():
    """Equal of a symbolic size and a non-negative constant is known only at run time: the
    shape it selects is not taken as known, and the import refuses the Expand (never a guess)."""
    model = _dynamic_model()
    for init in model.graph.initializer:
        if init.name == "minus1s":
            init.CopyFrom(helper.make_tensor("minus1s", TensorProto.INT64, [2], [1, 12]))
    import kiln
    from kiln import KilnError

    with pytest.raises(KilnError, match="Expand.*must be a constant"):
        kiln.compile(model, target="reference")


def test_size_comparisons_are_decided_only_where_sound():
    """sizes.py compares a symbolic size with a number only where every call agrees: never
    equal to a negative number, undecided against 1 (a batch may be 1); 0-d operands too."""
    from kiln.compiler.dims import Dim
    from kiln.compiler.onnx_import.sizes import ARITHMETIC

    def held(v):
        out = np.empty((), dtype=object)
        out[()] = v
        return out

    batch = held(Dim.of("B"))
    assert not ARITHMETIC["equal"](batch, held(-1))
    assert bool(ARITHMETIC["not_equal"](batch, held(-1)))
    assert ARITHMETIC["equal"](batch, held(Dim.of("B")))
    with pytest.raises(ValueError, match="known only at run time"):
        ARITHMETIC["equal"](batch, held(1))


@pytest.mark.parametrize("target", ["reference", "native"])
def test_max_pool_indices_of_a_symbolic_batch(target):
    """Indices count every (n, c) plane before it: n runs to a size known only at run time."""
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 1],
                            pads=[1, 0, 0, 1])
    model = make_model([node], [("x", TensorProto.FLOAT, ["N", 3, 5, 4])],
                       [("y", TensorProto.FLOAT, None), ("i", TensorProto.INT64, None)])
    x = f32(3, 3, 5, 4)
    for got, want in zip(kiln.compile(model, target=target)(x), run_ort(model, [x]),
                         strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_cumprod_against_numpy(exclusive, reverse, dtype):
    """CumProd (opset 26: onnxruntime has none) by numpy's cumprod along axis 1."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive,
                            reverse=reverse)
    model = make_model([node], [("x", elem, [2, 5, 3])], [("y", elem, [2, 5, 3])],
                       {"axis": np.array(-2, np.int64)}, opset=OPSET)
    x = (RNG.integers(-3, 4, (2, 5, 3)) if dtype is np.int32 else f32(2, 5, 3)).astype(dtype)
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    want = flip(np.cumprod(flip(x), axis=1))
    if exclusive:
        want = flip(np.concatenate([np.ones_like(x[:, :1]), np.cumprod(flip(x), axis=1)[:, :-1]],
                                   axis=1))
    got = kiln.compile(model, target="reference")(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize_agrees_with_onnx_reference(mode):
    """tf_crop_and_resize, a region reaching outside the input on one side: against ONNX's
    own reference (onnxruntime computes other values for this mode: the node tests' expected
    values are the reference's)."""
    from onnx.reference import ReferenceEvaluator

    x = f32(1, 2, 5, 6)
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], np.float32)
    scales = np.array([1, 1, 1.6, 0.7], np.float32)
    model = one_node("Resize", [x, roi, scales], initializers={1: roi, 2: scales}, mode=mode,
                     coordinate_transformation_mode="tf_crop_and_resize",
                     extrapolation_value=2.5)
    (want,) = ReferenceEvaluator(model).run(None, {"in0": x})
    (got,) = run_kiln(model, [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_grid_sample_agrees_with_onnxruntime(mode, padding_mode, align_corners):
    """GridSample at random points, some outside [-1, 1] (every padding rule at work).
    Cubic with border padding against ONNX's reference: it clamps a point to the border
    before taking the 4 taps (so do the node tests' expected values), onnxruntime after."""
    rng = np.random.default_rng(len(mode) * 7 + len(padding_mode) + align_corners)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    grid = rng.uniform(-1.4, 1.4, (2, 3, 6, 2)).astype(np.float32)
    attrs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    if (mode, padding_mode) != ("cubic", "border"):
        check("GridSample", [x, grid], opset=ORT_OPSET, rtol=1e-4, atol=1e-5, **attrs)
        return
    from onnx.reference import ReferenceEvaluator

    model = one_node("GridSample", [x, grid], opset=ORT_OPSET, **attrs)
    (want,) = ReferenceEvaluator(model).run(None, {"in0": x, "in1": grid})
    np.testing.assert_allclose(run_kiln(model, [x, grid])[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_volumetric_agrees_with_onnxruntime(padding_mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    grid = rng.uniform(-1.4, 1.4, (1, 2, 3, 4, 3)).astype(np.float32)
    check("GridSample", [x, grid], opset=ORT_OPSET, rtol=1e-4, atol=1e-5, mode="linear",
          padding_mode=padding_mode)


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter_agrees_with_onnx_reference(mode):
    """A KV cache [B, H, S, D] updated at each batch entry's own position (circular: some
    wrap past the end)."""
    from onnx.reference import ReferenceEvaluator

    past, update = f32(3, 2, 5, 4), f32(3, 2, 2, 4)
    starts = np.array([0, 3, 4 if mode == "circular" else 2], I64)
    model = one_node("TensorScatter", [past, update, starts], mode=mode, opset=OPSET)
    (want,) = ReferenceEvaluator(model).run(None, {"in0": past, "in1": update, "in2": starts})
    np.testing.assert_array_equal(run_kiln(model, [past, update, starts])[0], want)


def test_max_unpool_output_shape_agrees_with_onnx_reference():
    """With output_shape, the unpooled tensor (indices into its inferred shape) is padded at
    the end of each axis, as ONNX's reference (the node tests' expected values) does;
    onnxruntime takes the indices into output_shape's layout instead."""
    from onnx.reference import ReferenceEvaluator

    x, index = f32(2, 1, 3), RNG.permutation(12)[:6].reshape(2, 1, 3).astype(I64)
    shape = np.array([2, 1, 9], I64)
    model = one_node("MaxUnpool", [x, index, shape], initializers={2: shape},
                     kernel_shape=[3], strides=[2], pads=[1, 0])
    (want,) = ReferenceEvaluator(model).run(None, {"in0": x, "in1": index})
    np.testing.assert_array_equal(run_kiln(model, [x, index])[0], want)


def test_inverse_one_sided_dft_agrees_with_onnx_reference():
    """irfft: a half spectrum [.., 5, 2] to the real signal of length 8 [.., 8, 1]."""
    from onnx.reference import ReferenceEvaluator

    x, length, axis = f32(3, 5, 2), np.array(8, I64), np.array(1, I64)
    model = one_node("DFT", [x, length, axis], initializers={1: length, 2: axis}, inverse=1,
                     onesided=1, opset=OPSET)
    (want,) = ReferenceEvaluator(model).run(None, {"in0": x})
    np.testing.assert_allclose(run_kiln(model, [x])[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise_agrees_with_onnxruntime(op, dtype):
    """Every sign and both extremes of the type, broadcast."""
    info = np.iinfo(dtype)
    a = np.concatenate([RNG.integers(info.min, info.max, 10, dtype=dtype),
                        np.array([info.min, info.max, -1, 0, 1, 2], dtype)]).reshape(4, 4)
    b = np.array([info.min, -1, 5, info.max], dtype)
    check(op, [a, b], opset=ORT_OPSET)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 4, 4), (5, 5)])
def test_det_agrees_with_onnxruntime(shape):
    check("Det", [f32(*shape)], opset=ORT_OPSET, rtol=1e-4, atol=1e-5)


def test_det_refuses_large_matrices():
    with pytest.raises(Unsupported, match="at most 5x5"):
        build(one_node("Det", [f32(6, 6)]))


@pytest.mark.parametrize("attrs", [
    {},
    {"strides": [2, 1, 2], "pads": [1, 0, 2, 0, 1, 1], "dilations": [1, 2, 1]},
    {"group": 2, "auto_pad": "SAME_UPPER", "strides": [1, 2, 1]},
])
def test_conv_3d_agrees_with_onnxruntime(attrs):
    x, w, b = f32(2, 4, 5, 6, 5), f32(6, 4 // attrs.get("group", 1), 3, 2, 3), f32(6)
    check("Conv", [x, w, b], opset=ORT_OPSET, rtol=1e-4, atol=1e-4, **attrs)


@pytest.mark.parametrize("attrs", [
    {},
    {"strides": [2, 1, 3], "pads": [1, 0, 2, 0, 1, 1], "dilations": [1, 2, 1],
     "output_padding": [1, 0, 0]},
    {"group": 2, "strides": [2, 2, 1], "output_shape": [8, 7, 5]},
])
def test_conv_transpose_3d_agrees_with_onnxruntime(attrs):
    x, w, b = f32(2, 4, 4, 3, 5), f32(4, 6 // attrs.get("group", 1), 3, 2, 3), f32(6)
    check("ConvTranspose", [x, w, b], opset=ORT_OPSET, rtol=1e-4, atol=1e-4, **attrs)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
def test_roi_align_agrees_with_onnxruntime(mode, ctm):
    """Regions inside, across the border and beyond it, of either batch entry."""
    x = f32(2, 3, 7, 9)
    rois = np.array([[0.5, 1.0, 6.0, 5.5], [-2.0, -1.5, 3.0, 2.0], [7.0, 4.0, 12.0, 9.5],
                     [2.0, 2.0, 2.2, 2.1]], np.float32)
    batch = np.array([0, 1, 1, 0], I64)
    check("RoiAlign", [x, rois, batch], opset=ORT_OPSET, rtol=1e-4, atol=1e-5, mode=mode,
          coordinate_transformation_mode=ctm, output_height=3, output_width=4,
          sampling_ratio=2, spatial_scale=0.8)


def test_deform_conv_agrees_with_onnx_reference():
    """Groups, offset groups, strides, dilations, asymmetric pads, a mask and a bias; offsets
    reaching outside X."""
    from onnx.reference import ReferenceEvaluator

    x, w, b = f32(2, 4, 6, 7), f32(6, 2, 3, 2), f32(6)
    attrs = {"group": 2, "offset_group": 2, "strides": [2, 1], "dilations": [1, 2],
             "pads": [1, 0, 1, 1]}
    out_h, out_w = (6 + 2 - 3) // 2 + 1, (7 + 1 - 3) // 1 + 1
    offset = (RNG.standard_normal((2, 2 * 6 * 2, out_h, out_w)) * 2).astype(np.float32)
    mask = RNG.uniform(0, 1, (2, 2 * 6, out_h, out_w)).astype(np.float32)
    feeds = [x, w, offset, b, mask]
    model = one_node("DeformConv", feeds, opset=OPSET, **attrs)
    (want,) = ReferenceEvaluator(model).run(None, {f"in{i}": v for i, v in enumerate(feeds)})
    np.testing.assert_allclose(run_kiln(model, feeds)[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, weighted", [("TF", False), ("IDF", True), ("IDF", False),
                                            ("TFIDF", True)])
@pytest.mark.parametrize("rank", [1, 2])
def test_tf_idf_vectorizer_agrees_with_onnxruntime(mode, weighted, rank):
    """Unigrams and bigrams, skips up to 2, a repeated token stream and a batch."""
    x = RNG.integers(2, 6, (3, 9) if rank == 2 else (9,)).astype(I64)
    pool = [2, 3, 5, 2, 3, 3, 5, 4, 4]  # unigrams 2, 3, 5; bigrams (2,3) (3,5) (4,4)
    attrs = {"mode": mode, "min_gram_length": 1, "max_gram_length": 2, "max_skip_count": 2,
             "ngram_counts": [0, 3], "ngram_indexes": [5, 0, 2, 1, 4, 3],
             "pool_int64s": pool}
    if weighted:
        attrs["weights"] = [0.5, 1.5, 2.0, 0.25, 3.0, 1.0]
    check("TfIdfVectorizer", [x], opset=ORT_OPSET, **attrs)


TRAINING_CASES = [
    ("Adagrad", 3, {"decay_factor": 0.1, "epsilon": 1e-6, "norm_coefficient": 0.01}),
    ("Adam", 4, {"alpha": 0.8, "beta": 0.95, "epsilon": 1e-7, "norm_coefficient": 0.02,
                 "norm_coefficient_post": 0.1}),
    ("Momentum", 3, {"alpha": 0.9, "beta": 0.5, "mode": "standard", "norm_coefficient": 0.01}),
    ("Momentum", 3, {"alpha": 0.9, "beta": 0.5, "mode": "nesterov", "norm_coefficient": 0.0}),
]


@pytest.mark.parametrize("step", [0, 3])
@pytest.mark.parametrize("op, per_tensor, attrs", TRAINING_CASES,
                         ids=[f"{c[0]}-{c[2].get('mode', '')}" for c in TRAINING_CASES])
def test_optimizer_step_agrees_with_onnx_reference(op, per_tensor, attrs, step):
    """Two tensors of different shapes updated by one node (the first step too)."""
    from onnx.reference import ReferenceEvaluator

    shapes = [(3, 4), (5,)]
    tensors = [f32(*shape) for _ in range(per_tensor) for shape in shapes]
    if per_tensor == 4:  # Adam's second moments are not negative
        tensors[6:] = [np.abs(t) for t in tensors[6:]]
    if op == "Adagrad":
        tensors[4:] = [np.abs(t) for t in tensors[4:]]
    feeds = [np.array(0.1, np.float32), np.array(step, I64), *tensors]
    names = [f"in{i}" for i in range(len(feeds))]
    node = helper.make_node(op, names, [f"out{i}" for i in range(len(tensors) - 2)],
                            domain="ai.onnx.preview.training", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for n, v in zip(names, feeds, strict=True)],
        [helper.make_empty_tensor_value_info(o) for o in node.output])
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("ai.onnx.preview.training", 1)])
    want = ReferenceEvaluator(model).run(None, dict(zip(names, feeds, strict=True)))
    got = kiln.compile(model, target="reference")(*feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, inputs, attrs", [
    ("Binarizer", [f32(3, 4)], {"threshold": 0.25}),
    ("ArrayFeatureExtractor", [f32(2, 3, 5), np.array([[4, 0, 4]], I64)], {}),
    ("ArrayFeatureExtractor", [f32(6), np.array([5, 1], I64)], {}),
])
def test_ml_ops_agree_with_onnxruntime(op, inputs, attrs):
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for n, v in zip(names, inputs, strict=True)],
        [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3),
                                                    helper.make_opsetid("", ORT_OPSET)])
    model.ir_version = min(model.ir_version, 10)
    (want,) = run_ort(model, inputs)
    (got,) = [kiln.compile(model, target="reference")(*inputs)]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
