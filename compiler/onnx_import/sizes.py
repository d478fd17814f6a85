"""Sizes computed by the graph: the integer values an ONNX model computes from the shapes of
its inputs (Shape -> Gather -> Concat -> Reshape), known at import time as symbolic sizes.

    sizes_of(graph, value)    # [Dim('batch'), 4, Dim('batch') * 2] or None

An exporter writes a dynamic batch's reshape as arithmetic on `Shape(x)`; kiln takes shapes as
attributes of Dims, so the importer evaluates that arithmetic symbolically: `dim_value` (a size
as a tensor) gives its Dim, and the few ops shape arithmetic uses (stacking, concatenating,
gathering, slicing, reshaping, integer casts, + - * //, comparisons and where) run on numpy
object arrays of Dims and ints. Anything else, a float, a parameter or an input is not a size:
None.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np

from ..dims import Dim, DimError
from ..evaluate import ConstEnv
from ..ir import Graph, Value
from ..ops import REGISTRY
from ..types import INT_DTYPES

LIMIT = 64  # the most elements a value of sizes holds (a shape, a few of them)

def decided_equal(a, b) -> bool:
    """Whether two sizes are equal on every call (True) or on none (False); raises
    ValueError when that depends on the call: a symbolic size may be 1 or not, but it is
    never negative, so it never equals a negative number."""
    a, b = (Dim.of(v if isinstance(v, Dim) else int(v)) for v in (a, b))
    if a.is_const and b.is_const:
        return a.value == b.value
    if a == b:
        return True
    if (a.is_const and a.value < 0) or (b.is_const and b.value < 0):
        return False
    raise ValueError(f"whether {a} equals {b} is known only at run time")


_EQUAL = np.frompyfunc(decided_equal, 2, 1)
ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
              "floor_div": operator.floordiv, "equal": _EQUAL,
              "not_equal": lambda a, b: np.logical_not(np.asarray(_EQUAL(a, b), dtype=bool))}
# ops that only pick elements of their data operands: their numpy references run on the
# elements' positions, and the result is the elements at the positions they pick
PICKS = frozenset({"stack", "concat", "gather", "unsqueeze", "squeeze", "reshape", "slice",
                   "flatten", "permute", "broadcast_to", "take_along_axis", "where", "split"})
VALUE_ARGS = frozenset({"index", "cond"})  # operands read as values, not picked from


def sizes_of(graph: Graph, value: Value) -> list[Dim] | None:
    """The 1-D (or 0-D) integer `value` as sizes, when it is computed from constants and the
    inputs' sizes alone; else None."""
    array = evaluate(graph, value)
    if array is None:
        return None
    try:
        return [Dim.of(v if isinstance(v, Dim) else int(v)) for v in array.reshape(-1)]
    except (TypeError, ValueError, DimError):
        return None


def upstream(graph: Graph, value: Value, usable: Callable[[dict], bool]) -> list[int] | None:
    """The nodes `value` is computed from (its own included) in creation order, which is
    topological; None as soon as one of them is not `usable` (an input, say)."""
    order: list[int] = []
    seen: set[int] = set()
    stack = [value.node]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        if not usable(graph.node(nid)):
            return None
        order.append(nid)
        stack.extend(graph.g.predecessors(nid))
    return sorted(order)


def _small_sizes(node: dict) -> bool:
    t = node["types"][0]
    return (node["op"] not in ("input", "param") and t.dtype in INT_DTYPES | {"bool"}
            and t.is_concrete() and np.prod(t.concrete_shape()) <= LIMIT)


def evaluate(graph: Graph, value: Value) -> np.ndarray | None:
    """`value` as an array of ints and Dims (see the module's docstring), or None."""
    order = upstream(graph, value, _small_sizes)
    if order is None:
        return None
    results: dict[int, list[np.ndarray]] = {}
    for nid in order:
        node = graph.node(nid)
        operands = graph.operands(nid)
        args = [None if v is None else results[v.node][v.index] for v in operands]
        out = _run(node, args, [None if v is None else v.type for v in operands])
        if out is None:
            return None
        results[nid] = out
    return results[value.node][value.index]


def _run(node: dict, args: list, types: list) -> list[np.ndarray] | None:
    """One node on arrays of sizes, or None when it is no shape arithmetic kiln follows."""
    op, attrs = node["op"], node["attrs"]
    if op == "constant":
        return [np.asarray(attrs["value"]).astype(object)]
    if op == "dim_value":
        d = Dim.of(attrs["dim"])
        return [np.array(d.value if d.is_const else d, dtype=object)]
    if op == "cast":  # between integer types a size stays itself
        return [args[0]] if attrs["dtype"] in INT_DTYPES | {"bool"} else None
    if op == "neg":
        return [np.asarray(-args[0], dtype=object)]
    try:
        if op in ARITHMETIC:
            a, b = args
            return [np.asarray(ARITHMETIC[op](a, b), dtype=object)]
        if op in PICKS:
            return _picked(op, args, attrs)
        return _numeric(node, args, types)
    except (TypeError, ValueError, DimError, ZeroDivisionError, IndexError):
        return None


def _numeric(node: dict, args: list, types: list) -> list[np.ndarray] | None:
    """Any op on operands that hold numbers only (sizes known already), by its reference;
    None when one holds a symbolic size."""
    from ..ops.registry import OpError

    values = []
    for x, t in zip(args, types):
        if x is None:
            values.append(None)
            continue
        flat = [e.value if isinstance(e, Dim) and e.is_const else e for e in x.reshape(-1)]
        if any(isinstance(e, Dim) for e in flat):
            return None
        values.append(np.asarray(flat, dtype=t.np_dtype).reshape(x.shape))
    try:
        results = REGISTRY[node["op"]].reference(ConstEnv(), values, node["attrs"])
    except (OpError, KeyError):
        return None
    return [np.asarray(r).astype(object) for r in results]


def _picked(op: str, args: list, attrs: dict) -> list[np.ndarray] | None:
    """An op that picks elements, run by its reference on the positions of its data
    operands' elements in one pool (value operands, such as an index, as their values)."""
    from ..ops.registry import OpError

    record = REGISTRY[op]
    names = [a.name for a in record.args if a.kind != "attr"]
    if any(a.kind == "tensors" for a in record.args):
        names = [names[0]] * len(args)  # a list of data operands
    pool: list = []
    coded = []
    for name, x in zip(names, args):
        if x is None or name in VALUE_ARGS:
            coded.append(None if x is None else np.asarray(x.tolist(), dtype=np.int64))
            continue
        coded.append(np.arange(len(pool), len(pool) + x.size, dtype=np.int64).reshape(x.shape))
        pool.extend(x.reshape(-1).tolist())
    try:
        results = record.reference(ConstEnv(), coded, attrs)
    except OpError:
        return None
    table = np.empty(len(pool), dtype=object)
    table[:] = pool
    return [np.asarray(table[np.asarray(r, dtype=np.int64)], dtype=object) for r in results]
