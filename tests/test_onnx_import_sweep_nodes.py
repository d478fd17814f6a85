"""The ONNX patterns behind the fixes of the import sweep (tests/test_onnx_import_sweep.py),
one node each, against onnxruntime at several sizes of one compiled model: values an
exporter computes from the inputs' shapes where kiln needed constants (Trilu's k, TopK's K,
Clip's bounds, a Split of a shape), auto_pad SAME on symbolic sizes, ScatterND and GatherND
of a dynamic batch, TopK and CumSum / CumProd along a symbolic axis, Slice bounds
of minus a size, a Resize by 1 along a symbolic axis (the batch's)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _onnximport import make_model
from onnx import TensorProto, helper

import kiln
from kiln import KilnError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the oracle")

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
TARGETS = ["reference", "native"]


def _node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _int(name: str, value) -> onnx.NodeProto:
    return _node("Constant", [], [name], value=helper.make_tensor(
        name, I64, np.shape(value), np.ravel(value).tolist()))


def trilu_by_past(upper: int) -> onnx.ModelProto:
    """A KV cache's mask: x [t, past + t] kept on and below (or above) diagonal k = past,
    the key length less the query length, both from shapes."""
    nodes = [_node("Shape", ["x"], ["s"]), _int("zero", [0]), _int("one", [1]),
             _node("Gather", ["s", "one"], ["cols"]), _node("Gather", ["s", "zero"], ["rows"]),
             _node("Sub", ["cols", "rows"], ["k1"]), _node("Squeeze", ["k1", "zero"], ["k"]),
             _node("Trilu", ["x", "k"], ["y"], upper=upper)]
    return make_model(nodes, [("x", F32, ["t", "n"])], [("y", F32, ["t", "n"])])


def sort_by_topk(size: int | str = 5) -> onnx.ModelProto:
    """PyTorch's sort: TopK with K the axis's size, read from the shape (a number, or a
    symbolic size: an argsort over a dynamic sequence, pack_padded_sequence's of lengths)."""
    nodes = [_node("Shape", ["x"], ["s"]), _int("last", [1]),
             _node("Gather", ["s", "last"], ["k"]),
             _node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=0)]
    return make_model(nodes, [("x", F32, ["n", size])],
                      [("v", F32, ["n", size]), ("i", I64, ["n", size])])


def topk_of_a_symbolic_axis(largest: int) -> onnx.ModelProto:
    """The 3 largest (smallest) of a dynamic number of anchors."""
    nodes = [_int("k", [3]), _node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=largest)]
    return make_model(nodes, [("x", F32, ["n", "m"])], [("v", F32, ["n", 3]), ("i", I64, ["n", 3])])


def cumsum_of_a_sequence(exclusive: int, reverse: int) -> onnx.ModelProto:
    """RoBERTa's position ids: running sums of an int mask over a dynamic sequence (and a
    float's)."""
    nodes = [_int("axis", 1),
             _node("CumSum", ["mask", "axis"], ["ids"], exclusive=exclusive, reverse=reverse),
             _node("CumSum", ["x", "axis"], ["sums"], exclusive=exclusive, reverse=reverse)]
    return make_model(nodes, [("mask", TensorProto.INT32, ["n", "t"]), ("x", F32, ["n", "t"])],
                      [("ids", TensorProto.INT32, ["n", "t"]), ("sums", F32, ["n", "t"])])


def cumprod_of_a_sequence() -> onnx.ModelProto:
    """CumProd (opset 26, which onnxruntime lacks) over a dynamic sequence, reversed."""
    nodes = [_int("axis", 1), _node("CumProd", ["x", "axis"], ["y"], reverse=1)]
    return make_model(nodes, [("x", F32, ["n", "t"])], [("y", F32, ["n", "t"])], opset=26)


def clip_by_size(lower_at_run_time: bool) -> onnx.ModelProto:
    """x clamped to [lo, hi] where one bound is x's last size as a float (`clamp(max=
    img.shape[-1])`) and the other a constant; with the run-time one as min, min > max on
    small widths: ONNX gives max there."""
    size = [_node("Shape", ["x"], ["s"], start=1), _node("Squeeze", ["s"], ["w"]),
            _node("Cast", ["w"], ["wf"], to=F32)]
    fixed = _node("Constant", [], ["c"], value=helper.make_tensor("c", F32, [], [2.5]))
    bounds = ["wf", "c"] if lower_at_run_time else ["c", "wf"]
    nodes = size + [fixed, _node("Clip", ["x", *bounds], ["y"])]
    return make_model(nodes, [("x", F32, ["n", "w"])], [("y", F32, ["n", "w"])], opset=17)


def reshape_by_split() -> onnx.ModelProto:
    """x [n, c, h, w] reshaped to [n, c * h * w] by its shape Split into its sizes."""
    nodes = [_node("Shape", ["x"], ["s"]),
             _node("Split", ["s"], ["n", "c", "h", "w"], axis=0, num_outputs=4),
             _node("Mul", ["c", "h"], ["ch"]), _node("Mul", ["ch", "w"], ["chw"]),
             _node("Concat", ["n", "chw"], ["shape"], axis=0),
             _node("Reshape", ["x", "shape"], ["y"])]
    return make_model(nodes, [("x", F32, ["n", 2, "h", 3])], [("y", F32, ["n", "m"])], opset=18)


def slice_from_the_end() -> onnx.ModelProto:
    """PyTorch's `x[:, -t:]` and `x[:, :-t]`, t another input's size: Slice bounds of minus
    a size, counted from the end."""
    nodes = [_node("Shape", ["y"], ["s"]), _int("one", [1]), _node("Gather", ["s", "one"], ["t"]),
             _node("Neg", ["t"], ["minus_t"]), _int("end", [2**63 - 1]), _int("start", [0]),
             _node("Slice", ["x", "minus_t", "end", "one"], ["last"]),
             _node("Slice", ["x", "start", "minus_t", "one"], ["first"])]
    return make_model(nodes, [("x", F32, ["n", "m", 3]), ("y", F32, ["n", "t"])],
                      [("last", F32, ["n", "t", 3]), ("first", F32, ["n", None, 3])])


def cubic_of_a_dynamic_batch() -> onnx.ModelProto:
    """`interpolate(scale_factor=2, mode="bicubic")`: scales [1, 1, 2, 2], the batch's 1
    along an axis of symbolic size."""
    scales = np.array([1, 1, 2, 2], np.float32)
    nodes = [_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", cubic_coeff_a=-0.75,
                   coordinate_transformation_mode="pytorch_half_pixel")]
    return make_model(nodes, [("x", F32, ["n", 2, 3, 4])], [("y", F32, ["n", 2, 6, 8])],
                      {"scales": scales})


def same_conv(auto_pad: str, stride: int = 1) -> onnx.ModelProto:
    """A 2x4 kernel (odd and even total padding) with auto_pad on symbolic sizes."""
    w = np.random.default_rng(0).standard_normal((3, 2, 2, 4)).astype(np.float32)
    nodes = [_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[stride, stride])]
    return make_model(nodes, [("x", F32, ["n", 2, "h", "w"])], [("y", F32, None)], {"w": w})


def scatter_first_column() -> onnx.ModelProto:
    """`x[:, 0] = u` of a dynamic batch, as PyTorch's exporter writes it: ScatterND at the
    indices [[i, 0] for i in range(n)]."""
    nodes = [_node("Shape", ["x"], ["s"]), _int("zero", [0]),
             _node("Gather", ["s", "zero"], ["n1"]), _node("Squeeze", ["n1", "zero"], ["n"]),
             _int("start", 0), _int("step", 1), _node("Range", ["start", "n", "step"], ["rows"]),
             _int("axis", [1]), _node("Unsqueeze", ["rows", "axis"], ["r"]),
             _node("Mul", ["r", "zero"], ["c"]), _node("Concat", ["r", "c"], ["idx"], axis=1),
             _node("ScatterND", ["x", "idx", "u"], ["y"]),
             _node("GatherND", ["y", "idx"], ["g"])]
    return make_model(nodes, [("x", F32, ["n", 4]), ("u", F32, ["n"])],
                      [("y", F32, ["n", 4]), ("g", F32, ["n"])])


def _agree(model: onnx.ModelProto, target: str, feeds_list) -> None:
    compiled = kiln.compile(model, target=target)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        want = session.run(None, feeds)
        got = compiled(**feeds)
        got = list(got) if isinstance(got, tuple) else [got]
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _rand(*shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("upper", [0, 1])
def test_trilu_diagonal_from_shapes(target, upper):
    _agree(trilu_by_past(upper), target, [{"x": _rand(t, n)} for t, n in ((3, 5), (2, 2), (1, 4))])


@pytest.mark.parametrize("target", TARGETS)
def test_topk_k_from_a_shape(target):
    x = _rand(3, 5)
    x[0, 1] = x[0, 3]  # a tie: the lower index first
    _agree(sort_by_topk(), target, [{"x": x}, {"x": _rand(1, 5)}])
    _agree(sort_by_topk("m"), target, [{"x": x}, {"x": _rand(2, 1)}, {"x": _rand(1, 8)}])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("largest", [0, 1])
def test_topk_along_a_symbolic_axis(target, largest):
    x = _rand(2, 7)
    x[1, 2] = x[1, 5]  # a tie: the lower index first
    _agree(topk_of_a_symbolic_axis(largest), target, [{"x": x}, {"x": _rand(3, 3)}])


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_topk_past_its_symbolic_axis_is_refused(target):
    """K = 3 of 2 anchors: onnxruntime refuses the call, and so does every kiln target
    (K0505), where the slots past the axis would have held element 0 of it."""
    compiled = kiln.compile(topk_of_a_symbolic_axis(1), target=target)
    with pytest.raises(KilnError) as info:
        compiled(x=_rand(2, 2))
    assert info.value.code == "K0505"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumulative_along_a_symbolic_axis(target, exclusive, reverse):
    feeds = []
    for n, t in ((2, 5), (3, 1)):
        mask = (np.arange(t)[None] < np.arange(t, t - n, -1)[:, None]).astype(np.int32)
        feeds.append({"mask": mask, "x": _rand(n, t)})
    _agree(cumsum_of_a_sequence(exclusive, reverse), target, feeds)


@pytest.mark.parametrize("target", TARGETS)
def test_cumprod_along_a_symbolic_axis(target):
    model = kiln.compile(cumprod_of_a_sequence(), target=target)
    for t in (4, 1):
        x = _rand(2, t)
        want = np.flip(np.cumprod(np.flip(x, 1), axis=1), 1)
        np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("lower_at_run_time", [False, True])
def test_clip_bound_at_run_time(target, lower_at_run_time):
    feeds = [{"x": _rand(2, w) * 4} for w in (2, 3, 6)]
    feeds[0]["x"][0, 0] = np.nan
    _agree(clip_by_size(lower_at_run_time), target, feeds)


@pytest.mark.parametrize("target", TARGETS)
def test_a_shape_split_into_sizes(target):
    _agree(reshape_by_split(), target, [{"x": _rand(n, 2, h, 3)} for n, h in ((2, 4), (3, 1))])


@pytest.mark.parametrize("target", TARGETS)
def test_slice_bounds_of_minus_a_size(target):
    _agree(slice_from_the_end(), target, [{"x": _rand(2, m, 3), "y": _rand(2, t)}
                                          for m, t in ((7, 3), (4, 4), (5, 1))])


@pytest.mark.parametrize("target", TARGETS)
def test_resize_by_one_along_a_symbolic_axis(target):
    _agree(cubic_of_a_dynamic_batch(), target, [{"x": _rand(n, 2, 3, 4)} for n in (2, 1)])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_same_on_symbolic_sizes(target, auto_pad):
    _agree(same_conv(auto_pad), target, [{"x": _rand(n, 2, h, w)}
                                         for n, h, w in ((2, 5, 6), (1, 3, 9))])


def test_auto_pad_same_with_a_stride_needs_the_sizes():
    with pytest.raises(KilnError, match="auto_pad=SAME_UPPER with a stride other than 1 needs "
                                        "constant spatial sizes"):
        kiln.compile(same_conv("SAME_UPPER", stride=2), target="reference")


@pytest.mark.parametrize("target", TARGETS)
def test_scatter_nd_of_a_dynamic_batch(target):
    _agree(scatter_first_column(), target, [{"x": _rand(n, 4), "u": _rand(n)} for n in (3, 1)])
