"""Reductions (sum mean max min prod, argmax argmin, logsumexp) and softmax along an axis.

As PyTorch: sums and products of bool or integer tensors are i64, mean needs floats, and the
arg-reductions give i64 indices. Softmax and logsumexp subtract the maximum first.
"""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..types import NUMPY_DTYPES
from ._common import ALL_DTYPES, FLOATS, INTS, normalize_axes, normalize_axis
from ._emit import BF16_UP, HALF_UP, cast, one, widened
from ._factories import along_axis, reduction
from ._grad import (
    expand_to,
    float_only,
    like_scalar,
    masked,
    no_gradient,
    reduced_back,
    size_value,
)
from .registry import Prop, register


def _widen_ints(dtype: str, _attrs) -> str:
    return "i64" if dtype in INTS or dtype == "bool" else dtype


def _shifted_max(x, axis, keep_inf: bool = False):
    """max over axis (keepdims), with infinite maxima replaced by 0 so x - m stays finite;
    `keep_inf` keeps a +inf maximum, which makes a softmax row NaN (torch and ONNX Softmax);
    an empty axis has the maximum -inf (then 0), as the native and ONNX kernels start from."""
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return np.where(np.isfinite(m) | (keep_inf & (m > 0)), m, 0)


def softmax(x, axis):
    e = np.exp(x - _shifted_max(x, axis, keep_inf=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis):
    shifted = x - _shifted_max(x, axis, keep_inf=True)
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


def _reduce(b, n, op_type: str, x: str, outputs: list[str] | int = 1) -> str:
    """One ONNX reduction of x over the node's axes, with its keepdims."""
    return b.node(op_type, [x, _axes(b, n)], outputs, keepdims=int(bool(n.attrs["keepdims"])),
                  noop_with_empty_axes=1)[0]


def _mean(b, n) -> None:
    """ReduceMean, NaN where the reduced axes hold no element (as numpy, torch, native code
    and the reference; onnxruntime's ReduceMean gives 0 there)."""
    shape = n.in_types[0].shape
    sizes = [Dim.of(shape[a]) for a in normalize_axes(n.attrs["axis"], len(shape))]
    if all(d.is_const and d.value > 0 for d in sizes):
        _reduce(b, n, "ReduceMean", n.inputs[0], n.outputs)
        return
    mean = _reduce(b, n, "ReduceMean", n.inputs[0])
    zero = b.const(np.asarray(0, dtype=np.int64))
    empty = None
    for d in sizes:
        (is_zero,) = b.node("Equal", [b.dim(d), zero])
        empty = is_zero if empty is None else b.node("Or", [empty, is_zero])[0]
    nan = b.const(np.asarray(np.nan), n.out_types[0].dtype)
    b.node("Where", [empty, nan, mean], n.outputs)


def _reduce_onnx(op_type: str, table: dict[str, str] = HALF_UP):
    return widened(lambda b, n: _reduce(b, n, op_type, n.inputs[0], n.outputs), table)


# sums and products of bool or integers count in i64 (as the reference); opset 18 has no bool
# ReduceMax/ReduceMin
_WIDEN_TO_I64 = {**HALF_UP, "bool": "i64", "i32": "i64"}
_BOOL_AS_I32 = {**HALF_UP, "bool": "i32"}


def _nan_mask(b, x: str) -> str:
    """1 (i32) where x is NaN, else 0: what onnxruntime's ReduceMax/ArgMax can fold."""
    return cast(b, one(b, "IsNaN", x), "i32")


def _extreme_onnx(op_type: str):
    """ReduceMax/ReduceMin; a float reduction meeting a NaN is NaN (numpy), where
    onnxruntime skips a NaN that does not come first."""

    def emit(b, n):
        (x,), dtype = n.inputs, n.in_types[0].dtype
        if dtype not in FLOATS:
            _reduce(b, n, op_type, x, n.outputs)
            return
        has_nan = cast(b, _reduce(b, n, "ReduceMax", _nan_mask(b, x)), "bool")
        b.node("Where", [has_nan, b.const(np.nan, dtype), _reduce(b, n, op_type, x)], n.outputs)

    return widened(emit, _BOOL_AS_I32)


def _arg_onnx(op_type: str):
    """ArgMax/ArgMin taking the first of ties; with axis None, of the flattened tensor. In
    floats the first NaN wins (numpy), which onnxruntime skips: ArgMax of the NaN mask finds
    it."""

    def first(b, x: str, axis: int, keep: int, float_: bool, outputs) -> str:
        (index,) = b.node(op_type, [x], 1 if float_ else outputs, axis=axis, keepdims=keep,
                          select_last_index=0)
        if not float_:
            return index
        mask = _nan_mask(b, x)
        first_nan = one(b, "ArgMax", mask, axis=axis, keepdims=keep, select_last_index=0)
        has_nan = cast(b, one(b, "ReduceMax", mask, b.ints([axis]), keepdims=keep), "bool")
        return b.node("Where", [has_nan, first_nan, index], outputs)[0]

    def emit(b, n):
        (x,), a, rank = n.inputs, n.attrs, n.in_types[0].rank
        keep, float_ = int(bool(a["keepdims"])), n.in_types[0].dtype in FLOATS
        if a["axis"] is not None:
            first(b, x, normalize_axis(a["axis"], rank), keep, float_, n.outputs)
            return
        index = first(b, one(b, "Reshape", x, b.ints([-1])), 0, 0, float_, 1)
        b.node("Reshape", [index, b.ints([1] * rank if keep else [])], n.outputs)

    return widened(emit, {**BF16_UP, "bool": "i32"})


def _logsumexp_onnx(b, n):
    """max + log(sum(exp(x - max))) with keepdims, then the reduced axes dropped."""
    (x,), dtype = n.inputs, n.in_types[0].dtype
    axes, zero = _axes(b, n), b.const(0.0, dtype)
    top = one(b, "ReduceMax", x, axes, keepdims=1, noop_with_empty_axes=1)
    finite = one(b, "Equal", one(b, "Sub", top, top), zero)  # m - m is 0 exactly when m is finite
    shift = one(b, "Where", finite, top, zero)
    total = one(b, "ReduceSum", one(b, "Exp", one(b, "Sub", x, shift)), axes, keepdims=1,
                noop_with_empty_axes=1)
    keep = bool(n.attrs["keepdims"])
    (out,) = b.node("Add", [one(b, "Log", total), shift], n.outputs if keep else 1)
    if not keep:
        b.node("Reshape", [out, b.shape(n.out_types[0].shape)], n.outputs)


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


# native lowerings ---------------------------------------------------------------------------
# kb.reduce runs folds (init, step(acc, value, position, earlier)) over the elements reduced
# into each output element, in the compute type (f32 for half floats; i64 for the sums and
# products of integers and bools, as the reference), and stores finish(results).
def _extreme(kb, dtype: str, highest: bool):
    """The lowest (or highest) value of dtype, where a max (or min) fold starts: -inf (+inf),
    the integer extremes, False (True)."""
    if dtype in FLOATS:
        return kb.const(float("inf") if highest else float("-inf"), dtype)
    if dtype == "bool":
        return kb.const(highest, dtype)
    info = np.iinfo(NUMPY_DTYPES[dtype])
    return kb.const(int(info.max if highest else info.min), dtype)


def _fold(kb, combine: str, start, dtype: str):
    """The fold of the KernelBuilder method `combine` (add, mul, maximum, minimum) over the
    values converted to dtype, from `start`: a number, "lowest" or "highest"."""
    if isinstance(start, str):
        init = _extreme(kb, dtype, start == "highest")
    else:
        init = kb.const(start, dtype)
    step = getattr(kb, combine)
    return init, lambda acc, x, _position, _earlier: step(acc, kb.convert(x, dtype))


def _fold_llvm(combine: str, start):
    """A reduction that is one fold (sum, prod, max, min)."""
    return lambda kb, n, axes: kb.reduce(n, axes, [_fold(kb, combine, start,
                                                         n.out_types[0].dtype)])


def _mean_llvm(kb, n, axes):
    dtype, count = n.out_types[0].dtype, kb.numel([n.in_types[0].shape[a] for a in axes])
    kb.reduce(n, axes, [_fold(kb, "add", 0, dtype)],
              lambda results: kb.fdiv(results[0], kb.convert(count, dtype)))


def _arg_llvm(largest: bool):
    """argmax (largest) / argmin: the extreme first (NaN if there is one, as numpy's first
    NaN wins), then the first position holding it."""

    def lower(kb, n, axes):
        dtype = n.in_types[0].dtype
        last = kb.const(np.iinfo(np.int64).max, "i64")

        def first(index, x, position, earlier):
            (top,) = earlier
            hit = kb.compare("==", x, top)
            if kb.is_float(x):  # NaN is only ever found by NaN
                nan = kb.b.fcmp_unordered("uno", top, top)
                hit = kb.select(nan, kb.b.fcmp_unordered("uno", x, x), hit)
            return kb.minimum(index, kb.select(hit, position, last))

        extreme = _fold(kb, "maximum" if largest else "minimum",
                        "lowest" if largest else "highest", dtype)
        kb.reduce(n, axes, [extreme, (last, first)])

    return lower


def _logsumexp_llvm(kb, n, axes):
    """max first (0 where it is not finite, as the reference), then log(sum(exp(x - max)))."""
    dtype = n.out_types[0].dtype
    zero, inf = kb.const(0.0, dtype), kb.const(float("inf"), dtype)

    def shift(top):
        return kb.select(kb.compare("<", kb.intrinsic("fabs", top), inf), top, zero)

    def exp_sum(acc, x, _position, earlier):
        return kb.add(acc, kb.exp(kb.sub(x, shift(earlier[0]))))

    kb.reduce(n, axes, [_fold(kb, "maximum", "lowest", dtype), (zero, exp_sum)],
              lambda results: kb.add(kb.log(results[1]), shift(results[0])))


# gradient rules ---------------------------------------------------------------------------
def _reduced(node):
    """The reduced axes of a reduction node, normalised."""
    return list(normalize_axes(node.attrs["axis"], node.inputs[0].type.rank))


def _spread(gb, node, ct):
    """The cotangent of a reduction put back on every element of its input (keepdims, then
    broadcast): the gradient of a sum."""
    x = node.inputs[0].type
    return expand_to(gb, reduced_back(gb, ct, x, _reduced(node), node.attrs["keepdims"]), x)


def _sum_vjp(gb, node, cts):
    return [_spread(gb, node, cts[0])]


def _mean_vjp(gb, node, cts):
    """The sum's gradient over the count of reduced elements (a size: symbolic, maybe)."""
    x = node.inputs[0].type
    count = Dim.of(1)
    for a in _reduced(node):
        count = count * x.shape[a]
    return [gb.div(_spread(gb, node, cts[0]), size_value(gb, count, x.dtype))]


def _kept(gb, node, value):
    """A reduction's result (or its cotangent) with the reduced axes kept as size 1."""
    return reduced_back(gb, value, node.inputs[0].type, _reduced(node), node.attrs["keepdims"])


def _extreme_vjp(gb, node, cts):
    """The cotangent split evenly among the elements equal to the max (min), as
    torch.amax/amin: ct * (x == y) / count(x == y)."""
    (x,), (y,) = node.inputs, node.outputs
    hit = gb.op("equal", x, _kept(gb, node, y))
    ones = masked(gb, hit, like_scalar(gb, 1.0, x))
    count = gb.op("sum", ones, axis=_reduced(node), keepdims=True)
    return [gb.mul(ones, gb.div(_kept(gb, node, cts[0]), count))]


def _prod_vjp(gb, node, cts):
    """The product of the other elements, zeros included: with p the product of the nonzero
    elements and z the number of zeros along the reduced axes, p / x where z == 0; p at the
    one zero where z == 1; 0 elsewhere (no division by zero)."""
    (x,) = node.inputs
    zero, one = like_scalar(gb, 0.0, x), like_scalar(gb, 1.0, x)
    is_zero = gb.op("equal", x, zero)
    axes = _reduced(node)
    nonzero = gb.op("prod", gb.op("where", is_zero, one, x), axis=axes, keepdims=True)
    zeros = gb.op("sum", gb.op("where", is_zero, one, zero), axis=axes, keepdims=True)
    others = gb.op("where", gb.op("equal", zeros, zero),
                   gb.div(nonzero, gb.op("where", is_zero, one, x)),
                   masked(gb, gb.op("logical_and", is_zero, gb.op("equal", zeros, one)),
                          expand_to(gb, nonzero, x.type)))
    return [gb.mul(_kept(gb, node, cts[0]), others)]


def _logsumexp_vjp(gb, node, cts):
    """ct * exp(x - y): the softmax of x along the reduced axes."""
    (x,), (y,) = node.inputs, node.outputs
    return [gb.mul(_kept(gb, node, cts[0]), gb.op("exp", gb.sub(x, _kept(gb, node, y))))]


def _axis_of(node) -> int:
    """The normalised axis of a softmax or log_softmax node (a 0-d input: its only element)."""
    rank = node.inputs[0].type.rank
    return normalize_axis(node.attrs["axis"], max(rank, 1)) if rank else None


def _row_sum(gb, x, axis):
    """sum(x, axis, keepdims) (all of a 0-d x)."""
    return gb.op("sum", x, axis=axis, keepdims=True)


def _softmax_vjp(gb, node, cts):
    """y * (ct - sum(ct * y)) along the axis, y the softmax (PyTorch's _softmax_backward)."""
    (ct,), (y,) = cts, node.outputs
    return [gb.mul(y, gb.sub(ct, _row_sum(gb, gb.mul(ct, y), _axis_of(node))))]


def _log_softmax_vjp(gb, node, cts):
    """ct - exp(y) * sum(ct) along the axis, y the log_softmax (stable: exp(y) <= 1)."""
    (ct,), (y,) = cts, node.outputs
    return [gb.sub(ct, gb.mul(gb.op("exp", y), _row_sum(gb, ct, _axis_of(node))))]


# max, min and their indices have nothing to give for an empty axis
_NO_IDENTITY = frozenset({Prop.NO_IDENTITY})
register(reduction("sum", np.sum, "Sum over axis (None = every axis).", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints, onnx=_reduce_onnx("ReduceSum", _WIDEN_TO_I64),
                   llvm=_fold_llvm("add", 0), vjp=float_only(_sum_vjp)))
register(reduction("mean", np.mean, "Arithmetic mean over axis.", dtypes=FLOATS,
                   onnx=widened(_mean), llvm=_mean_llvm, vjp=_mean_vjp))
register(reduction("max", np.max, "Maximum over axis.", dtypes=ALL_DTYPES,
                   onnx=_extreme_onnx("ReduceMax"),
                   llvm=_fold_llvm("maximum", "lowest"), props=_NO_IDENTITY,
                   vjp=float_only(_extreme_vjp)))
register(reduction("min", np.min, "Minimum over axis.", dtypes=ALL_DTYPES,
                   onnx=_extreme_onnx("ReduceMin"),
                   llvm=_fold_llvm("minimum", "highest"), props=_NO_IDENTITY,
                   vjp=float_only(_extreme_vjp)))
register(reduction("prod", np.prod, "Product over axis.", dtypes=ALL_DTYPES,
                   out_dtype=_widen_ints, onnx=_reduce_onnx("ReduceProd", _WIDEN_TO_I64),
                   llvm=_fold_llvm("mul", 1), vjp=float_only(_prod_vjp)))
register(reduction("argmax", np.argmax,
                   "Index (i64) of the first maximum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True,
                   onnx=_arg_onnx("ArgMax"), llvm=_arg_llvm(True), props=_NO_IDENTITY,
                   vjp=no_gradient))
register(reduction("argmin", np.argmin,
                   "Index (i64) of the first minimum along one axis, or of the flattened tensor.",
                   dtypes=ALL_DTYPES, out_dtype="i64", single_axis=True,
                   onnx=_arg_onnx("ArgMin"), llvm=_arg_llvm(False), props=_NO_IDENTITY,
                   vjp=no_gradient))
register(reduction("logsumexp", logsumexp, "log(sum(exp(x))) over axis, computed stably.",
                   dtypes=FLOATS, onnx=widened(_logsumexp_onnx), llvm=_logsumexp_llvm,
                   vjp=_logsumexp_vjp))
register(along_axis("softmax", softmax, "exp(x) / sum(exp(x)) along axis, computed stably.",
                    onnx=_softmax_onnx("Softmax"),
                    llvm=lambda kb, n, axis: kb.softmax(n, axis), vjp=_softmax_vjp))
register(along_axis("log_softmax", log_softmax, "log(softmax(x)) along axis, computed stably.",
                    onnx=_softmax_onnx("LogSoftmax"),
                    llvm=lambda kb, n, axis: kb.softmax(n, axis, log=True),
                    vjp=_log_softmax_vjp))
