"""Elementwise ops against scalar math written independently (Python's math module, operators):
the definitions in tests/_cases.py's UNARY, BINARY and COMPARE tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _cases import BINARY, COMPARE, UNARY, scalar_sigmoid
from _optest import T, assert_close, infer1, raises, rand, run
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.types import NUMPY_DTYPES

SETTINGS = settings(max_examples=30, deadline=None)
SIZES = st.sampled_from([1, 2, 3, 5, 7])
FLOAT_DTYPES = st.sampled_from(["f32", "f16", "bf16"])


def scalar(fn):
    """Apply a Python scalar function elementwise in float64 (the independent oracle)."""
    return np.vectorize(lambda v: float(fn(float(v))), otypes=[np.float64])


@pytest.mark.parametrize("op", sorted(UNARY))
@SETTINGS
@given(shape=st.lists(SIZES, max_size=3), dtype=FLOAT_DTYPES, seed=st.integers(0, 2**16))
def test_unary_matches_scalar_math(op, shape, dtype, seed):
    fn, attrs, (low, high) = UNARY[op]
    x = rand(*shape, dtype=dtype, seed=seed, low=low, high=high)
    out = run(op, x, **attrs)
    assert_close(op, out, scalar(fn)(x.astype(np.float64)), dtype)


def test_gelu_tanh_approximation_by_hand():
    x = np.array([-2.0, -0.5, 0.0, 1.0, 3.0], np.float32)
    c = math.sqrt(2 / math.pi)
    expected = [0.5 * v * (1 + math.tanh(c * (v + 0.044715 * v**3))) for v in x.tolist()]
    assert_close("gelu", run("gelu", x, approximate="tanh"), expected)


def test_erf_is_accurate_across_its_range():
    x = np.linspace(-7, 7, 2001)
    np.testing.assert_allclose(run("erf", x), scalar(math.erf)(x), rtol=1e-13, atol=1e-15)
    tiny = np.array([1e-30, -1e-12], np.float64)
    np.testing.assert_allclose(run("erf", tiny), 2 / math.sqrt(math.pi) * tiny, rtol=1e-14)


def test_stable_at_extremes():
    x = np.array([-1000.0, -60.0, 0.0, 60.0, 1000.0], np.float32)
    sig, soft, elu = (run(op, x) for op in ("sigmoid", "softplus", "elu"))
    assert_close("sigmoid", sig, [0, scalar_sigmoid(-60.0), 0.5, 1, 1])
    np.testing.assert_allclose(soft, [0, math.exp(-60), math.log(2), 60, 1000], rtol=1e-6)
    np.testing.assert_array_equal(elu, [-1, -1, 0, 60, 1000])


def test_integer_unaries_stay_integer():
    x = np.array([-3, 0, 2**40 + 1], np.int64)
    np.testing.assert_array_equal(run("floor", x), x)
    np.testing.assert_array_equal(run("abs", x), [3, 0, 2**40 + 1])
    np.testing.assert_array_equal(run("relu", x), [0, 0, 2**40 + 1])
    np.testing.assert_array_equal(run("clip", x, min=-1), [-1, 0, 2**40 + 1])


def test_logical_not_cast_dropout():
    np.testing.assert_array_equal(run("logical_not", np.array([0.0, 2.0])), [True, False])
    out = run("cast", np.array([-1.7, 0.2, 2.9], np.float32), dtype="i32")
    np.testing.assert_array_equal(out, [-1, 0, 2])  # toward zero, as PyTorch's .to(int)
    assert run("cast", np.array([0, 3]), dtype="bool").tolist() == [False, True]
    x = rand(2, 3)
    np.testing.assert_array_equal(run("dropout", x, p=0.3), x)


# binary -----------------------------------------------------------------------------------
@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: b drops leading axes of a and sets some sizes to 1."""
    a = draw(st.lists(SIZES, max_size=3))
    b = [1 if draw(st.booleans()) else d for d in a][draw(st.integers(0, len(a))):]
    return (a, b) if draw(st.booleans()) else (b, a)


def _oracle(fn, a, b, otype):
    a, b = np.broadcast_arrays(a, b)
    return np.vectorize(fn, otypes=[otype])(a, b)


@pytest.mark.parametrize("op", sorted(BINARY))
@SETTINGS
@given(shapes=broadcast_pair(), dtype=FLOAT_DTYPES, seed=st.integers(0, 2**16))
def test_binary_float_matches_python(op, shapes, dtype, seed):
    a = rand(*shapes[0], dtype=dtype, seed=seed, low=0.5, high=3)
    b = rand(*shapes[1], dtype=dtype, seed=seed + 1, low=0.5, high=3)
    b = b if op in ("pow", "div") else b * np.array(-1 if seed % 2 else 1).astype(b.dtype)
    if op in ("floor_div", "mod"):  # away from the discontinuities of floor
        a = (np.round(a.astype(np.float32) * 4) / 4 + 0.125).astype(a.dtype)
    expected = _oracle(BINARY[op], a.astype(np.float64), b.astype(np.float64), np.float64)
    assert_close(op, run(op, a, b), expected, dtype)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "floor_div", "mod", "maximum", "minimum"])
@SETTINGS
@given(shapes=broadcast_pair(), dtype=st.sampled_from(["i32", "i64"]), seed=st.integers(0, 99))
def test_binary_int_matches_python(op, shapes, dtype, seed):
    a = rand(*shapes[0], dtype=dtype, seed=seed, low=-20, high=20)
    b = rand(*shapes[1], dtype=dtype, seed=seed + 1, low=1, high=6)
    b = b * np.where(rand(*shapes[1], dtype="bool", seed=seed), 1, -1).astype(b.dtype)
    out = run(op, a, b)
    np.testing.assert_array_equal(out, _oracle(BINARY[op], a.astype(object), b.astype(object),
                                               object).astype(out.dtype))


@pytest.mark.parametrize("op", sorted(COMPARE))
@SETTINGS
@given(shapes=broadcast_pair(), seed=st.integers(0, 2**16))
def test_comparisons(op, shapes, seed):
    a = rand(*shapes[0], dtype="i32", seed=seed, low=-2, high=2).astype(np.float32)
    b = rand(*shapes[1], dtype="i32", seed=seed + 1, low=-2, high=2).astype(np.float32)
    np.testing.assert_array_equal(run(op, a, b), _oracle(COMPARE[op], a, b, bool))


def test_integer_division_is_true_division_to_f32():
    out = run("div", np.array([7, -7], np.int64), np.array([2, 2], np.int64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [3.5, -3.5])


def test_floor_semantics_of_mod_and_floor_div():
    a, b = np.array([7.0, -7.0, 7.0, -7.0]), np.array([3.0, 3.0, -3.0, -3.0])
    np.testing.assert_array_equal(run("floor_div", a, b), [2, -3, -3, 2])
    np.testing.assert_array_equal(run("mod", a, b), [1, 2, -2, -1])


def test_logical_and_where():
    a, b = np.array([True, True, False]), np.array([[True], [False]])
    np.testing.assert_array_equal(run("logical_and", a, b), [[1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(run("logical_or", a, b), [[1, 1, 1], [1, 1, 0]])
    cond = np.array([[True], [False]])
    out = run("where", cond, np.array([1.0, 2.0], np.float32), np.array(-1.0, np.float32))
    np.testing.assert_array_equal(out, [[1, 2], [-1, -1]])


def test_half_precision_computes_in_f32():
    x = np.array([60000.0], np.float16)
    assert run("sigmoid", x).dtype == np.float16
    big = np.array([300.0], NUMPY_DTYPES["bf16"])
    assert run("mul", big, big).dtype == NUMPY_DTYPES["bf16"]
    assert_close("mul", run("mul", big, big), [90000.0], "bf16")


# symbolic shapes and errors ---------------------------------------------------------------
def test_symbolic_broadcasting():
    assert infer1("add", T(["B", 1]), T([1, 10])) == T(["B", 10])
    assert infer1("mul", T([10]), T(["B", "T", 1])) == T(["B", "T", 10])
    assert infer1("less", T(["B", 4]), T([4])) == T(["B", 4], "bool")
    assert infer1("where", T(["B", 1], "bool"), T([3]), T([])) == T(["B", 3])
    out = run("add", rand(3, 1), rand(1, 4), types=[T(["B", 1]), T([1, 4])], env={"B": 3})
    assert out.shape == (3, 4)


def test_broadcast_error_names_both_shapes():
    err = raises("K0301", "add", T(["B", 10]), T(["B", 12]))
    assert err.message == "cannot broadcast [B, 10] with [B, 12]"
    raises("K0301", "add", T(["B"]), T([10]), match=r"\[B\] with \[10\]")


def test_dtype_errors():
    raises("K0302", "exp", T([3], "i64"), arg="x")
    raises("K0302", "add", T([3], "f32"), T([3], "i64"), arg="b")
    raises("K0302", "logical_and", T([3], "f32"), T([3], "f32"))
    raises("K0302", "sub", T([3], "bool"), T([3], "bool"))
    raises("K0302", "where", T([3]), T([3]), T([3]), arg="cond")
    raises("K0302", "neg", T([3], "bool"))


def test_attribute_errors():
    raises("K0303", "gelu", T([3]), approximate="erf", arg="approximate")
    raises("K0303", "cast", T([3]), dtype="f8", arg="dtype")
    raises("K0303", "clip", T([3]), arg="min")
    raises("K0303", "dropout", T([3]), training=True, arg="training",
           match="built by the elaborator")
    raises("K0303", "dropout", T([3]), p=1.5, arg="p")
