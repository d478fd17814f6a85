"""The integer element types i8, u8, i16, u16 and u32: arithmetic that wraps as numpy's (and
ONNX's), comparisons, casts, movement and reductions on every target against numpy with
explicit dtypes, edge values included; the runtime's refusal of an array of another integer
type; ONNX import of a uint8 image pipeline and of a QDQ-quantized model (QuantizeLinear and
DequantizeLinear per tensor and per axis: round half to even, saturation) against
onnxruntime and ONNX's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from _onnximport import make_model, run_ort
from onnx import TensorProto, helper

import kiln
from kiln import KilnError

NARROW = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16, "u32": np.uint32}
TARGETS = ["reference", "native", "onnx"]
OPS = """
model Ints {
  forward(a: DT[N, 4], b: DT[N, 4], ids: i64[K]) -> (DT[N, 4], DT[N, 4], DT[N, 4], DT[N, 4],
      bool[N, 4], bool[N, 4], f32[N, 4], DT[4, N], DT[N, 8], DT[K, 4], i64[N], DT[N], DT[N, 4],
      DT[N, 4], DT[N, 4], DT[N, 4], i64[N], DT[N, 6], DT[N, N]) {
    return (a + b, a - b, a * b, -a, a < b, a == b, cast(a, dtype = "f32") / 255.0,
      transpose(a, 0, 1), concat([a, b], axis = 1), gather(a, ids, axis = 0), sum(a, axis = 1),
      max(a, axis = 1), maximum(a, b), where(a > b, a, b), abs(a), a // maximum(b, 1),
      argmin(a, axis = 1), pad(a, [1, 1], value = 7), a @ transpose(b, 0, 1))
  }
}
"""


def _inputs(np_dtype, seed: int):
    """Random values over the whole range, with the extremes, 0 and 1 in the first rows."""
    info = np.iinfo(np_dtype)
    rng = np.random.default_rng(seed)
    a, b = (rng.integers(info.min, info.max, (6, 4), endpoint=True, dtype=np_dtype)
            for _ in range(2))
    a[0], b[0] = [info.min, info.max, 0, 1], [info.max, info.max, info.min, info.max]
    a[1], b[1] = [info.max, info.min, info.min, 2], [1, info.min, 1, info.max // 2 + 1]
    return a, b, np.array([0, 5, -1, 2], np.int64)


def _numpy(a, b, ids):
    """What the model computes, by numpy in the inputs' dtype (it wraps)."""
    with np.errstate(over="ignore"):
        divisor = np.maximum(b, 1).astype(a.dtype)
        return [a + b, a - b, a * b, -a, a < b, a == b, a.astype(np.float32) / np.float32(255),
                a.T, np.concatenate([a, b], 1), a[ids], a.sum(1, dtype=np.int64), a.max(1),
                np.maximum(a, b), np.where(a > b, a, b), np.abs(a), a // divisor, a.argmin(1),
                np.pad(a, ((0, 0), (1, 1)), constant_values=7), a @ b.T]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", sorted(NARROW))
def test_ops_wrap_and_agree_with_numpy(dtype, target):
    model = kiln.compile(OPS.replace("DT", dtype), target=target)
    a, b, ids = _inputs(NARROW[dtype], seed=len(dtype) + ord(dtype[0]))
    for i, (got, want) in enumerate(zip(model(a, b, ids), _numpy(a, b, ids), strict=True)):
        assert got.dtype == want.dtype, (i, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype} output {i} on {target}")


def test_mixed_integer_types_promote_as_numpy():
    model = kiln.compile("model M { forward(a: u8[N], b: i8[N], c: u32[N], d: i32[N]) "
                         "{ return a + b, c + d, a * 2 } }", target="native")
    a, b = np.array([255, 0], np.uint8), np.array([-128, 127], np.int8)
    c, d = np.array([2**32 - 1, 0], np.uint32), np.array([-1, 2**31 - 1], np.int32)
    ab, cd, a2 = model(a, b, c, d)
    assert ab.dtype == np.int16 and cd.dtype == np.int64 and a2.dtype == np.uint8
    np.testing.assert_array_equal(ab, a.astype(np.int16) + b)
    np.testing.assert_array_equal(cd, c.astype(np.int64) + d)
    np.testing.assert_array_equal(a2, np.array([254, 0], np.uint8))  # wraps


@pytest.mark.parametrize("target", ["reference", "native"])
def test_runtime_refuses_an_array_of_another_integer_type(target):
    model = kiln.compile("model M { forward(x: u8[N]) -> u8[N] { return x } }", target=target)
    for wrong in (np.int8, np.int32, np.uint16):
        with pytest.raises(KilnError, match="input x must be u8, but the array is") as info:
            model(np.zeros(3, wrong))
        assert info.value.code == "K0502" and "np.uint8" in str(info.value)
    signed = kiln.compile("model M { forward(x: i8[N]) -> i8[N] { return x } }", target=target)
    with pytest.raises(KilnError, match="input x must be i8, but the array is uint8"):
        signed(np.zeros(3, np.uint8))
    with pytest.raises(KilnError, match="does not fit i8"):
        signed([1, 200])


# ONNX import ----------------------------------------------------------------------------------
def _image_model():
    """An image pipeline's front: uint8 pixels, Cast, Div 255, a per-channel Sub, and a uint8
    preview of the input, transposed and clipped."""
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "k255"], ["unit"]),
             helper.make_node("Sub", ["unit", "mean"], ["y"]),
             helper.make_node("Transpose", ["pixels"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Clip", ["t", "lo", "hi"], ["preview"])]
    return make_model(nodes, [("pixels", TensorProto.UINT8, ["N", 3, 5, 7])],
                      [("y", TensorProto.FLOAT, ["N", 3, 5, 7]),
                       ("preview", TensorProto.UINT8, ["N", 5, 7, 3])],
                      {"k255": np.array(255, np.float32), "mean": mean,
                       "lo": np.array(10, np.uint8), "hi": np.array(250, np.uint8)})


@pytest.mark.parametrize("target", TARGETS)
def test_uint8_image_pipeline_agrees_with_onnxruntime(target):
    proto = _image_model()
    model = kiln.compile(proto, target=target)
    pixels = np.random.default_rng(8).integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)
    pixels[0, 0, 0, :3] = [0, 255, 128]
    for got, want in zip(model(pixels), run_ort(proto, {"pixels": pixels}), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def _qdq_model(zero_type: int, zero: int):
    """A QDQ-quantized layer: x quantized per tensor and back, an int8 weight dequantized per
    output channel (axis 1), MatMul; and the quantized x as a second output."""
    rng = np.random.default_rng(5)
    weight = rng.integers(-128, 128, (6, 4), dtype=np.int8)
    zero_np = np.array(zero, {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}[zero_type])
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"]),
             helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], axis=1),
             helper.make_node("MatMul", ["dx", "dw"], ["y"])]
    inits = {"sx": np.array(0.05, np.float32), "zx": zero_np, "w": weight,
             "sw": np.array([0.01, 0.02, 0.5, 0.003], np.float32),
             "zw": np.array([0, 3, -2, 0], np.int8)}
    return make_model(nodes, [("x", TensorProto.FLOAT, ["N", 6])],
                      [("y", TensorProto.FLOAT, ["N", 4]), ("qx", zero_type, ["N", 6])], inits)


def _quantize(x, scale, zero, np_dtype):
    """ONNX's QuantizeLinear by its formula: round half to even, add, saturate."""
    info = np.iinfo(np_dtype)
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(np_dtype)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("zero_type, zero", [(TensorProto.UINT8, 128), (TensorProto.INT8, -3)],
                         ids=["u8", "i8"])
def test_qdq_model_agrees_with_onnxruntime(zero_type, zero, target):
    proto = _qdq_model(zero_type, zero)
    model = kiln.compile(proto, target=target)
    x = np.random.default_rng(6).uniform(-8, 8, (5, 6)).astype(np.float32)
    # ties at .5 (round half to even: 0.025 / 0.05 = 0.5 -> 0, 0.075 -> 2 (1.5), -0.125 ->
    # -2 (-2.5)) and values far past the range (saturation)
    x[0] = [0.025, 0.075, -0.125, 1000.0, -1000.0, 0.0]
    want_y, want_q = run_ort(proto, {"x": x})
    y, q = model(x)
    np_dtype = want_q.dtype
    assert q.dtype == np_dtype
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(q, _quantize(x, np.float32(0.05), zero, np_dtype))
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["reference", "native"])
def test_quantize_per_axis_to_16_bits_saturates(target):
    scale = np.array([0.5, 2.0, 1e-3], np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=0),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0)]
    zero = np.array([0, 100, -7], np.int16)
    proto = make_model(nodes, [("x", TensorProto.FLOAT, [3, 5])],
                       [("q", TensorProto.INT16, [3, 5]), ("y", TensorProto.FLOAT, [3, 5])],
                       {"s": scale, "z": zero}, opset=21)
    x = np.array([[0.25, 0.75, -0.25, 1e9, -1e9], [1.0, 3.0, 5.0, -7.0, 65536.0],
                  [0.0005, 0.0015, 40.0, -40.0, 32.0]], np.float32)
    q, y = kiln.compile(proto, target=target)(x)
    want = _quantize(x, scale[:, None], zero[:, None], np.int16)
    np.testing.assert_array_equal(q, want)
    np.testing.assert_array_equal(q, run_ort(proto, {"x": x})[0])
    np.testing.assert_allclose(y, (want.astype(np.float32) - zero[:, None]) * scale[:, None],
                               rtol=1e-6)


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("dtype", ["i8", "u8"])
def test_max_pool_starts_from_the_types_lowest_value(dtype, target):
    model = kiln.compile(f"model M {{ forward(x: {dtype}[N, 2, 4, 6]) -> {dtype}[N, 2, 2, 3] "
                         "{ return max_pool(x, kernel_size = 2) } }", target=target)
    info = np.iinfo(NARROW[dtype])
    x = np.random.default_rng(2).integers(info.min, info.max, (3, 2, 4, 6), endpoint=True,
                                          dtype=NARROW[dtype])
    x[0, 0, :2, :2] = info.min  # a window of the lowest value only
    want = x.reshape(3, 2, 2, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(model(x), want)


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("elem, np_dtype", [(TensorProto.UINT8, np.uint8),
                                            (TensorProto.INT8, np.int8)], ids=["u8", "i8"])
def test_onnx_max_pool_of_bytes_with_asymmetric_pads(elem, np_dtype, target):
    """Pads kiln's max_pool cannot take are explicit, filled with the type's lowest value."""
    proto = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                         pads=[0, 1, 2, 0], strides=[2, 1])],
                       [("x", elem, [1, 2, 5, 6])], [("y", elem, None)])
    info = np.iinfo(np_dtype)
    x = np.random.default_rng(4).integers(info.min, info.max, (1, 2, 5, 6), endpoint=True,
                                          dtype=np_dtype)
    x[0, 0] = info.min
    got, want = kiln.compile(proto, target=target)(x), run_ort(proto, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target", ["reference", "native"])
def test_integer_matmuls_agree_with_onnxruntime(target):
    """MatMulInteger (u8 x i8, zero points) and QLinearMatMul (u8, its result requantized:
    a small y_scale saturates part of it)."""
    rng = np.random.default_rng(12)
    b = rng.integers(-128, 128, (7, 5), dtype=np.int8)
    bq = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    nodes = [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"]),
             helper.make_node("QLinearMatMul", ["a", "sa", "za", "bq", "sb", "zq", "sy", "zy"],
                              ["q"])]
    inits = {"b": b, "bq": bq, "za": np.array(3, np.uint8), "zb": np.array(-2, np.int8),
             "sa": np.array(0.02, np.float32), "sb": np.array(0.03, np.float32),
             "zq": np.array(120, np.uint8), "sy": np.array(0.05, np.float32),
             "zy": np.array(100, np.uint8)}
    proto = make_model(nodes, [("a", TensorProto.UINT8, ["N", 7])],
                       [("y", TensorProto.INT32, ["N", 5]), ("q", TensorProto.UINT8, ["N", 5])],
                       inits)
    a = rng.integers(0, 256, (4, 7), dtype=np.uint8)
    y, q = kiln.compile(proto, target=target)(a)
    want_y, want_q = run_ort(proto, {"a": a})
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(y, (a.astype(np.int32) - 3) @ (b.astype(np.int32) + 2))
    np.testing.assert_array_equal(q, want_q)
    assert (q == 0).any() or (q == 255).any()  # saturated somewhere
