"""Edge values every target must agree on, with PyTorch's published semantics as the judge."""

from __future__ import annotations

import numpy as np
import pytest

import kiln

TARGETS = ["reference", "native", "onnx"]
INF, NAN = np.inf, np.nan
# rows: a +inf (the row is NaN in torch and ONNX), two +infs, a -inf, all -inf, a NaN, finite
ROWS = np.array([[INF, 1, 2, 3], [INF, INF, 0, 0], [-INF, 0, 0, 0], [-INF] * 4,
                 [NAN, 0, 0, 0], [1, 2, 3, 4]], np.float32)


def _torch_reference(op: str) -> np.ndarray:
    torch = pytest.importorskip("torch", reason="PyTorch is the published semantics here")
    t = torch.tensor(ROWS)
    return getattr(torch, op)(t, -1).numpy()


# what torch gives, written out so the test holds without torch too
EXPECTED = {
    "softmax": [[NAN] * 4, [NAN] * 4, [0, 1 / 3, 1 / 3, 1 / 3], [NAN] * 4, [NAN] * 4, None],
    "log_softmax": [[NAN] * 4, [NAN] * 4, [-INF, -np.log(3), -np.log(3), -np.log(3)],
                    [NAN] * 4, [NAN] * 4, None],
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_of_infinite_rows_agrees_on_every_target(op, target):
    """The reference once gave [nan, 0, 0, 0] for softmax([inf, 1, 2, 3]) where native, ONNX
    and torch give a row of NaN."""
    src = (f"model M {{\n  forward(x: f32[B, 4]) -> f32[B, 4] {{\n"
           f"    return {op}(x, axis = -1)\n  }}\n}}\n")
    got = kiln.compile(src, target=target)(ROWS)
    for row, want in zip(got, EXPECTED[op]):
        if want is not None:
            np.testing.assert_allclose(row, np.array(want, np.float32), rtol=1e-6)
    finite = ROWS[-1].astype(np.float64)
    ref = np.exp(finite - finite.max()) / np.exp(finite - finite.max()).sum()
    np.testing.assert_allclose(got[-1], ref if op == "softmax" else np.log(ref), rtol=1e-5)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_the_written_expectations_are_torchs(op):
    want = _torch_reference(op)
    for row, expected in zip(want, EXPECTED[op]):
        if expected is not None:
            np.testing.assert_allclose(row, np.array(expected, np.float32), rtol=1e-6)
