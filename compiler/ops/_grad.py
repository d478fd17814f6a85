"""Helpers that gradient rules (OpRecord.vjp) share, written with the typed graph builder.

    def _mul_vjp(gb, node, cts):
        (ct,), (a, b) = cts, node.inputs
        return [unbroadcast(gb, gb.mul(ct, b), a.type), unbroadcast(gb, gb.mul(ct, a), b.type)]

Every helper adds ordinary primitive ops through `gb`, so a backward graph is IR like any
other; every family of ops may import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dims import Dim
from ..types import FLOAT_DTYPES, NUMPY_DTYPES, TensorType

VjpRule = Callable[[Any, Any, list[Any]], list[Any]]


def is_float(value: Any) -> bool:
    """Whether a Value (or TensorType) is of a floating-point dtype: only those take gradients."""
    t = getattr(value, "type", value)
    return t is not None and t.dtype in FLOAT_DTYPES


def scalar(gb: Any, number: float, dtype: str) -> Any:
    """A 0-d constant `number` of `dtype`."""
    return gb.constant(np.asarray(number, dtype=NUMPY_DTYPES[dtype]))


def like_scalar(gb: Any, number: float | Dim, value: Any) -> Any:
    """A 0-d tensor holding `number` (a numeric attribute: a number, or a size) in the dtype
    of `value`."""
    if isinstance(number, Dim):
        return size_value(gb, number, value.type.dtype)
    return scalar(gb, number, value.type.dtype)


def size_value(gb: Any, size: Dim, dtype: str) -> Any:
    """A 0-d tensor of `dtype` holding `size` (a constant, or a symbolic size's value at run
    time)."""
    size = Dim.of(size)
    if size.is_const:
        return scalar(gb, size.value, dtype)
    return gb.op("full", shape=[], value=size, dtype=dtype)


def unbroadcast(gb: Any, grad: Any, like: TensorType) -> Any:
    """`grad` (of a broadcast result's shape) summed over the axes broadcasting added or
    stretched, in the shape of `like` (the operand's type): the gradient of a broadcast."""
    shape = grad.type.shape
    lead = len(shape) - like.rank
    if lead > 0:
        grad = gb.op("sum", grad, axis=list(range(lead)), keepdims=False)
    stretched = [i for i, (d, want) in enumerate(zip(grad.type.shape, like.shape, strict=True))
                 if want == Dim.of(1) and d != Dim.of(1)]
    if stretched:
        grad = gb.op("sum", grad, axis=stretched, keepdims=True)
    if grad.type.shape != like.shape:
        grad = gb.reshape(grad, list(like.shape))
    return grad


def expand_to(gb: Any, grad: Any, like: TensorType) -> Any:
    """`grad` broadcast to the shape of `like` (a no-op when it has it already)."""
    if grad.type.shape == like.shape:
        return grad
    return gb.op("broadcast_to", grad, shape=list(like.shape))


def reduced_back(gb: Any, grad: Any, x: TensorType, axes: list[int], keepdims: bool) -> Any:
    """The cotangent of a reduction over `axes` of `x`, with the reduced axes put back as
    size 1 (a reduction without keepdims removed them), ready to broadcast against `x`."""
    if keepdims or not axes:
        return grad
    shape = [Dim.of(1) if i in axes else d for i, d in enumerate(x.shape)]
    return gb.reshape(grad, shape)


def swap_last(gb: Any, x: Any) -> Any:
    """x with its last two axes swapped (a batched transpose)."""
    perm = list(range(x.type.rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return gb.permute(x, perm)


def masked(gb: Any, cond: Any, grad: Any) -> Any:
    """`grad` where `cond`, else 0 (the gradient of a branch that `cond` selects)."""
    return gb.op("where", cond, grad, like_scalar(gb, 0.0, grad))


def float_only(rule: VjpRule) -> VjpRule:
    """A rule for an op whose inputs take a gradient only when floating point (an op that
    also takes integers: their results take no gradient, and the rule gives None)."""

    def vjp(gb, node, cts):
        if not all(v is None or is_float(v) for v in node.inputs):
            return [None] * len(node.inputs)
        return rule(gb, node, cts)

    return vjp


def no_gradient(gb: Any, node: Any, cts: list[Any]) -> list[Any]:
    """The rule of an op whose result is piecewise constant in its inputs (a comparison,
    floor, sign): its gradient is zero everywhere it exists, as PyTorch takes it."""
    return [None] * len(node.inputs)


def elementwise_vjp(derivative: Callable[[Any, Any, Any], Any]) -> VjpRule:
    """The rule of a unary elementwise op: ct * f'(x), with `derivative(gb, x, y)` building
    f'(x) from the input x and the result y."""

    def vjp(gb, node, cts):
        (ct,) = cts
        (x,) = node.inputs
        return [gb.mul(ct, derivative(gb, x, node.outputs[0]))]

    return float_only(vjp)


__all__ = ["elementwise_vjp", "expand_to", "float_only", "is_float", "like_scalar", "masked",
           "no_gradient", "reduced_back", "scalar", "size_value", "swap_last", "unbroadcast"]
