"""A scan of no steps (an empty sequence) on the onnx target. onnxruntime's Scan cannot run one:
over axis 0 it raises an internal error, over another axis it kills the process with SIGFPE
(found with examples/seq2seq_attention.kiln and an empty target sequence). The onnx target
refuses such a call with a located K0505 before onnxruntime sees it; the reference and native
targets run it (empty emits, the carries' initial values)."""

from __future__ import annotations

import numpy as np
import pytest
from _hostile import assert_kiln_error, run_child

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
def test_an_empty_scan_on_onnx_is_a_located_k0505_not_a_signal(axis):
    shape = (0, 3, 2) if axis == 0 else (3, 0, 2)
    outcome = run_child(f"""
        import numpy as np, kiln
        m = kiln.compile({source(axis)!r}, target="onnx")
        try:
            m(np.zeros({shape}, np.float32))
        except kiln.KilnError as e:
            print("KilnError", e.code, e.span.line, e.message)
        print("second call:", m(np.ones({shape[:axis] + (2,) + shape[axis + 1:]},
                                        np.float32))[1].tolist())
        """)
    assert_kiln_error(outcome, "K0505")
    assert "KilnError K0505 4 " in outcome.stdout and "no steps" in outcome.stdout
    assert "second call: [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]" in outcome.stdout


@pytest.mark.parametrize("target", ["reference", "native"])
def test_an_empty_scan_runs_on_the_other_targets(target):
    m = kiln.compile(source(1), target=target)
    ys, acc = m(np.zeros((3, 0, 2), np.float32))
    assert ys.shape == (3, 0, 2)
    np.testing.assert_array_equal(acc, np.ones((3, 2), np.float32))
