"""ONNX control flow through the importer (compiler/onnx_import/convert_control.py): Scan
bodies (reading outer values, either direction) and If (a condition known at import time, or
only at run time), against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from _onnximport import make_model, run_ort, save
from onnx import TensorProto, helper, numpy_helper

import kiln

pytest.importorskip("onnxruntime")
F = TensorProto.FLOAT


def scan_model(direction: int) -> object:
    """A running sum over axis 0 of xs [T, 3] scaled by an outer initializer, emitting the
    state at each step: Scan(state0, xs) -> (final, stacked)."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["sx"]),
         helper.make_node("Add", ["s", "sx"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["emit"])],
        "body", [helper.make_tensor_value_info("s", F, [3]),
                 helper.make_tensor_value_info("x", F, [3])],
        [helper.make_tensor_value_info("s_out", F, [3]),
         helper.make_tensor_value_info("emit", F, [3])])
    node = helper.make_node("Scan", ["s0", "xs"], ["final", "ys"], body=body,
                            num_scan_inputs=1, scan_input_directions=[direction],
                            scan_output_directions=[direction])
    return make_model([node], [("s0", F, [3]), ("xs", F, ["T", 3])],
                      [("final", F, [3]), ("ys", F, ["T", 3])],
                      {"scale": np.array([1.0, -2.0, 0.5], np.float32)})


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("direction", [0, 1])
def test_scan(tmp_path, direction, target):
    path = save(scan_model(direction), tmp_path / "scan.onnx")
    rng = np.random.default_rng(0)
    feeds = {"s0": rng.standard_normal(3).astype(np.float32),
             "xs": rng.standard_normal((5, 3)).astype(np.float32)}
    model = kiln.compile(path, target=target)
    for got, want in zip(model(**feeds), run_ort(path, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def if_model(cond_input: bool) -> object:
    """y = If(cond, x * 2, x - 1): cond a graph input, or the constant true."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", F, ["N"])])
    other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", F, ["N"])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32)}
    inputs = [("x", F, ["N"])]
    if cond_input:
        inputs.append(("cond", TensorProto.BOOL, []))
    else:
        nodes.insert(0, helper.make_node("Constant", [], ["cond"],
                                         value=numpy_helper.from_array(np.array(True))))
    return make_model(nodes, inputs, [("y", F, ["N"])], inits)


@pytest.mark.parametrize("target", ["reference", "native"])
def test_if_at_run_time(tmp_path, target):
    path = save(if_model(True), tmp_path / "if.onnx")
    model = kiln.compile(path, target=target)
    x = np.arange(4, dtype=np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(model(**feeds), run_ort(path, feeds)[0])


def test_if_known_at_import_time_keeps_one_branch(tmp_path):
    path = save(if_model(False), tmp_path / "if.onnx")
    model = kiln.compile(path, target="reference")
    ops = {model.lowered().graph.op(n) for n in model.lowered().graph.g}
    assert "where" not in ops and "sub" not in ops
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(model(x), run_ort(path, {"x": x})[0])


def test_unsupported_node_in_a_body_is_named(tmp_path):
    body = helper.make_graph([helper.make_node("StringNormalizer", ["x"], ["y"], name="inner")],
                             "body", [helper.make_tensor_value_info("x", F, [3])],
                             [helper.make_tensor_value_info("y", F, [3])])
    node = helper.make_node("Scan", ["xs"], ["ys"], body=body, num_scan_inputs=1, name="loop")
    path = save(make_model([node], [("xs", F, [2, 3])], [("ys", F, [2, 3])]), tmp_path / "m.onnx")
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(path, target="reference")
    assert err.value.code == "K0906"
    assert "node loop (#0, Scan)" in err.value.message and "node inner" in err.value.message


def loop_model(trip: int, cond: bool | None, body_cond: str = "Identity") -> object:
    """Loop(M = trip, cond, s0) over s += x * i, emitting s * scale each iteration: x an outer
    input, scale an outer initializer; the body's condition is its own passed on
    (`Identity`), the constant true (`true`), or computed from the iteration (`Less`)."""
    B = TensorProto.BOOL
    cond_nodes = {
        "Identity": [helper.make_node("Identity", ["c"], ["c_out"])],
        "true": [helper.make_node("Constant", [], ["c_out"],
                                  value=numpy_helper.from_array(np.array(True)))],
        "Less": [helper.make_node("Less", ["i", "three"], ["c_out"])],
    }[body_cond]
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F),
         helper.make_node("Mul", ["x", "fi"], ["xi"]),
         helper.make_node("Add", ["s", "xi"], ["s_out"]),
         helper.make_node("Mul", ["s_out", "scale"], ["emit"]), *cond_nodes],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c", B, []),
                 helper.make_tensor_value_info("s", F, [3])],
        [helper.make_tensor_value_info("c_out", B, []),
         helper.make_tensor_value_info("s_out", F, [3]),
         helper.make_tensor_value_info("emit", F, [3])])
    inits = {"M": np.array(trip, np.int64), "scale": np.array([1.0, -2.0, 0.5], np.float32),
             "three": np.array(3, np.int64)}
    nodes = [helper.make_node("Loop", ["M", "" if cond is None else "cond", "s0"],
                              ["final", "ys"], body=body, name="loop")]
    if cond is not None:
        nodes.insert(0, helper.make_node("Constant", [], ["cond"],
                                         value=numpy_helper.from_array(np.array(cond))))
    return make_model(nodes, [("s0", F, [3]), ("x", F, [3])],
                      [("final", F, [3]), ("ys", F, [None, 3])], inits)


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("trip, cond, body_cond", [
    (5, None, "Identity"), (4, True, "true"), (3, False, "Identity"), (0, None, "true")])
def test_loop_with_a_static_trip_count(tmp_path, target, trip, cond, body_cond):
    path = save(loop_model(trip, cond, body_cond), tmp_path / "loop.onnx")
    rng = np.random.default_rng(1)
    feeds = {"s0": rng.standard_normal(3).astype(np.float32),
             "x": rng.standard_normal(3).astype(np.float32)}
    model = kiln.compile(path, target=target)
    got, want = model(**feeds), run_ort(path, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("why, model", [
    ("computes its condition", loop_model(5, None, "Less")),
    ("iterations", loop_model(2**62, None)),  # never an array of 2^62 iteration numbers
    ("trip count", make_model(
        [helper.make_node("Loop", ["M", "", "s0"], ["final"], name="loop",
                          body=loop_model(1, None).graph.node[0].attribute[0].g)],
        [("M", TensorProto.INT64, []), ("s0", F, [3]), ("x", F, [3])], [("final", F, [3])],
        {"scale": np.ones(3, np.float32)})),
])
def test_loop_kiln_cannot_run_is_refused_with_why(tmp_path, why, model):
    path = save(model, tmp_path / "loop.onnx")
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(path, target="reference")
    assert err.value.code == "K0906"
    assert "node loop (#0, Loop)" in err.value.message and why in err.value.message


@pytest.mark.parametrize("target", ["reference", "native"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_function_op_with_subgraphs(tmp_path, target, align_corners):
    """AffineGrid, whose ONNX function body holds If nodes (their branches read the body's
    own values), on a random theta and size against onnxruntime."""
    rng = np.random.default_rng(align_corners)
    n, h, w = (int(k) for k in rng.integers(1, 6, size=3))
    size = np.array([n, 3, h, w], np.int64)
    node = helper.make_node("AffineGrid", ["theta", "size"], ["grid"],
                            align_corners=align_corners)
    model = make_model([node], [("theta", F, [n, 2, 3])], [("grid", F, [n, h, w, 2])],
                       {"size": size}, opset=20)
    path = save(model, tmp_path / "affine.onnx")
    theta = rng.standard_normal((n, 2, 3)).astype(np.float32)
    (want,) = run_ort(path, {"theta": theta})
    got = kiln.compile(path, target=target)(theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
