"""Reductions (sum mean max min prod, argmax argmin, logsumexp) and softmax along an axis.

As PyTorch: sums and products of bool or integer tensors are i64, mean needs floats, and the
arg-reductions give i64 indices. Softmax and logsumexp subtract the maximum first.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    ALL_DTYPES,
    BF16_UP,
    FLOATS,
    HALF_UP,
    INTS,
    along_axis,
    normalize_axes,
    normalize_axis,
    one,
    reduction,
    scalar,
    shape_of,
    widened,
)
from .registry import register


def _widen_ints(dtype: str, _attrs) -> str:
    return "i64" if dtype in INTS or dtype == "bool" else dtype


def _shifted_max(x, axis):
    """max over axis (keepdims), with infinite maxima replaced by 0 so x - m stays finite."""
    m = np.max(x, axis=axis, keepdims=True)
    return np.where(np.isfinite(m), m, 0)


def softmax(x, axis):
    e = np.exp(x - _shifted_max(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis):
    shifted = x - _shifted_max(x, axis)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def logsumexp(x, axis, keepdims):
    m = _shifted_max(x, axis)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# ONNX emitters ----------------------------------------------------------------------------
def _axes(b, n) -> str:
    """The reduced axes as an ONNX axes input (opset 18); empty means none, given
    noop_with_empty_axes=1."""
    return b.ints(normalize_axes(n.attrs["axis"], n.in_types[0].rank))


def _reduce_onnx(op_type: str, table: dict[str, str] = HALF_UP):
    def emit(b, n):
        b.node(op_type, [n.inputs[0], _axes(b, n)], n.outputs,
               keepdims=int(bool(n.attrs["keepdims"])), noop_with_empty_axes=1)

    return widened(emit, table)


# sums and products of bool or integers count in i64 (as the reference); opset 18 has no bool
# ReduceMax/ReduceMin
_WIDEN_TO_I64 = {**HALF_UP, "bool": "i64", "i32": "i64"}
_BOOL_AS_I32 = {**HALF_UP, "bool": "i32"}


def _arg_onnx(op_type: str):
    """ArgMax/ArgMin taking the first of ties; with axis None, of the flattened tensor."""

    def emit(b, n):
        (x,), a, rank = n.inputs, n.attrs, n.in_types[0].rank
        keep = int(bool(a["keepdims"]))
        if a["axis"] is not None:
            b.node(op_type, [x], n.outputs, axis=normalize_axis(a["axis"], rank), keepdims=keep,
                   select_last_index=0)
            return
        index = one(b, op_type, one(b, "Reshape", x, b.ints([-1])), axis=0, keepdims=0)
        b.node("Reshape", [index, b.ints([1] * rank if keep else [])], n.outputs)

    return widened(emit, {**BF16_UP, "bool": "i32"})


def _logsumexp_onnx(b, n):
    """max + log(sum(exp(x - max))) with keepdims, then the reduced axes dropped."""
    (x,), dtype = n.inputs, n.in_types[0].dtype
    axes, zero = _axes(b, n), scalar(b, 0.0, dtype)
    top = one(b, "ReduceMax", x, axes, keepdims=1, noop_with_empty_axes=1)
    finite = one(b, "Equal", one(b, "Sub", top, top), zero)  # m - m is 0 exactly when m is finite
    shift = one(b, "Where", finite, top, zero)
    total = one(b, "ReduceSum", one(b, "Exp", one(b, "Sub", x, shift)), axes, keepdims=1,
                noop_with_empty_axes=1)
    keep = bool(n.attrs["keepdims"])
    (out,) = b.node("Add", [one(b, "Log", total), shift], n.outputs if keep else 1)
    if not keep:
        b.node("Reshape", [out, shape_of(b, n.out_types[0].shape)], n.outputs)


def _softmax_onnx(op_type: str):
    """Softmax/LogSoftmax on one axis (opset 13+); a 0-d x goes through shape [1]."""

    def emit(b, n):
        (x,), rank = n.inputs, n.in_types[0].rank
        if rank:
            b.node(op_type, [x], n.outputs, axis=normalize_axis(n.attrs["axis"], rank))
            return
        y = one(b, op_type, one(b, "Reshape", x, b.ints([1])), axis=0)
        b.node("Reshape", [y, b.ints([])], n.outputs)

    return widened(emit)


register(reduction("sum", np.sum, "Sum over axis (None = every axis).", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints, onnx=_reduce_onnx("ReduceSum", _WIDEN_TO_I64)))
register(reduction("mean", np.mean, "Arithmetic mean over axis.", dtypes=FLOATS,
                   onnx=_reduce_onnx("ReduceMean")))
register(reduction("max", np.max, "Maximum over axis.", dtypes=ALL_DTYPES,
                   onnx=_reduce_onnx("ReduceMax", _BOOL_AS_I32)))
register(reduction("min", np.min, "Minimum over axis.", dtypes=ALL_DTYPES,
                   onnx=_reduce_onnx("ReduceMin", _BOOL_AS_I32)))
register(reduction("prod", np.prod, "Product over axis.", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints, onnx=_reduce_onnx("ReduceProd", _WIDEN_TO_I64)))
register(reduction("argmax", np.argmax,
                   "Index (i64) of the first maximum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True,
                   onnx=_arg_onnx("ArgMax")))
register(reduction("argmin", np.argmin,
                   "Index (i64) of the first minimum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True,
                   onnx=_arg_onnx("ArgMin")))
register(reduction("logsumexp", logsumexp, "log(sum(exp(x))) over axis, computed stably.",
                   dtypes=FLOATS, onnx=widened(_logsumexp_onnx)))
register(along_axis("softmax", softmax, "exp(x) / sum(exp(x)) along axis, computed stably.",
                    onnx=_softmax_onnx("Softmax"),
                    llvm=lambda kb, n, axis: kb.softmax(n, axis)))
register(along_axis("log_softmax", log_softmax, "log(softmax(x)) along axis, computed stably.",
                    onnx=_softmax_onnx("LogSoftmax"),
                    llvm=lambda kb, n, axis: kb.softmax(n, axis, log=True)))
