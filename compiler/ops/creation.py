"""The ops that create tensors: arange, zeros, ones, full, one_hot, and dim_value (a symbolic
size as a tensor).
"""

from __future__ import annotations

import math

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    FLOATS,
    INTS,
    NUMERIC,
    attr_error,
    attrs,
    check_dtype,
    dtype_attr,
    number,
    tensors,
    to_dim,
    to_dims,
    to_int,
)
from ._emit import BF16_UP, cast, one, widened
from ._factories import simple
from ._grad import no_gradient
from .registry import OpError, OpRecord, internal, register
from .views import to_dims_ints

_CLASS_OUT_OF_RANGE = "one_hot: a class is out of range [0, num_classes)"


# creation ---------------------------------------------------------------------------------
def _arange_length(start, end, step) -> Dim:
    """ceil((end - start) / step), at least 0; float bounds must be constants."""
    if any(isinstance(v, float) for v in (start, end, step)):
        lo, hi, st = (number(v, n) for v, n in ((start, "start"), (end, "end"), (step, "step")))
        if st == 0:
            raise attr_error("step", "step cannot be zero")
        return Dim.of(max(0, math.ceil((hi - lo) / st)))
    lo, hi, st = to_dim(start, "start"), to_dim(end, "end"), to_int(step, "step")
    if st == 0:
        raise attr_error("step", "step cannot be zero")
    n = (hi - lo + st - 1) // st if st > 0 else (lo - hi - st - 1) // -st
    return Dim.of(0) if n.is_const and n.value < 0 else n


def _arange_bounds(a):
    return (0, a["start"], a["step"]) if a["end"] is None else (a["start"], a["end"], a["step"])


def _arange_infer(types, a):
    dtype = dtype_attr(a["dtype"])
    start, end, step = _arange_bounds(a)
    if dtype not in NUMERIC:
        raise attr_error("dtype", f"arange needs a numeric dtype, got {dtype}")
    if dtype not in FLOATS and any(isinstance(v, float) for v in (start, end, step)):
        raise attr_error("dtype", f"float bounds need a float dtype, got {dtype}")
    return TensorType(dtype, (_arange_length(start, end, step),))


def _arange(inputs, a):
    start, end, step = _arange_bounds(a)
    return start + step * np.arange(_arange_length(start, end, step).value)


def _arange_onnx(b, n):
    """Range in i64 (symbolic bounds at run time), cast to dtype. With a float bound, as the
    reference: start + step * i in f64 over i in Range(0, n), then cast."""
    start, end, step = _arange_bounds(n.attrs)
    if any(isinstance(v, float) for v in (start, end, step)):
        count = _arange_length(start, end, step)
        i = cast(b, one(b, "Range", b.dim(0), b.dim(count), b.dim(1)), "f64")
        scaled = one(b, "Mul", b.const(float(step), "f64"), i)
        values = one(b, "Add", b.const(float(start), "f64"), scaled)
    else:
        values = one(b, "Range", b.dim(start), b.dim(end), b.dim(step))
    cast(b, values, n.out_types[0].dtype, n.outputs[0])


def _arange_llvm(kb, n):
    """start + step * i: in i64 (symbolic bounds at run time), or, with a float bound, in f64
    without contraction into an FMA, rounded once to dtype (as the reference)."""
    start, end, step = _arange_bounds(n.attrs)
    dtype = n.out_types[0].dtype
    out = kb.output()
    floats = any(isinstance(v, float) for v in (start, end, step))
    with kb.for_range(kb.numel(n.out_types[0].shape)) as i:
        if floats:
            with kb.strict():
                value = kb.add(kb.const(float(number(start, "start")), "f64"),
                               kb.mul(kb.const(float(step), "f64"), kb.convert(i, "f64")))
        else:
            value = kb.convert(kb.add(kb.dim(to_dim(start, "start")),
                                      kb.mul(kb.const(to_int(step, "step"), "i64"), i)), dtype)
        kb.store(out, i, value, dtype)


register(simple("arange", "start, start + step, ... up to end (exclusive); arange(n) is 0..n.",
                attrs("start", ("end", None), ("step", 1), ("dtype", "i64")),
                _arange_infer, _arange, onnx=_arange_onnx, llvm=_arange_llvm,
                vjp=no_gradient))


def filled(name: str, doc: str, value=None) -> OpRecord:
    """A creation op: `shape` filled with `value` (an attribute when not fixed)."""
    extra = attrs("value") if value is None else ()

    def infer_one(types, a):
        shape = to_dims(a["shape"], "shape")
        if any(d.is_const and d.value < 0 for d in shape):
            raise attr_error("shape", f"sizes must not be negative: {shape_str(shape)}")
        if value is None and not isinstance(a["value"], (bool, Dim)):
            number(a["value"], "value")
        return TensorType(dtype_attr(a["dtype"]), shape)

    def compute(inputs, a):
        return np.full(to_dims_ints(a["shape"]), a["value"] if value is None else value)

    def onnx(b, n):
        """A scalar (a size's run-time value when `value` is a Dim) expanded to the shape."""
        fill, dtype = n.attrs["value"] if value is None else value, n.out_types[0].dtype
        if isinstance(fill, Dim):
            filler = cast(b, b.dim(fill), dtype)
        else:
            filler = b.const(fill, dtype)
        b.node("Expand", [filler, b.shape(n.out_types[0].shape)], n.outputs)

    def lower(kb, n):
        dtype = n.out_types[0].dtype
        fill = kb.stored(n.attrs["value"] if value is None else value, dtype)
        out = kb.output()
        with kb.for_range(kb.numel(n.out_types[0].shape)) as i:
            kb.b.store(fill, kb.b.gep(out, [i]))

    return simple(name, doc, attrs("shape") + extra + attrs(("dtype", "f32")), infer_one, compute,
                  onnx=widened(onnx, BF16_UP), llvm=lower, vjp=no_gradient)


register(filled("zeros", "A tensor of zeros.", value=0))
register(filled("ones", "A tensor of ones.", value=1))
register(filled("full", "A tensor filled with value."))


def _one_hot_infer(types, a):
    (x,) = types
    check_dtype(x, INTS, "x")
    classes = to_dim(a["num_classes"], "num_classes")
    if classes.is_const and classes.value < 1:
        raise attr_error("num_classes", f"num_classes must be positive, got {classes}")
    return TensorType(dtype_attr(a["dtype"]), x.shape + (classes,))


def _one_hot(inputs, a):
    (x,) = inputs
    if x.size and (x.min() < 0 or x.max() >= a["num_classes"]):
        raise OpError(f"class values must lie in [0, {a['num_classes']}), got "
                      f"[{x.min()}, {x.max()}]", arg="x")
    return x[..., None] == np.arange(a["num_classes"])


def _one_hot_onnx(b, n):
    """x[..., None] == arange(num_classes), cast (ONNX's OneHot would take negative classes
    from the end); a class out of range is reported (b.check) as native code does."""
    depth = b.dim(to_dim(n.attrs["num_classes"], "num_classes"))
    classes = one(b, "Range", b.dim(0), depth, b.dim(1))
    x = cast(b, n.inputs[0], "i64")
    if b.checked:
        b.check(one(b, "And", one(b, "GreaterOrEqual", x, b.dim(0)), one(b, "Less", x, depth)),
                _CLASS_OUT_OF_RANGE)
    x = one(b, "Unsqueeze", x, b.ints([-1]))
    cast(b, one(b, "Equal", x, classes), n.out_types[0].dtype, n.outputs[0])


def _one_hot_llvm(kb, n):
    """out[k, c] = x[k] == c; a class out of range is reported (K0505, as the reference does)
    and gives a row of zeros."""
    (x_t,), out_t = n.in_types, n.out_types[0]
    x, out = kb.input("x"), kb.output()
    classes = kb.dim(to_dim(n.attrs["num_classes"], "num_classes"))
    one, zero = kb.stored(1, out_t.dtype), kb.stored(0, out_t.dtype)
    with kb.for_range(kb.numel(x_t.shape)) as k:
        label = kb.convert(kb.load(x, k, x_t.dtype), "i64")
        inside = kb.b.and_(kb.compare(">=", label, kb.const(0, "i64")),
                           kb.compare("<", label, classes))
        kb.check(inside, _CLASS_OUT_OF_RANGE)
        with kb.for_range(classes) as c:
            hot = kb.select(kb.compare("==", label, c), one, zero)
            kb.b.store(hot, kb.b.gep(out, [kb.add(kb.mul(k, classes), c)]))


register(simple("one_hot", "1 at position x[...] of a new last axis of num_classes, else 0.",
                tensors("x") + attrs("num_classes", ("dtype", "i64")), _one_hot_infer, _one_hot,
                onnx=_one_hot_onnx, llvm=_one_hot_llvm, vjp=no_gradient))


def _dim_value_infer(types, a):
    to_dim(a["dim"], "dim")
    return TensorType("i64", ())


register(internal(simple(
    "dim_value", "The runtime value of a size, as an i64 scalar tensor.",
    attrs("dim"), _dim_value_infer, lambda inputs, a: np.array(a["dim"]),
    onnx=lambda b, n: b.node("Identity", [b.dim(n.attrs["dim"])], n.outputs),
    llvm=lambda kb, n: kb.store(kb.output(), kb.const(0, "i64"),
                                kb.dim(to_dim(n.attrs["dim"], "dim")), "i64"),
    vjp=no_gradient)))
