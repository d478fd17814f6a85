"""Shape arithmetic on symbolic sizes: the values of ONNX shape computations (Shape, then
Gather, Concat, Unsqueeze, Mul, ...) as kiln sizes (Dims), so a model exported with a dynamic
batch, whose Reshape or ConstantOfShape takes a shape computed from Shape(x), converts.

Each such value is a numpy object array of Dims, kept beside the kiln Value that computes it
at run time (the importer still builds that Value: an output may be the shape itself). A
converter that needs a shape reads it with convert_base.const_ints(..., sizes=True).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable

import numpy as np

from ..dims import Dim
from ..ir import Graph, Value

# the symbolic values of one graph, by (node, output index): freed with the graph
_SIZES: dict[int, dict[tuple[int, int], np.ndarray]] = {}


def _table(graph: Graph) -> dict[tuple[int, int], np.ndarray]:
    key = id(graph)
    if key not in _SIZES:
        _SIZES[key] = {}
        weakref.finalize(graph, _SIZES.pop, key, None)
    return _SIZES[key]


def remember(graph: Graph, value: Value, sizes: np.ndarray) -> None:
    """Record that `value` holds `sizes` (an object array of Dims) on every call."""
    _table(graph)[(value.node, value.index)] = sizes


def recall(graph: Graph, value: Value | None) -> np.ndarray | None:
    """The sizes `value` holds, when recorded."""
    if value is None:
        return None
    return _SIZES.get(id(graph), {}).get((value.node, value.index))


def as_sizes(array: np.ndarray) -> np.ndarray:
    """An integer array (or one of sizes already) as an object array of Dims."""
    flat = [v if isinstance(v, Dim) else Dim.of(int(v)) for v in np.asarray(array).reshape(-1)]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(np.shape(array))


def _axes(rank: int, axes) -> list[int]:
    return sorted(_bound(a) % rank for a in np.asarray(axes).reshape(-1))


def _unsqueeze(x, axes=None, attrs=None):
    axes = attrs.get("axes", axes)
    for a in _axes(x.ndim + len(np.asarray(axes).reshape(-1)), axes):
        x = np.expand_dims(x, a)
    return x


def _squeeze(x, axes=None, attrs=None):
    axes = attrs.get("axes", axes)
    return np.squeeze(x, axis=None if axes is None else tuple(_axes(x.ndim, axes)))


def _slice(x, starts, ends, axes=None, steps=None, attrs=None):
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[_bound(a)] = slice(_bound(s), _bound(e), _bound(st))
    return x[tuple(index)]


def _bound(v):
    value = v.value if isinstance(v, Dim) else int(v)
    return max(min(value, 2**62), -2**62)


def _elementwise(fn: Callable) -> Callable:
    def apply(a, b, attrs=None):
        return np.frompyfunc(fn, 2, 1)(a, b)

    return apply


def _gather(x, index, attrs=None):
    return np.take(x, np.asarray([_bound(i) for i in index.reshape(-1)]).reshape(index.shape),
                   axis=int(attrs.get("axis", 0)))



def _same(a: Dim, b: Dim) -> Dim:
    """1 where two sizes are equal on every call, 0 where on none; else undecided (raises):
    a symbolic size is never negative, so it never equals a negative constant."""
    if a.is_const and b.is_const:
        return Dim.of(int(a.value == b.value))
    if a == b:
        return Dim.of(1)
    if (a.is_const and a.value < 0) or (b.is_const and b.value < 0):
        return Dim.of(0)
    raise ValueError(f"whether {a} equals {b} is known only at run time")


def _reshape(x, shape, attrs=None):
    sizes = [_bound(s) for s in shape.reshape(-1)]
    if not attrs.get("allowzero", 0):  # 0 copies the input's size there
        sizes = [x.shape[i] if n == 0 else n for i, n in enumerate(sizes)]
    return x.reshape(sizes)


def _where(condition, x, y, attrs=None):
    return np.where(np.frompyfunc(lambda c: _bound(c) != 0, 1, 1)(condition).astype(bool), x, y)


# ONNX op -> its computation on sizes (inputs as object arrays of Dims, then the attributes);
# only ops whose result is a size wherever their inputs are (Equal only where it is decided at
# import time: a symbolic size equal to 1 or not is not known then)
EVALUATE: dict[str, Callable] = {
    "Identity": lambda x, attrs=None: x,
    "Cast": lambda x, attrs=None: x,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Concat": lambda *xs, attrs=None: np.concatenate(xs, axis=int(attrs["axis"])),
    "Slice": _slice,
    "Add": _elementwise(operator.add),
    "Sub": _elementwise(operator.sub),
    "Mul": _elementwise(operator.mul),
    "Div": _elementwise(operator.floordiv),  # sizes are not negative: truncation is floor
    "Equal": _elementwise(_same),
    "Where": _where,
}


def evaluate(op_type: str, inputs: list[np.ndarray | None], attrs: dict) -> np.ndarray | None:
    """The op's result on sizes, or None where it is not a size this module can compute."""
    fn = EVALUATE.get(op_type)
    if fn is None or any(x is None for x in inputs[:1]):
        return None
    try:
        result = fn(*[None if x is None else as_sizes(x) for x in inputs], attrs=attrs)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None
    if not isinstance(result, np.ndarray):  # numpy gives a 0-d result as the element itself
        held = np.empty((), dtype=object)
        held[()] = result
        result = held
    return as_sizes(result)
