"""Data movement within one tensor: reshaping, axis moves, flips, broadcasting, tiling,
triangles and padding.

Shape rules keep symbolic sizes symbolic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    attr_error,
    attrs,
    choice,
    exact_div,
    is_list,
    normalize_axes,
    normalize_axis,
    number,
    pad_or_crop,
    prod,
    to_dims,
    to_int,
    try_broadcast,
)
from ._emit import BF16_UP, chain, one, trimmed, widened
from ._factories import movement
from ._grad import expand_to, scalar, unbroadcast
from .registry import OpError, Prop, VjpNode, internal, register

if TYPE_CHECKING:
    from ..ir import Value

INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


# gradient helpers (the data-movement families' rules share them) --------------------------
def zeros_of(gb, t: TensorType) -> Value:
    """A tensor of zeros of type `t` (symbolic sizes included): a 0-d constant broadcast."""
    return expand_to(gb, scalar(gb, 0, t.dtype), t)


def pads_on(rank: int, axis: int, before: Dim | int, after: Dim | int) -> list[Dim]:
    """F.pad's pads (last axis first) that pad only `axis` of a rank-`rank` tensor."""
    return [Dim.of(0)] * (2 * (rank - 1 - axis)) + [Dim.of(before), Dim.of(after)]


def range_on(axis: int, start: Dim | int | None, stop: Dim | int | None, step: int = 1) -> list:
    """`slice` items that take start:stop:step of `axis` and all of the other axes."""
    return [("range", None, None, 1)] * axis + [("range", start, stop, step)]


# reshaping --------------------------------------------------------------------------------
def to_dims_ints(values) -> list[int]:
    """A resolved shape attribute (ints; a single int is a 1-element shape)."""
    return [int(v) for v in (values if is_list(values) else [values])]


def _reshape_shape(shape, a):
    target = to_dims(a["shape"], "shape")
    holes = [i for i, d in enumerate(target) if d == -1]
    if len(holes) > 1 or any(d.is_const and d.value < -1 for d in target):
        raise attr_error("shape", f"shape may hold one -1 and no other negative size: "
                         f"{shape_str(target)}")
    total = prod(shape)
    if not holes:
        if prod(target) != total:
            raise OpError(f"cannot reshape {shape_str(shape)} ({total} elements) to "
                          f"{shape_str(target)} ({prod(target)} elements)", arg="shape")
        return target
    known = prod(d for i, d in enumerate(target) if i != holes[0])
    missing = exact_div(total, known) if known != 0 else None
    if missing is None:
        raise OpError(f"cannot reshape {shape_str(shape)} to {shape_str(target)}: {total} "
                      f"elements do not divide by {known}", arg="shape")
    return target[:holes[0]] + (missing,) + target[holes[0] + 1:]


def _flatten_range(rank, a):
    if rank == 0:
        return 0, -1
    start, end = normalize_axis(a["start"], rank, "start"), normalize_axis(a["end"], rank, "end")
    if start > end:
        raise attr_error("start", f"start axis {start} comes after end axis {end}")
    return start, end


def _flatten_shape(shape, a):
    start, end = _flatten_range(len(shape), a)
    return shape[:start] + (prod(shape[start:end + 1]),) + shape[end + 1:]


def _flatten(x, a):
    start, end = _flatten_range(x.ndim, a)
    return x.reshape(x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])


def _permutation(rank, a):
    perm = [normalize_axis(p, rank, "perm") for p in (a["perm"] if is_list(a["perm"]) else [])]
    if sorted(perm) != list(range(rank)):
        raise attr_error("perm", f"perm must order all {rank} axes once, got {a['perm']!r}")
    return perm


def _checked_axes(shape, axis):
    """shape, once axis is known to name its axes."""
    normalize_axes(axis, len(shape))
    return shape


def _swap(rank, a):
    perm = list(range(rank))
    i, j = normalize_axis(a["a"], rank, "a"), normalize_axis(a["b"], rank, "b")
    perm[i], perm[j] = perm[j], perm[i]
    return perm


# moves of data that read only their operand and never report a value out of range (unlike
# gather or one_hot): passes may run them before a loop that might run no step
NEVER_FAILS = frozenset({Prop.CANNOT_FAIL})
_RESHAPE = NEVER_FAILS | {Prop.RESHAPE}  # the same elements, row-major, in another shape
_PERMUTE = NEVER_FAILS | {Prop.PERMUTE}


def _reshape_onnx(b, n):
    """Reshape to the inferred shape: -1 resolved, symbolic sizes computed at run time (and a
    0 in it meaning 0, not "copy")."""
    shape = b.shape(n.out_types[0].shape)
    b.node("Reshape", [n.inputs[0], shape], n.outputs, allowzero=1)


def _flatten_onnx(b, n):
    rank = n.in_types[0].rank
    if rank >= 2 and _flatten_range(rank, n.attrs) == (1, rank - 1):
        b.node("Flatten", n.inputs, n.outputs, axis=1)
    else:
        _reshape_onnx(b, n)


def _transpose_onnx(perm_of):
    """Transpose by perm_of(rank, attrs)."""
    return lambda b, n: b.node("Transpose", n.inputs, n.outputs,
                               perm=perm_of(n.in_types[0].rank, n.attrs))


def _flip_onnx(b, n):
    """Slice from the last element (-1) past the first (INT64_MIN clamps to before it)."""
    axes = normalize_axes(n.attrs["axis"], n.in_types[0].rank)
    back = b.ints([-1] * len(axes))
    b.node("Slice", [n.inputs[0], back, b.ints([INT64_MIN] * len(axes)), b.ints(axes), back],
           n.outputs)


def _flip_llvm(kb, n):
    """A view of x walking the flipped axes backwards from their last element."""
    t = n.in_types[0]
    strides = kb.strides(t.shape)
    base = kb.const(0, "i64")
    for a in normalize_axes(n.attrs["axis"], t.rank):
        base = kb.add(base, kb.mul(kb.dim(t.shape[a] - 1), strides[a]))
        strides[a] = kb.neg(strides[a])
    kb.view_copy(n, base, strides)


def _reshape_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent in x's shape: a reshape keeps the elements in row-major order."""
    return [gb.reshape(cotangents[0], list(node.inputs[0].type.shape))]


def _permute_vjp(perm_of):
    """The cotangent moved back by the inverse permutation."""

    def rule(gb, node: VjpNode, cotangents: list) -> list:
        perm = perm_of(node.inputs[0].type.rank, node.attrs)
        return [gb.permute(cotangents[0], [perm.index(i) for i in range(len(perm))])]

    return rule


def _keeps_first_axis(perm_of):
    """A permutation's samplewise rule: axis 0 stays first."""
    return lambda types, a: perm_of(types[0].rank, a)[0] == 0


def _same_op_vjp(*names: str):
    """The rule of a linear op that is its own adjoint (flip, tril, triu): the op, with the
    same attributes `names`, applied to the cotangent."""
    return lambda gb, node, cts: [gb.op(node.op, cts[0], **{k: node.attrs[k] for k in names})]


register(movement("reshape", "The same elements in a new shape (one size may be -1).",
                  attrs("shape"), _reshape_shape, lambda x, a: x.reshape(to_dims_ints(a["shape"])),
                  _reshape_onnx, llvm=lambda kb, n: kb.copy_all(n), props=_RESHAPE,
                  vjp=_reshape_vjp))
register(movement("flatten", "Merge axes start..end (inclusive) into one.",
                  attrs(("start", 1), ("end", -1)), _flatten_shape, _flatten, _flatten_onnx,
                  llvm=lambda kb, n: kb.copy_all(n), props=_RESHAPE, vjp=_reshape_vjp))
register(movement("transpose", "Swap two axes a and b.", attrs("a", "b"),
                  lambda s, a: tuple(s[p] for p in _swap(len(s), a)),
                  lambda x, a: np.transpose(x, _swap(x.ndim, a)), _transpose_onnx(_swap),
                  llvm=lambda kb, n: kb.permute(n, _swap(n.in_types[0].rank, n.attrs)),
                  props=_PERMUTE, permutation=_swap, vjp=_permute_vjp(_swap),
                  samplewise=_keeps_first_axis(_swap)))
register(movement("permute", "Reorder the axes: axis i of the result is axis perm[i] of x.",
                  attrs("perm"), lambda s, a: tuple(s[p] for p in _permutation(len(s), a)),
                  lambda x, a: np.transpose(x, _permutation(x.ndim, a)),
                  _transpose_onnx(_permutation),
                  llvm=lambda kb, n: kb.permute(n, _permutation(n.in_types[0].rank, n.attrs)),
                  props=_PERMUTE, permutation=_permutation,
                  vjp=_permute_vjp(_permutation), samplewise=_keeps_first_axis(_permutation)))
register(movement("flip", "Reverse the order of elements along axis (an int or a list).",
                  attrs("axis"), lambda s, a: _checked_axes(s, a["axis"]),
                  lambda x, a: np.flip(x, normalize_axes(a["axis"], x.ndim)), _flip_onnx,
                  llvm=_flip_llvm, props=NEVER_FAILS, vjp=_same_op_vjp("axis")))


def _squeeze_axes(shape, a):
    if a["axis"] is None:
        if any(not d.is_const for d in shape):
            raise OpError(f"squeeze without axis needs constant sizes, {shape_str(shape)} has "
                          f"symbolic ones; give axis", arg="axis")
        return tuple(i for i, d in enumerate(shape) if d == 1)
    axes = normalize_axes(a["axis"], len(shape))
    for i in axes:
        if shape[i] != 1:
            raise OpError(f"cannot squeeze axis {i} of {shape_str(shape)}: its size is "
                          f"{shape[i]}, not 1", arg="axis")
    return axes


def _unsqueeze_axes(rank, a):
    count = len(a["axis"]) if is_list(a["axis"]) else 1
    return normalize_axes(a["axis"], rank + count)


def _unsqueeze_shape(shape, a):
    axes, rest = _unsqueeze_axes(len(shape), a), iter(shape)
    return tuple(Dim.of(1) if i in axes else next(rest) for i in range(len(shape) + len(axes)))


def _dims_of(x):
    return tuple(Dim.of(n) for n in x.shape)


def _squeeze_onnx(b, n):
    axes = _squeeze_axes(n.in_types[0].shape, n.attrs)
    chain(b, n.inputs[0], [("Squeeze", [b.ints(axes)])] if axes else [], n.outputs)


register(movement("squeeze", "Remove size-1 axes (all of them, or those in axis).",
                  attrs(("axis", None)),
                  lambda s, a: tuple(d for i, d in enumerate(s) if i not in _squeeze_axes(s, a)),
                  lambda x, a: np.squeeze(x, _squeeze_axes(_dims_of(x), a)), _squeeze_onnx,
                  llvm=lambda kb, n: kb.copy_all(n), props=_RESHAPE, vjp=_reshape_vjp))
register(movement("unsqueeze", "Insert size-1 axes at axis (positions in the result).",
                  attrs("axis"), _unsqueeze_shape,
                  lambda x, a: np.expand_dims(x, _unsqueeze_axes(x.ndim, a)),
                  lambda b, n: b.node("Unsqueeze", [n.inputs[0], b.ints(_unsqueeze_axes(
                      n.in_types[0].rank, n.attrs))], n.outputs),
                  llvm=lambda kb, n: kb.copy_all(n), props=_RESHAPE, vjp=_reshape_vjp))


def _broadcast_to_shape(shape, a):
    target = to_dims(a["shape"], "shape")
    if try_broadcast(shape, target) != target:
        raise OpError(f"cannot broadcast {shape_str(shape)} to {shape_str(target)}", arg="shape")
    return target


def _tile_shape(shape, a):
    reps = to_dims(a["reps"], "reps")
    n = max(len(reps), len(shape))
    padded = (Dim.of(1),) * (n - len(shape)) + tuple(shape)
    reps = (Dim.of(1),) * (n - len(reps)) + reps
    return tuple(d * r for d, r in zip(padded, reps, strict=False))


def _matrix_shape(shape, a):
    if len(shape) < 2:
        raise OpError(f"x must have rank 2 or more, got {shape_str(shape)}", arg="x")
    to_int(a["k"], "k")
    return shape


def _broadcast_to_onnx(b, n):
    b.node("Expand", [n.inputs[0], b.shape(n.out_types[0].shape)], n.outputs)


def _tile_onnx(b, n):
    """Tile, with x given leading size-1 axes or reps leading 1s first, as numpy's tile."""
    (x,), rank = n.inputs, n.in_types[0].rank
    reps = to_dims(n.attrs["reps"], "reps")
    if len(reps) > rank:
        x = one(b, "Unsqueeze", x, b.ints(range(len(reps) - rank)))
    b.node("Tile", [x, b.shape((1,) * (rank - len(reps)) + reps)], n.outputs)


def _trilu_onnx(upper: int):
    return lambda b, n: b.node("Trilu", [n.inputs[0], b.dim(to_int(n.attrs["k"], "k"))],
                               n.outputs, upper=upper)


def _tile_llvm(kb, n):
    """out[r * d + j] = x[j] along every axis (x given leading size-1 axes, reps leading 1s):
    a loop over each axis's repeats around one over its elements, the last innermost."""
    t, out_t = n.in_types[0], n.out_types[0]
    reps = to_dims(n.attrs["reps"], "reps")
    shape = (Dim.of(1),) * (out_t.rank - t.rank) + tuple(t.shape)
    reps = (Dim.of(1),) * (out_t.rank - len(reps)) + reps
    x, out = kb.input("x"), kb.output()
    x_strides, out_strides = kb.strides(shape), kb.strides(out_t.shape)

    def body(index):
        repeat, inside = index[0::2], index[1::2]
        at = [kb.add(kb.mul(r, kb.dim(d)), j) for r, j, d in zip(repeat, inside, shape)]
        kb.move(out, kb.dot(at, out_strides), x, kb.dot(inside, x_strides))

    kb.loop_nest([kb.dim(d) for pair in zip(reps, shape) for d in pair], body)


def _trilu_llvm(upper: bool):
    """x where the diagonal j - i is >= k (triu) or <= k (tril), else 0."""

    def lower(kb, n):
        t = n.in_types[0]
        x, out = kb.input("x"), kb.output()
        k, zero = kb.const(to_int(n.attrs["k"], "k"), "i64"), kb.stored(0, t.dtype)
        strides = kb.strides(t.shape)

        def body(index):
            at = kb.dot(index, strides)
            keep = kb.compare(">=" if upper else "<=", kb.sub(index[-1], index[-2]), k)
            value = kb.b.load(kb.b.gep(x, [at]))
            kb.b.store(kb.select(keep, value, zero), kb.b.gep(out, [at]))

        kb.loop_nest([kb.dim(d) for d in t.shape], body)

    return lower


def _broadcast_to_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent summed over the broadcast axes."""
    return [unbroadcast(gb, cotangents[0], node.inputs[0].type)]


def _tile_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """Each axis d * r of the cotangent split into [r, d] (row-major: the repeat is the outer
    index, as in the forward), then summed over the repeats."""
    (x,), (ct,) = node.inputs, cotangents
    reps = to_dims(node.attrs["reps"], "reps")
    shape = (Dim.of(1),) * (ct.type.rank - x.type.rank) + tuple(x.type.shape)
    reps = (Dim.of(1),) * (ct.type.rank - len(reps)) + reps
    split: list[Dim] = []
    repeats: list[int] = []
    for d, r in zip(shape, reps, strict=True):
        if r != 1:
            repeats.append(len(split))
            split.append(r)
        split.append(d)
    g = gb.op("sum", gb.reshape(ct, split), axis=repeats) if repeats else ct
    return [g if g.type.shape == x.type.shape else gb.reshape(g, list(x.type.shape))]


# onnxruntime has no bf16 Expand, Tile, Trilu or Pad: bf16 moves as f32 (exactly)
register(movement("broadcast_to", "Broadcast x to shape (numpy rules).", attrs("shape"),
                  _broadcast_to_shape,
                  lambda x, a: np.broadcast_to(x, to_dims_ints(a["shape"])).copy(),
                  widened(_broadcast_to_onnx, BF16_UP),
                  llvm=lambda kb, n: kb.view_copy(n, kb.const(0, "i64"), kb.broadcast_strides(
                      n.in_types[0], n.out_types[0])), props=NEVER_FAILS,
                  vjp=_broadcast_to_vjp))
register(movement("tile", "Repeat x reps[i] times along each axis (numpy tile).", attrs("reps"),
                  _tile_shape, lambda x, a: np.tile(x, to_dims_ints(a["reps"])),
                  widened(_tile_onnx, BF16_UP), llvm=_tile_llvm, props=NEVER_FAILS,
                  vjp=_tile_vjp))
register(movement("tril", "Zero the elements above diagonal k of the last two axes.",
                  attrs(("k", 0)), _matrix_shape, lambda x, a: np.tril(x, a["k"]),
                  widened(_trilu_onnx(0), BF16_UP), llvm=_trilu_llvm(False),
                  vjp=_same_op_vjp("k")))
register(movement("triu", "Zero the elements below diagonal k of the last two axes.",
                  attrs(("k", 0)), _matrix_shape, lambda x, a: np.triu(x, a["k"]),
                  widened(_trilu_onnx(1), BF16_UP), llvm=_trilu_llvm(True),
                  vjp=_same_op_vjp("k")))


# padding ----------------------------------------------------------------------------------
def _pad_widths(shape, a):
    """Per-axis (before, after) from PyTorch's F.pad order (last axis first)."""
    pads = to_dims(a["pads"], "pads")
    mode = choice(a["mode"], "mode", ("constant", "reflect", "replicate"))
    number(a["value"], "value")
    if len(pads) % 2 or len(pads) > 2 * len(shape):
        raise attr_error("pads", f"pads needs an even count up to {2 * len(shape)}, got "
                         f"{len(pads)}")
    widths = [(Dim.of(0), Dim.of(0))] * len(shape)
    for i in range(len(pads) // 2):
        widths[len(shape) - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    for size, pair in zip(shape, widths, strict=False):
        for p in pair:
            if p.is_const and p.value < 0 and mode != "constant":
                raise attr_error("pads", f"{mode} padding cannot be negative")
            if mode == "reflect" and p.is_const and size.is_const and p.value >= size.value:
                raise OpError(f"reflect padding {p} must be smaller than the size {size} of "
                              f"{shape_str(shape)}", arg="pads")
    return widths


def _pads_leave_first_axis(types, a) -> bool:
    """pad's samplewise rule: axis 0 neither padded nor cropped (each sample padded alone)."""
    return types[0].rank > 0 and all(p == Dim.of(0) for p in _pad_widths(types[0].shape, a)[0])


def _pad(x, a):
    widths = [(int(lo.value), int(hi.value)) for lo, hi in _pad_widths(_dims_of(x), a)]
    if a["mode"] == "constant":
        return pad_or_crop(x, widths, constant_values=a["value"])
    return np.pad(x, widths, mode="reflect" if a["mode"] == "reflect" else "edge")


def _pad_onnx(b, n):
    """Pad with pads [begin..., end...] over every axis (F.pad's order is last axis first)."""
    (x,), t, a = n.inputs, n.in_types[0], n.attrs
    widths = _pad_widths(t.shape, a)
    pads = b.shape([lo for lo, _ in widths] + [hi for _, hi in widths])
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[a["mode"]]
    value = b.const(number(a["value"], "value"), t.dtype) if mode == "constant" else None
    b.node("Pad", trimmed([x, pads, value]), n.outputs, mode=mode)


def _check_reflect_widths(kb, shape, widths) -> None:
    """Report (K0505), as the reference and onnxruntime do, a reflect padding not smaller
    than the size it reflects, where a symbolic size leaves it to the call (the shape rule
    refuses the known ones)."""
    for d, (before, after) in zip(shape, widths, strict=True):
        unpadded = before == Dim.of(0) and after == Dim.of(0)
        if unpadded or (before.is_const and after.is_const and d.is_const):
            continue
        size = kb.dim(d)
        kb.check(kb.b.and_(kb.compare("<", kb.dim(before), size),
                           kb.compare("<", kb.dim(after), size)),
                 "pad: reflect padding must be smaller than the size it reflects")


def _pad_llvm(kb, n):
    """out[o] = x[o - before] per axis: outside x, the value (constant), the mirror image
    without the edge (reflect) or the edge (replicate); clamped into x whatever the sizes."""
    t, out_t, mode = n.in_types[0], n.out_types[0], n.attrs["mode"]
    widths = _pad_widths(t.shape, n.attrs)
    x, out = kb.input("x"), kb.output()
    x_strides, out_strides = kb.strides(t.shape), kb.strides(out_t.shape)
    fill = kb.stored(number(n.attrs["value"], "value"), t.dtype)
    zero = kb.const(0, "i64")
    if mode == "reflect":
        _check_reflect_widths(kb, t.shape, widths)

    def body(index):
        inside, at = kb.const(True, "bool"), zero
        for o, (before, _), d, stride in zip(index, widths, t.shape, x_strides, strict=True):
            i, last = kb.sub(o, kb.dim(before)), kb.dim(d - 1)
            inside = kb.b.and_(inside, kb.b.and_(kb.compare(">=", i, zero),
                                                   kb.compare("<=", i, last)))
            if mode == "reflect":  # numpy's reflect: -1 -> 1, size -> size - 2
                i = kb.select(kb.compare("<", i, zero), kb.neg(i), i)
                i = kb.select(kb.compare(">", i, last), kb.sub(kb.add(last, last), i), i)
            at = kb.add(at, kb.mul(kb.minimum(kb.maximum(i, zero), last), stride))
        to = kb.dot(index, out_strides)
        if mode != "constant":
            kb.move(out, to, x, at)
            return
        with kb.b.if_else(inside) as (copy, constant):
            with copy:
                kb.move(out, to, x, at)
            with constant:
                kb.b.store(fill, kb.b.gep(out, [to]))

    kb.loop_nest([kb.dim(d) for d in out_t.shape], body)


def _pad_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """constant: the cotangent cropped back (a pad by the negated widths: a crop's adjoint
    pads with zeros). reflect and replicate: each padded axis in turn (the padding of one
    axis commutes with that of another) folds the cotangent of its borders back onto the
    elements they copied."""
    (x,), (ct,) = node.inputs, cotangents
    widths = _pad_widths(x.type.shape, node.attrs)
    if node.attrs["mode"] == "constant":
        return [gb.op("pad", ct, pads=[-p for lo, hi in reversed(widths) for p in (lo, hi)])]
    for axis, (before, after) in enumerate(widths):
        if before != 0 or after != 0:
            ct = fold_border(gb, ct, axis, x.type.shape[axis], before, after,
                              node.attrs["mode"] == "reflect")
    return [ct]


def fold_border(gb, ct: Value, axis: int, size: Dim, before: Dim, after: Dim,
                 reflect: bool) -> Value:
    """The adjoint of padding `axis` (of `size`) by (before, after) in reflect or replicate
    mode: out[o] = x[before - o] (reflect) or x[0] (replicate) for o < before, so the
    cotangent of that border, flipped (reflect) or summed (replicate), adds onto x[1:before+1]
    or x[0]; mirrored at the end, onto x[size-1-after:size-1] or x[size-1]."""
    rank = ct.type.rank
    g = gb.op("slice", ct, items=range_on(axis, before, before + size))
    for first, stop, at_start in ((None, before, True), (before + size, None, False)):
        if (before if at_start else after) == 0:
            continue
        border = gb.op("slice", ct, items=range_on(axis, first, stop))
        if reflect:
            border = gb.op("flip", border, axis=axis)
        else:
            border = gb.op("sum", border, axis=axis, keepdims=True)
        length = border.type.shape[axis]
        # where the border's copy of x starts: 1 (reflect) or 0 at the start; at the end it
        # stops before the last element (reflect) or is it (replicate)
        offset = (Dim.of(1) if reflect else Dim.of(0)) if at_start else \
            size - length - (1 if reflect else 0)
        placed = gb.op("pad", border, pads=pads_on(rank, axis, offset, size - offset - length))
        g = gb.add(g, placed)
    return g


register(movement("pad", "Pad (or, negative, crop) axes; pads in F.pad order, last axis first.",
                  attrs("pads", ("mode", "constant"), ("value", 0.0)),
                  lambda s, a: tuple(d + lo + hi for d, (lo, hi)
                                     in zip(s, _pad_widths(s, a), strict=True)),
                  _pad, widened(_pad_onnx, BF16_UP), llvm=_pad_llvm, vjp=_pad_vjp,
                  samplewise=_pads_leave_first_axis))


# padded_permute: a permute inside a border of zeros, one pass ---------------------------------
def _border(shape, a) -> list[tuple[Dim, Dim]]:
    """padded_permute's (before, after) widths per result axis, each at least 0."""
    flat = to_dims(a["pads"], "pads")
    if len(flat) != 2 * len(shape):
        raise attr_error("pads", f"pads needs {2 * len(shape)} widths (before, after per "
                         f"axis), got {len(flat)}")
    if any(p.is_const and p.value < 0 for p in flat):
        raise attr_error("pads", f"padded_permute pads, never crops: {a['pads']!r}")
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(shape))]


def _padded_permute_shape(shape, a):
    moved = [shape[p] for p in _permutation(len(shape), a)]
    return tuple(d + lo + hi for d, (lo, hi) in zip(moved, _border(moved, a), strict=True))


def _padded_permute(x, a):
    moved = np.transpose(x, _permutation(x.ndim, a))
    return np.pad(moved, [(int(lo.value), int(hi.value)) for lo, hi in _border(moved.shape, a)])


def _padded_permute_onnx(b, n):
    """Transpose, then Pad with zeros."""
    (x,), t = n.inputs, n.in_types[0]
    perm = _permutation(t.rank, n.attrs)
    widths = _border([t.shape[p] for p in perm], n.attrs)
    moved = one(b, "Transpose", x, perm=perm)
    b.node("Pad", [moved, b.shape([lo for lo, _ in widths] + [hi for _, hi in widths])],
           n.outputs, mode="constant")


def _padded_permute_llvm(kb, n):
    perm = _permutation(n.in_types[0].rank, n.attrs)
    kb.padded_permute(n, perm, _border([n.in_types[0].shape[p] for p in perm], n.attrs))


def _padded_permute_vjp(gb, node: VjpNode, cotangents: list) -> list:
    """The cotangent's interior (the border cropped off), moved back by the inverse
    permutation."""
    (x,), (ct,) = node.inputs, cotangents
    perm = _permutation(x.type.rank, node.attrs)
    widths = _border([x.type.shape[p] for p in perm], node.attrs)
    inner = gb.op("pad", ct, pads=[-w for lo, hi in reversed(widths) for w in (lo, hi)])
    return [gb.permute(inner, [perm.index(i) for i in range(len(perm))])]


def _padded_permute_samplewise(types, a) -> bool:
    perm = _permutation(types[0].rank, a)
    lo, hi = _border([types[0].shape[p] for p in perm], a)[0]
    return perm[0] == 0 and lo == Dim.of(0) and hi == Dim.of(0)


register(internal(movement(
    "padded_permute", "pad(permute(x, perm), zeros): axis i of the result is axis perm[i] of "
    "x, with pads[2i] zeros before it and pads[2i + 1] after (result axis order; no crops). "
    "One pass over the result, where a permute and a pad would make two (a convolution "
    "gradient's channels-last rows).", attrs("perm", "pads"), _padded_permute_shape,
    _padded_permute, _padded_permute_onnx, llvm=_padded_permute_llvm, props=NEVER_FAILS,
    vjp=_padded_permute_vjp, samplewise=_padded_permute_samplewise)))
