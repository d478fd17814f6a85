"""Threads against one model: weights swapped while other threads call it, and variants that
many threads need at once (each built once)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from _hostile import run_child

import kiln

TARGETS = ["native", "reference", "onnx"]

# linear layers (a weight.T made once, packed panels) big enough for the native GEMM to split
# across worker threads
SWAP_SRC = """
import std.nn
model M { forward(x: f32[B, 96]) -> f32[B, 64] {
  return x |> nn.Linear(96, 128) |> relu |> nn.Linear(128, 64) } }
"""

SWAP_ATTACK = """
import os, tempfile, threading, numpy as np, kiln
src = {src!r}
if {target!r} == "aot":  # a library built ahead of time takes new weights as arrays too
    from kiln.cli import main
    where = tempfile.mkdtemp()
    with open(os.path.join(where, "m.kiln"), "w") as f:
        f.write(src)
    assert main(["compile", os.path.join(where, "m.kiln"), "-o", os.path.join(where, "m.so")]) == 0
    m = kiln.load_compiled(os.path.join(where, "m.so"))
else:
    m = kiln.compile(src, target={target!r}, **{extra})
rng = np.random.default_rng(0)
x = rng.standard_normal({shape}).astype(np.float32)
sets = [{{k: (np.abs(rng.standard_normal(v.shape)) + 0.5).astype(v.dtype) for k, v
          in m.state_dict().items()}} for _ in range(2)]  # positive: valid running variances
ref = kiln.compile(src, target="reference")
want = []
for w in sets:
    ref.load_weights(w)
    want.append(ref(x))
m.load_weights(sets[0])
bad = []
def call(stop):
    while not stop.is_set():
        y = m(x)  # one set of weights or the other, never a mix
        if not any(np.allclose(y, w, rtol=1e-4, atol=1e-4) for w in want):
            bad.append(1)
for _round in range(3):  # the crash came in some runs only: several rounds of callers
    stop = threading.Event()
    callers = [threading.Thread(target=call, args=(stop,)) for _ in range(4)]
    for t in callers:
        t.start()
    for i in range({swaps}):
        m.load_weights(sets[i % 2])
    stop.set()
    for t in callers:
        t.join()
m.load_weights(sets[1])
sd = m.state_dict()
assert all(np.array_equal(sd[k], v) for k, v in sets[1].items())
np.testing.assert_allclose(m(x), want[1], rtol=1e-4, atol=1e-4)
print("mixed results:", len(bad))
"""


# a BatchNorm folded from constant statistics: new weights give the native target new code
# (from the compile cache), whose predecessor calls may still be running
FOLDED_SRC = """
import std.nn
model C {
  conv = nn.Conv2d(4, 32, 3, padding = 1)
  forward(x: f32[B, 4, 16, 16]) -> f32[B, 32, 16, 16] {
    return batch_norm(conv(x), zeros([32]), full([32], 2.0), none, none) } }
"""


@pytest.mark.parametrize("target", [*TARGETS, pytest.param("aot", marks=pytest.mark.skipif(
    not shutil.which("cc"), reason="linking needs cc")), "native-folded"])
def test_weights_swapped_while_threads_call_the_model(target):
    """Swapping weights under calls once killed the native target (SIGSEGV) or deadlocked it
    in the worker shutdown: every call must run with one whole set of weights."""
    src, shape = (FOLDED_SRC, (8, 4, 16, 16)) if target.endswith("folded") else (SWAP_SRC, (64, 96))
    target = target.removesuffix("-folded")
    extra = {"threads": 2} if target == "native" else {}
    swaps = 4 if src is FOLDED_SRC else 10  # a folded model's swap builds: fewer of them
    outcome = run_child(SWAP_ATTACK.format(src=src, target=target, extra=extra, shape=shape,
                                           swaps=swaps), timeout=240)
    assert not outcome.timed_out, outcome.stderr[-2000:]
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "mixed results: 0" in outcome.stdout, outcome.stdout


OPTIONAL_SRC = """
model M { forward(x: f32[B, 4], m: f32[B, 4]?) -> f32[B, 4] {
  return x * m if defined(m) else x + 1.0 } }
"""


def _count(monkeypatch, where, name):
    calls = []
    original = getattr(where, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(where, name, counted)
    return calls


@pytest.mark.parametrize("target", TARGETS)
def test_a_variant_many_threads_need_at_once_is_built_once(target, monkeypatch):
    import kiln.compiler.pipelines as pipelines

    m = kiln.compile(OPTIONAL_SRC, target=target)
    optimized = _count(monkeypatch, pipelines, "optimize")
    x = np.ones((2, 4), np.float32)
    barrier, results = threading.Barrier(8), []

    def call():
        barrier.wait()
        results.append(m(x))

    callers = [threading.Thread(target=call) for _ in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(results) == 8 and all(np.array_equal(r, x + 1) for r in results)
    assert len(optimized) == 1  # the variant without m: optimized (and compiled) once


def test_a_model_with_an_optional_input_builds_only_the_variant_it_runs(monkeypatch):
    from kiln.compiler import driver

    built = _count(monkeypatch, driver, "compile_object")
    m = kiln.compile(OPTIONAL_SRC, target="native")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(m(x), x + 1)
    np.testing.assert_array_equal(m(x), x + 1)
    assert len(built) == 1  # not the variant with m first, then the one without
    np.testing.assert_array_equal(m(x, 3 * x), 3 * x)
    assert len(built) == 2
