"""Indexing by tensors: gather, take_along_axis, and scatter (fold src into segments by index)."""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..types import NUMPY_DTYPES, TensorType, shape_str
from ._common import (
    FLOATS,
    INTS,
    NUMERIC,
    attr_error,
    attrs,
    check_dtype,
    choice,
    dtype_name,
    normalize_axis,
    prod,
    tensors,
    to_dim,
    try_broadcast,
    upcast,
)
from ._emit import BF16_UP, cast, full_of, one, widened
from ._factories import simple
from ._grad import expand_to, scalar, unbroadcast
from .registry import OpError, OpRecord, VjpNode, register
from .slicing import index_in, out_of_range

_SCATTER_OUT_OF_RANGE = "scatter: an index is out of range for the result's axis"


# gather and scatter -----------------------------------------------------------------------
def _check_indices(index: np.ndarray, size: int, what: str) -> None:
    """Runtime check: every index in [-size, size) (negative ones count from the end)."""
    if index.size and (index.min() < -size or index.max() >= size):
        raise OpError(f"index out of range for {what} of size {size}: values span "
                      f"[{index.min()}, {index.max()}]", arg="index")


def _gather_infer(types, a):
    x, index = types
    check_dtype(index, INTS, "index")
    if x.rank == 0:
        raise OpError("x must have rank 1 or more, got []", arg="x")
    axis = normalize_axis(a["axis"], x.rank)
    return TensorType(x.dtype, x.shape[:axis] + index.shape + x.shape[axis + 1:])


def _gather(inputs, a):
    x, index = inputs
    axis = normalize_axis(a["axis"], x.ndim)
    _check_indices(index, x.shape[axis], f"axis {axis}")
    return np.take(x, index, axis=axis)


def _take_along_infer(types, a):
    x, index = types
    check_dtype(index, INTS, "index")
    axis = normalize_axis(a["axis"], max(x.rank, 1))
    others = [s[:axis] + (Dim.of(1),) + s[axis + 1:] for s in (x.shape, index.shape)]
    shape = try_broadcast(*others) if index.rank == x.rank else None
    if shape is None:
        raise OpError(f"index {shape_str(index.shape)} must have x's rank and broadcast with "
                      f"{shape_str(x.shape)} off axis {axis}", arg="index")
    return TensorType(x.dtype, shape[:axis] + (index.shape[axis],) + shape[axis + 1:])


def _take_along(inputs, a):
    x, index = inputs
    axis = normalize_axis(a["axis"], x.ndim)
    _check_indices(index, x.shape[axis], f"axis {axis}")
    return np.take_along_axis(x, index, axis=axis)


def _checked_index(b, index: str, dtype: str, size: Dim, message: str) -> str:
    """An index tensor as onnxruntime may be given it: in a checked export (b.check), each
    index outside [-size, size) is reported and replaced by 0, so onnxruntime never raises
    on it (nor reads outside); otherwise the index as it is (ONNX takes negative ones from
    the end, as numpy)."""
    if not b.checked:
        return index
    i = index if dtype == "i64" else cast(b, index, "i64")
    size = b.dim(size)
    ok = one(b, "And", one(b, "GreaterOrEqual", i, one(b, "Neg", size)), one(b, "Less", i, size))
    b.check(ok, message)
    return one(b, "Where", ok, i, b.const(np.int64(0)))


def _gather_onnx(b, n):
    (x, index), (xt, it) = n.inputs, n.in_types
    axis = normalize_axis(n.attrs["axis"], xt.rank)
    index = _checked_index(b, index, it.dtype, xt.shape[axis], out_of_range("gather"))
    b.nonempty(xt.shape[axis], n.outputs, n.out_types,
               lambda outs: b.node("Gather", [x, index], outs, axis=axis))


def _take_along_onnx(b, n):
    """GatherElements, once x and index are broadcast against each other off axis (numpy)."""
    (x, index), (xt, it), out = n.inputs, n.in_types, n.out_types[0].shape
    axis = normalize_axis(n.attrs["axis"], max(xt.rank, 1))
    index = _checked_index(b, index, it.dtype, xt.shape[axis], out_of_range("take_along_axis"))
    source = out[:axis] + xt.shape[axis:axis + 1] + out[axis + 1:]
    if xt.shape != source:
        x = one(b, "Expand", x, b.shape(source))
    if it.shape != out:
        index = one(b, "Expand", index, b.shape(out))
    b.nonempty(xt.shape[axis], n.outputs, n.out_types,
               lambda outs: b.node("GatherElements", [x, index], outs, axis=axis))


def _check_nonempty(kb, size, count, op: str) -> None:
    """Any of `count` indices into an empty axis is out of range (reported as by index_in,
    whose loop does not run there)."""
    zero = kb.const(0, "i64")
    kb.check(kb.b.or_(kb.compare(">", size, zero), kb.compare("==", count, zero)),
             out_of_range(op))


def _gather_llvm(kb, n):
    """out[o, k, r] = x[o, index[k], r] (o: the axes before axis, k: index's positions, r: the
    axes after); nothing is read from an empty axis."""
    x_t, i_t = n.in_types
    axis = normalize_axis(n.attrs["axis"], x_t.rank)
    x, index, out = kb.input("x"), kb.input("index"), kb.output()
    size, count = kb.dim(x_t.shape[axis]), kb.numel(i_t.shape)
    inner = kb.numel(x_t.shape[axis + 1:])
    _check_nonempty(kb, size, count, "gather")
    with kb.b.if_then(kb.compare(">", size, kb.const(0, "i64"))):
        with kb.for_range(kb.numel(x_t.shape[:axis])) as o:
            with kb.for_range(count) as k:
                i = index_in(kb, kb.load(index, k, i_t.dtype), size)
                source = kb.mul(kb.add(kb.mul(o, size), i), inner)
                target = kb.mul(kb.add(kb.mul(o, count), k), inner)
                with kb.for_range(inner) as r:
                    kb.move(out, kb.add(target, r), x, kb.add(source, r))


def _take_along_llvm(kb, n):
    """out[..., k, ...] = x[..., index[..., k, ...], ...], x and index broadcast against each
    other off axis; nothing is read from an empty axis."""
    (x_t, i_t), out_t = n.in_types, n.out_types[0]
    axis = normalize_axis(n.attrs["axis"], max(x_t.rank, 1))
    x, index, out = kb.input("x"), kb.input("index"), kb.output()
    x_strides = kb.broadcast_strides(x_t, out_t)
    x_strides[axis] = kb.numel(x_t.shape[axis + 1:])  # index picks along x's own axis
    i_strides, out_strides = kb.broadcast_strides(i_t, out_t), kb.strides(out_t.shape)
    size = kb.dim(x_t.shape[axis])

    def body(at):
        i = index_in(kb, kb.load(index, kb.dot(at, i_strides), i_t.dtype), size,
                      "take_along_axis")
        source = kb.dot([i if k == axis else a for k, a in enumerate(at)], x_strides)
        kb.move(out, kb.dot(at, out_strides), x, source)

    _check_nonempty(kb, size, kb.numel(out_t.shape), "take_along_axis")
    with kb.b.if_then(kb.compare(">", size, kb.const(0, "i64"))):
        kb.loop_nest([kb.dim(d) for d in out_t.shape], body)


def _gather_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent's slices summed back into the rows they were taken from (a scatter-add
    into zeros: an embedding's gradient), index flattened to one axis."""
    (x, index), (ct,) = node.inputs, cotangents
    if x.type.dtype not in FLOATS:
        return [None, None]
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    count = prod(index.type.shape)
    flat = index if index.type.shape == (count,) else gb.reshape(index, [count])
    src_shape = x.type.shape[:axis] + (count,) + x.type.shape[axis + 1:]
    src = ct if ct.type.shape == src_shape else gb.reshape(ct, list(src_shape))
    return [gb.op("scatter_add", src, flat, size=x.type.shape[axis], axis=axis), None]


def _take_along_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent scatter-added back along axis at the indices (index broadcast to the
    result's shape first), then summed over the axes along which x was broadcast."""
    (x, index), (ct,) = node.inputs, cotangents
    if x.type.dtype not in FLOATS:
        return [None, None]
    axis = normalize_axis(node.attrs["axis"], max(x.type.rank, 1))
    if index.type.shape != ct.type.shape:
        index = gb.op("broadcast_to", index, shape=list(ct.type.shape))
    g = gb.op("scatter_add", ct, index, size=x.type.shape[axis], axis=axis)
    return [unbroadcast(gb, g, x.type), None]


register(simple("gather", "Pick slices of x along axis by index (numpy take).",
                tensors("x", "index") + attrs(("axis", 0)), _gather_infer, _gather,
                onnx=_gather_onnx, llvm=_gather_llvm, vjp=_gather_vjp))
register(simple("take_along_axis", "Pick elements of x along axis, index matched per position.",
                tensors("x", "index") + attrs("axis"), _take_along_infer, _take_along,
                onnx=widened(_take_along_onnx, BF16_UP, inputs=(0,)), llvm=_take_along_llvm,
                vjp=_take_along_vjp))

# reduce -> (ufunc folding into a segment, starting value for floats, for ints)
_SCATTER = {
    "sum": (np.add, 0, 0),
    "mean": (np.add, 0, 0),
    "prod": (np.multiply, 1, 1),
    "max": (np.maximum, -np.inf, "min"),
    "min": (np.minimum, np.inf, "max"),
}


_ONNX_REDUCTION = {"prod": "mul", "max": "max", "min": "min"}


def _scatter_start(mode: str, dtype: str):
    """The value a segment starts from before `mode` folds src into it (as the reference)."""
    _, start_float, start_int = _SCATTER[mode]
    if dtype in FLOATS:
        return start_float
    if isinstance(start_int, str):
        return getattr(np.iinfo(NUMPY_DTYPES[dtype]), start_int)
    return start_int


def _scatter_llvm(kb, n, mode: str):
    """Fold src into a scratch array of the output's size (in the compute type, counting
    what lands in each element), in src's order as numpy's ufunc.at; then write it out,
    0 where nothing landed. Indices out of range are reported (K0505) and skipped."""
    (src_t, i_t), out_t = n.in_types, n.out_types[0]
    dtype = src_t.dtype
    axis = normalize_axis(n.attrs["axis"], src_t.rank)
    src, index, out = kb.input("src"), kb.input("index"), kb.output()
    start = kb.const(_scatter_start(mode, dtype), dtype)
    total = kb.numel(out_t.shape)
    folded, count = kb.scratch(total, dtype), kb.scratch(total, "i64")
    with kb.allocated([folded, count], "scatter's segments"):
        with kb.for_range(total) as k:
            kb.b.store(start, kb.b.gep(folded, [k]))
        fold = {"sum": kb.add, "mean": kb.add, "prod": kb.mul, "max": kb.maximum,
                "min": kb.minimum}[mode]
        length, inner = kb.dim(src_t.shape[axis]), kb.numel(src_t.shape[axis + 1:])
        size, zero = kb.dim(to_dim(n.attrs["size"], "size")), kb.const(0, "i64")

        def each(o, j, r):
            at = kb.add(kb.mul(kb.add(kb.mul(o, length), j), inner), r)
            i = kb.convert(kb.load(index, j if i_t.rank == 1 else at, i_t.dtype), "i64")
            i = kb.select(kb.compare("<", i, zero), kb.add(i, size), i)
            inside = kb.b.and_(kb.compare(">=", i, zero), kb.compare("<", i, size))
            kb.check(inside, _SCATTER_OUT_OF_RANGE)
            with kb.b.if_then(inside):
                to = kb.add(kb.mul(kb.add(kb.mul(o, size), i), inner), r)
                slot, tally = kb.b.gep(folded, [to]), kb.b.gep(count, [to])
                kb.b.store(fold(kb.b.load(slot), kb.load(src, at, dtype)), slot)
                kb.b.store(kb.add(kb.b.load(tally), kb.const(1, "i64")), tally)

        kb.loop_nest([kb.numel(src_t.shape[:axis]), length, inner], lambda ix: each(*ix))
        with kb.for_range(total) as k:
            value, landed = kb.b.load(kb.b.gep(folded, [k])), kb.b.load(kb.b.gep(count, [k]))
            if mode == "mean":  # the reference divides in f64 (f32 sum / i64 count)
                value = kb.fdiv(kb.convert(value, "f64"), kb.convert(landed, "f64"))
            kb.store(out, k, kb.select(kb.compare(">", landed, zero), value,
                                       kb.lit(value, 0)), out_t.dtype)


def _scatter_vjp(mode_of):
    """The gradient of src (PyTorch's scatter_reduce with include_self=False): each element
    gets its segment's cotangent, picked back at its index, times d(segment)/d(element):
    sum 1; mean 1/count; max/min 1/ties where it equals the segment's result, else 0 (ties
    share evenly, a result of 0 counting once more, as PyTorch's); prod the product of the
    segment's other elements (zeros counted, so one zero passes the rest's product to itself
    and silences the others)."""

    def rule(gb, node: VjpNode, cotangents: list) -> list:
        (src, index), (ct,), (out,) = node.inputs, cotangents, node.outputs
        if src.type.dtype not in FLOATS:
            return [None, None]
        mode, attrs_ = mode_of(node.attrs), node.attrs
        axis = normalize_axis(attrs_["axis"], src.type.rank)

        def pick(segments):  # each src element's segment's value
            along = "gather" if index.type.rank == 1 else "take_along_axis"
            return gb.op(along, segments, index, axis=axis)

        def summed(values):  # values scattered into segments by sum
            return gb.op("scatter_add", values, index, size=attrs_["size"], axis=axis)

        def const(value):
            return scalar(gb, value, src.type.dtype)

        def indicator(cond):  # 1 where cond, else 0
            return gb.op("where", cond, const(1), const(0))

        grad = pick(ct)
        if mode == "sum":
            return [grad, None]
        if mode == "mean":
            ones = expand_to(gb, const(1), src.type)
            return [gb.div(grad, pick(summed(ones))), None]
        if mode in ("max", "min"):
            hit = indicator(gb.op("equal", src, pick(out)))
            # PyTorch counts the zeros it scatters onto as one more tie where a segment's
            # result is 0 (PyG's max aggregation of ReLU outputs): so do we, to agree
            ties = gb.add(summed(hit), indicator(gb.op("equal", out, const(0))))
            return [gb.div(gb.mul(grad, hit), pick(ties)), None]
        zero = gb.op("equal", src, const(0))
        nonzero = gb.op("where", zero, const(1), src)
        product = pick(gb.op("scatter", nonzero, index, size=attrs_["size"], axis=axis,
                             reduce="prod"))
        zeros = pick(summed(indicator(zero)))
        others = gb.op("where", zero,
                       gb.mul(product, indicator(gb.op("equal", zeros, const(1)))),
                       gb.mul(gb.div(product, nonzero),
                              indicator(gb.op("equal", zeros, const(0)))))
        return [gb.mul(grad, others), None]

    return rule


def scatter_record(name: str, doc: str, fixed_reduce: str | None = None) -> OpRecord:
    """scatter(src, index, size, axis, reduce): fold src's slices into `size` segments by index.

    index is 1-D (one segment per slice along axis, broadcast over the other axes) or has src's
    shape; segments nothing lands in are 0 whatever the reduction.
    """
    extra = () if fixed_reduce else attrs(("reduce", "sum"))

    def mode_of(a):
        return fixed_reduce or choice(a["reduce"], "reduce", _SCATTER)

    def infer_one(types, a):
        src, index = types
        mode = mode_of(a)
        check_dtype(src, FLOATS if mode == "mean" else NUMERIC, "src")
        check_dtype(index, INTS, "index")
        if src.rank == 0:
            raise OpError("src must have rank 1 or more, got []", arg="src")
        axis = normalize_axis(a["axis"], src.rank)
        size = to_dim(a["size"], "size")
        if size.is_const and size.value < 0:
            raise attr_error("size", f"size must not be negative, got {size}")
        if index.shape not in ((src.shape[axis],), src.shape):
            raise OpError(f"index {shape_str(index.shape)} must be [{src.shape[axis]}] or the "
                          f"shape of src {shape_str(src.shape)}", arg="index")
        return TensorType(src.dtype, src.shape[:axis] + (size,) + src.shape[axis + 1:])

    def compute(inputs, a):
        src, index = inputs
        fold = _SCATTER[mode_of(a)][0]
        axis, size = normalize_axis(a["axis"], src.ndim), int(a["size"])
        _check_indices(index, size, "size")
        s = np.moveaxis(upcast(src), axis, 0)
        key = (index,) if index.ndim == 1 else (np.moveaxis(index, axis, 0), *np.ogrid[
            tuple(slice(n) for n in s.shape[1:])])
        start = _scatter_start(mode_of(a), dtype_name(s))
        out = np.full((size, *s.shape[1:]), start, dtype=s.dtype)
        count = np.zeros(out.shape, dtype=np.int64)
        fold.at(out, key, s)
        np.add.at(count, key, 1)
        if mode_of(a) == "mean":
            out = out / np.maximum(count, 1)
        return np.moveaxis(np.where(count > 0, out, 0), 0, axis)

    def onnx(b, n):
        """ScatterElements onto a filled tensor of the output's shape (a 1-D index broadcast to
        src's shape first); a scatter of ones counts each segment, for mean's divisor and to
        zero the segments nothing lands in."""
        (src, index), (st, it), out = n.inputs, n.in_types, n.out_types[0]
        axis, mode, dtype = normalize_axis(n.attrs["axis"], st.rank), mode_of(n.attrs), st.dtype
        size = to_dim(n.attrs["size"], "size")
        index = _checked_index(b, index, it.dtype, size, _SCATTER_OUT_OF_RANGE)
        src_shape = one(b, "Shape", src)
        if it.rank < st.rank:
            lined_up = b.ints([-1 if i == axis else 1 for i in range(st.rank)])
            index = one(b, "Expand", one(b, "Reshape", index, lined_up), src_shape)

        def scatter(start, updates, reduction, dtype=dtype, outputs=1):
            return b.node("ScatterElements", [full_of(b, out.shape, start, dtype), index, updates],
                          outputs, axis=axis, reduction=reduction)[0]

        def fold(outputs):
            if mode == "sum":
                scatter(0, src, "add", outputs=outputs)
                return
            ones = one(b, "Expand", b.const(1, "i64"), src_shape)
            count = scatter(0, ones, "add", "i64")
            if mode == "mean":
                divisor = cast(b, one(b, "Max", count, b.const(1, "i64")), dtype)
                b.node("Div", [scatter(0, src, "add"), divisor], outputs)
                return
            folded = scatter(_scatter_start(mode, dtype), src, _ONNX_REDUCTION[mode])
            landed = one(b, "Greater", count, b.const(0, "i64"))
            b.node("Where", [landed, folded, b.const(0, dtype)], outputs)

        b.nonempty(size, n.outputs, n.out_types, fold)

    def lower(kb, n):
        _scatter_llvm(kb, n, mode_of(n.attrs))

    return simple(name, doc, tensors("src", "index") + attrs("size", ("axis", 0)) + extra,
                  infer_one, compute, onnx=widened(onnx), llvm=lower, vjp=_scatter_vjp(mode_of))


register(scatter_record("scatter", "Fold src into size segments along axis by index "
                        "(sum, mean, max, min or prod; empty segments are 0)."))
register(scatter_record("scatter_add", "Sum src into size segments along axis by index.",
                        fixed_reduce="sum"))
