"""Basic indexing (`slice`, for x[...]), joining (concat, stack) and splitting.

Where a slice bound is only known at run time (a symbolic size) it is taken to be in range.
"""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    attr_error,
    attrs,
    check_same_dtype,
    choice,
    dtype_name,
    exact_div,
    normalize_axis,
    prod,
    resolve,
    tensors,
    to_dim,
    to_dims,
    to_int,
)
from ._emit import chain, one
from ._factories import movement, simple
from .registry import Arg, OpError, OpRecord, Prop, VjpNode, internal, register
from .views import INT64_MAX, INT64_MIN, NEVER_FAILS, pads_on, zeros_of

# slicing ----------------------------------------------------------------------------------
_ENTRY_KINDS = ("int", "range", "ellipsis", "new")


def _slice_entries(shape, items):
    """Pair each item with the axis it reads (None for new axes); a missing tail is full."""
    items = [tuple(e) for e in items]
    kinds = [choice(e[0] if e else None, "items", _ENTRY_KINDS) for e in items]
    if kinds.count("ellipsis") > 1:
        raise attr_error("items", "an index may hold one ellipsis (...)")
    consumed = sum(k in ("int", "range") for k in kinds)
    if consumed > len(shape):
        raise OpError(f"{consumed} indices for {shape_str(shape)}", arg="items")
    if "ellipsis" not in kinds:
        items.append(("ellipsis",))
    axis = 0
    for e in items:
        if e[0] == "ellipsis":
            for _ in range(len(shape) - consumed):
                yield ("range", None, None, 1), axis
                axis += 1
        elif e[0] == "new":
            yield e, None
        else:
            yield e, axis
            axis += 1


def _range_length(size: Dim, start, stop, step) -> Dim:
    """len(range(size)[start:stop:step]); symbolic bounds are taken to be in range."""
    step = to_int(step, "items")
    if step == 0:
        raise attr_error("items", "slice step cannot be zero")
    start, stop = (None if b is None else to_dim(b, "items") for b in (start, stop))
    if size.is_const and all(b is None or b.is_const for b in (start, stop)):
        bounds = slice(*(None if b is None else b.value for b in (start, stop)), step)
        return Dim.of(len(range(*bounds.indices(size.value))))

    first, last = (start, stop) if step > 0 else (stop, start)
    if all(b is not None and b.is_const for b in (first, last)) and first.value < 0 <= last.value:
        raise OpError(f"the length of slice {first.value}:{last.value} shrinks as the symbolic "
                      f"size {size} grows; use bounds of one sign", arg="items")

    def absolute(b, default):
        if b is None:
            return default
        return size + b if b.is_const and b.value < 0 else b

    if step > 0:
        n = (absolute(stop, size) - absolute(start, Dim.of(0)) + step - 1) // step
    else:
        n = (absolute(start, size - 1) - absolute(stop, Dim.of(-1)) - step - 1) // -step
    return Dim.of(0) if n.is_const and n.value < 0 else n


def _slice_shape(shape, a):
    out = []
    for e, axis in _slice_entries(shape, a["items"]):
        if e[0] == "new":
            out.append(Dim.of(1))
        elif e[0] == "range":
            out.append(_range_length(shape[axis], *e[1:]))
        else:
            i, size = to_dim(e[1], "items"), shape[axis]
            if i.is_const and size.is_const and not -size.value <= i.value < size.value:
                raise OpError(f"index {i} is out of range for axis {axis} of {shape_str(shape)}",
                              arg="items")
    return tuple(out)


def _slice(x, a):
    keys = {"int": lambda e: e[1], "range": lambda e: slice(*e[1:]), "new": lambda e: None}
    return x[tuple(keys[e[0]](e) for e, _ in _slice_entries(x.shape, a["items"]))]


def _slice_bounds(e) -> tuple[Dim, Dim, int] | None:
    """(start, stop, step) of an int or range entry as ONNX Slice reads them (None bounds become
    the ends of the axis, which Slice clamps as Python does), or None for a full range."""
    if e[0] == "int":
        i = to_dim(e[1], "items")
        return i, Dim.of(INT64_MAX) if i == -1 else i + 1, 1
    start, stop, step = e[1], e[2], to_int(e[3], "items")
    if start is None and stop is None and step == 1:
        return None
    first, last = (0, INT64_MAX) if step > 0 else (INT64_MAX, INT64_MIN)
    return (Dim.of(first) if start is None else to_dim(start, "items"),  # ends: int64's
            Dim.of(last) if stop is None else to_dim(stop, "items"), step)


def _slice_onnx(b, n):
    """One Slice over every indexed or ranged axis (symbolic bounds at run time), then Squeeze
    of the indexed axes and Unsqueeze of the new ones. An index whose value or axis is known
    only at run time is taken from the end when negative, and in a checked export (b.check)
    reported when out of range, as native code does (onnxruntime's Slice would clamp it and
    its Squeeze fail)."""
    shape = n.in_types[0].shape
    sliced, dropped, new, position, indexed = [], [], [], 0, []
    for e, axis in _slice_entries(shape, n.attrs["items"]):
        if e[0] == "new":
            new.append(position)
        elif (bounds := _slice_bounds(e)) is not None:
            i = bounds[0]
            if e[0] == "int" and (not i.is_const or (b.checked and not shape[axis].is_const)):
                bounds = (*_run_time_index(b, i, shape[axis]), 1)
                indexed.append(shape[axis])
            sliced.append((axis, *bounds))
        if e[0] == "int":
            dropped.append(axis)
        else:
            position += 1
    steps = []
    if sliced:
        axes, starts, stops, strides = zip(*sliced, strict=True)
        bounds = [_sizes(b, starts), _sizes(b, stops), b.ints(axes), b.ints(strides)]
        steps.append(("Slice", bounds))
    steps += [("Squeeze", [b.ints(dropped)])] if dropped else []
    steps += [("Unsqueeze", [b.ints(new)])] if new else []
    b.nonempty(prod(indexed), n.outputs, n.out_types,
               lambda outs: chain(b, n.inputs[0], steps, outs))
    if b.checked:  # as natively (_slice_llvm), each range's last element in its axis
        out_axis = 0
        for e, axis in _slice_entries(shape, n.attrs["items"]):
            if e[0] == "range":
                length = n.out_types[0].shape[out_axis]
                if not all(d.is_const for d in (shape[axis], length)):
                    b.check(_range_inside(b, shape[axis], e, length), out_of_range("slice"))
            out_axis += e[0] != "int"


def _range_inside(b, size: Dim, e, length: Dim) -> str:
    """A bool: the range entry e's `length` elements (its type's) lie in an axis of `size`
    at run time: none, or the last at start + (length - 1) * step within [0, size), start as
    Python's slice.indices gives it (_slice_start)."""
    step = to_int(e[3], "items")
    zero, size_v, n = b.const(np.int64(0)), b.dim(size), b.dim(length)
    if e[1] is None:
        start = zero if step > 0 else one(b, "Sub", size_v, b.const(np.int64(1)))
    else:
        i = b.dim(to_dim(e[1], "items"))
        i = one(b, "Where", one(b, "Less", i, zero), one(b, "Add", i, size_v), i)
        low, high = ((zero, size_v) if step > 0 else
                     (b.const(np.int64(-1)), one(b, "Sub", size_v, b.const(np.int64(1)))))
        start = one(b, "Min", one(b, "Max", i, low), high)
    last = one(b, "Add", start, one(b, "Mul", one(b, "Sub", n, b.const(np.int64(1))),
                                    b.const(np.int64(step))))
    inside = one(b, "And", one(b, "GreaterOrEqual", last, zero), one(b, "Less", last, size_v))
    return one(b, "Or", one(b, "LessOrEqual", n, zero), inside)


def _run_time_index(b, index: Dim, size: Dim) -> tuple[str, str]:
    """(start, stop) names of the one element at `index` of an axis of `size` (negative counts
    from the end); checked (replaced by 0 when out of range) in a checked export."""
    zero = b.const(np.int64(0))
    i, size = b.dim(index), b.dim(size)
    i = one(b, "Where", one(b, "Less", i, zero), one(b, "Add", i, size), i)
    if b.checked:
        ok = one(b, "And", one(b, "GreaterOrEqual", i, zero), one(b, "Less", i, size))
        b.check(ok, out_of_range("slice"))
        i = one(b, "Where", ok, i, zero)
    return i, one(b, "Add", i, b.const(np.int64(1)))


def _sizes(b, items) -> str:
    """A 1-D i64 tensor of Dims (b.shape) and names of i64 scalars, in order."""
    if all(isinstance(d, Dim) for d in items):
        return b.shape(items)
    parts = [one(b, "Unsqueeze", d if isinstance(d, str) else b.dim(d), b.ints([0]))
             for d in items]
    return one(b, "Concat", *parts, axis=0)


def out_of_range(op: str) -> str:
    """What native code and the onnx target report (K0505) for an index out of range."""
    return f"{op}: an index is out of range for an axis of its input"


def index_in(kb, i, size, op: str = "gather"):
    """A run-time index i into an axis of `size`: negative counts from the end (numpy). Out of
    range is reported (K0505, as the reference does) and clamped, so nothing is read outside x."""
    i = kb.convert(i, "i64")
    low = kb.compare(">=", i, kb.neg(size))
    kb.check(kb.b.and_(low, kb.compare("<", i, size)), out_of_range(op))
    i = kb.select(kb.compare("<", i, kb.const(0, "i64")), kb.add(i, size), i)
    return kb.minimum(kb.maximum(i, kb.const(0, "i64")), kb.sub(size, kb.const(1, "i64")))


def _slice_start(kb, size, start, step: int):
    """Where a range entry starts, as Python's slice.indices: negative counts from the end,
    then clamped into [0, size] (step > 0) or [-1, size - 1] (step < 0)."""
    if start is None:
        return kb.const(0, "i64") if step > 0 else kb.sub(size, kb.const(1, "i64"))
    i = kb.dim(to_dim(start, "items"))
    i = kb.select(kb.compare("<", i, kb.const(0, "i64")), kb.add(i, size), i)
    low, high = (0, size) if step > 0 else (-1, kb.sub(size, kb.const(1, "i64")))
    return kb.minimum(kb.maximum(i, kb.const(low, "i64")), high)


def _slice_llvm(kb, n):
    """A strided view of x: ints and range starts move the base, range steps scale the
    strides, new axes have stride 0. The lengths are the shape rule's (symbolic bounds in
    range)."""
    t, out = n.in_types[0], n.out_types[0]
    x_strides = kb.strides(t.shape)
    base, strides = kb.const(0, "i64"), []
    for e, axis in _slice_entries(t.shape, n.attrs["items"]):
        if e[0] == "new":
            strides.append(kb.const(0, "i64"))
            continue
        size = kb.dim(t.shape[axis])
        if e[0] == "int":
            start = index_in(kb, kb.dim(to_dim(e[1], "items")), size, "slice")
        else:
            step = to_int(e[3], "items")
            start = _slice_start(kb, size, e[1], step)
            # the shape rule's length takes symbolic bounds in range (x[:40] of an x[N] is 40
            # long): the last element it reads must lie in the axis (K0505 otherwise, as the
            # reference reports), and reads are kept inside it
            length = kb.dim(out.shape[len(strides)])
            zero, one = kb.const(0, "i64"), kb.const(1, "i64")
            last = kb.add(start, kb.mul(kb.sub(length, one), kb.const(step, "i64")))
            inside = kb.b.and_(kb.compare(">=", last, zero), kb.compare("<", last, size))
            fits = kb.b.or_(kb.compare("<=", length, zero), inside)
            kb.check(fits, out_of_range("slice"))
            start = kb.select(fits, start, zero)
            strides.append(kb.mul(kb.const(step, "i64"), x_strides[axis]))
        base = kb.add(base, kb.mul(start, x_strides[axis]))
    kb.view_copy(n, base, strides)


def _placement(size: Dim, e) -> tuple[Dim, Dim, int]:
    """(first, count, step) of the elements an int or range entry takes from an axis of
    `size`: positions first, first + |step|, ... (count of them), in the result in that order
    when step > 0 and reversed when step < 0. As the shape rule, symbolic bounds are taken to
    be in range."""
    if e[0] == "int":
        i = to_dim(e[1], "items")
        return (size + i if i.is_const and i.value < 0 else i), Dim.of(1), 1
    start, stop, step = e[1], e[2], to_int(e[3], "items")
    count = _range_length(size, start, stop, step)
    bounds = [None if b is None else to_dim(b, "items") for b in (start, stop)]
    if size.is_const and all(b is None or b.is_const for b in bounds):
        taken = range(*slice(*(None if b is None else b.value for b in bounds),
                             step).indices(size.value))
        return Dim.of(min(taken, default=0)), count, step
    start = bounds[0]
    if start is not None and start.is_const and start.value < 0:
        start = size + start
    if step > 0:
        return (Dim.of(0) if start is None else start), count, step
    top = size - 1 if start is None else start  # the first taken, the highest position
    return top + (count - 1) * step, count, step


def place(gb, g, axis: int, size: Dim, first: Dim, count: Dim, step: int):
    """The adjoint of taking `count` elements first, first + |step|, ... of `axis` (of `size`):
    g's elements put there (in reverse order when step < 0), zeros elsewhere. A step k > 1
    spreads them first: each followed by k - 1 zeros along a new axis, merged back."""
    if step < 0:
        g, step = gb.op("flip", g, axis=axis), -step
    if step > 1:
        g = gb.op("unsqueeze", g, axis=axis + 1)
        g = gb.op("pad", g, pads=pads_on(g.type.rank, axis + 1, 0, step - 1))
        shape = list(g.type.shape)
        g = gb.reshape(g, shape[:axis] + [count * step] + shape[axis + 2:])
    length = g.type.shape[axis]
    return gb.op("pad", g, pads=pads_on(g.type.rank, axis, first, size - first - length))


def _slice_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent put back where x[items] took its elements, zeros elsewhere: new axes
    dropped and indexed axes restored (a reshape), then each taken axis placed in turn."""
    (x,), (ct,) = node.inputs, cotangents
    shape = x.type.shape
    taken = [(axis, _placement(shape[axis], e)) for e, axis in
             _slice_entries(shape, node.attrs["items"]) if axis is not None]
    if any(count == 0 for _axis, (_first, count, _step) in taken):
        return [zeros_of(gb, x.type)]
    counts = [count for _axis, (_first, count, _step) in taken]
    g = ct if ct.type.shape == tuple(counts) else gb.reshape(ct, counts)
    for axis, (first, count, step) in taken:
        if (first, count, abs(step)) != (0, shape[axis], 1):
            g = place(gb, g, axis, shape[axis], first, count, step)
        elif step < 0:
            g = gb.op("flip", g, axis=axis)
    return [g]


register(internal(movement("slice", "Basic indexing x[items]: ints, ranges, ... and new axes.",
                           attrs("items"), _slice_shape, _slice, _slice_onnx,
                           llvm=_slice_llvm, props=NEVER_FAILS, vjp=_slice_vjp)))


# joining and splitting --------------------------------------------------------------------
def _joined(types, a, stacking: bool):
    if not types:
        raise OpError("needs at least one tensor", arg="xs")
    first = types[0]
    dtype = check_same_dtype(list(types), ["xs"] * len(types))
    if not stacking and first.rank == 0:
        raise OpError("cannot concatenate 0-d tensors", arg="xs")
    axis = normalize_axis(a["axis"], first.rank + stacking)
    for t in types[1:]:
        same = t.rank == first.rank and all(
            d == e for i, (d, e) in enumerate(zip(t.shape, first.shape, strict=False))
            if stacking or i != axis)
        if not same:
            where = "" if stacking else f" off axis {axis}"
            raise OpError(f"shapes differ{where}: {shape_str(first.shape)} and "
                          f"{shape_str(t.shape)}", arg="xs")
    if stacking:
        return TensorType(dtype, first.shape[:axis] + (Dim.of(len(types)),) + first.shape[axis:])
    total = sum((t.shape[axis] for t in types), Dim.of(0))
    return TensorType(dtype, first.shape[:axis] + (total,) + first.shape[axis + 1:])


_XS = (Arg("xs", "tensors"),)


def _join_axis(n, stacking: bool) -> int:
    """The axis concat or stack joins along, in the output."""
    return normalize_axis(n.attrs["axis"], n.in_types[0].rank + stacking)


def _join_onnx(stacking: bool):
    """Concat, of the inputs each given a new axis first when stacking."""

    def emit(b, n):
        axis = _join_axis(n, stacking)
        xs = [one(b, "Unsqueeze", x, b.ints([axis])) for x in n.inputs] if stacking else n.inputs
        b.node("Concat", xs, n.outputs, axis=axis)

    return emit


def _join_llvm(stacking: bool):
    """Each input copied into its place along the axis (of extent 1 when stacking)."""

    def lower(kb, n):
        axis = _join_axis(n, stacking)
        kb.join(n, axis, [Dim.of(1) if stacking else t.shape[axis] for t in n.in_types])

    return lower


def _join_vjp(stacking: bool):
    """The cotangent split back into the joined tensors' parts (a stacked part loses the new
    axis)."""

    def rule(gb, node: VjpNode, cotangents: list) -> list:
        xs, (ct,) = node.inputs, cotangents
        axis = normalize_axis(node.attrs["axis"], xs[0].type.rank + stacking)
        if len(xs) == 1:
            parts = [ct]
        else:
            sizes = [Dim.of(1) if stacking else x.type.shape[axis] for x in xs]
            parts = gb.results("split", ct, axis=axis, sizes=sizes)
        return [p if p.type == x.type else gb.reshape(p, list(x.type.shape))
                for p, x in zip(parts, xs, strict=True)]

    return rule


register(simple("concat", "Join tensors along an existing axis.",
                _XS + attrs(("axis", 0)),
                lambda types, a: _joined(types, a, False),
                lambda inputs, a: np.concatenate(inputs, axis=a["axis"]), promote=True,
                onnx=_join_onnx(False), llvm=_join_llvm(False), props=NEVER_FAILS,
                vjp=_join_vjp(False)))
register(simple("stack", "Join equally shaped tensors along a new axis.",
                _XS + attrs(("axis", 0)),
                lambda types, a: _joined(types, a, True),
                lambda inputs, a: np.stack(inputs, axis=a["axis"]), promote=True,
                onnx=_join_onnx(True), llvm=_join_llvm(True), props=NEVER_FAILS,
                vjp=_join_vjp(True)))


def _split_parts(x: TensorType, a) -> tuple[int, list[Dim]]:
    axis = normalize_axis(a["axis"], x.rank)
    size = x.shape[axis]
    if (a["n"] is None) == (a["sizes"] is None):
        raise attr_error("n", "give exactly one of n and sizes")
    if a["n"] is not None:
        n = to_int(a["n"], "n")
        if n < 1:
            raise attr_error("n", f"n must be positive, got {n}")
        part = exact_div(size, n)
        if part is None:
            raise OpError(f"axis {axis} of {shape_str(x.shape)} does not split into {n} equal "
                          f"parts", arg="n")
        return axis, [part] * n
    parts = list(to_dims(a["sizes"], "sizes"))
    if any(p.is_const and p.value < 0 for p in parts):
        raise attr_error("sizes", f"sizes must not be negative, got {shape_str(parts)}")
    if sum(parts, Dim.of(0)) != size:
        raise OpError(f"sizes {shape_str(parts)} add up to {sum(parts, Dim.of(0))}, not the "
                      f"size {size} of axis {axis} of {shape_str(x.shape)}", arg="sizes")
    return axis, parts


def _split_infer(types, a):
    (x,) = types
    axis, parts = _split_parts(x, a)
    return [x.with_shape(x.shape[:axis] + (p,) + x.shape[axis + 1:]) for p in parts]


def _split_reference(env, inputs, a):
    (x,) = inputs
    bound = {k: resolve(env, v) for k, v in a.items()}
    axis, parts = _split_parts(TensorType(dtype_name(x), x.shape), bound)
    return list(np.split(x, np.cumsum([p.value for p in parts])[:-1], axis=axis))


def _split_onnx(b, n):
    axis, parts = _split_parts(n.in_types[0], n.attrs)
    b.node("Split", [n.inputs[0], b.shape(parts)], n.outputs, axis=axis)


def _split_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The parts' cotangents joined again (zeros for a part no gradient reaches)."""
    axis = normalize_axis(node.attrs["axis"], node.inputs[0].type.rank)
    parts = [zeros_of(gb, out.type) if ct is None else ct
             for ct, out in zip(cotangents, node.outputs, strict=True)]
    return [parts[0] if len(parts) == 1 else gb.op("concat", parts, axis=axis)]


register(OpRecord("split", tensors("x") + attrs(("n", None), ("axis", -1), ("sizes", None)),
                  _split_infer, _split_reference,
                  "Split x along axis into n equal parts or parts of the given sizes.",
                  props=NEVER_FAILS | {Prop.MOVEMENT, Prop.MULTI_OUTPUT}, onnx=_split_onnx,
                  llvm=lambda kb, n: kb.join(n, *_split_parts(n.in_types[0], n.attrs),
                                             split=True),
                  vjp=_split_vjp))
