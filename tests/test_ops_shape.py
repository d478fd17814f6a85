"""Shape and data-movement ops against Python lists, loops and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _optest import T, infer, infer1, raises, rand, run
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.dims import Dim

B, N, L = Dim.of("B"), Dim.of("N"), Dim.of("T")
SETTINGS = settings(max_examples=40, deadline=None)


# reshaping --------------------------------------------------------------------------------
def test_reshape():
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(run("reshape", x, [4, -1]), [list(range(6 * i, 6 * i + 6))
                                                              for i in range(4)])
    assert infer1("reshape", T(["B", 4, 5]), [B, -1]) == T(["B", 20])
    assert infer1("reshape", T(["B", 4, 5]), [-1, 10]) == T([B * 2, 10])
    assert infer1("reshape", T(["B", "T", 8]), [B * L, 2, 4]) == T([B * L, 2, 4])
    assert infer1("reshape", T([1, 1]), []) == T([])
    out = run("reshape", rand(2, 4, 5), [B, -1], types=[T(["B", 4, 5])], env={"B": 2})
    assert out.shape == (2, 20)


def test_reshape_errors():
    raises("K0301", "reshape", T(["B", 4, 5]), [3, -1], arg="shape",
           match=r"\[B, 4, 5\] to \[3, -1\]")
    raises("K0301", "reshape", T(["B", 4, 5]), [B, 21], arg="shape", match="20")
    raises("K0301", "reshape", T(["B", 4]), [L, -1], arg="shape")
    raises("K0303", "reshape", T([4, 5]), [-1, -1], arg="shape")
    raises("K0303", "reshape", T([4, 5]), [-2, 10], arg="shape")
    raises("K0303", "reshape", T([4, 5]), ["x"], arg="shape")


def test_flatten_transpose_permute_flip():
    x = np.arange(24).reshape(2, 3, 4)
    assert run("flatten", x).shape == (2, 12)
    assert run("flatten", x, start=0).tolist() == list(range(24))
    assert run("flatten", x, start=0, end=1).shape == (6, 4)
    assert infer1("flatten", T(["B", 3, "H", "W"])) == T([B, 3 * Dim.of("H") * Dim.of("W")])
    t = run("transpose", x, 0, -1)
    assert t.shape == (4, 3, 2) and t[3, 1, 0] == x[0, 1, 3]
    p = run("permute", x, [1, 2, 0])
    assert p.shape == (3, 4, 2) and p[2, 3, 1] == x[1, 2, 3]
    assert infer1("permute", T(["B", "T", 8]), [2, 0, 1]) == T([8, "B", "T"])
    np.testing.assert_array_equal(run("flip", x, [0, 2])[0, 0], x[1, 0][::-1])
    np.testing.assert_array_equal(run("flip", np.arange(3), 0), [2, 1, 0])
    raises("K0303", "permute", T([2, 3]), [0, 0], arg="perm")
    raises("K0303", "permute", T([2, 3]), [0], arg="perm")
    raises("K0303", "transpose", T([2, 3]), 0, 2, arg="b")
    raises("K0303", "flatten", T([2, 3, 4]), start=2, end=1, arg="start")
    raises("K0303", "flip", T([2, 3]), 3, arg="axis")


def test_squeeze_unsqueeze_broadcast_tile():
    x = rand(1, 3, 1, 2)
    assert run("squeeze", x).shape == (3, 2)
    assert run("squeeze", x, 2).shape == (1, 3, 2)
    assert run("squeeze", x, [0, -2]).shape == (3, 2)
    assert infer1("squeeze", T(["B", 1, 10]), 1) == T(["B", 10])
    raises("K0301", "squeeze", T(["B", 3]), 1, arg="axis", match=r"axis 1 of \[B, 3\]")
    raises("K0301", "squeeze", T(["B", 1]), arg="axis")
    assert run("unsqueeze", rand(3, 2), -1).shape == (3, 2, 1)
    assert run("unsqueeze", rand(3, 2), [0, 2]).shape == (1, 3, 1, 2)
    assert infer1("unsqueeze", T(["E"]), -1) == T(["E", 1])
    b = run("broadcast_to", np.array([[1], [2]]), [3, 2, 4])
    assert b.shape == (3, 2, 4) and b[2, 1].tolist() == [2] * 4
    assert infer1("broadcast_to", T([1, 10]), [B, 10]) == T(["B", 10])
    raises("K0301", "broadcast_to", T([3, 10]), [B, 10], arg="shape",
           match=r"\[3, 10\] to \[B, 10\]")
    np.testing.assert_array_equal(run("tile", np.array([[1, 2]]), [2, 2]),
                                  [[1, 2, 1, 2], [1, 2, 1, 2]])
    assert run("tile", np.array([1, 2]), [3, 1, 2]).shape == (3, 1, 4)
    assert infer1("tile", T(["B", 4]), [2]) == T(["B", 8])


def test_tril_triu_against_loop():
    x = rand(2, 3, 4, seed=3)
    for k in (-1, 0, 2):
        lower, upper = run("tril", x, k), run("triu", x, k=k)
        for b, i, j in itertools.product(range(2), range(3), range(4)):
            assert lower[b, i, j] == (x[b, i, j] if j - i <= k else 0)
            assert upper[b, i, j] == (x[b, i, j] if j - i >= k else 0)
    raises("K0301", "tril", T([3]), arg="x")


# padding ----------------------------------------------------------------------------------
def test_pad_modes_by_hand():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(run("pad", x, [2, 1], value=9),
                                  [[9, 9, 1, 2, 3, 9]])
    np.testing.assert_array_equal(run("pad", x, [2, 1], mode="reflect"), [[3, 2, 1, 2, 3, 2]])
    np.testing.assert_array_equal(run("pad", x, [2, 1], mode="replicate"), [[1, 1, 1, 2, 3, 3]])
    np.testing.assert_array_equal(run("pad", x, [0, 0, 1, 0]), [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_array_equal(run("pad", x, [-1, 1]), [[2, 3, 0]])
    assert infer1("pad", T(["B", 3, "H", "W"]), [1, 1, 2, 2]) == T(
        [B, 3, Dim.of("H") + 4, Dim.of("W") + 2])
    raises("K0303", "pad", T([2, 3]), [1], arg="pads")
    raises("K0303", "pad", T([2, 3]), [1, 1], mode="circular", arg="mode")
    raises("K0303", "pad", T([2, 3]), [-1, 1], mode="reflect", arg="pads")
    raises("K0301", "pad", T([2, 3]), [3, 0], mode="reflect", arg="pads")


def test_padded_permute_by_loops():
    """out[i] = x[i - before] read through the permutation, zero outside: element by element
    from Python loops; the shape rule and the refused widths."""
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    perm, pads = [2, 0, 1], [1, 0, 0, 2, 2, 1]
    out = run("padded_permute", x, perm, pads)
    assert out.shape == (5, 4, 6)
    for i, j, k in np.ndindex(*out.shape):
        a, b, c = i - 1, j, k - 2  # (before widths) on result axes 0, 1, 2
        inside = 0 <= a < 4 and 0 <= b < 2 and 0 <= c < 3
        assert out[i, j, k] == (x[b, c, a] if inside else 0.0), (i, j, k)
    assert infer1("padded_permute", T(["B", 3, "H"]), [0, 2, 1], [0, 1, 2, 2, 0, 0]) == T(
        [B + 1, Dim.of("H") + 4, 3])
    raises("K0303", "padded_permute", T([2, 3]), [1, 0], [1, 1], arg="pads")
    raises("K0303", "padded_permute", T([2, 3]), [1, 0], [0, -1, 0, 0], arg="pads")


# slicing ----------------------------------------------------------------------------------
def _rng(start=None, stop=None, step=1):
    return ("range", start, stop, step)


def test_slice_by_hand():
    x = np.arange(60).reshape(3, 4, 5)
    nested = x.tolist()
    out = run("slice", x, [("int", 1), _rng(None, None, -2)])
    assert out.tolist() == nested[1][::-2]
    out = run("slice", x, [("ellipsis",), _rng(1, -1)])
    assert out.tolist() == [[row[1:-1] for row in plane] for plane in nested]
    out = run("slice", x, [_rng(), ("new",), ("int", -1), ("int", 0)])
    assert out.tolist() == [[plane[-1][0]] for plane in nested]
    assert run("slice", x, [("int", 2), ("int", 3), ("int", 4)]).tolist() == 59
    assert run("slice", x, [_rng(5, 9)]).shape == (0, 4, 5)
    assert run("slice", x, [("ellipsis",), ("new",)]).shape == (3, 4, 5, 1)


def test_slice_symbolic():
    h = T(["B", "T", 64])
    assert infer1("slice", h, [("ellipsis",), _rng(None, 16)]) == T(["B", "T", 16])
    assert infer1("slice", h, [_rng(), _rng(1)]) == T(["B", L - 1, 64])
    assert infer1("slice", h, [_rng(), _rng(-3)]) == T(["B", 3, 64])
    assert infer1("slice", h, [("int", 0), ("int", -1)]) == T([64])
    assert infer1("slice", T(["E"]), [_rng(None, None, 2)]) == T([(Dim.of("E") + 1) // 2])
    assert infer1("slice", h, [_rng(), _rng(L - 4, None)]) == T(["B", 4, 64])
    edge = T([2, "E"], "i64")
    assert infer1("slice", edge, [("int", 1)]) == T(["E"], "i64")


@SETTINGS
@given(size=st.integers(0, 9), start=st.none() | st.integers(-9, 9),
       stop=st.none() | st.integers(-9, 9), step=st.integers(-3, 3).filter(bool))
def test_slice_lengths_match_python(size, start, stop, step):
    """Constant sizes clamp like Python; symbolic ones agree whenever the bounds are in range
    (a formula like T - 2 for [1:-1] goes negative where Python's slice is empty)."""
    items = [_rng(start, stop, step)]
    expected = len(list(range(size))[start:stop:step])
    assert infer1("slice", T([size]), items).shape == (Dim.of(expected),)
    first, last = (start, stop) if step > 0 else (stop, start)
    if first is not None and last is not None and first < 0 <= last:
        raises("K0301", "slice", T(["S"]), items, arg="items", match="shrinks")
        return
    in_range = all(b is None or -size <= b <= size for b in (start, stop))
    in_range = in_range and (step > 0 or all(b is None or -size <= b < size for b in (start, stop)))
    if in_range:
        symbolic = infer1("slice", T(["S"]), items).shape[0].evaluate({"S": size})
        assert max(symbolic, 0) == expected  # a negative length means an empty slice


def test_slice_errors():
    raises("K0301", "slice", T([2, 3]), [("int", 0), ("int", 0), ("int", 0)], arg="items")
    raises("K0301", "slice", T([2, 3]), [("int", 2)], arg="items", match="out of range")
    raises("K0303", "slice", T([2, 3]), [("ellipsis",), ("ellipsis",)], arg="items")
    raises("K0303", "slice", T([2, 3]), [_rng(0, 2, 0)], arg="items")
    raises("K0303", "slice", T([2, 3]), [("bogus",)], arg="items")


# joining and splitting --------------------------------------------------------------------
def test_concat_stack():
    a, b = np.arange(6).reshape(2, 3), np.arange(6, 10).reshape(2, 2)
    assert run("concat", [a, b], axis=-1).tolist() == [[0, 1, 2, 6, 7], [3, 4, 5, 8, 9]]
    assert run("stack", [a, a + 1], axis=1).tolist() == [[[0, 1, 2], [1, 2, 3]],
                                                         [[3, 4, 5], [4, 5, 6]]]
    assert infer1("concat", [T(["B", "T"]), T(["B", 4])], axis=1) == T(["B", L + 4])
    assert infer1("stack", [T(["B"]), T(["B"]), T(["B"])], axis=-1) == T(["B", 3])
    raises("K0301", "concat", [T(["B", 3]), T([2, 3])], axis=1, arg="xs",
           match=r"\[B, 3\] and \[2, 3\]")
    raises("K0301", "stack", [T([2, 3]), T([2, 4])], arg="xs")
    raises("K0301", "concat", [], arg="xs")
    raises("K0302", "concat", [T([2]), T([2], "i64")], arg="xs")
    raises("K0303", "stack", [T([2]), T([2])], axis=2, arg="axis")


def test_split():
    x = np.arange(12).reshape(2, 6)
    parts = run("split", x, 3)
    assert [p.tolist() for p in parts] == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5], [10, 11]]]
    parts = run("split", x, axis=1, sizes=[1, 5])
    assert [p.shape for p in parts] == [(2, 1), (2, 5)]
    gates = infer("split", T(["B", 4 * 32]), 4, axis=-1)
    assert gates == [T(["B", 32])] * 4
    sym = infer("split", T(["B", Dim.of("H") * 4]), 2)
    assert sym == [T(["B", Dim.of("H") * 2])] * 2
    parts = infer("split", T(["N", "E"]), axis=0, sizes=[N - 2, 2])
    assert parts == [T([N - 2, "E"]), T([2, "E"])]
    out = run("split", rand(3, 8), 2, types=[T(["B", 8])], env={"B": 3})
    assert [p.shape for p in out] == [(3, 4), (3, 4)]
    raises("K0301", "split", T(["B", "H"]), 4, arg="n", match=r"\[B, H\]")
    raises("K0301", "split", T(["B", 10]), 4, arg="n")
    raises("K0301", "split", T([2, 6]), sizes=[2, 3], arg="sizes")
    raises("K0303", "split", T([2, 6]), arg="n")
    raises("K0303", "split", T([2, 6]), 2, sizes=[3, 3], arg="n")


# gather and scatter -----------------------------------------------------------------------
def test_gather_take_along_axis():
    x = np.arange(12).reshape(3, 4)
    index = np.array([[2, -1], [0, 0]])
    out = run("gather", x, index, axis=1)
    assert out.shape == (3, 2, 2)
    assert out[1].tolist() == [[x[1][2], x[1][-1]], [x[1][0], x[1][0]]]
    assert infer1("gather", T(["N", 16]), T(["E"], "i64")) == T(["E", 16])
    assert infer1("gather", T(["N", 16]), T([], "i32"), axis=1) == T(["N"])
    idx = np.array([[3], [0], [1]])
    assert run("take_along_axis", x, idx, 1).tolist() == [[3], [4], [9]]
    assert infer1("take_along_axis", T(["B", 10]), T(["B", 1], "i64"), axis=1) == T(["B", 1])
    raises("K0302", "gather", T([3, 4]), T([2]), arg="index")
    raises("K0301", "take_along_axis", T([3, 4]), T([4], "i64"), axis=0, arg="index")
    raises("K0303", "gather", T([3, 4]), T([2], "i64"), axis=2, arg="axis")
    with pytest.raises(Exception, match="out of range"):
        run("gather", x, np.array([4]), axis=1)


def scatter_loop(src, index, size, axis, reduce):
    """Collect each src element's value in its segment, then reduce each segment (0 if empty)."""
    folds = {"sum": math.fsum, "mean": lambda v: math.fsum(v) / len(v), "max": max, "min": min,
             "prod": math.prod}
    out_shape = src.shape[:axis] + (size,) + src.shape[axis + 1:]
    bins: dict = {}
    for pos in itertools.product(*(range(n) for n in src.shape)):
        seg = int(index[pos[axis]] if index.ndim == 1 else index[pos]) % size
        bins.setdefault(pos[:axis] + (seg,) + pos[axis + 1:], []).append(float(src[pos]))
    out = np.zeros(out_shape)
    for pos, values in bins.items():
        out[pos] = folds[reduce](values)
    return out


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "prod"])
@SETTINGS
@given(shape=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=3),
       size=st.integers(1, 6), full=st.booleans(), data=st.data())
def test_scatter_against_loop(reduce, shape, size, full, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    src = rand(*shape, seed=data.draw(st.integers(0, 99)))
    index_shape = shape if full else [shape[axis]]
    index = np.array(data.draw(st.lists(st.integers(-size, size - 1), min_size=math.prod(
        index_shape), max_size=math.prod(index_shape)))).reshape(index_shape)
    out = run("scatter", src, index, size, axis=axis, reduce=reduce)
    np.testing.assert_allclose(out, scatter_loop(src, index, size, axis, reduce), rtol=1e-5,
                               atol=1e-6)


def test_scatter_add_and_gcn_shapes():
    src = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    out = run("scatter_add", src, np.array([2, 0, 2]), 4)
    assert out.tolist() == [[3, 4], [0, 0], [6, 8], [0, 0]]
    ints = run("scatter", np.array([3, 7, 5], np.int32), np.array([1, 1, 0]), 3, reduce="max")
    assert ints.tolist() == [5, 7, 0] and ints.dtype == np.int32
    assert infer1("scatter", T(["E", 16]), T(["E"], "i64"), N) == T(["N", 16])
    assert infer1("scatter_add", T(["E", 16]), T(["E", 16], "i64"), N) == T(["N", 16])
    out = run("scatter", src, np.array([1, 1, 0]), N, reduce="mean",
              types=[T(["E", 2]), T(["E"], "i64")], env={"E": 3, "N": 2})
    assert out.tolist() == [[5, 6], [2, 3]]
    raises("K0301", "scatter", T(["E", 16]), T(["N"], "i64"), N, arg="index",
           match=r"\[N\].*\[E, 16\]")
    raises("K0302", "scatter", T(["E", 16]), T(["E"]), N, arg="index")
    raises("K0302", "scatter", T(["E"], "i64"), T(["E"], "i64"), N, reduce="mean", arg="src")
    raises("K0303", "scatter", T(["E"]), T(["E"], "i64"), N, reduce="median", arg="reduce")
    raises("K0303", "scatter", T(["E"]), T(["E"], "i64"), "N", arg="size")


# creation ---------------------------------------------------------------------------------
def test_arange():
    assert run("arange", 5).tolist() == list(range(5))
    assert run("arange", 2, 11, 3).tolist() == list(range(2, 11, 3))
    assert run("arange", 5, -4, -2).tolist() == list(range(5, -4, -2))
    assert run("arange", 5, 2).tolist() == []
    floats = run("arange", 0.0, 1.0, 0.25, dtype="f32")
    assert floats.tolist() == [0.0, 0.25, 0.5, 0.75] and floats.dtype == np.float32
    assert run("arange", 0, 1, 0.3, dtype="f32").shape == (4,)
    assert infer1("arange", L) == T(["T"], "i64")
    assert infer1("arange", 1, L + 1, 2, dtype="i32") == T([(L + 1) // 2], "i32")
    assert run("arange", L, types=[], env={"T": 4}).tolist() == [0, 1, 2, 3]
    raises("K0303", "arange", 0.5, 3, arg="dtype")
    raises("K0303", "arange", 0, 3, 0, arg="step")
    raises("K0303", "arange", 0, 3, dtype="bool", arg="dtype")


def test_zeros_ones_full_one_hot_dim_value():
    z = run("zeros", [2, 3])
    assert z.dtype == np.float32 and z.shape == (2, 3) and not z.any()
    assert run("ones", [], dtype="i32").tolist() == 1
    assert run("full", [2], 7, dtype="i64").tolist() == [7, 7]
    assert run("full", [2], N, dtype="i64", env={"N": 4}).tolist() == [4, 4]
    assert run("full", [B, 2], True, dtype="bool", env={"B": 1}).tolist() == [[True, True]]
    assert infer1("zeros", [B, 16]) == T(["B", 16])
    out = run("one_hot", np.array([[0, 2]]), 3)
    assert out.tolist() == [[[1, 0, 0], [0, 0, 1]]] and out.dtype == np.int64
    assert infer1("one_hot", T(["B"], "i64"), N, dtype="f32") == T(["B", "N"])
    value = run("dim_value", B, env={"B": 5})
    assert value.tolist() == 5 and value.shape == () and value.dtype == np.int64
    raises("K0303", "zeros", [2, -1], arg="shape")
    raises("K0303", "full", [2], "x", arg="value")
    raises("K0303", "ones", [2], dtype="f8", arg="dtype")
    raises("K0302", "one_hot", T([3]), 4, arg="x")
    raises("K0303", "one_hot", T([3], "i64"), 0, arg="num_classes")
    with pytest.raises(Exception, match="class values"):
        run("one_hot", np.array([3]), 3)
