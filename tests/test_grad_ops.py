"""Every gradient rule (OpRecord.vjp) of the elementwise, reduction and linear-algebra ops
against central finite differences in float64 (tests/_gradcheck.py: check_vjp), on random
shapes with broadcasting and size-1 axes; at kinks, ties and zeros, against PyTorch's
conventions (torch autograd on the same points)."""

from __future__ import annotations

import re
from pathlib import Path

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


@pytest.mark.parametrize("shifts, span, step", [([0, 3, 1], 1, 1), ([2, 0], 3, 1),
                                               ([2, 0], 3, 2), ([1], 1, 3)])
def test_shifted_matmul(shifts, span, step):
    check_vjp("shifted_matmul", normal((3, 5), 1),
              normal((4 * step + max(shifts) + span + 1, 2), 2), shifts=shifts, span=span,
              step=step)


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


# ---------------------------------------------------------------- every unary rule
def positive(shape, seed=0):
    return np.abs(normal(shape, seed)) + 0.5


UNARY = {  # op: (inputs for the shape, attributes)
    "abs": (lambda s: away_from(normal(s), [0.0]), {}),
    "exp": (normal, {}),
    "log": (positive, {}),
    "sqrt": (positive, {}),
    "rsqrt": (positive, {}),
    "reciprocal": (lambda s: away_from(normal(s), [0.0], 0.3), {}),
    "sin": (normal, {}),
    "cos": (normal, {}),
    "atan": (lambda s: normal(s) * 3, {}),
    "tanh": (normal, {}),
    "sigmoid": (lambda s: normal(s) * 3, {}),
    "erf": (normal, {}),
    "silu": (lambda s: normal(s) * 3, {}),
    "gelu": (lambda s: normal(s) * 2, {"approximate": "none"}),
    "gelu/tanh": (lambda s: normal(s) * 2, {"approximate": "tanh"}),
    "elu": (lambda s: away_from(normal(s), [0.0]), {"alpha": 0.7}),
    "leaky_relu": (lambda s: away_from(normal(s), [0.0]), {"negative_slope": 0.2}),
    "softplus": (lambda s: normal(s) * 3, {"beta": 2.0, "threshold": 3.0}),
    "hard_sigmoid": (lambda s: away_from(normal(s) * 3, [-3.0, 3.0]), {}),
    "hard_swish": (lambda s: away_from(normal(s) * 3, [-3.0, 3.0]), {}),
    "clip": (lambda s: away_from(normal(s), [-0.5, 0.7]), {"min": -0.5, "max": 0.7}),
    "clip/min": (lambda s: away_from(normal(s), [-0.5]), {"min": -0.5}),
    "clip/max": (lambda s: away_from(normal(s), [0.7]), {"max": 0.7}),
    "floor": (lambda s: away_from(normal(s) * 3, [-2.0, -1.0, 0.0, 1.0, 2.0]), {}),
    "ceil": (lambda s: away_from(normal(s) * 3, [-2.0, -1.0, 0.0, 1.0, 2.0]), {}),
    "sign": (lambda s: away_from(normal(s), [0.0]), {}),
}


@pytest.mark.parametrize("case", sorted(UNARY))
@given(shape=SHAPES)
def test_unary_rule(case, shape):
    make, attrs = UNARY[case]
    check_vjp(case.split("/")[0], np.asarray(make(shape)), rtol=1e-4, **attrs)


def test_softplus_threshold_is_linear():
    x = away_from(normal((3, 4)) * 4, [0.5], 0.2)  # beta x crosses the threshold 1
    check_vjp("softplus", x, beta=2.0, threshold=1.0, rtol=1e-4)


# ---------------------------------------------------------------- every binary rule
@given(broadcast_pair())
def test_maximum_minimum_pow_mod(shapes):
    a, b = normal(shapes[0], 1), normal(shapes[1], 2) + 0.1
    for op in ("maximum", "minimum"):
        check_vjp(op, a, b)
    check_vjp("pow", np.abs(a) + 0.5, b, rtol=1e-4)
    # away from the jumps of a % b, where a / b is an integer
    b = away_from(b, [0.0], 0.4)
    q = a / np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape))
    if np.all(np.abs(q - np.round(q)) > 0.05):
        check_vjp("mod", a, b)


@given(broadcast_pair(), st.data())
def test_where(shapes, data):
    cond = np.random.default_rng(3).random(shapes[data.draw(st.integers(0, 1))]) > 0.5
    check_vjp("where", cond, normal(shapes[0], 1), normal(shapes[1], 2))


@pytest.mark.parametrize("op", ["equal", "not_equal", "less", "greater", "less_equal",
                                "greater_equal"])
def test_comparisons_take_no_gradient(op):
    _, _, grads = backward(op, normal((3,), 1), normal((3,), 2))
    assert grads == [None, None]


def test_detach_takes_no_gradient():
    """detach(x) is x with no gradient: x * detach(x)'s gradient is detach(x), not 2x."""
    assert backward("detach", normal((2, 3)))[2] == [None]
    import kiln

    src = "model M { forward(x: f32[B, 3]) -> f32[B, 3] { return x * detach(x) } }"
    x = normal((2, 3), 5).astype(np.float32)
    for target in ("reference", "native"):
        _out, _grads, inputs = kiln.compile(src, target=target).vjp(
            x, cotangents=[np.ones((2, 3), np.float32)])
        np.testing.assert_allclose(inputs["x"], x, rtol=1e-6)


def test_logic_takes_no_gradient():
    a = np.array([True, False])
    assert backward("logical_and", a, a)[2] == [None, None]
    assert backward("logical_or", a, a)[2] == [None, None]
    assert backward("logical_not", normal((2,)))[2] == [None]


def test_cast():
    """A float cast's gradient is its cotangent cast back (kiln has no f64 to difference in)."""
    ct = normal((3, 2), 1).astype(np.float16)
    _, _, (g,) = backward("cast", normal((3, 2)).astype(np.float32), dtype="f16",
                          cotangents=[ct])
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, ct.astype(np.float32))
    assert backward("cast", normal((3,)), dtype="i64")[2] == [None]
    assert backward("cast", np.arange(3), dtype="f32")[2] == [None]


def test_floor_div_has_no_rule_as_in_pytorch():
    assert REGISTRY["floor_div"].vjp is None


# ---------------------------------------------------------------- reductions with ties and zeros
@given(reduction_case())
def test_max_min_prod_logsumexp(case):
    shape, axis, keepdims = case
    x = normal(shape)
    for op in ("max", "min", "logsumexp"):
        check_vjp(op, x, axis=axis, keepdims=keepdims)
    check_vjp("prod", x, axis=axis, keepdims=keepdims, rtol=1e-4)


def test_prod_with_zeros():
    x = np.array([[1.5, 0.0, 3.0], [0.0, 0.0, 2.0], [1.0, 2.0, -1.0]])
    check_vjp("prod", x, axis=1)  # the product is linear in each element: exact differences
    check_vjp("prod", x, axis=None)


# ---------------------------------------------------------------- PyTorch's conventions
def torch_grads(fn, *arrays):
    """Autograd of sum(fn(*arrays)) in float64."""
    torch = pytest.importorskip("torch", reason="PyTorch's conventions at kinks and ties")
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    fn(torch, *xs).sum().backward()
    return [x.grad.numpy() for x in xs]


def kiln_grads(op, *arrays, **attrs):
    """The rule's gradients of sum(op(*arrays)) (cotangent 1)."""
    fwd = backward(op, *arrays, **attrs)[0]
    return backward(op, *arrays, cotangents=[np.ones_like(r) for r in fwd], **attrs)[2]


KINKS = np.array([-3.0, -1.0, 0.0, 0.0, 1.0, 3.0, 20.0])
CONVENTIONS = [  # (op, attrs, torch function, inputs): kinks, ties, zeros
    ("relu", {}, lambda t, x: t.relu(x), [KINKS]),
    ("abs", {}, lambda t, x: x.abs(), [KINKS]),
    ("leaky_relu", {"negative_slope": 0.1},
     lambda t, x: t.nn.functional.leaky_relu(x, 0.1), [KINKS]),
    ("elu", {"alpha": 0.5}, lambda t, x: t.nn.functional.elu(x, 0.5), [KINKS]),
    ("hard_sigmoid", {}, lambda t, x: t.nn.functional.hardsigmoid(x), [KINKS]),
    ("hard_swish", {}, lambda t, x: t.nn.functional.hardswish(x), [KINKS]),
    ("softplus", {"beta": 1.0, "threshold": 20.0},
     lambda t, x: t.nn.functional.softplus(x), [KINKS]),
    ("clip", {"min": -1.0, "max": 1.0}, lambda t, x: x.clamp(-1.0, 1.0), [KINKS]),
    ("maximum", {}, lambda t, a, b: t.maximum(a, b),
     [np.array([1.0, 2.0, 2.0]), np.array([2.0, 2.0, 1.0])]),
    ("minimum", {}, lambda t, a, b: t.minimum(a, b),
     [np.array([1.0, 2.0, 2.0]), np.array([2.0, 2.0, 1.0])]),
    ("pow", {}, lambda t, a, b: a ** b,
     [np.array([0.0, 0.0, 2.0, 0.0]), np.array([0.0, 2.0, 0.5, 1.0])]),
    ("mod", {}, lambda t, a, b: t.remainder(a, b),
     [np.array([3.5, -2.0, 5.0]), np.array([2.0, 1.5, -3.0])]),
    ("max", {"axis": 1}, lambda t, x: x.amax(1), [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])]),
    ("min", {"axis": None}, lambda t, x: x.amin(), [np.array([[1.0, 3.0, 1.0], [2.0, 2.0, 5.0]])]),
    ("prod", {"axis": 1}, lambda t, x: x.prod(1),
     [np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0], [1.0, 2.0, 3.0]])]),
    ("sqrt", {}, lambda t, x: x.sqrt(), [np.array([0.0, 1.0, 4.0])]),
]


@pytest.mark.parametrize("op, attrs, fn, arrays", CONVENTIONS, ids=[c[0] for c in CONVENTIONS])
def test_pytorch_conventions(op, attrs, fn, arrays):
    for got, want in zip(kiln_grads(op, *arrays, **attrs), torch_grads(fn, *arrays),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_every_elementwise_reduction_and_matmul_op_has_a_rule():
    """Every op these families register (read from their source), but floor_div."""
    from kiln.compiler.ops import elementwise, linalg, reduce

    declared = re.compile(r'(?:unary|binary|reduction|along_axis|OpRecord)\(\s*"(\w+)"')
    names = {n for m in (elementwise, linalg, reduce)
             for n in declared.findall(Path(m.__file__).read_text(encoding="utf-8"))}
    assert {"add", "where", "cast", "max", "softmax", "matmul"} <= names
    # made only by the native pipeline's strided_products pass, which optimizes graphs that
    # autodiff has differentiated already (driver.GradientModel.of and the train step take
    # the elaborated graph): no gradient ever flows through them
    after_autodiff = {"matmul_strided", "attention_strided"}
    missing = sorted(n for n in names - after_autodiff
                     if REGISTRY[n].vjp is None and n != "floor_div")
    assert not missing, f"no gradient rule: {missing}"
