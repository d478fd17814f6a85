"""Every gradient rule (OpRecord.vjp) of the elementwise, reduction and linear-algebra ops
against central finite differences in float64 (tests/_gradcheck.py: check_vjp), on random
shapes with broadcasting and size-1 axes; at kinks, ties and zeros, against PyTorch's
conventions (torch autograd on the same points)."""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import backward, check_vjp
from hypothesis import given
from hypothesis import strategies as st

from kiln.compiler.ops import REGISTRY

SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: b is a's tail with some axes set to 1 (or dropped)."""
    a = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    b = [1 if draw(st.booleans()) else d for d in a[draw(st.integers(0, len(a) - 1)):]]
    return (tuple(a), tuple(b)) if draw(st.booleans()) else (tuple(b), tuple(a))


def normal(shape, seed=0, shift=0.0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) + shift)


def away_from(x, points, gap=0.05):
    """x with entries within `gap` of a kink in `points` pushed off it (finite differences
    across a kink measure neither side)."""
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.where(x >= p, gap, -gap) * 2, x)
    return x


# ---------------------------------------------------------------- binary arithmetic
@given(broadcast_pair())
def test_add_sub_mul_broadcast(shapes):
    a, b = normal(shapes[0], 1), normal(shapes[1], 2)
    for op in ("add", "sub", "mul"):
        check_vjp(op, a, b)


@given(broadcast_pair())
def test_div_broadcast(shapes):
    a = normal(shapes[0], 1)
    b = away_from(normal(shapes[1], 2), [0.0], 0.3)
    check_vjp("div", a, b, rtol=1e-4)


# ---------------------------------------------------------------- unary
@given(SHAPES)
def test_neg(shape):
    check_vjp("neg", normal(shape))


@given(SHAPES)
def test_relu(shape):
    check_vjp("relu", away_from(normal(shape), [0.0]))


# ---------------------------------------------------------------- reductions
@st.composite
def reduction_case(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
    axes = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True)))
    return shape, axes, draw(st.booleans())


@given(reduction_case())
def test_sum_mean(case):
    shape, axis, keepdims = case
    for op in ("sum", "mean"):
        check_vjp(op, normal(shape), axis=axis, keepdims=keepdims)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), st.data())
def test_softmax_log_softmax(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = normal(shape) * 3
    check_vjp("softmax", x, axis=axis)
    check_vjp("log_softmax", x, axis=axis)


def test_softmax_of_a_scalar():
    check_vjp("softmax", normal(()), axis=-1)
    check_vjp("log_softmax", normal(()), axis=-1)


# ---------------------------------------------------------------- linear algebra
MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 3, 4, 5)), ((2, 3, 4), (4,)),
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul(sa, sb):
    check_vjp("matmul", normal(sa, 1), normal(sb, 2))


# ---------------------------------------------------------------- views used by Linear
def test_reshape_transpose_permute():
    x = normal((3, 4, 2))
    check_vjp("reshape", x, shape=[4, 6])
    check_vjp("transpose", x, a=0, b=-1)
    check_vjp("permute", x, perm=[2, 0, 1])


# ---------------------------------------------------------------- rule shapes
def test_integer_operands_take_no_gradient():
    _, _, grads = backward("add", np.arange(6).reshape(2, 3), np.arange(3))
    assert grads == [None, None]


def test_rules_are_written_for_these_ops():
    for op in ("add", "sub", "mul", "div", "neg", "relu", "matmul", "sum", "mean", "softmax",
               "log_softmax", "reshape", "transpose", "permute"):
        assert REGISTRY[op].vjp is not None, op
