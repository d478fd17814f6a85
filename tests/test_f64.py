"""f64 as an element type users name: model files, ONNX import (DOUBLE) and export, the reference
and the native target, against numpy in float64 and onnxruntime; the runtime refuses an f32
array for an f64 input and the reverse. The elementwise, reduction and movement ops in f64
(NaN, inf and -0.0 among the inputs) are rows of tests/_cases.py's table, run on every target
by test_native_ops.py and test_onnx_ops.py."""

from __future__ import annotations

import numpy as np
import pytest
from _onnximport import make_model, run_ort
from onnx import TensorProto, helper
from test_native_nn import CONV_CALLS, CONV_INPUTS, check

import kiln
from kiln import KilnError

RNG = np.random.default_rng(64)
MATMUL = "model Mm { forward(a: f64[R, K], b: f64[K, N]) -> f64[R, N] { return a @ b } }"


def f64(types: dict[str, str]) -> dict[str, str]:
    return {name: t.replace("f32", "f64") for name, t in types.items()}


@pytest.mark.parametrize("target", ["reference", "native"])
def test_matmul_against_numpy_in_float64(target):
    """Sums of 300 products agree with numpy's to f64 rounding (f32 math would be off by
    1e-6 relative)."""
    model = kiln.compile(MATMUL, target=target)
    a, b = RNG.standard_normal((33, 300)), RNG.standard_normal((300, 17))
    got = model(a, b)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)


def test_bf16_precision_leaves_f64_products_alone():
    """precision="bf16" rounds f32 matmul operands only: an f64 product stays exact."""
    model = kiln.compile(MATMUL, target="native", precision="bf16")
    a, b = RNG.standard_normal((9, 40)), RNG.standard_normal((40, 5))
    np.testing.assert_allclose(model(a, b), a @ b, rtol=1e-12, atol=1e-12)


def test_convolutions_pooling_and_normalization_natively():
    """The native kernels (GEMM convolutions, depthwise, Winograd-sized 3x3 layers, pooling,
    normalization) in f64 against the reference within f64's tolerance."""
    check(f64(CONV_INPUTS), CONV_CALLS[:6], scale=10)
    check({"x": "f64[B, 32, 12, 12]", "w": "f64[32, 32, 3, 3]", "d": "f64[32, 1, 3, 3]",
           "s": "f64[B, 3, H, W]", "l": "f64[B, 7, 12]", "lw": "f64[12]", "g": "f64[32]"},
          ["conv(x, w, padding = 1)", "conv(x, d, padding = 1, groups = 32)",
           "conv_transpose(x, w, stride = 2)",
           "max_pool(s, kernel_size = 3, stride = 2, padding = 1, ceil_mode = true)",
           "avg_pool(s, kernel_size = 2, stride = 2, count_include_pad = false)",
           "layer_norm(l, [12], lw, lw)", "group_norm(x, 4, g, g)", "softmax(l, -1)"],
          runs=({"B": 1, "H": 11, "W": 8}, {"B": 2, "H": 6, "W": 13}), scale=10)


PARAM_MODEL = """
model Affine {
  param w: f64[4, 3] = init.normal(std = 1.0)
  param b: f64[3] = init.zeros()
  forward(x: f64[N, 4]) -> (f64[N, 3], f32[N, 3]) {
    y = x @ w + b
    return y, cast(y, dtype = "f32")
  }
}
"""


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_f64_parameters_and_casts_in_a_model_file(target):
    model = kiln.compile(PARAM_MODEL, target=target)
    assert model.params["w"].dtype == np.float64
    x = RNG.standard_normal((5, 4))
    want = x @ model.params["w"] + model.params["b"]
    y, y32 = model(x)
    assert y.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y32, want.astype(np.float32))


@pytest.mark.parametrize("target", ["reference", "native"])
def test_runtime_refuses_arrays_of_the_other_float_width(target):
    model = kiln.compile(MATMUL, target=target)
    with pytest.raises(KilnError, match="input a must be f64, but the array is float32"):
        model(np.ones((2, 3), np.float32), np.ones((3, 4)))
    f32 = kiln.compile(MATMUL.replace("f64", "f32"), target=target)
    with pytest.raises(KilnError, match="input b must be f32, but the array is float64"):
        f32(np.ones((2, 3), np.float32), np.ones((3, 4)))


def test_an_unknown_element_type_lists_f64():
    with pytest.raises(KilnError) as info:
        kiln.compile("model M { forward(x: f128[N]) { return x } }", target="reference")
    assert info.value.code == "K0302" and "f64" in str(info.value)


def _double_model():
    """DOUBLE end to end: a MatMul with a DOUBLE initializer, Exp, Div, a Cast to FLOAT."""
    w = RNG.standard_normal((4, 3))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Exp", ["m"], ["e"]),
             helper.make_node("Div", ["e", "x0"], ["y"]),
             helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT)]
    return make_model(nodes, [("x", TensorProto.DOUBLE, ["N", 4]),
                              ("x0", TensorProto.DOUBLE, ["N", 1])],
                      [("y", TensorProto.DOUBLE, ["N", 3]), ("y32", TensorProto.FLOAT, ["N", 3])],
                      {"w": w})


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_double_onnx_model_agrees_with_onnxruntime(target):
    proto = _double_model()
    model = kiln.compile(proto, target=target)
    assert model.params["w"].dtype == np.float64  # a DOUBLE initializer is a parameter
    x = RNG.standard_normal((6, 4))
    x0 = np.array([[1.0], [0.0], [-0.0], [np.inf], [np.nan], [3.0]])
    want_y, want_y32 = run_ort(proto, {"x": x, "x0": x0})
    y, y32 = model(x, x0)
    assert y.dtype == np.float64 and y32.dtype == np.float32
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=0)
    np.testing.assert_allclose(y32, want_y32, rtol=1e-6, atol=0)
