"""Factories that build whole families of op records: elementwise ops (unary, binary),
reductions, ops along one axis, one-output ops and data movement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dims import Dim
from ..types import TensorType
from ._common import (
    FLOATS,
    NUMERIC,
    as_dtype,
    attr_error,
    attrs,
    broadcast_shapes,
    check_dtype,
    check_same_dtype,
    dtype_name,
    is_list,
    normalize_axes,
    normalize_axis,
    number,
    resolve,
    tensors,
    upcast,
)
from ._emit import Emitter
from .registry import Arg, OpRecord, Prop

# factories --------------------------------------------------------------------------------
OutDtype = None | str | Callable[[str, dict], str]


def _out_dtype(rule: OutDtype, dtype: str, attrs_: dict) -> str:
    if rule is None:
        return dtype
    return rule if isinstance(rule, str) else rule(dtype, attrs_)


def _no_check(attrs_: dict) -> None:
    return None


def elementwise(name: str, fn: Callable, doc: str, *, arity: int = 1,
                dtypes: frozenset[str] = FLOATS, out_dtype: OutDtype = None,
                extra: tuple[tuple[str, Any], ...] = (), check: Callable = _no_check,
                promote: bool = False, props: frozenset[Prop] = frozenset(),
                onnx: Emitter | None = None, llvm: Callable | None = None,
                vjp: Callable | None = None) -> OpRecord:
    """An op applied element by element: fn(*inputs, **attrs) over broadcast inputs.

    Half-float inputs are computed in f32 and the result cast to the output dtype. `llvm`, when
    given, is the op on one element in LLVM IR: llvm(kernel_builder, attrs, *values) -> value.
    `vjp` is its gradient rule (OpRecord.vjp).
    """
    names = ("x",) if arity == 1 else ("a", "b")

    def infer(types, attrs_):
        check(attrs_)
        for k, default in extra:  # numeric attributes (alpha, beta, ...) must be numbers
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                number(attrs_[k], k)
        for t, n in zip(types, names, strict=False):
            check_dtype(t, dtypes, n)
        dtype = check_same_dtype(types, list(names))
        shape = broadcast_shapes(*(t.shape for t in types), args=names)
        return [TensorType(_out_dtype(out_dtype, dtype, attrs_), shape)]

    def reference(env, inputs, attrs_):
        kw = {k: resolve(env, attrs_[k]) for k, _ in extra}
        out = _out_dtype(out_dtype, dtype_name(inputs[0]), attrs_)
        with np.errstate(all="ignore"):
            return [as_dtype(fn(*(upcast(x) for x in inputs), **kw), out)]

    def lower(kb, n):
        kb.elementwise(n, lambda kb_, *values: llvm(kb_, n.attrs, *values))

    return OpRecord(name, tensors(*names) + attrs(*extra), infer, reference, doc,
                    promote=promote, props=props | {Prop.ELEMENTWISE}, onnx=onnx,
                    llvm=lower if llvm is not None else None, scalar=llvm, vjp=vjp)


def unary(name: str, fn: Callable, doc: str, **kw) -> OpRecord:
    """An elementwise op of one tensor `x` (float-only unless `dtypes` says otherwise)."""
    return elementwise(name, fn, doc, arity=1, **kw)


def binary(name: str, fn: Callable, doc: str, *, dtypes: frozenset[str] = NUMERIC,
           out_dtype: OutDtype = None, onnx: Emitter | None = None,
           llvm: Callable | None = None, vjp: Callable | None = None,
           props: frozenset[Prop] = frozenset()) -> OpRecord:
    """A broadcasting elementwise op of `a` and `b`, whose dtypes the elaborator promotes."""
    return elementwise(name, fn, doc, arity=2, dtypes=dtypes, out_dtype=out_dtype, promote=True,
                       props=props, onnx=onnx, llvm=llvm, vjp=vjp)


def reduction(name: str, fn: Callable, doc: str, *, dtypes: frozenset[str] = NUMERIC,
              out_dtype: OutDtype = None, single_axis: bool = False,
              onnx: Emitter | None = None, llvm: Callable | None = None,
              props: frozenset[Prop] = frozenset(), vjp: Callable | None = None) -> OpRecord:
    """A reduction fn(x, axis=, keepdims=) over `axis` (None = all, an int, or a list).
    `llvm(kernel_builder, node, axes)` gets the reduced axes normalised (sorted, distinct);
    `vjp` is its gradient rule (OpRecord.vjp)."""

    def axes_of(rank, axis):
        if single_axis and is_list(axis):
            raise attr_error("axis", f"axis must be one axis or None, got {list(axis)}")
        return normalize_axes(axis, rank)

    def infer(types, attrs_):
        (x,) = types
        check_dtype(x, dtypes, "x")
        axes = axes_of(x.rank, attrs_["axis"])
        keep = bool(attrs_["keepdims"])
        shape = [Dim.of(1) if i in axes else d for i, d in enumerate(x.shape)
                 if keep or i not in axes]
        return [TensorType(_out_dtype(out_dtype, x.dtype, attrs_), tuple(shape))]

    def reference(env, inputs, attrs_):
        (x,) = inputs
        axes = axes_of(x.ndim, attrs_["axis"])
        if single_axis and attrs_["axis"] is not None:
            axes = axes[0]
        elif single_axis:
            axes = None
        out = fn(upcast(x), axis=axes, keepdims=bool(attrs_["keepdims"]))
        return [as_dtype(out, _out_dtype(out_dtype, dtype_name(x), attrs_))]

    def lower(kb, n):
        llvm(kb, n, axes_of(n.in_types[0].rank, n.attrs["axis"]))

    args = tensors("x") + attrs(("axis", None), ("keepdims", False))
    return OpRecord(name, args, infer, reference, doc, onnx=onnx,
                    llvm=lower if llvm is not None else None, props=props, vjp=vjp)


def along_axis(name: str, fn: Callable, doc: str, onnx: Emitter | None = None,
               llvm: Callable | None = None, vjp: Callable | None = None) -> OpRecord:
    """A float op fn(x, axis) normalising along one axis; the shape is unchanged; `vjp` is its
    gradient rule (OpRecord.vjp)."""

    def infer(types, attrs_):
        (x,) = types
        check_dtype(x, FLOATS, "x")
        normalize_axis(attrs_["axis"], max(x.rank, 1))
        return [x]

    def reference(env, inputs, attrs_):
        (x,) = inputs
        with np.errstate(all="ignore"):
            out = fn(upcast(x), normalize_axis(attrs_["axis"], max(x.ndim, 1)) if x.ndim else None)
        return [out.astype(x.dtype)]

    def lower(kb, n):  # llvm(kb, node, axis) with the axis normalised
        llvm(kb, n, normalize_axis(n.attrs["axis"], max(n.in_types[0].rank, 1)))

    return OpRecord(name, tensors("x") + attrs(("axis", -1)), infer, reference, doc, onnx=onnx,
                    llvm=lower if llvm is not None else None, vjp=vjp)


def concrete_types(inputs: list[np.ndarray | None]) -> list[TensorType | None]:
    """The types of runtime arrays (for re-deriving an output dtype in a reference)."""
    return [None if x is None else TensorType(dtype_name(x), x.shape) for x in inputs]


def simple(name: str, doc: str, args: tuple[Arg, ...], infer_one: Callable,
           compute: Callable, **kw) -> OpRecord:
    """A one-output op: infer_one(types, attrs) -> TensorType; compute(inputs, attrs) -> array.

    The reference re-derives the output dtype from the runtime arrays' types; compute sees the
    attributes with their Dims evaluated, and its result is cast to that dtype.
    """

    def infer(types, a):
        return [infer_one(types, a)]

    def reference(env, inputs, a):
        bound = {k: resolve(env, v) for k, v in a.items()}
        dtype = infer_one(concrete_types(inputs), bound).dtype
        return [as_dtype(compute(inputs, bound), dtype)]

    return OpRecord(name, args, infer, reference, doc, **kw)


def movement(name: str, doc: str, extra: tuple[Arg, ...], shape_rule: Callable,
             compute: Callable, onnx: Emitter | None = None, llvm: Callable | None = None,
             props: frozenset[Prop] = frozenset(), **kw) -> OpRecord:
    """An op of one tensor x that moves data: shape_rule(shape, attrs); compute(x, attrs).
    `props` are its properties besides Prop.MOVEMENT; `kw` go to the record."""

    def infer_one(types, a):
        (x,) = types
        return TensorType(x.dtype, tuple(shape_rule(x.shape, a)))

    return simple(name, doc, tensors("x") + extra, infer_one,
                  lambda inputs, a: compute(inputs[0], a), props=props | {Prop.MOVEMENT},
                  onnx=onnx, llvm=llvm, **kw)
