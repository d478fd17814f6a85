"""A scan of no steps (an empty sequence). onnxruntime's Scan cannot run one: over axis 0 it
raises an internal error, over another axis it kills the process with SIGFPE (found with
examples/seq2seq_attention.kiln and an empty target sequence). The ONNX graph guards its Scan
with an If on the step count, so the onnx target, and an exported file in onnxruntime alone,
give what the reference and native targets give: empty emits, the carries' initial values."""

from __future__ import annotations

import numpy as np
import pytest
from _hostile import run_child

import kiln

pytest.importorskip("onnxruntime")

SCAN = """
model Running {
  forward(xs: f32[B, T, 2]) -> (f32[B, T, 2], f32[B, 2]) {
    ys, acc = scan x in xs axis AXIS carry (acc = ones([B, 2])) {
      acc = acc + x
      emit acc
    }
    return ys, acc
  }
}"""


def source(axis: int) -> str:
    """The running sum over axis 0 ([T, B, 2]) or axis 1 ([B, T, 2])."""
    text = SCAN.replace("AXIS", str(axis))
    return text.replace("f32[B, T, 2]", "f32[T, B, 2]") if axis == 0 else text


@pytest.mark.parametrize("axis", [0, 1])
def test_an_empty_scan_agrees_on_every_target_and_in_an_exported_file(axis, tmp_path):
    # in a child: before the guard, onnxruntime died of SIGFPE on an empty axis 1
    shape = (0, 3, 2) if axis == 0 else (3, 0, 2)
    some = shape[:axis] + (2,) + shape[axis + 1:]
    path = str(tmp_path / "m.onnx")
    outcome = run_child(f"""
        import numpy as np, onnxruntime as ort, kiln
        x = np.zeros({shape}, np.float32)
        for target in ("reference", "native", "onnx"):
            m = kiln.compile({source(axis)!r}, target=target)
            ys, acc = m(x)
            print(target, ys.shape, acc.tolist())
        print("second call:", m(np.ones({some}, np.float32))[1].tolist())
        m.export_onnx({path!r})
        session = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
        ys, acc = session.run(None, {{session.get_inputs()[0].name: x}})
        print("alone", ys.shape, acc.tolist())
        """)
    assert not outcome.crashed and not outcome.timed_out, outcome.stderr[-2000:]
    ones = [[1.0, 1.0]] * 3
    for who in ("reference", "native", "onnx", "alone"):
        assert f"{who} {shape} {ones}" in outcome.stdout, outcome.stdout + outcome.stderr[-2000:]
    assert "second call: [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]" in outcome.stdout


def test_an_empty_scan_in_a_scan_body_agrees_on_every_target():
    # the inner scan's length is a size of the outer step's slice: counted at run time
    src = """
model Nested {
  forward(xs: f32[T, K, 2]) -> f32[2] {
    total = scan x in xs carry (acc = zeros([2])) {
      inner = scan y in x carry (s = acc) {
        s = s + y
      }
      acc = inner
    }
    return total
  }
}"""
    for x in (np.zeros((2, 0, 2), np.float32), np.ones((2, 3, 2), np.float32)):
        want = kiln.compile(src, target="reference")(x)
        for target in ("native", "onnx"):
            np.testing.assert_array_equal(kiln.compile(src, target=target)(x), want)
