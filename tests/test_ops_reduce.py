"""Reductions and softmax against loops over index tuples and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _optest import T, assert_close, infer1, raises, rand, run
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=30, deadline=None)
SIZES = st.sampled_from([1, 2, 3, 5])


def loop_reduce(x: np.ndarray, axes, keepdims: bool, fn):
    """Reduce with fn over the Python list of values at each kept index (the oracle)."""
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    kept = [i for i in range(x.ndim) if i not in axes]
    out = np.empty([x.shape[i] for i in kept], dtype=np.float64)
    for idx in itertools.product(*(range(x.shape[i]) for i in kept)):
        values = []
        for red in itertools.product(*(range(x.shape[i]) for i in axes)):
            full = [0] * x.ndim
            for i, v in zip(kept, idx, strict=False):
                full[i] = v
            for i, v in zip(axes, red, strict=False):
                full[i] = v
            values.append(float(x[tuple(full)]))
        out[idx] = fn(values)
    if keepdims:
        out = out.reshape([1 if i in axes else n for i, n in enumerate(x.shape)])
    return out


def _logsumexp(v):
    m = max(v)
    return m + math.log(sum(math.exp(e - m) for e in v))


REDUCERS = {
    "sum": math.fsum, "mean": lambda v: math.fsum(v) / len(v), "max": max, "min": min,
    "prod": math.prod, "logsumexp": _logsumexp,
}


@st.composite
def shape_and_axes(draw):
    shape = draw(st.lists(SIZES, min_size=1, max_size=3))
    axes = draw(st.none() | st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                                     max_size=len(shape), unique_by=lambda a: a % len(shape)))
    return shape, axes


@pytest.mark.parametrize("op", sorted(REDUCERS))
@SETTINGS
@given(case=shape_and_axes(), keepdims=st.booleans(), dtype=st.sampled_from(["f32", "f16"]),
       seed=st.integers(0, 2**16))
def test_reductions_match_loops(op, case, keepdims, dtype, seed):
    shape, axes = case
    x = rand(*shape, dtype=dtype, seed=seed, low=0.5, high=1.5)
    axis = axes if axes is None or len(axes) > 1 else axes[0]
    out = run(op, x, axis=axis, keepdims=keepdims)
    assert_close(op, out, loop_reduce(x, axes, keepdims, REDUCERS[op]), dtype)


@SETTINGS
@given(case=shape_and_axes(), seed=st.integers(0, 2**16))
def test_integer_sums_widen_to_i64(case, seed):
    shape, axes = case
    x = rand(*shape, dtype="i32", seed=seed, low=-5, high=5)
    out = run("sum", x, axis=axes)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, loop_reduce(x, axes, False, sum))
    assert run("sum", x > 0).dtype == np.int64


def test_argmax_argmin_by_hand():
    x = np.array([[1.0, 5.0, 5.0], [7.0, -1.0, 7.0]], np.float32)
    np.testing.assert_array_equal(run("argmax", x, axis=1), [1, 0])  # first of ties
    np.testing.assert_array_equal(run("argmin", x, axis=0), [0, 1, 0])
    assert run("argmax", x).tolist() == 3 and run("argmax", x).dtype == np.int64
    assert run("argmax", x, keepdims=True).shape == (1, 1)
    assert run("argmin", x, axis=-1, keepdims=True).tolist() == [[0], [1]]


@SETTINGS
@given(shape=st.lists(SIZES, min_size=1, max_size=3), axis=st.integers(-1, 0),
       seed=st.integers(0, 2**16))
def test_softmax_against_exp_over_sum(shape, axis, seed):
    x = rand(*shape, seed=seed, low=-5, high=5).astype(np.float64)
    e = np.exp(x)
    expected = e / e.sum(axis=axis, keepdims=True)
    assert_close("softmax", run("softmax", x, axis=axis), expected, "f32")
    assert_close("log_softmax", run("log_softmax", x, axis=axis), np.log(expected), "f32")


def test_softmax_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, 0.0], [-np.inf, 0.0]], np.float32)
    np.testing.assert_allclose(run("softmax", x), [[0.5, 0.5], [0, 1], [0, 1]])
    np.testing.assert_allclose(run("log_softmax", x), [[-math.log(2)] * 2, [-1000, 0],
                                                      [-np.inf, 0]])
    np.testing.assert_allclose(run("logsumexp", x, axis=1), [1000 + math.log(2), 0, 0])
    assert run("softmax", x.astype(np.float16)).dtype == np.float16


def test_symbolic_shapes():
    assert infer1("sum", T(["B", "T", 8]), axis=1) == T(["B", 8])
    assert infer1("mean", T(["B", "T", 8]), axis=[-1, 1], keepdims=True) == T(["B", 1, 1])
    assert infer1("max", T(["B", 4])) == T([])
    assert infer1("argmax", T(["B", 10]), axis=-1) == T(["B"], "i64")
    assert infer1("softmax", T(["B", "T"], "bf16")) == T(["B", "T"], "bf16")
    out = run("sum", rand(2, 3), axis=0, types=[T(["N", 3])], env={"N": 2})
    assert out.shape == (3,)


def test_errors():
    raises("K0303", "sum", T([2, 3]), axis=2, arg="axis")
    raises("K0303", "sum", T([2, 3]), axis=[0, -2], arg="axis")
    raises("K0303", "argmax", T([2, 3]), axis=[0, 1], arg="axis")
    raises("K0303", "softmax", T([2, 3]), axis=5, arg="axis")
    raises("K0302", "mean", T([2, 3], "i64"), arg="x")
    raises("K0302", "softmax", T([2, 3], "i32"), arg="x")
    raises("K0302", "logsumexp", T([3], "bool"))


def test_native_softmax_rows_of_every_length_and_special_value():
    """Rows of every length across the vector widths (4 to 16 lanes: LLVM vectorises the
    kernel's loops, with a rest) and past them, each with a NaN, an inf or -inf at every
    position of a few, and rows whose exps over- or underflow unless the max is taken right,
    match numpy in float64 (NaN wins, as numpy's max)."""
    import kiln

    m = kiln.compile("model M { forward(x: f32[B, S]) -> (f32[B, S], f32[B, S]) {\n"
                     "  return softmax(x), log_softmax(x) } }")
    rng = np.random.default_rng(0)
    for length in [*range(1, 35), 47, 64, 100]:
        x = rng.uniform(-5, 5, (3 + 3 * min(length, 6), length)).astype(np.float32)
        for i in range(min(length, 6)):  # a special value at position i of three rows
            x[3 + 3 * i:6 + 3 * i, i] = [np.nan, np.inf, -np.inf]
        x[:2] *= 300  # a max taken wrong over- or underflows every exp of these rows
        x[0, -1], x[1, 0] = 2000, 2000  # the max last (in the masked rest) and first
        x[2, :] = -np.inf  # a row of nothing but -inf: NaN, as numpy gives
        with np.errstate(invalid="ignore", over="ignore"):
            shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
            want_log = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        soft, log_soft = m(x)
        np.testing.assert_allclose(soft, np.exp(want_log), rtol=1e-5, atol=1e-7,
                                   err_msg=f"S={length}")
        np.testing.assert_allclose(log_soft, want_log, rtol=1e-5, atol=1e-5,
                                   err_msg=f"S={length}")


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
def test_softmax_over_an_empty_axis_is_empty_on_every_target(target):
    """An attention over no source positions (S = 0): softmax and log_softmax give empty
    results and logsumexp -inf, as numpy's sum of nothing is 0 (the reference's max failed)."""
    import kiln

    m = kiln.compile("model M { forward(x: f32[B, S]) -> (f32[B, S], f32[B, S], f32[B]) {\n"
                     "  return softmax(x), log_softmax(x), logsumexp(x, axis = -1) } }",
                     target=target)
    soft, log_soft, lse = m(np.zeros((2, 0), np.float32))
    assert soft.shape == log_soft.shape == (2, 0)
    np.testing.assert_array_equal(lse, [-np.inf, -np.inf])
