"""Round trip (issue 17): every example, kiln -> ONNX (model.export_onnx) -> kiln import ->
ONNX, keeps its numerics and its signature (the inputs' and outputs' names and types; ONNX has
no optional inputs, so an optional one comes back required). The U-Net's sizes need its
`where H % 4 == 0` facts, which kiln's export records in the file's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _crosscheck import random_inputs

import kiln

pytest.importorskip("onnxruntime")
from _onnximport import run_ort  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CASES = [pytest.param(p, id=p.stem) for p in sorted(EXAMPLES.glob("*.kiln"))]


def ports(model) -> list[tuple[str, object]]:
    return [(p.name, p.type) for p in model.inputs] + [(p.name, p.type) for p in model.outputs]


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("path", CASES)
def test_round_trip(path, tmp_path):
    original = kiln.compile(path, target="reference")
    original.export_onnx(tmp_path / "first.onnx")
    imported = kiln.compile(tmp_path / "first.onnx", target="reference")
    assert ports(imported) == ports(original)
    imported.export_onnx(tmp_path / "second.onnx")
    second = onnx.load(str(tmp_path / "second.onnx"))
    first = onnx.load(str(tmp_path / "first.onnx"))
    assert [i.name for i in second.graph.input] == [i.name for i in first.graph.input]
    assert [o.name for o in second.graph.output] == [o.name for o in first.graph.output]
    xs = random_inputs(original, 3, np.random.default_rng(0))
    want = as_tuple(original(*xs))
    feeds = {p.name: x for p, x in zip(original.inputs, xs)}
    for got in (as_tuple(imported(*xs)), run_ort(tmp_path / "second.onnx", feeds)):
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", CASES)
def test_kiln_import_of_the_export(path, tmp_path):
    """kiln -> ONNX -> `kiln import` source: compiles back to the same numerics and input
    types (its `where` facts written as the forward's own)."""
    from kiln.api import write_kiln_source

    original = kiln.compile(path, target="reference")
    original.export_onnx(tmp_path / "m.onnx")
    source, weights = write_kiln_source(tmp_path / "m.onnx", tmp_path / "m.kiln")
    back = kiln.compile(source, target="reference", weights=weights)
    assert [p.type for p in back.inputs] == [p.type for p in original.inputs]
    xs = random_inputs(original, 3, np.random.default_rng(1))
    for g, w in zip(as_tuple(back(*xs)), as_tuple(original(*xs)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
