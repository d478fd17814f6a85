"""Gradient rules of the shape, slicing, gather/scatter and creation ops against central finite
differences (tests/_gradcheck.py), on random shapes, and built for symbolic sizes (a B-sized
batch) where an op's attributes may hold them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _gradcheck import backward, check_vjp, rules_graph
from _nativetest import native_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.compiler.codegen.onnx import export
from kiln.compiler.dims import Dim
from kiln.compiler.elaborate.elaborator import Port
from kiln.compiler.evaluate import run_graph
from kiln.compiler.ir import Graph
from kiln.compiler.ops import REGISTRY
from kiln.compiler.types import TensorType

B = Dim.of("B")
SETTINGS = settings(max_examples=15, deadline=None)
# the ops of compiler/ops/views.py, slicing.py, gather.py and creation.py
SHAPE_OPS = ("reshape", "flatten", "transpose", "permute", "flip", "squeeze", "unsqueeze",
             "broadcast_to", "tile", "tril", "triu", "pad", "slice", "concat", "stack", "split",
             "gather", "take_along_axis", "scatter", "scatter_add", "arange", "zeros", "ones",
             "full", "one_hot", "dim_value")


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def batched(*arrays: np.ndarray | None) -> list[TensorType | None]:
    """The arrays' types with axis 0 the symbolic batch B (non-arrays: their own type)."""
    return [None if x is None else TensorType("f64" if x.dtype == np.float64 else "i64",
                                              (B, *x.shape[1:]) if x.ndim else ())
            for x in arrays]


def check_batched(op: str, *arrays: np.ndarray, **attrs) -> None:
    """check_vjp with every input's axis 0 the symbolic B (bound to the arrays' batch)."""
    check_vjp(op, *arrays, types=batched(*arrays), dims={"B": arrays[0].shape[0]}, **attrs)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3)


def test_every_shape_op_has_a_rule():
    """Every op of the four families has a rule (the creation ops' says: no gradient)."""
    assert [op for op in SHAPE_OPS if REGISTRY[op].vjp is None] == []


# reshaping and axis moves -----------------------------------------------------------------
@SETTINGS
@given(shapes)
def test_reshape_flatten(shape):
    x = rand(*shape)
    check_vjp("reshape", x, [-1])
    check_vjp("flatten", x, start=0)
    check_vjp("reshape", x[None], [1, -1, 1])


def test_reshape_batched():
    x = rand(3, 2, 4)
    check_batched("reshape", x, shape=[B, -1])
    check_batched("flatten", x)
    check_batched("unsqueeze", x, axis=[0, 3])
    check_batched("squeeze", rand(3, 1, 4), axis=1)


def test_squeeze_unsqueeze():
    check_vjp("squeeze", rand(1, 3, 1))
    check_vjp("squeeze", rand(2, 1, 3), axis=-2)
    check_vjp("unsqueeze", rand(2, 3), axis=[0, 2])


@SETTINGS
@given(st.permutations([0, 1, 2]))
def test_permute_transpose(perm):
    x = rand(2, 3, 4)
    check_vjp("permute", x, list(perm))
    check_vjp("transpose", x, perm[0], perm[1])
    check_batched("permute", x, perm=list(perm))


def test_flip_tril_triu():
    check_vjp("flip", rand(3, 4), [0, 1])
    check_vjp("flip", rand(2, 3, 2), -1)
    for k in (-1, 0, 2):
        check_vjp("tril", rand(2, 3, 4), k=k)
        check_vjp("triu", rand(4, 3), k=k)
    check_batched("triu", rand(2, 3, 3), k=1)


@SETTINGS
@given(st.lists(st.sampled_from([1, 3]), min_size=1, max_size=3), st.integers(0, 2))
def test_broadcast_to(shape, lead):
    x = rand(*shape)
    target = [2] * lead + [1 if d == 3 else 4 for d in shape]
    target = [3 if d == 3 else t for d, t in zip(shape, target[lead:], strict=True)]
    check_vjp("broadcast_to", x, [2] * lead + target)


def test_broadcast_to_batched():
    x = rand(3, 1, 4)
    check_vjp("broadcast_to", x, [2, B, 5, 4], types=batched(x), dims={"B": 3})
    check_vjp("broadcast_to", rand(1, 4), [B, 4], types=[TensorType("f64", (1, 4))],
              dims={"B": 3})


@SETTINGS
@given(shapes, st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_tile(shape, reps):
    check_vjp("tile", rand(*shape), reps)


def test_tile_batched():
    check_batched("tile", rand(2, 3), reps=[2, 1, 2])


# padding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize("pads", [[1, 2], [0, 3, 2, 0], [2, 2, 1, 1], [3, 0]])
def test_pad(mode, pads):
    check_vjp("pad", rand(2, 4, 5), pads, mode=mode, value=1.5)


@pytest.mark.parametrize("perm, pads", [([0, 2, 3, 1], [0, 2, 1, 1, 2, 1, 0, 0]),
                                        ([2, 0, 3, 1], [1, 2, 0, 0, 3, 0, 0, 1]),
                                        ([1, 0, 2, 3], [0, 0, 0, 0, 0, 2, 0, 3])])
def test_padded_permute(perm, pads):
    check_vjp("padded_permute", rand(2, 3, 4, 5), perm, pads)


def test_pad_crops():
    check_vjp("pad", rand(3, 5), [-1, 2, 1, -2])
    check_vjp("pad", rand(3, 5), [-2, -1])


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_pad_batched(mode):
    check_batched("pad", rand(3, 3, 5), pads=[2, 1, 1, 2], mode=mode)
    # the padded axis itself symbolic
    x = rand(4, 3)
    check_vjp("pad", x, [0, 0, 2, 3], mode=mode, types=batched(x), dims={"B": 4})


def test_pad_symbolic_widths():
    x = rand(3, 4)
    check_vjp("pad", x, [B, 1], mode="reflect", types=[TensorType("f64", (3, 4))],
              dims={"B": 2})
    check_vjp("pad", x, [1, B], dims={"B": 2}, types=[TensorType("f64", (3, 4))])


# slicing, joining, splitting --------------------------------------------------------------
def R(start=None, stop=None, step=1):  # noqa: N802 - reads as the language's a:b:c
    return ("range", start, stop, step)


SLICES = [
    [R(1, 3)],
    [("int", 1)],
    [("int", -1), R(None, None, 2)],
    [R(None, None, -1)],
    [R(3, 0, -2), ("new",), ("int", 0)],
    [("ellipsis",), R(1, None, 3)],
    [("new",), R(-3, None), ("ellipsis",), ("int", -2)],
    [R(-1, -5, -1), R(0, 0)],  # an empty result
    [R(None, None, 5), R(4, 1, -3)],
    [R(2, 100)],
]


@pytest.mark.parametrize("items", SLICES)
def test_slice(items):
    check_vjp("slice", rand(5, 4, 3), items=items)


@SETTINGS
@given(st.integers(-6, 6), st.integers(-6, 6), st.sampled_from([1, 2, 3, -1, -2, -4]))
def test_slice_ranges(start, stop, step):
    check_vjp("slice", rand(5, 2), items=[R(start, stop, step)])
    check_vjp("slice", rand(2, 5), items=[("ellipsis",), R(start, None, step)])


@pytest.mark.parametrize("items", [
    [R(1, None)], [R(None, -1)], [R(None, None, 2)], [R(None, None, -1)], [R(None, None, -2)],
    [("int", 0)], [("int", -1)], [R(B - 2, None)], [R(1, B - 1, 2)], [("int", B - 1), R(1, 3)],
])
def test_slice_batched(items):
    """Slices of a B-sized axis (bounds taken in range, as the shape rule takes them)."""
    check_batched("slice", rand(6, 4), items=items)


def test_slice_after_batch():
    check_batched("slice", rand(3, 5, 4), items=[("ellipsis",), R(None, None, -2), ("int", 1)])
    check_batched("slice", rand(3, 5), items=[("new",), R(), R(4, 0, -3)])


@pytest.mark.parametrize("op", ["concat", "stack"])
def test_join(op):
    xs = [rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)]
    for axis in (0, 1, -1):
        check_vjp(op, xs, axis=axis)
    check_vjp(op, xs[:1], axis=0)
    xs = [rand(3, 2, seed=1), rand(3, 2, seed=2)]
    check_vjp(op, xs, axis=1, types=batched(*xs), dims={"B": 3})


def test_concat_uneven():
    check_vjp("concat", [rand(2, 1), rand(2, 4), rand(2, 2)], axis=1)
    xs = [rand(3, 2), rand(1, 2)]
    check_vjp("concat", xs, axis=0, types=[TensorType("f64", (B, 2)), TensorType("f64", (1, 2))],
              dims={"B": 3})


def test_split():
    x = rand(6, 4)
    check_vjp("split", x, n=3, axis=0)
    check_vjp("split", x, sizes=[1, 3], axis=1)
    check_vjp("split", x, n=1, axis=1)
    check_batched("split", rand(3, 6), sizes=[2, 0, 4], axis=1)


def test_split_unused_parts():
    """A part no gradient reaches (cotangent None) adds zeros where it was."""
    x = rand(5, 2)
    _out, _cts, (g,) = backward("split", x, sizes=[2, 3], axis=0,
                               cotangents=[None, np.ones((3, 2))])
    np.testing.assert_array_equal(g, np.concatenate([np.zeros((2, 2)), np.ones((3, 2))]))


# gather and scatter -----------------------------------------------------------------------
def ints(high: int, *shape: int, low: int = 0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape)


@SETTINGS
@given(st.integers(0, 2), st.lists(st.integers(1, 3), max_size=2), st.integers(0, 100))
def test_gather(axis, index_shape, seed):
    """Repeated rows accumulate; negative indices count from the end."""
    x = rand(3, 4, 2)
    index = ints(x.shape[axis], *index_shape, low=-x.shape[axis], seed=seed)
    check_vjp("gather", x, index, axis=axis)


def test_gather_embedding_batched():
    """An embedding lookup: table [V, E] by token ids [B, T] (B symbolic)."""
    table, tokens = rand(5, 3), ints(5, 4, 3)
    check_vjp("gather", table, tokens, axis=0, dims={"B": 4},
              types=[TensorType("f64", (5, 3)), TensorType("i64", (B, 3))])
    check_vjp("gather", rand(4, 5), ints(5, 6), axis=1, dims={"B": 4},
              types=[TensorType("f64", (B, 5)), TensorType("i64", (6,))])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_take_along_axis(axis):
    x = rand(3, 4)
    check_vjp("take_along_axis", x, ints(x.shape[axis], 3, 4, seed=1), axis=axis)
    check_vjp("take_along_axis", x, ints(x.shape[axis], 5, 4)[:, :1] if axis == 0 else
              ints(x.shape[axis], 3, 5)[:1], axis=axis)  # index broadcast off axis
    check_vjp("take_along_axis", rand(1, 4), ints(4, 3, 2), axis=1)  # x broadcast off axis


def test_take_along_axis_batched():
    x, index = rand(4, 5), ints(5, 4, 2)
    check_batched("take_along_axis", x, index, axis=1)


SCATTER_MODES = ["sum", "mean", "max", "min", "prod"]


@pytest.mark.parametrize("mode", SCATTER_MODES)
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter(mode, axis):
    src = rand(4, 5)
    index = ints(3, src.shape[axis], seed=2)
    check_vjp("scatter", src, index, size=4, axis=axis, reduce=mode)  # segment 3 empty
    check_vjp("scatter", src, ints(3, 4, 5, seed=3), size=3, axis=axis, reduce=mode)


def test_scatter_add():
    check_vjp("scatter_add", rand(6, 2), ints(4, 6, low=-4), size=4)
    check_vjp("scatter_add", rand(3, 6), ints(3, 3, 6), size=3, axis=1)


@pytest.mark.parametrize("mode", SCATTER_MODES)
def test_scatter_batched(mode):
    """Segments over a symbolic count of nodes: a GNN's message aggregation."""
    src, index = rand(5, 3), ints(3, 5, seed=4)
    check_vjp("scatter", src, index, size=B, reduce=mode, dims={"B": 4, "E": 5},
              types=[TensorType("f64", (Dim.of("E"), 3)), TensorType("i64", (Dim.of("E"),))])


def test_scatter_ties_and_zeros():
    """Ties of max/min share the gradient evenly (PyTorch's scatter_reduce convention, which
    counts the zeros it scatters onto as one more tie where the result is 0); a zero in a
    product passes the rest's product to itself."""
    torch = pytest.importorskip("torch", reason="PyTorch's scatter_reduce is the reference")

    src = np.array([1.0, 3.0, 3.0, 2.0, 0.0, 4.0, 0.0, 0.0, 5.0])
    index = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    ct = np.array([1.0, 10.0, 100.0, 1000.0])
    for mode, name in (("max", "amax"), ("min", "amin"), ("prod", "prod"), ("mean", "mean")):
        _out, _cts, (g, _none) = backward("scatter", src, index, size=4, reduce=mode,
                                          cotangents=[ct])
        t = torch.tensor(src, requires_grad=True)
        torch.zeros(4, dtype=torch.float64).scatter_reduce(
            0, torch.tensor(index), t, name, include_self=False).backward(torch.tensor(ct))
        np.testing.assert_allclose(g, t.grad.numpy(), err_msg=mode)


def test_creation_ops_take_no_gradient():
    _out, _cts, grads = backward("one_hot", ints(3, 4), num_classes=3, dtype="f32")
    assert grads == [None]
    for op, attrs in (("zeros", {"shape": [2]}), ("ones", {"shape": [2, 1]}),
                      ("full", {"shape": [3], "value": 2.0}), ("arange", {"start": 4}),
                      ("dim_value", {"dim": 3})):
        assert REGISTRY[op].vjp is not None
        assert backward(op, **attrs)[2] == []


# the rules' backward graphs in native code ------------------------------------------------
# (op, tensor arguments, attributes, input types or None): f32, as models train; each rule's
# backward graph, lowered with the rest into one native model, against the same graph run by
# the reference interpreter. B is bound to 3.
def f32(*shape: int, seed: int = 0) -> np.ndarray:
    return rand(*shape, seed=seed).astype(np.float32)


def b32(*rest: int) -> TensorType:
    return TensorType("f32", (B, *rest))


NATIVE_CASES = [
    ("reshape", [f32(3, 2, 4)], {"shape": [B, -1]}, [b32(2, 4)]),
    ("permute", [f32(3, 2, 4)], {"perm": [2, 0, 1]}, [b32(2, 4)]),
    ("flip", [f32(3, 4)], {"axis": [0, 1]}, None),
    ("tril", [f32(3, 4, 4)], {"k": -1}, [b32(4, 4)]),
    ("broadcast_to", [f32(3, 1, 4)], {"shape": [2, B, 5, 4]}, [b32(1, 4)]),
    ("tile", [f32(3, 2)], {"reps": [2, 1, 3]}, [b32(2)]),
    ("pad", [f32(3, 4, 5)], {"pads": [2, 1, -1, 2]}, [b32(4, 5)]),
    ("pad", [f32(3, 4, 5)], {"pads": [2, 1, 1, 2], "mode": "reflect"}, [b32(4, 5)]),
    ("pad", [f32(3, 4, 5)], {"pads": [0, 2, 3, 1], "mode": "replicate"}, [b32(4, 5)]),
    ("pad", [f32(3, 4)], {"pads": [0, 0, 2, 1], "mode": "reflect"}, [b32(4)]),
    ("pad", [f32(3, 4)], {"pads": [1, B - 1]}, [b32(4)]),  # a symbolic width
    ("pad", [f32(3, 5)], {"pads": [B - 1, 1], "mode": "reflect"}, [b32(5)]),
    ("slice", [f32(3, 7, 5)], {"items": [R(1, None), R(None, None, -3), ("int", -2)]},
     [b32(7, 5)]),
    ("slice", [f32(6, 4)], {"items": [R(None, None, 2), ("new",), R(3, 0, -1)]}, None),
    ("slice", [f32(3, 4)], {"items": [("int", B - 1)]}, [b32(4)]),
    ("concat", [[f32(3, 2), f32(3, 5, seed=1)]], {"axis": 1}, [b32(2), b32(5)]),
    ("stack", [[f32(3, 2), f32(3, 2, seed=1)]], {"axis": -1}, [b32(2), b32(2)]),
    ("split", [f32(3, 6)], {"sizes": [1, 2, 3], "axis": 1}, [b32(6)]),
    ("gather", [f32(5, 3), ints(5, 3, 4, low=-5)], {"axis": 0},
     [TensorType("f32", (5, 3)), TensorType("i64", (B, 4))]),
    ("take_along_axis", [f32(3, 5), ints(5, 3, 2)], {"axis": 1},
     [b32(5), TensorType("i64", (B, 2))]),
    *[("scatter", [f32(6, 3), ints(4, 6, low=-5, seed=5)], {"size": 5, "reduce": mode}, None)
      for mode in SCATTER_MODES],
    ("scatter", [f32(3, 4), ints(2, 3, 4)], {"size": 2, "axis": 1, "reduce": "max"},
     [b32(4), TensorType("i64", (B, 4))]),
]


def _reference(graph: Graph, ports: list[Port], feeds: dict) -> list[np.ndarray]:
    """The graph run by the reference interpreter (its inputs are the ports, in order)."""
    return run_graph(graph, [feeds[p.name] for p in ports], {}, {"B": 3})


def test_rules_native():
    graph, ports, feeds, names = rules_graph(NATIVE_CASES, dims={"B": 3})
    want = _reference(graph, ports, feeds)
    got = native_model(graph, ports, ["B"])(**feeds)
    for g, w, name in zip(got, want, names, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_rules_onnx():
    """The same backward graphs exported to ONNX, run by onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    graph, ports, feeds, names = rules_graph(NATIVE_CASES, dims={"B": 3})
    want = _reference(graph, ports, feeds)
    graph.output_names = [f"out{i}" for i in range(len(names))]
    outputs = [Port(n, v.type) for n, v in zip(graph.output_names, graph.outputs, strict=True)]
    proto = export(SimpleNamespace(name="grads", graph=graph, inputs=ports, outputs=outputs), {})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    for g, w, name in zip(got, want, names, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_edge_shapes():
    """0-d and empty indices, an empty scatter, a slice down to a 0-d result."""
    x = rand(3, 4)
    check_vjp("gather", x, np.array(-1), axis=1)
    check_vjp("gather", x, np.zeros((0,), np.int64), axis=0)
    check_vjp("take_along_axis", rand(3), np.array([2, 2, 0]), axis=0)
    check_vjp("scatter", np.zeros((0, 2)), np.zeros((0,), np.int64), size=3, reduce="max")
    check_vjp("slice", x, items=[("int", -1), ("int", 0)])
    check_vjp("pad", rand(2, 3), [1, 1], mode="reflect")
