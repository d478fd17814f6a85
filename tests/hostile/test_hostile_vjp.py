"""Attacks on `model.vjp`: cotangents that do not fit the outputs (a shape, rank, dtype or
count the gradient code was not compiled for, objects that are not arrays, sizes that do not
match the inputs') are refused with a KilnError before native code or onnxruntime runs. Each
target's attacks run in one child process, so a crash or a hang fails the test instead of the
session."""

from __future__ import annotations

import pytest
from _hostile import run_child

TARGETS = ["reference", "native", "onnx"]

SRC = """
model Scale {
  param w: [4] = init.normal()
  forward(x: f32[B, 4]) -> (y: f32[B, 4], n: i64[B]) { return (x * w, argmax(x, axis = 1)) }
}
"""

ATTACKS = [  # (cotangents, the KilnError code, or None: accepted)
    ("[np.ones((3, 8), np.float32)[:, ::2], None]", None),  # a strided view: copied
    ("[np.ones((3, 4), np.float16), None]", None),  # widened to f32, as an input is
    ("[None, None]", None),  # a zero cotangent
    ("[np.ones((4, 4), np.float32), None]", "K0503"),  # B disagrees with the input's
    ("[np.ones((3, 4, 1), np.float32), None]", "K0503"),
    ("[np.ones((1, 3, 4), np.float32), None]", "K0503"),
    ("[np.ones((3, 4), np.float64), None]", "K0502"),
    ("[np.ones((3, 4), np.float32), np.ones(3, np.int64)]", "K0502"),
    ("[object(), None]", "K0502"),
    ("[[[1.0, 2.0], [3.0]], None]", "K0503"),
    ("[np.ones((3, 4), np.float32)]", "K0501"),
    ("np.ones((3, 4), np.float32)", "K0501"),
    ("{'y': np.ones((3, 4), np.float32)}", "K0501"),
]

CHILD = """
import numpy as np, kiln
m = kiln.compile({src!r}, target={target!r})
x = np.ones((3, 4), np.float32)
for i, text in enumerate({attacks!r}):
    try:
        out, grads, _ = m.vjp(x, cotangents=eval(text))
        assert np.all(np.isfinite(grads["w"]))
        print(i, "accepted")
    except kiln.KilnError as e:
        print(i, e.code)
print("done")
"""


@pytest.mark.parametrize("target", TARGETS)
def test_bad_cotangents_never_reach_the_backend(target):
    code = CHILD.format(src=SRC, target=target, attacks=[a for a, _ in ATTACKS])
    outcome = run_child(code, timeout=300)
    assert not outcome.timed_out and not outcome.crashed, outcome.stderr[-2000:]
    assert outcome.stdout.splitlines()[-1] == "done", outcome.stderr[-2000:]
    got = dict(line.split() for line in outcome.stdout.splitlines()[:-1])
    for i, (attack, want) in enumerate(ATTACKS):
        assert got[str(i)] == (want or "accepted"), attack
