"""A typed graph builder: new nodes by op name through their records, with their types inferred.

    gb = GraphBuilder(graph, span=node["span"], scope=node["scope"])
    y = gb.matmul(x, w)                    # a Value of the type matmul's rule gives
    z = gb.op("conv", x, w, stride=2)      # any op: its record's signature binds the call
    c = gb.constant(np.ones(3, "f32"))

A call binds as a model file's call does (ops/signature.py: tensors by position or by name,
attributes by keyword, defaults for the rest), runs the op's shape/type rule, and adds the node
with the builder's span and scope. Operands are Values of the same graph; nothing is promoted
or converted (the elaborator does that for the language), so operands must already have the
dtypes the rule wants. A call the signature or the rule rejects raises the KilnError the
elaborator would give (K0102 for an unknown op, K0201/K0202 for arguments that do not bind,
the rule's OpError code with `op: message`), at the builder's span, and adds nothing; an
operand from another graph is an IRError (a compiler bug). Passes, which try a rewrite and
keep the old nodes when it does not type-check, use `checked`: the node only when the rule
infers exactly the types wanted, else None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import KilnError, Span
from .ir import Graph, IRError, Value
from .ops import REGISTRY, OpError, OpRecord, Prop
from .ops.signature import bind_arguments
from .types import TensorType, dtype_of_numpy


class GraphBuilder:
    """Adds nodes to `graph`, each with source `span` and block-instance path `scope`."""

    def __init__(self, graph: Graph, span: Span | None = None, scope: str = ""):
        self.graph = graph
        self.span = span
        self.scope = scope
        # the reverse-mode transform, differentiate(body, wrt_params, wrt_inputs) -> (graph,
        # layout) (compiler/autodiff.py: grad), for the gradient rule of an op holding a body
        # graph (scan); compiler/autodiff.py sets it on the builders it gives rules, since an
        # op record cannot import the transform that imports the records
        self.differentiate: Any = None

    @classmethod
    def like(cls, graph: Graph, node: dict) -> GraphBuilder:
        """A builder whose nodes take their span and scope from the node `node` (a rewrite's
        new nodes point at the source of what they replace)."""
        return cls(graph, node["span"], node["scope"])

    # any op ---------------------------------------------------------------------------------
    def op(self, name: str, *args: Any, **kwargs: Any) -> Value | tuple[Value, ...]:
        """Add op `name` applied to `args`/`kwargs`: its one result, or a tuple of its results
        (an op with Prop.MULTI_OUTPUT, or one with several)."""
        outs = self.results(name, *args, **kwargs)
        record = REGISTRY[name]
        return outs[0] if len(outs) == 1 and not record.has(Prop.MULTI_OUTPUT) else tuple(outs)

    def results(self, name: str, *args: Any, **kwargs: Any) -> list[Value]:
        """Add op `name` applied to `args`/`kwargs` and return all its results as a list."""
        record, operands, attrs = self._bind(name, args, kwargs)
        try:
            types = _infer(record, operands, attrs)
        except OpError as err:
            raise KilnError(err.code, f"{name}: {err.message}", self.span) from None
        return self.graph.add(name, operands, attrs, types, self.span, self.scope)

    def checked(self, name: str, *args: Any, want: list[TensorType], **kwargs: Any
                ) -> list[Value] | None:
        """Add op `name` only if its rule accepts the operands and infers exactly the types
        `want` (a rewrite that must not change what its node computes); else add nothing and
        return None. Arguments that do not bind are an error still, as in `results`."""
        record, operands, attrs = self._bind(name, args, kwargs)
        try:
            types = _infer(record, operands, attrs)
        except (OpError, ValueError):
            return None
        if types != list(want):
            return None
        return self.graph.add(name, operands, attrs, types, self.span, self.scope)

    def _bind(self, name: str, args: tuple, kwargs: dict
              ) -> tuple[OpRecord, list[Value | None], dict]:
        """The record of op `name`, and the call's operands by slot and attributes."""
        record = REGISTRY.get(name)
        if record is None:
            raise KilnError("K0102", f"unknown op {name}", self.span)
        bound = bind_arguments(record, [(a, self.span) for a in args],
                               {k: (v, self.span) for k, v in kwargs.items()}, self.span)
        operands: list = []
        attrs: dict = {}
        for arg in record.args:
            value, _span = bound[arg.name]
            if arg.kind == "attr":
                attrs[arg.name] = value
            elif arg.kind == "tensors":
                if not isinstance(value, (list, tuple)) or not value:
                    raise KilnError("K0202", f"{name}: argument {arg.name} must be a list of "
                                    "tensors", self.span)
                operands.extend(value)
            elif value is None and arg.kind == "tensor":
                raise KilnError("K0201", f"{name}: argument {arg.name} needs a tensor", self.span)
            else:
                operands.append(value)
        for value in operands:
            if value is not None and not isinstance(value, Value):
                raise KilnError("K0202", f"{name}: expected a tensor (a Value), not "
                                f"{type(value).__name__}", self.span)
            if value is not None and value.node not in self.graph.g:
                raise IRError(f"{name}: operand {value.node} is not a node of this graph")
        return record, operands, attrs

    def constant(self, array: np.ndarray, derived: str | None = None) -> Value:
        """A new `constant` node holding `array` (never copied: passes never write into one).

        `derived` marks a constant computed from parameter values, and names how (a
        compiler/derived.py name such as `permute(perm=1_0):fc.weight`, or a name of no known
        kind for values that cannot be remade, such as a folded BatchNorm's): backends remake
        the first kind from new weights instead of rebuilding, and such constants merge (cse)
        only with the same derivation, never because two weights happen to hold equal values.
        """
        dtype = dtype_of_numpy(array.dtype)
        if dtype is None:
            raise IRError(f"no kiln dtype for a constant of numpy dtype {array.dtype}")
        attrs = {"value": array} if derived is None else {"value": array, "derived": derived}
        (value,) = self.graph.add("constant", [], attrs, [TensorType(dtype, array.shape)],
                                  self.span, self.scope)
        return value

    # the ops rewrites and gradient rules use most, typed ------------------------------------
    def add(self, a: Value, b: Value) -> Value:
        """a + b, broadcasting."""
        return self._one("add", a, b)

    def sub(self, a: Value, b: Value) -> Value:
        """a - b, broadcasting."""
        return self._one("sub", a, b)

    def mul(self, a: Value, b: Value) -> Value:
        """a * b, broadcasting."""
        return self._one("mul", a, b)

    def div(self, a: Value, b: Value) -> Value:
        """a / b, broadcasting."""
        return self._one("div", a, b)

    def neg(self, x: Value) -> Value:
        """-x."""
        return self._one("neg", x)

    def matmul(self, a: Value, b: Value) -> Value:
        """a @ b."""
        return self._one("matmul", a, b)

    def reshape(self, x: Value, shape: list) -> Value:
        """x in a new shape (ints and Dims)."""
        return self._one("reshape", x, shape=shape)

    def permute(self, x: Value, perm: list[int]) -> Value:
        """x with its axes reordered: axis i of the result is axis perm[i] of x."""
        return self._one("permute", x, perm=perm)

    def cast(self, x: Value, dtype: str) -> Value:
        """x converted to `dtype`."""
        return self._one("cast", x, dtype=dtype)

    def _one(self, name: str, *args: Any, **kwargs: Any) -> Value:
        (value,) = self.results(name, *args, **kwargs)
        return value


def _infer(record: OpRecord, operands: list[Value | None], attrs: dict) -> list[TensorType]:
    """The result types the op's rule gives these operands (raises its OpError)."""
    return list(record.infer([v.type if v is not None else None for v in operands], attrs))
