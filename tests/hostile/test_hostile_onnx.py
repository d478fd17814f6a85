"""Hostile inputs on the ONNX target: the edges where onnxruntime's own ops differ from kiln's
semantics (integer division traps, unchecked indices, NaN skipped, bools that are not 0/1).
Each is run on the reference, native and onnx targets, which must agree: the same values, or
the same located K0505."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _hostile import run_child

import kiln
from kiln import KilnError
from kiln.compiler.codegen import onnx as onnx_codegen

pytest.importorskip("onnxruntime")

TARGETS = ("reference", "native", "onnx")

DIVIDE = """
model Divide {
  forward(a: i64[N], b: i64[N], c: i32[N], d: i32[N]) -> (i64[N], i64[N], i32[N], i32[N]) {
    return a // b, a % b, c // d, c % d
  }
}"""


def _division_inputs() -> dict[str, np.ndarray]:
    """INT_MIN // -1 (which traps in C), division by zero and ordinary floors, in i64 and i32."""
    out = {}
    for (num, den), dtype in ((("a", "b"), np.int64), (("c", "d"), np.int32)):
        low = np.iinfo(dtype).min
        out[num] = np.array([low, low, 7, -7, 7, -7, 0, low, 5], dtype)
        out[den] = np.array([-1, 0, 0, 0, -2, 2, -1, 1, -1], dtype)
    return out


def test_integer_division_at_int_min_and_by_zero_agrees_and_never_traps():
    """INT_MIN // -1 wraps to INT_MIN and x // 0, x % 0 are 0 (numpy's answers) on every target;
    onnxruntime once died of SIGFPE on the exported Mod/Div, so it runs in a child process."""
    inputs = _division_inputs()
    child = run_child(f"""
        import json, numpy as np, kiln
        m = kiln.compile({DIVIDE!r}, target="onnx")
        inputs = {{k: np.array(v, dtype=t) for k, (v, t) in {_as_json(inputs)!r}.items()}}
        print(json.dumps([o.tolist() for o in m(**inputs)]))
    """)
    assert not child.crashed and not child.timed_out, child.stderr[-2000:]
    assert child.returncode == 0, child.stderr[-2000:]
    got_onnx = json.loads(child.stdout.strip().splitlines()[-1])
    with np.errstate(all="ignore"):
        want = [np.asarray(o).tolist() for o in kiln.compile(DIVIDE, target="reference")(**inputs)]
    native = [np.asarray(o).tolist() for o in kiln.compile(DIVIDE, target="native")(**inputs)]
    assert want[0][:2] == [np.iinfo(np.int64).min, 0]  # the semantics this test pins down
    assert native == want
    assert got_onnx == want


def _as_json(arrays: dict[str, np.ndarray]) -> dict:
    return {k: (v.tolist(), str(v.dtype)) for k, v in arrays.items()}


INDEXED = {
    "gather": ("""
model M {
  param table: [5, 2] = init.normal()
  forward(ids: i64[N]) -> f32[N, 2] {
    return table[ids]
  }
}""", {"ids": np.array([1, 7, -9, 0])}),
    "take_along_axis": ("""
model M {
  forward(x: f32[B, 4], i: i64[B, 2]) -> f32[B, 2] {
    return take_along_axis(x, i, axis = 1)
  }
}""", {"x": np.ones((2, 4), np.float32), "i": np.array([[0, 4], [1, -5]])}),
    "scatter": ("""
model M {
  forward(src: f32[N], i: i64[N]) -> f32[3] {
    return scatter(src, i, size = 3, reduce = "max")
  }
}""", {"src": np.ones(3, np.float32), "i": np.array([0, 3, -4])}),
    "one_hot": ("""
model M {
  forward(x: i64[N]) -> i32[N, 3] {
    return one_hot(x, num_classes = 3, dtype = "i32")
  }
}""", {"x": np.array([1, 3, -1])}),
    "slice": ("""
model M {
  forward(x: f32[N, 2], y: f32[K]) -> (f32[2], f32[2]) {
    return x[K], x[0]
  }
}""", {"x": np.ones((3, 2), np.float32), "y": np.ones(5, np.float32)}),
    "slice-of-empty": ("""
model M {
  forward(x: f32[N, 2]) -> f32[2] {
    return x[-1]
  }
}""", {"x": np.ones((0, 2), np.float32)}),
}


def _failure(model, inputs) -> KilnError:
    with pytest.raises(KilnError) as info:
        model(**inputs)
    return info.value


@pytest.mark.parametrize("op", sorted(INDEXED))
def test_an_index_out_of_range_is_the_same_located_k0505_on_every_target(op):
    """onnxruntime once raised its own exception (gather, scatter, a slice's Squeeze) or gave a
    row of zeros (one_hot); now the onnx target reports what native code reports, at the same
    place."""
    source, inputs = INDEXED[op]
    errors = {t: _failure(kiln.compile(source, target=t), inputs) for t in TARGETS}
    for target, err in errors.items():
        assert err.code == "K0505", (target, err)
        assert op.split("-")[0] in err.message, (target, err.message)
        assert err.span is not None and err.span.line == errors["reference"].span.line, target
    assert errors["onnx"].message == errors["native"].message


def test_indices_in_range_still_run_on_onnx_after_a_failure():
    """A failed call changes nothing: the next good call gives the reference's answer."""
    source, _ = INDEXED["gather"]
    onnx_model = kiln.compile(source, target="onnx")
    ref = kiln.compile(source, target="reference")
    _failure(onnx_model, {"ids": np.array([9])})
    good = np.array([4, -5, 0])
    np.testing.assert_array_equal(onnx_model(good), ref(good))


@pytest.mark.parametrize("call", ["gather(x, ids, axis = 0)",
                                  "take_along_axis(x, unsqueeze(ids, -1) + zeros([K, 2], dtype = \"i64\"), axis = 0)"])
def test_indexing_an_empty_axis_is_k0505_not_an_onnxruntime_error(call):
    """Every index into an empty axis is out of range: native code once skipped its checks
    there (a silent answer) and onnxruntime raised its own error."""
    source = f"""
model M {{
  forward(x: f32[N, 2], ids: i64[K]) -> f32[K, 2] {{
    return {call}
  }}
}}"""
    inputs = {"x": np.zeros((0, 2), np.float32), "ids": np.array([0])}
    for target in TARGETS:
        assert _failure(kiln.compile(source, target=target), inputs).code == "K0505", target
    empty = {"x": np.zeros((0, 2), np.float32), "ids": np.zeros(0, np.int64)}
    for target in TARGETS:
        assert kiln.compile(source, target=target)(**empty).shape == (0, 2), target


NAN_REDUCTIONS = """
model M {
  forward(x: f32[B, 4], y: f32[B, 4]) -> (f32[B], f32[B], i64[B], i64[B], f32[], f32[B, 4], f32[B, 4]) {
    rows = (max(x, axis = 1), min(x, axis = 1), argmax(x, axis = 1), argmin(x, axis = 1))
    return rows[0], rows[1], rows[2], rows[3], max(x), maximum(x, y), minimum(x, y)
  }
}"""


@pytest.mark.parametrize("op", sorted(INDEXED))
def test_checks_are_valid_onnx_and_stay_out_of_exported_files(op, tmp_path):
    """The onnx target's checked graph passes onnx's full checker; a file written by
    export_onnx has the model's outputs only (checking is left to the runtime running it)."""
    model = kiln.compile(INDEXED[op][0], target="onnx")
    proto, failures = onnx_codegen.export_checked(model.lowered(), model.params)
    onnx.checker.check_model(proto, full_check=True)
    names = [o.name for o in proto.graph.output]
    assert failures and names[len(model.outputs):] == [
        onnx_codegen.FAILURE_OUTPUT.format(k) for k in range(len(failures))]
    model.export_onnx(tmp_path / "m.onnx")
    exported = onnx.load(tmp_path / "m.onnx")
    assert [o.name for o in exported.graph.output] == names[:len(model.outputs)]


def test_a_nan_that_is_not_first_propagates_through_max_min_argmax_argmin():
    """numpy semantics, as the docs say: max/min of a row holding NaN is NaN, argmax/argmin give
    the first NaN's position; onnxruntime's reductions skip a NaN that is not first."""
    x = np.array([[1.0, np.nan, 5.0, -2.0], [3.0, 2.0, 1.0, 0.0], [np.nan, 0.0, 9.0, np.nan]],
                 np.float32)
    y = np.array([[0.0, 1.0, np.nan, 7.0]] * 3, np.float32)
    results = {t: kiln.compile(NAN_REDUCTIONS, target=t)(x, y) for t in TARGETS}
    assert np.isnan(results["reference"][0][0]) and results["reference"][2][0] == 1
    for target in ("native", "onnx"):
        for got, want in zip(results[target], results["reference"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=target)


def test_a_bool_input_whose_byte_is_not_0_or_1_is_true_on_every_target():
    """A bool array made by a view of bytes (2 means true to numpy) picks the same side of
    `where` on every target, compares equal to a true and counts once in a sum."""
    source = """
model M {
  forward(c: bool[N], x: f32[N]) -> (f32[N], bool[N], bool[N], bool[N], i64[]) {
    return where(c, x, -x), c == true, logical_not(c), c != (x > 0.0), sum(c)
  }
}"""
    c = np.array([2, 0, 1, 255], np.uint8).view(np.bool_)
    x = np.arange(1, 5, dtype=np.float32)
    results = {t: kiln.compile(source, target=t)(c, x) for t in TARGETS}
    np.testing.assert_array_equal(results["reference"][0], [1, -2, 3, 4])
    for target in ("native", "onnx"):
        for got, want in zip(results[target], results["reference"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=target)
    assert c.view(np.uint8)[0] == 2  # the caller's array is left as it was


def test_an_index_out_of_range_inside_a_scan_body_is_reported_too():
    """A check inside a scan's body counts its failures per step (scanned out of the loop)."""
    source = """
model M {
  param table: [5, 2] = init.normal()
  forward(ids: i64[B, T]) -> f32[B, 2] {
    ys, h = scan i in ids axis 1 carry (h = zeros([B, 2])) {
      h = h + table[i]
      emit h
    }
    return h
  }
}"""
    good, bad = np.array([[1, 4, -5]]), np.array([[1, 4, 5]])
    models = {t: kiln.compile(source, target=t) for t in TARGETS}
    np.testing.assert_allclose(models["onnx"](good), models["reference"](good), rtol=1e-6)
    errors = {t: _failure(m, {"ids": bad}) for t, m in models.items()}
    assert {e.code for e in errors.values()} == {"K0505"}
    assert errors["onnx"].message == errors["native"].message
    assert errors["onnx"].span.line == errors["reference"].span.line == 6
