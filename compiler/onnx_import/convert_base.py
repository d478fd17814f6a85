"""What every ONNX op converter shares: the node as a converter sees it, the Unsupported
refusal, and the helpers that read attributes, constant inputs and element types.

A converter builds kiln primitive ops with a GraphBuilder (compiler/builder.py) and returns one
Value per ONNX output; for anything kiln cannot compute exactly as the ONNX operator
specification says (an attribute value, an element type, a shape input known only at run
time), it raises Unsupported with the reason, and the importer lists the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto

from ..builder import GraphBuilder
from ..dims import Dim
from ..evaluate import ConstEnv, _run_op
from ..ir import Graph, Value
from ..types import DTYPES, NUMPY_DTYPES
from .sizes import sizes_of, upstream


@dataclass
class OnnxNode:
    """What a converter sees of one ONNX node."""

    name: str
    op_type: str
    domain: str
    index: int  # position in graph.node
    opset: int  # the model's opset for the node's domain
    attrs: dict[str, Any]  # decoded: tensors as numpy arrays, strings as str
    inputs: list[Value | None]  # kiln Values by input slot ('' -> None)
    consts: list[np.ndarray | None]  # each input's value when known at import time
    outputs: list[str]  # output names ('' for an output nobody reads)


class Unsupported(Exception):
    """A node kiln cannot compute exactly: the op, an attribute value, a dtype, or a shape
    input known only at run time. `reason` says which, in the user's words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ReadAttributes(dict):
    """A node's attributes, recording which ones its converter read (got, indexed, or went
    through), so that the importer refuses any other one not at its default (convert.py
    `convert_node`): no attribute is ignored silently."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __iter__(self):  # a converter passing every attribute on (**attrs, to a reference)
        self.read.update(dict.keys(self))
        return super().__iter__()

    def keys(self):
        self.read.update(dict.keys(self))
        return super().keys()

    def items(self):
        self.read.update(dict.keys(self))
        return super().items()

    def values(self):
        self.read.update(dict.keys(self))
        return super().values()


# the words of every refusal of an input known only at run time
CONSTANT_NEEDED = "kiln needs it at import time"

Converter = Callable[[GraphBuilder, OnnxNode], list]


def converter_table() -> tuple[dict[str, Converter], Callable[..., Callable]]:
    """A family's converters by op type, and the decorator registering one under its op
    types: `CONVERTERS, converter = converter_table()`, then `@converter("Add", "Sub")`."""
    table: dict[str, Converter] = {}

    def converter(*op_types: str) -> Callable[[Converter], Converter]:
        def register(fn: Converter) -> Converter:
            for op_type in op_types:
                table[op_type] = fn
            return fn

        return register

    return table, converter

# ONNX element types kiln has; every other one (u64, strings, float8, ...) is refused
KILN_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "f32",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "f64",
    TensorProto.INT8: "i8",
    TensorProto.UINT8: "u8",
    TensorProto.INT16: "i16",
    TensorProto.UINT16: "u16",
    TensorProto.INT32: "i32",
    TensorProto.UINT32: "u32",
    TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool",
}
FLOAT_TYPES = ("f32", "f16", "bf16", "f64")
INT_TYPES = ("i8", "u8", "i16", "u16", "i32", "u32", "i64")


def kiln_dtype(onnx_type: int, what: str) -> str:
    """The kiln element type of ONNX element type `onnx_type` (Unsupported when it has none)."""
    if onnx_type not in KILN_DTYPES:
        name = TensorProto.DataType.Name(onnx_type) if onnx_type in TensorProto.DataType.values() \
            else str(onnx_type)
        raise Unsupported(f"{what}: element type {name} is not one of kiln's "
                          f"({', '.join(DTYPES)})")
    return KILN_DTYPES[onnx_type]


# attributes -------------------------------------------------------------------------------
def attr(node: OnnxNode, name: str, default: Any = None) -> Any:
    """Attribute `name` of the node, or `default` when absent."""
    return node.attrs.get(name, default)


def ints(node: OnnxNode, name: str, default: list[int] | None = None) -> list[int] | None:
    """An integer-list attribute as a list of Python ints."""
    value = node.attrs.get(name)
    return default if value is None else [int(v) for v in value]


def choose(node: OnnxNode, name: str, default: str, options: tuple[str, ...]) -> str:
    """A string attribute that must be one of `options`."""
    value = node.attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode()
    if value not in options:
        raise Unsupported(f"attribute {name}={value!r} is not supported "
                          f"(only {', '.join(map(repr, options))})")
    return value


# inputs -----------------------------------------------------------------------------------
def arg(node: OnnxNode, i: int) -> Value | None:
    """Input slot i (None when absent or past the end)."""
    return node.inputs[i] if i < len(node.inputs) else None


def need(node: OnnxNode, i: int, what: str = "input") -> Value:
    """Input slot i, which must be present."""
    value = arg(node, i)
    if value is None:
        raise Unsupported(f"{what} (input {i}) is missing")
    return value


def known(gb: GraphBuilder, node: OnnxNode, i: int) -> np.ndarray | None:
    """Input slot i's value when it is known at import time: the importer's constant, or a
    value kiln computed from constants alone (folded with the ops' references), else None."""
    if i < len(node.consts) and node.consts[i] is not None:
        return np.asarray(node.consts[i])
    value = arg(node, i)
    return None if value is None else fold(gb.graph, value)


def const_input(gb: GraphBuilder, node: OnnxNode, i: int, what: str) -> np.ndarray:
    """Input slot i's value, which kiln needs at import time (a shape, axes, pads...)."""
    value = known(gb, node, i)
    if value is None:
        raise Unsupported(f"{what} (input {i}) must be a constant: {CONSTANT_NEEDED}")
    return value


def const_ints(gb: GraphBuilder, node: OnnxNode, i: int, what: str) -> list[int] | None:
    """An optional integer-list input known at import time, as Python ints (None if absent)."""
    if arg(node, i) is None and (i >= len(node.consts) or node.consts[i] is None):
        return None
    return [int(v) for v in const_input(gb, node, i, what).reshape(-1)]


def const_sizes(gb: GraphBuilder, node: OnnxNode, i: int, what: str) -> list[Dim] | None:
    """An optional integer-list input known at import time as sizes (None if absent): numbers,
    or sizes the graph computes from its inputs' shapes (sizes.py: an exported dynamic
    batch's `Shape -> Gather -> Concat`)."""
    if arg(node, i) is None and (i >= len(node.consts) or node.consts[i] is None):
        return None
    value = known(gb, node, i)
    if value is not None:
        return [Dim.of(int(v)) for v in value.reshape(-1)]
    sizes = sizes_of(gb.graph, node.inputs[i])
    if sizes is None:
        raise Unsupported(f"{what} (input {i}) must be a constant, or sizes computed from the "
                          f"inputs' shapes: {CONSTANT_NEEDED}")
    return sizes


def required_sizes(gb: GraphBuilder, node: OnnxNode, i: int, what: str) -> list[Dim]:
    """const_sizes of an input the op cannot do without (Unsupported when it is absent)."""
    sizes = const_sizes(gb, node, i, what)
    if sizes is None:
        raise Unsupported(f"{node.op_type} needs its {what} input")
    return sizes


def fold(graph: Graph, value: Value, limit: int = 1 << 16) -> np.ndarray | None:
    """`value` computed now, when it depends on constants alone (and holds at most `limit`
    elements); else None. Ops run their numpy references, as constant folding does."""

    def usable(node: dict) -> bool:
        return (node["op"] not in ("input", "param") and not _symbolic(node["attrs"])
                and all(t.is_concrete() and np.prod(t.concrete_shape()) <= limit
                        for t in node["types"]))

    order = upstream(graph, value, usable)
    if order is None:
        return None
    env = ConstEnv()
    results: dict[int, list[np.ndarray]] = {}
    for nid in order:
        node = graph.node(nid)
        if node["op"] == "constant":
            results[nid] = [node["attrs"]["value"]]
            continue
        args = [None if v is None else results[v.node][v.index] for v in graph.operands(nid)]
        results[nid] = _run_op(node["op"], env, args, node)
    return results[value.node][value.index]


def _symbolic(value: Any) -> bool:
    """Whether an attribute value holds a size known only at run time (dim_value's)."""
    if isinstance(value, Dim):
        return not value.is_const
    if isinstance(value, dict):
        return any(_symbolic(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_symbolic(v) for v in value)
    return False


# values -----------------------------------------------------------------------------------
def dtype_of(value: Value) -> str:
    return value.type.dtype


def const_like(gb: GraphBuilder, number: Any, dtype: str) -> Value:
    """A scalar constant of kiln dtype `dtype`."""
    return gb.constant(np.asarray(number, dtype=NUMPY_DTYPES[dtype]))


def require_dtype(value: Value, allowed: tuple[str, ...], what: str) -> None:
    """Unsupported unless `value`'s element type is one of `allowed`."""
    if value.type.dtype not in allowed:
        raise Unsupported(f"{what} of element type {value.type.dtype} is not supported "
                          f"(only {', '.join(allowed)})")


def concrete_shape(value: Value, what: str) -> tuple[int, ...]:
    """`value`'s shape, which must be known at import time."""
    if not value.type.is_concrete():
        raise Unsupported(f"{what} needs constant sizes, got {value.type}")
    return value.type.concrete_shape()


def axis_of(axis: int, rank: int, what: str = "axis") -> int:
    """An ONNX axis (negative counts from the end) as a non-negative one."""
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"{what} {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def index_relation(gb: GraphBuilder, size: Dim, relation: str, dtype: str = "bool") -> Value:
    """The [n, n] matrix of `i relation j` (i the row, j the column; relation a comparison:
    "less", "less_equal", "greater", "greater_equal") as dtype: a constant where the size n
    is known, else compared at run time from two aranges (cumsum over a dynamic sequence)."""
    if size.is_const:
        i, j = np.indices((size.value, size.value))
        return gb.constant(getattr(np, relation)(i, j).astype(NUMPY_DTYPES[dtype]))
    index = gb.op("arange", 0, end=size)
    mask = gb.op(relation, gb.op("unsqueeze", index, axis=-1), gb.op("unsqueeze", index, axis=0))
    return mask if dtype == "bool" else gb.cast(mask, dtype)
