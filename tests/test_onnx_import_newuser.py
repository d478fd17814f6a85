"""A new user's ONNX files, made with onnx.helper (no exporter needed): what an onnxruntime
user meets and kiln got wrong or refused. Sizes named differently (or not at all) on two
inputs that an op needs equal, empty dim_params, sizes an exporter fixed while tracing
(`args=` fixes them, as onnxruntime's free dimension overrides), Resize as PyTorch writes it,
an output declared with the wrong type, and what an unsupported op's error suggests. The
oracles: numpy, and onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _onnximport import make_model, save
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln import KilnError

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
TARGETS = ["reference", "native"]
rng = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each model of this module written once, by name."""
    directory = tmp_path_factory.mktemp("newuser")
    made: dict = {}

    def get(name: str):
        if name not in made:
            made[name] = save(MODELS[name](), directory / f"{name}.onnx")
        return made[name]

    return get


def unnamed_dims() -> onnx.ModelProto:
    """a: [batch, ?] + b: [?, ""]: four sizes, two of them equal by Add's rule."""
    return make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                      [("a", F32, ["batch", None]), ("b", F32, [None, ""])],
                      [("y", F32, [None, None])])


def list_axes() -> onnx.ModelProto:
    """PyTorch's `dynamic_axes={"x": [0, 1], "w": [0]}`: each input's sizes named apart,
    the same by MatMul's rule (x's columns, w's rows) and Concat's (the rows)."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["m"]),
                       helper.make_node("Concat", ["m", "z"], ["y"], axis=1)],
                      [("x", F32, ["x_dynamic_axes_1", "x_dynamic_axes_2"]),
                       ("w", F32, ["w_dynamic_axes_1", 3]),
                       ("z", F32, ["z_dynamic_axes_1", 2])],
                      [("y", F32, ["x_dynamic_axes_1", 5])])


def empty_params() -> onnx.ModelProto:
    """Two inputs whose one axis has an empty dim_param: two sizes, not one."""
    return make_model([helper.make_node("Concat", ["a", "b"], ["y"], axis=0)],
                      [("a", F32, [""]), ("b", F32, [""])], [("y", F32, [None])])


def traced_seq() -> onnx.ModelProto:
    """x: [seq, 4] reshaped to [7, 2, 2], as a tracing exporter writes `x.view(T, 2, 2)`
    with T=7 at export: right only for seq = 7."""
    shape = helper.make_tensor("shape", I64, [3], [7, 2, 2])
    return make_model([helper.make_node("Constant", [], ["s"], value=shape),
                       helper.make_node("Reshape", ["x", "s"], ["y"])],
                      [("x", F32, ["seq", 4])], [("y", F32, ["seq", 2, 2])])


def resize_bilinear() -> onnx.ModelProto:
    """PyTorch's `interpolate(x, scale_factor=2, mode="bilinear")`: mode linear, and
    `nearest_mode="floor"`, which concerns only the nearest mode."""
    scales = helper.make_tensor("scales", F32, [4], [1, 1, 2, 2])
    return make_model([helper.make_node("Constant", [], ["sc"], value=scales),
                       helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear",
                                        coordinate_transformation_mode="half_pixel",
                                        nearest_mode="floor", cubic_coeff_a=-0.75)],
                      [("x", F32, [2, 3, 4, 5])], [("y", F32, [2, 3, 8, 10])])


def resize_to_sizes() -> onnx.ModelProto:
    """PyTorch's `interpolate(x, size=(6, 7))` of a dynamic batch: the sizes are
    `Concat(Shape(x)[:2], [6, 7])`, the batch's known only as the symbol."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], end=2),
             helper.make_node("Constant", [], ["hw"],
                              value=helper.make_tensor("hw", I64, [2], [6, 7])),
             helper.make_node("Concat", ["shape", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                              coordinate_transformation_mode="asymmetric",
                              nearest_mode="floor")]
    return make_model(nodes, [("x", F32, ["batch", 3, 4, 5])], [("y", F32, ["batch", 3, 6, 7])])


def upsample_any_size() -> onnx.ModelProto:
    """PyTorch's `interpolate(x, scale_factor=2)` (nearest) of an image of any size."""
    scales = helper.make_tensor("scales", F32, [4], [1, 1, 2, 2])
    return make_model([helper.make_node("Constant", [], ["sc"], value=scales),
                       helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                                        coordinate_transformation_mode="asymmetric",
                                        nearest_mode="floor")],
                      [("x", F32, ["b", 2, "h", "w"])], [("y", F32, ["b", 2, None, None])])


def wrong_output_type() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [3])],
                      [("y", TensorProto.INT32, [3])])


def misspelt_op() -> onnx.ModelProto:
    return make_model([helper.make_node("Matmul", ["x", "x"], ["y"], name="mm")],
                      [("x", F32, [2, 2])], [("y", F32, [2, 2])])


def ort_fused_op() -> onnx.ModelProto:
    model = make_model([helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused",
                                         domain="com.microsoft")],
                       [("x", F32, [2, 2])], [("y", F32, [2, 2])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def isinf_of_double() -> onnx.ModelProto:
    """PyTorch's TorchScript `torch.isinf(x)`, `isnan`, and a round trip through DOUBLE."""
    double = TensorProto.DOUBLE
    return make_model([helper.make_node("Cast", ["x"], ["d"], to=double),
                       helper.make_node("IsInf", ["d"], ["inf"]),
                       helper.make_node("IsNaN", ["d"], ["nan"]),
                       helper.make_node("Cast", ["d"], ["i"], to=I64)],
                      [("x", F32, ["n"])], [("inf", TensorProto.BOOL, ["n"]),
                                            ("nan", TensorProto.BOOL, ["n"]), ("i", I64, ["n"])])


def arithmetic_in_double() -> onnx.ModelProto:
    """A DOUBLE value that is computed with: (x + 2^16) - 2^16 in f64 keeps an f32 x of
    magnitude above 2^-13 exactly; in f32 it would round x to a multiple of 2^-8."""
    big = helper.make_tensor("big", TensorProto.DOUBLE, [], [2.0**16])
    return make_model([helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
                       helper.make_node("Constant", [], ["c"], value=big),
                       helper.make_node("Add", ["d", "c"], ["s"]),
                       helper.make_node("Sub", ["s", "c"], ["t"]),
                       helper.make_node("Cast", ["t"], ["y"], to=F32)],
                      [("x", F32, ["n"])], [("y", F32, ["n"])])


def resize_to_skip(mode: str = "linear", ctm: str = "half_pixel") -> onnx.ModelProto:
    """A U-Net decoder's `interpolate(x, size=skip.shape[2:], mode="bilinear")`: the sizes
    are `Concat(Shape(x)[:2], Shape(skip)[2:])`, the spatial ones known only at run time;
    the result is added to the skip connection."""
    extra = {"nearest_mode": "floor"} if mode == "nearest" else {}
    nodes = [helper.make_node("Shape", ["x"], ["nc"], end=2),
             helper.make_node("Shape", ["skip"], ["hw"], start=2),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode=mode,
                              coordinate_transformation_mode=ctm, **extra),
             helper.make_node("Add", ["up", "skip"], ["y"])]
    return make_model(nodes, [("x", F32, ["n", 4, "h", "w"]), ("skip", F32, ["n", 4, "H", "W"])],
                      [("y", F32, ["n", 4, "H", "W"])])


def resize_to_skip_nearest() -> onnx.ModelProto:
    return resize_to_skip("nearest", "asymmetric")


def resize_to_skip_corners() -> onnx.ModelProto:
    return resize_to_skip("linear", "align_corners")


def resize_to_skip_pytorch() -> onnx.ModelProto:
    return resize_to_skip("linear", "pytorch_half_pixel")


MODELS = {f.__name__: f for f in (unnamed_dims, list_axes, empty_params, traced_seq,
                                  resize_bilinear, resize_to_sizes, wrong_output_type,
                                  misspelt_op, ort_fused_op, isinf_of_double,
                                  arithmetic_in_double, upsample_any_size, resize_to_skip,
                                  resize_to_skip_nearest, resize_to_skip_corners,
                                  resize_to_skip_pytorch)}


@pytest.mark.parametrize("target", TARGETS)
def test_unnamed_sizes_an_op_needs_equal_are_one(files, target):
    model = kiln.compile(files("unnamed_dims"), target=target)
    a, b = model.inputs
    assert a.type.shape == b.type.shape  # b's sizes are a's: [batch, a_1]
    x, y = rand(3, 5), rand(3, 5)
    np.testing.assert_allclose(model(a=x, b=y), x + y, rtol=1e-6)
    with pytest.raises(KilnError, match=r"K0503.*input b"):  # onnxruntime would fail too
        model(a=x, b=rand(4, 5))


@pytest.mark.parametrize("target", TARGETS)
def test_sizes_named_apart_by_dynamic_axes_lists(files, target):
    model = kiln.compile(files("list_axes"), target=target)
    assert model.inputs[2].type.shape[0] == model.inputs[0].type.shape[0]
    x, w, z = rand(4, 6), rand(6, 3), rand(4, 2)
    np.testing.assert_allclose(model(x, w, z), np.concatenate([x @ w, z], 1), rtol=1e-5,
                               atol=1e-6)


def test_empty_dim_params_are_sizes_of_their_own(files):
    model = kiln.compile(files("empty_params"), target="reference")
    a, b = model.inputs
    assert a.type.shape != b.type.shape
    x, y = rand(2), rand(5)
    np.testing.assert_array_equal(model(x, y), np.concatenate([x, y]))


def test_a_size_fixed_while_tracing_names_the_symbol(files):
    with pytest.raises(KilnError, match="K0906") as err:
        kiln.compile(files("traced_seq"), target="reference")
    assert "args={'seq': N}" in str(err.value) and "--arg seq=N" in str(err.value)


@pytest.mark.parametrize("target", TARGETS)
def test_args_fix_an_inputs_size(files, target):
    model = kiln.compile(files("traced_seq"), target=target, args={"seq": 7})
    assert str(model.inputs[0].type) == "f32[7, 4]"
    x = rand(7, 4)
    np.testing.assert_array_equal(model(x), x.reshape(7, 2, 2))


@pytest.mark.parametrize("args, match", [({"sq": 7}, "no input has a size named sq"),
                                         ({"seq": 0}, "positive int"),
                                         ({"seq": "7"}, "positive int")])
def test_args_that_name_no_size(files, args, match):
    with pytest.raises(KilnError, match=match):
        kiln.compile(files("traced_seq"), target="reference", args=args)


def test_cli_arg_fixes_a_size(files, capsys):
    from _clitest import run

    code, out, err = run(capsys, "check", files("traced_seq"), "--arg", "seq=7")
    assert code == 0, err
    assert "f32[7, 4]" in out


@pytest.mark.parametrize("name, x", [("resize_bilinear", (2, 3, 4, 5)),
                                     ("resize_to_sizes", (3, 3, 4, 5)),
                                     ("upsample_any_size", (2, 2, 5, 7)),
                                     ("upsample_any_size", (1, 2, 1, 3))])
@pytest.mark.parametrize("target", TARGETS)
def test_resize_as_pytorch_writes_it(files, name, x, target):
    path = files(name)
    x = rand(*x)
    (want,) = ReferenceEvaluator(str(path)).run(None, {"x": x})
    got = kiln.compile(path, target=target)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resize_to_skip", "resize_to_skip_nearest",
                                  "resize_to_skip_corners"])
@pytest.mark.parametrize("target", TARGETS)
def test_resize_to_another_inputs_size(files, name, target):
    """Resized to a size known only at run time (the skip connection's): one compiled model
    at pairs of sizes, against ONNX's reference and onnxruntime; align_corners also from and
    to a size of 1 (whose source coordinate ONNX makes 0)."""
    import onnxruntime as ort

    path = files(name)
    model = kiln.compile(path, target=target)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pairs = [((3, 4), (6, 8)), ((5, 3), (9, 7)), ((4, 4), (4, 4))]
    if name == "resize_to_skip_corners":
        pairs += [((1, 1), (3, 4)), ((3, 5), (1, 1)), ((1, 4), (1, 9))]
    for small, large in pairs:
        x, skip = rand(2, 4, *small), rand(2, 4, *large)
        (want,) = ReferenceEvaluator(str(path)).run(None, {"x": x, "skip": skip})
        (runtime,) = session.run(None, {"x": x, "skip": skip})
        got = model(x, skip)
        assert got.shape == want.shape == (2, 4, *large)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, runtime, rtol=1e-5, atol=1e-6)


def test_resize_to_a_run_time_size_in_another_mode_is_refused(files):
    with pytest.raises(KilnError, match=r"(?s)K0906.*known only at run time, with mode linear "
                       r"and pytorch_half_pixel"):
        kiln.compile(files("resize_to_skip_pytorch"), target="reference")


def test_an_output_declared_with_the_wrong_type(files):
    with pytest.raises(KilnError, match=r"K0903.*'y' is declared i32 but its node computes f32"):
        kiln.compile(files("wrong_output_type"), target="reference")


def test_an_unknown_op_suggests_the_near_one(files):
    with pytest.raises(KilnError, match=r"node mm .*no converter for Matmul \(kiln converts "
                       r"MatMul"):
        kiln.compile(files("misspelt_op"), target="reference")


def test_an_onnxruntime_op_says_where_it_comes_from(files):
    with pytest.raises(KilnError, match="FusedMatMul of domain 'com.microsoft'") as err:
        kiln.compile(files("ort_fused_op"), target="reference")
    assert "before optimization" in str(err.value)


@pytest.mark.parametrize("target", TARGETS)
def test_a_cast_to_double_read_only_exactly(files, target):
    x = np.array([1.5, -np.inf, np.nan, np.inf, -2.7, 0.0], np.float32)
    inf, nan, i = kiln.compile(files("isinf_of_double"), target=target)(x)
    np.testing.assert_array_equal(inf, np.isinf(x))
    np.testing.assert_array_equal(nan, np.isnan(x))
    finite = np.isfinite(x)
    np.testing.assert_array_equal(i[finite], x[finite].astype(np.int64))


@pytest.mark.parametrize("target", TARGETS)
def test_arithmetic_in_double_runs_in_f64(files, target):
    x = np.array([0.3, -1.7, 1e-3, 2.5, -0.0123], np.float32)
    np.testing.assert_array_equal(kiln.compile(files("arithmetic_in_double"), target=target)(x), x)
