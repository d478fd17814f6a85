"""kiln.ray's Predictor on batches in this process, no cluster: outputs by column, failed rows
reported by row and key (shape, dtype, bind= and value failures), the columns and options
refused with their codes, and Ray never imported unless asked. The cluster tests are in
test_ray.py."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.ray
from kiln.compiler.errors import Span

SEQ = """
model Pool {
  forward(x: f32[B, T, 3]) -> (mean: f32[B, 3], last: f32[B, 3]) {
    return (mean(x, axis = 1), x[:, -1, :])
  }
}
"""
LOOKUP = """
model Lookup {
  param table: [10, 4] = init.normal()
  forward(ids: i64[N]) -> f32[N, 4] {
    return table[ids]
  }
}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "seq.kiln").write_text(SEQ)
    (root / "lookup.kiln").write_text(LOOKUP)
    return {"seq": kiln.ray.Predictor(root / "seq.kiln", key="id"),
            "lookup": kiln.ray.Predictor(root / "lookup.kiln", columns={"ids": "token"}),
            "root": root}


def ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of rows of different shapes, as Ray Data hands one over."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def test_outputs_are_columns_and_other_columns_stay(models):
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    out = models["seq"]({"x": x, "id": np.arange(5), "tag": np.array(list("abcde"))})
    assert sorted(out) == ["id", "last", "mean", "tag"]  # the input column is consumed
    np.testing.assert_allclose(out["mean"], x.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out["last"], x[:, -1])


def test_failed_rows_are_named_by_row_and_key(models):
    x = np.ones((4, 7, 3), np.float32)
    column = ragged([x[0], x[1, :, :2], x[2], x[3, :5]])
    with pytest.raises(kiln.KilnError) as info:
        models["seq"]({"x": column, "id": np.array([10, 11, 12, 13])})
    err = info.value
    assert err.code == "K0950"
    assert err.message.splitlines() == [
        "2 of 4 rows of a batch cannot be run by " + str(models["root"] / "seq.kiln") + ":",
        "  row 1 (id = 11): input x must have shape [B, T, 3], but its shape is [1, 7, 2] "
        "(axis 2)",
        "  row 3 (id = 13): size T is 5, but 7 by the batch's first row",
    ]


def test_skip_leaves_failed_rows_out_and_logs_them(models, caplog):
    predictor = kiln.ray.Predictor(models["root"] / "seq.kiln", key="id", on_error="skip",
                                   bind={"T": 7})
    x = np.random.default_rng(1).standard_normal((3, 7, 3)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="kiln.ray"):
        out = predictor({"x": ragged([x[0], x[1, :6], x[2]]), "id": np.array([5, 6, 7])})
    assert out["id"].tolist() == [5, 7]
    np.testing.assert_array_equal(out["last"], x[[0, 2], -1])
    assert "row 1 (id = 6): size T is 6, but 7 by bind" in caplog.text


def test_every_row_failing_gives_empty_outputs(models):
    predictor = kiln.ray.Predictor(models["root"] / "seq.kiln", on_error="skip",
                                   bind={"T": 7})
    out = predictor({"x": np.zeros((3, 7, 3))})  # f64: no row can run
    assert out["mean"].shape == (0, 3) and out["mean"].dtype == np.float32


def test_a_whole_column_of_the_wrong_dtype_lists_its_first_rows(models):
    with pytest.raises(kiln.KilnError) as info:
        models["seq"]({"x": np.zeros((12, 7, 3)), "id": np.arange(12)})
    assert info.value.message.splitlines()[1:] == [
        "  rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more (id = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...): "
        "input x must be f32, but the array is float64"]


def test_a_value_an_op_refuses_fails_its_row_only(models):
    predictor = models["lookup"]
    predictor.on_error = "skip"
    out = predictor({"token": np.array([1, 12, 3, 10, 9])})
    np.testing.assert_array_equal(
        out["output"], predictor.model.params["table"][[1, 3, 9]])
    predictor.on_error = "raise"
    with pytest.raises(kiln.KilnError) as info:
        predictor({"token": np.array([1, 12])})
    assert "row 1: gather: an index is out of range" in info.value.message


@pytest.mark.parametrize("batch, message", [
    ({"y": np.zeros((2, 7, 3), np.float32)}, "the dataset has no column for input x (column 'x')"),
    ({"x": np.zeros((2, 7, 3), np.float32), "mean": np.zeros(2)},
     "output mean of {seq} would overwrite the dataset's column of that name"),
])
def test_columns_the_model_cannot_use_are_refused(models, batch, message):
    predictor = kiln.ray.Predictor(models["root"] / "seq.kiln")
    with pytest.raises(kiln.KilnError) as info:
        predictor(batch)
    assert info.value.code == "K0951"
    assert message.format(seq=models["root"] / "seq.kiln") in info.value.message


def test_a_missing_key_column_is_refused(models):
    with pytest.raises(kiln.KilnError, match="no key column 'id'") as info:
        models["seq"]({"x": np.zeros((2, 7, 3), np.float32)})
    assert info.value.code == "K0951"


def test_a_model_without_a_batch_axis_is_refused(tmp_path):
    path = tmp_path / "fixed.kiln"
    path.write_text("model Fixed { forward(x: f32[4], y: f32[B, 4]) -> f32[B, 4] "
                    "{ return y + x } }")
    with pytest.raises(kiln.KilnError) as info:
        kiln.ray.Predictor(path)
    assert info.value.code == "K0952" and "x with a fixed size, y with B" in info.value.message


@pytest.mark.parametrize("options, message", [
    ({"on_error": "ignore"}, "on_error must be"),
    ({"columns": {"z": "x"}}, "columns= names z, which are not inputs of Pool"),
    ({"bind": {"B": 4}}, "bind= cannot size B: it is the batch axis"),
    ({"bind": {"Q": 4}}, "bind= cannot size Q: the inputs of Pool have no such size"),
    ({"bind": {"T": -1}}, "bind= gives T the size -1"),
])
def test_options_are_checked(models, options, message):
    with pytest.raises(kiln.KilnError, match=message) as info:
        kiln.ray.Predictor(models["root"] / "seq.kiln", **options)
    assert info.value.code == "K0602"


def test_kiln_and_its_cli_never_import_ray():
    code = ("import sys, kiln, kiln.cli, kiln.ray\n"
            "kiln.cli.main(['--version'])\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_ray_predict_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(kiln.KilnError) as info:
        kiln.ray.predict(None, "examples/mlp.kiln")
    assert info.value.code == "K0953" and "pip install 'kiln[ray]'" in info.value.hint


def test_a_kiln_error_pickles_whole():
    # a worker's error reaches the driver through pickle (Ray, multiprocessing)
    err = kiln.KilnError("K0505", "gather: out of range", Span("m.kiln", 5, 12, 5, 22, "src"),
                         hint="clip", notes=("in Embedding",))
    err.others = [kiln.KilnError("K0503", "bad shape")]
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.span, back.hint, back.notes) == (err.code, err.span, err.hint,
                                                             err.notes)
    assert str(back) == str(err)
