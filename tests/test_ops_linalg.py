"""matmul against a triple loop, for numpy's batching, broadcasting and 1-D rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _optest import T, assert_close, infer1, raises, rand, run
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.dims import Dim
from kiln.compiler.ops import REGISTRY

B = Dim.of("B")


def matmul_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over k of a[..., i, k] * b[..., k, j], batch axes broadcast, 1-D promoted as numpy."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a2 = np.broadcast_to(a2, batch + a2.shape[-2:]).astype(np.float64)
    b2 = np.broadcast_to(b2, batch + b2.shape[-2:]).astype(np.float64)
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    out = np.zeros(batch + (m, n))
    for idx in itertools.product(*(range(d) for d in batch)):
        for i, j in itertools.product(range(m), range(n)):
            out[idx + (i, j)] = sum(a2[idx + (i, p)] * b2[idx + (p, j)] for p in range(k))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


@st.composite
def matmul_shapes(draw):
    size = st.sampled_from([1, 2, 3, 5])
    m, k, n = draw(size), draw(size), draw(size)
    batch = draw(st.lists(size, max_size=2))
    a = batch + [m, k] if draw(st.booleans()) else [k]
    other = [1 if draw(st.booleans()) else d for d in batch][draw(st.integers(0, len(batch))):]
    b = other + [k, n] if draw(st.booleans()) else [k]
    return (a, b) if draw(st.booleans()) or len(a) == 1 or len(b) == 1 else (
        other + [m, k], batch + [k, n])


@settings(max_examples=40, deadline=None)
@given(shapes=matmul_shapes(), dtype=st.sampled_from(["f32", "f16", "bf16"]),
       seed=st.integers(0, 2**16))
def test_matmul_matches_loop(shapes, dtype, seed):
    a, b = rand(*shapes[0], dtype=dtype, seed=seed), rand(*shapes[1], dtype=dtype, seed=seed + 1)
    assert_close("matmul", run("matmul", a, b), matmul_loop(a, b), dtype)


def test_integer_matmul():
    a = np.array([[1, 2], [3, 4]], np.int64)
    np.testing.assert_array_equal(run("matmul", a, a), [[7, 10], [15, 22]])


def test_symbolic_shapes_and_macs():
    assert infer1("matmul", T(["B", 784]), T([784, 512])) == T(["B", 512])
    assert infer1("matmul", T(["B", 1, "T", 64]), T([8, 64, "T"])) == T(["B", 8, "T", "T"])
    assert infer1("matmul", T([64]), T(["B", 64, 3])) == T(["B", 3])
    assert infer1("matmul", T(["B", "T", 64]), T([64])) == T(["B", "T"])
    assert infer1("matmul", T([64]), T([64])) == T([])
    macs = REGISTRY["matmul"].macs([T(["B", 784]), T([784, 512])], [T(["B", 512])], {})
    assert macs == B * 784 * 512
    vec = REGISTRY["matmul"].macs([T([3, 1, 5, 4]), T([4, 2])], [T([3, 1, 5, 2])], {})
    assert vec == 3 * 5 * 4 * 2
    out = run("matmul", rand(2, 3), rand(3, 4), types=[T(["B", 3]), T([3, 4])], env={"B": 2})
    assert out.shape == (2, 4)


def test_errors():
    err = raises("K0301", "matmul", T(["B", 400]), T([120, 84]), arg="b")
    assert err.message == "inner dimensions differ: [B, 400] @ [120, 84]"
    raises("K0301", "matmul", T([2, 3, 4]), T([5, 4, 6]), match=r"\[2, 3, 4\] @ \[5, 4, 6\]")
    raises("K0301", "matmul", T([]), T([3]), arg="a")
    raises("K0302", "matmul", T([2, 3]), T([3, 2], "f16"), arg="b")
    raises("K0302", "matmul", T([2, 3], "bool"), T([3, 2], "bool"))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_matmul_keeps_dtype(dtype):
    a = rand(4, 64, dtype=dtype)
    assert run("matmul", a, rand(64, 2, dtype=dtype, seed=3)).dtype == a.dtype


@pytest.mark.parametrize("shifts, span, step", [([0], 1, 1), ([3, 0, 2], 1, 1), ([0, 5], 3, 1),
                                               ([1], 2, 1), ([0, 4], 3, 2), ([2], 1, 3)])
def test_shifted_matmul_matches_loop(shifts, span, step):
    """out[t][i, (s, j)] = sum over p of a[i, p] * b[shifts[t] + s + p * step, j]: the
    windows read element by element."""
    m, k, c = 3, 6, 2
    a, b = rand(m, k, seed=1), rand((k - 1) * step + max(shifts) + span, c, seed=2)
    want = np.zeros((len(shifts), m, span * c))
    for t, shift in enumerate(shifts):
        for i, s, j in itertools.product(range(m), range(span), range(c)):
            want[t, i, s * c + j] = sum(float(a[i, p]) * float(b[shift + s + p * step, j])
                                        for p in range(k))
    got = run("shifted_matmul", a, b, shifts=shifts, span=span, step=step)
    assert_close("shifted_matmul", got, want)
    macs = REGISTRY["shifted_matmul"].macs([T([m, k]), T(list(b.shape))], [], {
        "shifts": shifts, "span": span, "step": step})
    assert macs == len(shifts) * span * m * k * c


def test_shifted_matmul_shapes_and_errors():
    assert infer1("shifted_matmul", T([16, "B"]), T([B + 40, 8]), shifts=[0, 20, 38],
                  span=3) == T([3, 16, 24])
    raises("K0301", "shifted_matmul", T([4, 5]), T([7, 2]), shifts=[3], arg="b",
           match="b must have 8 rows")
    # spare rows past the furthest window: a constant number of them
    assert infer1("shifted_matmul", T([4, 5]), T([11, 2]), shifts=[3]) == T([1, 4, 2])
    assert infer1("shifted_matmul", T([16, "B"]), T([B + 45, 8]), shifts=[0, 20, 38],
                  span=3) == T([3, 16, 24])
    raises("K0301", "shifted_matmul", T([16, "B"]), T([B * 2 + 40, 8]), shifts=[0],
           arg="b")
    raises("K0303", "shifted_matmul", T([4, 5]), T([5, 2]), shifts=[], arg="shifts")
    raises("K0303", "shifted_matmul", T([4, 5]), T([5, 2]), shifts=[0], span=0, arg="span")
    raises("K0303", "shifted_matmul", T([4, 5]), T([5, 2]), shifts=[0], step=0, arg="step")
    # every step-th row: (K - 1) * step + the largest shift + span rows
    assert infer1("shifted_matmul", T([4, 5]), T([12, 2]), shifts=[3], step=2) == T([1, 4, 2])
    raises("K0301", "shifted_matmul", T([4, 5]), T([11, 2]), shifts=[3], step=2, arg="b",
           match="b must have 12 rows")
    assert infer1("shifted_matmul", T([16, "B"]), T([B * 2 + 40, 8]), shifts=[0, 38],
                  span=3, step=2) == T([2, 16, 24])
    raises("K0302", "shifted_matmul", T([4, 5], "f16"), T([5, 2], "f16"), shifts=[0])
    raises("K0302", "shifted_matmul", T([4, 5]), T([5, 2], "f64"), shifts=[0])


@pytest.mark.parametrize("k, m, n", [(1, 1, 1), (6, 3, 4), (9, 17, 2)])
def test_matmul_at_matches_loop(k, m, n):
    """matmul_at(a, b) is a^T @ b, element by element; its gradient against finite
    differences."""
    from _gradcheck import check_vjp

    a, b = rand(k, m, seed=k), rand(k, n, seed=m)
    want = np.array([[sum(float(a[p, i]) * float(b[p, j]) for p in range(k)) for j in range(n)]
                     for i in range(m)])
    assert_close("matmul_at", run("matmul_at", a, b), want)
    check_vjp("matmul_at", a.astype(np.float64), b.astype(np.float64))
    assert REGISTRY["matmul_at"].macs([T([k, m]), T([k, n])], [], {}) == k * m * n
    raises("K0301", "matmul_at", T([4, 5]), T([3, 2]), arg="b", match="as many rows")
    raises("K0301", "matmul_at", T([4]), T([4, 2]), arg="b", match="matrices")


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (6, 3, 4), (9, 17, 2)])
def test_matmul_bt_matches_loop(m, k, n):
    """matmul_bt(a, w) is a @ w^T, element by element, for a matrix a and for a batch of
    them; its gradient against finite differences."""
    from _gradcheck import check_vjp

    a, w = rand(m, k, seed=k), rand(n, k, seed=m)
    want = np.array([[sum(float(a[i, p]) * float(w[j, p]) for p in range(k)) for j in range(n)]
                     for i in range(m)])
    assert_close("matmul_bt", run("matmul_bt", a, w), want)
    a3 = rand(2, m, k, seed=n)
    assert_close("matmul_bt", run("matmul_bt", a3, w),
                 np.stack([a3[0].astype(np.float64) @ w.T.astype(np.float64),
                           a3[1].astype(np.float64) @ w.T.astype(np.float64)]))
    check_vjp("matmul_bt", a.astype(np.float64), w.astype(np.float64))
    check_vjp("matmul_bt", a3.astype(np.float64), w.astype(np.float64))
    assert REGISTRY["matmul_bt"].macs([T([2, m, k]), T([n, k])], [], {}) == 2 * m * k * n
    raises("K0301", "matmul_bt", T([4, 5]), T([3, 2]), arg="b", match="as long")
    raises("K0301", "matmul_bt", T([5]), T([4, 5]), arg="b", match="rank 2 or more")
    raises("K0301", "matmul_bt", T([4, 5]), T([2, 3, 5]), arg="b", match="matrix")


def test_matmul_strided_matches_loop():
    """matmul_strided reads its operands and writes its result through views (offset and
    strides of flat row-major elements): two heads of queries and keys of one projection x
    [2, 5, 24] (q at columns 0-3 of each head's 4, k at 8-11), q @ k^T scaled by 0.5; then
    those scores times the values' heads (columns 16-23), written merged into [2, 5, 8]."""
    x = rand(2, 5, 24, seed=3)
    q = x[:, :, 0:8].reshape(2, 5, 2, 4).astype(np.float64)
    k = x[:, :, 8:16].reshape(2, 5, 2, 4).astype(np.float64)
    v = x[:, :, 16:24].reshape(2, 5, 2, 4).astype(np.float64)
    want = np.array([[[[0.5 * sum(q[n, i, h, p] * k[n, j, h, p] for p in range(4))
                        for j in range(5)] for i in range(5)] for h in range(2)]
                     for n in range(2)])
    attrs = {"batch": [2, 2], "m": 5, "k": 4, "n": 5, "a_view": [0, 120, 4, 24, 1],
             "b_view": [8, 120, 4, 1, 24], "c_view": [0, 50, 25, 5, 1],
             "shape": [2, 2, 5, 5], "alpha": 0.5}
    scores = run("matmul_strided", x, x, **attrs)
    assert_close("matmul_strided", scores, want)
    merged = np.zeros((2, 5, 8))
    for n, h, i, d in itertools.product(range(2), range(2), range(5), range(4)):
        merged[n, i, 4 * h + d] = sum(float(scores[n, h, i, j]) * v[n, j, h, d]
                                      for j in range(5))
    assert_close("matmul_strided", run(
        "matmul_strided", scores, x, batch=[2, 2], m=5, k=5, n=4, a_view=[0, 50, 25, 5, 1],
        b_view=[16, 120, 4, 24, 1], c_view=[0, 40, 4, 8, 1], shape=[2, 5, 8]), merged)
    assert REGISTRY["matmul_strided"].macs([T([2, 5, 24]), T([2, 5, 24])], [], attrs) == 400
    raises("K0303", "matmul_strided", T([2, 5, 24]), T([2, 5, 24]),
           **{**attrs, "a_view": [0, 120, 4, 24]}, arg="a_view", match="an offset and 4")
    raises("K0303", "matmul_strided", T([2, 5, 24]), T([2, 5, 24]),
           **{**attrs, "b_view": [8, 120, 4, 2, 24]}, arg="b_view", match="stride 1")
    raises("K0303", "matmul_strided", T([2, 5, 24]), T([2, 5, 24]),
           **{**attrs, "c_view": [0, 50, 25, 1, 5]}, arg="c_view", match="stride 1")
    raises("K0302", "matmul_strided", T([2, 5, 24], "f64"), T([2, 5, 24]), **attrs, arg="a")


def test_attention_strided_matches_loop():
    """attention_strided: two heads of queries, keys and values of one projection x
    [2, 5, 24] (columns 0-7, 8-15 and 16-23), softmax(0.5 * q @ k^T) @ v per head by loops
    and math.exp, written merged into [2, 5, 8]; its errors."""
    import math

    x = rand(2, 5, 24, seed=3)
    heads = [x[:, :, 8 * i:8 * i + 8].reshape(2, 5, 2, 4).astype(np.float64) for i in range(3)]
    q, k, v = heads
    want = np.zeros((2, 5, 8))
    for n, h, i in itertools.product(range(2), range(2), range(5)):
        scores = [0.5 * sum(q[n, i, h, p] * k[n, j, h, p] for p in range(4)) for j in range(5)]
        weights = [math.exp(sc - max(scores)) for sc in scores]
        for dd in range(4):
            want[n, i, 4 * h + dd] = sum(w * v[n, j, h, dd]
                                         for j, w in enumerate(weights)) / sum(weights)
    attrs = {"batch": [2, 2], "m": 5, "d": 4, "s": 5, "n": 4, "q_view": [0, 120, 4, 24, 1],
             "k_view": [8, 120, 4, 1, 24], "v_view": [16, 120, 4, 24, 1],
             "c_view": [0, 40, 4, 8, 1], "shape": [2, 5, 8], "alpha": 0.5}
    assert_close("attention_strided", run("attention_strided", x, x, x, **attrs), want)
    assert REGISTRY["attention_strided"].macs([T([2, 5, 24])] * 3, [], attrs) == 800
    raises("K0303", "attention_strided", *[T([2, 5, 24])] * 3,
           **{**attrs, "v_view": [16, 120, 4, 24]}, arg="v_view", match="an offset and 4")
    raises("K0303", "attention_strided", *[T([2, 5, 24])] * 3,
           **{**attrs, "k_view": [8, 120, 4, 2, 24]}, arg="k_view", match="stride 1")
    raises("K0303", "attention_strided", *[T([2, 5, 24])] * 3,
           **{**attrs, "c_view": [0, 40, 4, 1, 8]}, arg="c_view", match="columns of stride 1")
    raises("K0302", "attention_strided", T([2, 5, 24]), T([2, 5, 24], "f64"), T([2, 5, 24]),
           **attrs, arg="k")


def test_attention_strided_masked_and_biased_matches_loop():
    """attention_strided with a bool mask and an f32 bias: the scores of two heads of one
    projection [2, 5, 24], where(mask, 0.5 * q @ k^T, fill) + bias per element by loops and
    math.exp, a mask [5, 5] shared by the heads (strides 0) and a bias [2, 5] per sample and
    key; with keep false, fill where the mask is true; its errors."""
    import math

    x, bias = rand(2, 5, 24, seed=3), rand(2, 5, seed=4)
    mask = np.random.default_rng(5).random((5, 5)) < 0.6
    mask[:, 0] = True  # every row keeps a key: no row of -inf only
    heads = [x[:, :, 8 * i:8 * i + 8].reshape(2, 5, 2, 4).astype(np.float64) for i in range(3)]
    q, k, v = heads
    attrs = {"batch": [2, 2], "m": 5, "d": 4, "s": 5, "n": 4, "q_view": [0, 120, 4, 24, 1],
             "k_view": [8, 120, 4, 1, 24], "v_view": [16, 120, 4, 24, 1],
             "c_view": [0, 40, 4, 8, 1], "shape": [2, 5, 8], "alpha": 0.5,
             "mask_view": [0, 0, 0, 5, 1], "bias_view": [0, 5, 0, 0, 1]}
    for keep, fill in ((True, float("-inf")), (False, -30.0)):
        want = np.zeros((2, 5, 8))
        for n, h, i in itertools.product(range(2), range(2), range(5)):
            scores = [(0.5 * sum(q[n, i, h, p] * k[n, j, h, p] for p in range(4))
                       if mask[i, j] == keep else fill) + bias[n, j] for j in range(5)]
            weights = [math.exp(sc - max(scores)) for sc in scores]
            for dd in range(4):
                want[n, i, 4 * h + dd] = sum(w * v[n, j, h, dd]
                                             for j, w in enumerate(weights)) / sum(weights)
        got = run("attention_strided", x, x, x, mask, bias, **attrs, fill=fill, keep=keep)
        assert_close("attention_strided", got, want)
    types = [T([2, 5, 24])] * 3
    raises("K0303", "attention_strided", *types, T([5, 5], "bool"), None,
           **{**attrs, "bias_view": None, "mask_view": None}, arg="mask_view",
           match="exactly when")
    raises("K0303", "attention_strided", *types, T([5, 5], "bool"), T([2, 5]),
           **{**attrs, "mask_view": [0, 0, 0, 1, 5]}, arg="mask_view", match="keys of stride")
    raises("K0302", "attention_strided", *types, T([5, 5]), T([2, 5]), **attrs, arg="mask")
    raises("K0303", "attention_strided", *types, T([5, 5], "bool"), T([2, 5]),
           **{**attrs, "fill": 1}, arg="fill", match="float")
    raises("K0303", "attention_strided", *types, T([5, 5], "bool"), T([2, 5]),
           **{**attrs, "keep": 1}, arg="keep", match="true or false")
