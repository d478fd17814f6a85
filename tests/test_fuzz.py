"""Mutated and random sources thrown at the front end: only KilnError may ever escape."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln import KilnError

SEED_SOURCE = """\
import std.nn
const N = 4
block Linear(i: int, o: int, bias: bool = true) {
  param weight: [o, i] = init.kaiming_uniform(a = sqrt(5))
  param bias: [o] = init.uniform_fan_in(i) if bias
  forward(x: [..., i]) -> [..., o] { return x @ weight.T + bias if defined(bias) else x @ weight.T }
}
fn twice(x) { return x * 2 }
model M(h: int = 8) {
  layers = [Linear(N, h), relu, Linear(h, N)]
  for k in range(2) { param w{k}: [N] = init.ones() }
  forward(x: f32[B, N], m: bool[B, N]?) -> (f32[B, N], f32[B, N]) where N <= 8 {
    y = x |> layers |> twice
    ys, c = scan r in y axis 1 carry (c = zeros([B])) {
      c = c + r
      emit c
    }
    z = where(m, y, 0.0) if defined(m) else y[:, ::1] + w0 * w1
    return ys, z
  }
}
"""

ALPHABET = list('(){}[],.:=+-*/@|>?_#"\n ') + [
    "forward",
    "scan",
    "emit",
    "param",
    "block",
    "model",
    "if",
    "else",
    "for",
    "in",
    "...",
    "B",
    "x",
    "1",
    "0.5",
    "relu",
    "|>",
]


def check(source: str) -> None:
    try:
        kiln.load(source).elaborate()
    except KilnError as err:
        assert err.code.startswith("K0") and str(err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(SEED_SOURCE)), st.integers(0, 3), st.sampled_from(ALPHABET)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_sources_only_raise_kiln_errors(edits):
    text = SEED_SOURCE
    for pos, delete, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + delete :]
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_text_only_raises_kiln_errors(text):
    check(text + "\n")


def test_seed_source_itself_is_valid():
    kiln.load(SEED_SOURCE).elaborate()
