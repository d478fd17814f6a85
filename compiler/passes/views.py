"""Batched products that read their operands, and write their result, where layout ops would
have moved them: matmul(view(x), view(y)) -> matmul_strided(x, y) (ops/linalg.py).

Multi-head attention splits one projection into queries, keys and values, each into heads,
and merges the heads again after the product with the values:

    q, k, v = split(x @ W + b, 3, axis = -1)                # [B, L, E] each: three copies
    qh = transpose(reshape(q, [B, L, H, D]), 1, 2)          # [B, H, L, D]: a copy
    scores = (qh * s) @ transpose(reshape(k, ...), 1, 2).T  # the scale and k^T: two copies
    out = reshape(transpose(weights @ vh, 1, 2), [B, L, E]) # vh and the merge: two copies

Each of those layout ops only says where an element is. A chain of them from a tensor x
(split, slice, a gather of one constant index, reshape and permute) is a view of x's
elements: an offset and, per axis, its sub-axes' sizes and strides; an axis of one sub-axis
has a plain stride. A batched f32 product whose operands are views with one stride per axis
of x and y, whose A (or B) has rows or columns of stride 1, reads them in place: per batch
index, a GEMM on matrices at the views' offsets with their row strides (a transposed A or B
read as gemm.py reads one). A result read only through such a chain (a transpose and a
reshape) is written through the inverse view into the chain's last tensor. A scale of A or B
by a constant is applied to each product's result instead, while it is in cache. Nothing is
copied; the layout ops that nothing else reads are removed. The product of the scores with v
then takes the softmax before it, and what runs between the scores' product and the softmax
(a scale, a mask's where, a bias), into one attention kernel.

The views are exact: a reshape splits a sub-axis only by a size that divides it (as
polynomials, for symbolic sizes), so every element of the result is written once. A merge
that numpy would copy (PyTorch's export merges the batch and the heads, [L, B*H, D]) makes an
axis of two sub-axes, which a later reshape ([B, H, L, D]) splits into one stride each again.
Each product's elements are the same sums in the same order as the matmul's; the scale by s
after the sum rounds as s * (a @ b) does, which for s a power of two (1 / sqrt(64)) is the same
as (s * a) @ b, and otherwise within an ulp per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from ..ops._common import normalize_axis, prod
from ..ops.slicing import _slice_entries, _split_parts
from ..types import TensorType
from .edit import only_user, replace_node
from .manager import PassContext, graph_pass

ONE = Dim.of(1)


Part = tuple[Dim, Dim]  # a sub-axis: (size, stride)


@dataclass(frozen=True)
class View:
    """Elements of a row-major tensor. Axis a of `shape` is the sub-axes parts[a] (sizes and
    strides, outermost first, their sizes' product shape[a]; none for a size-1 axis): index i
    is at offset plus, for each axis, i[a]'s digits in its sub-axes' sizes times their
    strides. An axis made of one sub-axis has a plain stride (`strides`); a reshape that
    merges axes which are not one run of strides (a copy in numpy) makes an axis of several,
    which a later reshape may split apart again (a layout as CUTLASS's CuTe writes them)."""

    shape: tuple[Dim, ...]
    parts: tuple[tuple[Part, ...], ...]
    offset: Dim

    @staticmethod
    def strided(shape: tuple[Dim, ...], strides: tuple[Dim, ...], offset: Dim) -> View:
        return View(tuple(shape), tuple(() if d == ONE else ((d, s),)
                                        for d, s in zip(shape, strides, strict=True)), offset)

    @staticmethod
    def whole(shape: tuple[Dim, ...]) -> View:
        strides, step = [], ONE
        for d in reversed(shape):
            strides.append(step)
            step = step * d
        return View.strided(shape, tuple(reversed(strides)), Dim.of(0))

    @property
    def strides(self) -> tuple[Dim, ...] | None:
        """One stride per axis, or None where an axis is several sub-axes (no strided view)."""
        out = []
        for axis in self.parts:
            joined = _joined(axis)
            if len(joined) > 1:
                return None
            out.append(joined[0][1] if joined else ONE)
        return tuple(out)

    def permuted(self, perm: list[int]) -> View:
        """Axis i of the result is axis perm[i] of this view."""
        return View(tuple(self.shape[p] for p in perm), tuple(self.parts[p] for p in perm),
                    self.offset)

    def sliced(self, axis: int, start: Dim, size: Dim, step: int = 1) -> View | None:
        """Elements start, start + step, ... (size of them, all in range) of `axis`, or None
        where that axis is several sub-axes."""
        joined = _joined(self.parts[axis])
        if len(joined) > 1:
            return None
        stride = joined[0][1] if joined else ONE
        parts = list(self.parts)
        parts[axis] = () if size == ONE else ((size, stride * step),)
        shape = list(self.shape)
        shape[axis] = size
        return View(tuple(shape), tuple(parts), self.offset + start * stride)

    def reshaped(self, shape: tuple[Dim, ...]) -> View | None:
        """The same elements, in row-major order, as `shape`: each new axis takes the next
        sub-axes whose sizes multiply to its own, splitting one where the sizes divide; None
        where they do not (a 6 read as 4 x ..., a symbolic size split by a constant)."""
        queue = _joined([p for axis in self.parts for p in axis])
        parts: list[tuple[Part, ...]] = []
        for d in shape:
            taken: list[Part] = []
            need = d
            while need != ONE:
                if not queue:
                    return None
                size, stride = queue[0]
                if size == need:
                    taken.append(queue.pop(0))
                    break
                rest = _quotient(need, size)
                if rest is not None:  # the whole sub-axis, and more after it
                    taken.append(queue.pop(0))
                    need = rest
                    continue
                inner = _quotient(size, need)
                if inner is None:
                    return None
                taken.append((need, stride * inner))  # the sub-axis' outer digits
                queue[0] = (inner, stride)
                break
            parts.append(tuple(taken))
        if queue:
            return None
        return View(tuple(shape), tuple(parts), self.offset)


def _joined(parts: list[Part] | tuple[Part, ...]) -> list[Part]:
    """The sub-axes without those of size 1, neighbours that are one run of strides joined."""
    out: list[Part] = []
    for size, stride in parts:
        if size == ONE:
            continue
        if out and out[-1][1] == stride * size:
            out[-1] = (out[-1][0] * size, stride)
        else:
            out.append((size, stride))
    return out


def _quotient(a: Dim, b: Dim) -> Dim | None:
    """a / b where b divides a exactly (as polynomials: 12*B / 4, 4*B / B), else None."""
    if a == b:
        return ONE
    quotient = a._exact_div(b)
    return None if quotient is None or quotient == Dim.of(0) else quotient


def _index(graph: Graph, value: Value) -> int | None:
    """The index, in range, of a gather of one slice by a constant scalar (x[..., i, ...]:
    ONNX's Gather of one index, torch's chunk as exported), else None."""
    if graph.op(value.node) != "gather":
        return None
    x, index = graph.operands(value.node)
    if index.type.rank != 0 or graph.op(index.node) != "constant":
        return None
    axis = normalize_axis(graph.node(value.node)["attrs"]["axis"], x.type.rank)
    size, i = x.type.shape[axis], int(graph.node(index.node)["attrs"]["value"])
    if not size.is_const or not -size.value <= i < size.value:
        return None  # out of range: the gather's own error at run time
    return i % size.value


def _is_layout(graph: Graph, value: Value) -> bool:
    op = graph.op(value.node)
    return (op in ("split", "slice") or has(op, Prop.RESHAPE) or has(op, Prop.PERMUTE)
            or _index(graph, value) is not None)


def _const(bound) -> int | None | bool:
    """A slice bound as an int (None: none given), or False where it is symbolic."""
    if bound is None or isinstance(bound, int):
        return bound
    return bound.value if isinstance(bound, Dim) and bound.is_const else False


def _sliced(view: View, x: TensorType, items, out: tuple[Dim, ...]) -> View | None:
    """The view of x[items] (of shape `out`) given x's: ranges of step 1 from a start that
    is a constant >= 0 (their length is out's: x[:T] is T long wherever T is in range); ints
    and other ranges of constant bounds and positive steps on axes of constant size (every
    index then known in range); new axes; else None."""
    shape, parts, offset = [], [], view.offset
    for entry, axis in _slice_entries(x.shape, items):
        if axis is None:  # a new axis of size 1
            shape.append(ONE)
            parts.append(())
            continue
        size, along = x.shape[axis], View(view.shape[axis:axis + 1],
                                          view.parts[axis:axis + 1], Dim.of(0))
        bounds = [_const(b) for b in (entry[1:] if entry[0] == "range" else (entry[1], 0, 1))]
        start = 0 if bounds[0] is None else bounds[0]
        if entry[0] == "range" and bounds[2] == 1 and start is not False and start >= 0:
            length = out[len(shape)]  # from start (clamped: then length 0) on, step 1
            one = along.sliced(0, Dim.of(start), length)
        elif not size.is_const or any(b is False for b in bounds):
            return None
        else:
            if entry[0] == "int":
                i = bounds[0]
                if not -size.value <= i < size.value:
                    return None
                picked = range(size.value)[i:i + 1 or None]
            else:
                picked = range(size.value)[slice(*bounds)]
            if picked.step < 0:
                return None
            length = Dim.of(len(picked))
            one = along.sliced(0, Dim.of(picked.start if picked else 0), length, picked.step)
        if one is None:
            return None
        offset = offset + one.offset
        if entry[0] == "range":
            shape.append(length)
            parts.append(one.parts[0])
    return View(tuple(shape), tuple(parts), offset)


def _step(graph: Graph, value: Value, view: View) -> View | None:
    """The view of `value` (the result of a layout op) given the view of its operand."""
    op, node = graph.op(value.node), graph.node(value.node)
    x = graph.operands(value.node)[0].type
    if op == "split":
        axis, parts = _split_parts(x, node["attrs"])
        return view.sliced(axis, sum(parts[:value.index], Dim.of(0)), parts[value.index])
    if op == "slice":
        return _sliced(view, x, node["attrs"]["items"], value.type.shape)
    if op == "gather":
        axis = normalize_axis(node["attrs"]["axis"], x.rank)
        one = view.sliced(axis, Dim.of(_index(graph, value)), ONE)
        return None if one is None else one.reshaped(value.type.shape)
    if has(op, Prop.PERMUTE):
        return view.permuted(REGISTRY[op].permutation(len(view.shape), node["attrs"]))
    return view.reshaped(value.type.shape)


def _operand(graph: Graph, value: Value) -> tuple[Value, View, int]:
    """The tensor `value` is a view of, through the longest chain of layout ops that has
    one with a stride per axis, that view, and the number of ops the chain holds."""
    chain = [value]
    while _is_layout(graph, chain[-1]) and chain[-1].type.dtype == value.type.dtype:
        chain.append(graph.operands(chain[-1].node)[0])
    for start in range(len(chain) - 1, -1, -1):  # the longest chain whose view exists
        view: View | None = View.whole(chain[start].type.shape)
        for v in reversed(chain[:start]):
            view = _step(graph, v, view)
            if view is None:
                break
        if view is not None and view.strides is not None:
            return chain[start], view, start
    raise AssertionError("a chain of no ops always has a view")


def _scaled(graph: Graph, value: Value) -> tuple[Value, float]:
    """(x, s) where `value` is x * s (or s * x) for a finite constant f32 s of one element
    (an infinite one would make a 0 in x NaN before the sum, and not after it), else
    (value, 1)."""
    if graph.op(value.node) != "mul":
        return value, 1.0
    operands = graph.operands(value.node)
    for i, c in enumerate(operands):
        if graph.op(c.node) == "constant" and c.type.dtype == "f32" and all(
                d == ONE for d in c.type.shape):
            other, scale = operands[1 - i], float(
                np.asarray(graph.node(c.node)["attrs"]["value"]).reshape(()))
            if other.type == value.type and math.isfinite(scale):
                return other, scale
    return value, 1.0


def _inverse(graph: Graph, value: Value, out: Value, view: View) -> View | None:
    """The view of `value` inside `out`, where `out` is made from `value` by the chain of
    layout ops between them (each reading the one before) and `view` is out's."""
    chain = [out]
    while chain[-1] != value:
        chain.append(graph.operands(chain[-1].node)[0])
    for v in chain[:-1]:  # from out back to value: each op's operand's view
        operand = graph.operands(v.node)[0]
        op = graph.op(v.node)
        if has(op, Prop.PERMUTE):
            perm = REGISTRY[op].permutation(operand.type.rank, graph.node(v.node)["attrs"])
            inverse = [0] * len(perm)
            for i, p in enumerate(perm):
                inverse[p] = i
            view = view.permuted(inverse)
        else:
            view = view.reshaped(operand.type.shape)
            if view is None:
                return None
    return view


def _result(graph: Graph, value: Value) -> tuple[Value, View, int]:
    """The tensor the product's result `value` is read as, through the longest chain of
    reshapes and permutes that only it reads (each op the one user of the one before), the
    result's view in it, and the number of ops in the chain."""
    chain = [value]
    while True:
        user = only_user(graph, chain[-1])
        if user is None:
            break
        op = graph.op(user)
        if not (has(op, Prop.RESHAPE) or has(op, Prop.PERMUTE)):
            break
        chain.append(Value(user, 0, graph.node(user)["types"][0]))
    for end in range(len(chain) - 1, -1, -1):
        view = _inverse(graph, value, chain[end], View.whole(chain[end].type.shape))
        if view is not None and view.strides is not None:
            return chain[end], view, end
    raise AssertionError("a chain of no ops always has a view")


def _copies(graph: Graph, value: Value, ops: int) -> bool:
    """Whether the chain of `ops` layout ops below `value` moves elements (a split or a
    permute: a kernel that copies), not only reshapes."""
    for _ in range(ops):
        if not has(graph.op(value.node), Prop.RESHAPE):
            return True
        value = graph.operands(value.node)[0]
    return False


@graph_pass("strided_products")
def strided_products(graph: Graph, ctx: PassContext) -> Graph:
    """matmul(view(x) [* s], view(y)), read through layout ops -> matmul_strided(x, y), for
    f32 batched products whose operands have the same batch axes."""
    for nid in graph.order():
        if nid not in graph.g or graph.op(nid) != "matmul":
            continue
        a, b = graph.operands(nid)
        node = graph.node(nid)
        (out,) = node["types"]
        if (a.type.dtype != "f32" or b.type.dtype != "f32" or a.type.rank < 3
                or b.type.rank != a.type.rank or a.type.shape[:-2] != b.type.shape[:-2]):
            continue
        a, a_scale = _scaled(graph, a)
        b, b_scale = _scaled(graph, b)
        alpha = a_scale * b_scale
        x, a_view, a_ops = _operand(graph, a)
        y, b_view, b_ops = _operand(graph, b)
        result = Value(nid, 0, out)
        target, c_view, c_ops = _result(graph, result)
        if a_view.strides[-1] != ONE and a_view.strides[-2] != ONE:
            x, a_view, a_ops = a, View.whole(a.type.shape), 0
        if b_view.strides[-1] != ONE and b_view.strides[-2] != ONE:
            y, b_view, b_ops = b, View.whole(b.type.shape), 0
        if c_view.strides[-1] != ONE:
            target, c_view, c_ops = result, View.whole(out.shape), 0
        if not (alpha != 1.0 or _copies(graph, a, a_ops) or _copies(graph, b, b_ops)
                or _copies(graph, target, c_ops)):
            continue
        m, k = a.type.shape[-2:]
        new = GraphBuilder.like(graph, node).checked(
            "matmul_strided", x, y, want=[target.type], batch=list(out.shape[:-2]), m=m,
            k=k, n=b.type.shape[-1], a_view=_attr(a_view), b_view=_attr(b_view),
            c_view=_attr(c_view),
            shape=list(target.type.shape), alpha=alpha)
        if new is None:
            continue
        replace_node(graph, target.node, new)  # and the matmul, and the layout ops it read
        ctx.count("matmul of views -> matmul_strided")
    for nid in graph.order():
        if nid in graph.g and graph.op(nid) == "softmax" and _attention(graph, nid):
            ctx.count("matmul_strided, softmax, matmul_strided -> attention_strided")
    return graph


def _attr(view: View) -> list[Dim]:
    """A view with a stride per axis as matmul_strided's attribute: offset, then strides."""
    return [view.offset, *view.strides]


def _dims(values) -> list[Dim]:
    return [Dim.of(v) for v in values]


def _rebatched(view, old, new: list[Dim], tail: list[Dim]) -> list[Dim] | None:
    """A view attribute of a product over batch axes `old` as one over the batch axes `new`
    (the same batch indices in row-major order), or None where some axis of it would need
    several strides."""
    old = _dims(old)
    if old == new:
        return view
    if prod(old) != prod(new):
        return None
    view = _dims(view)
    moved = View.strided((*old, *tail), tuple(view[1:]), view[0]).reshaped((*new, *tail))
    return None if moved is None or moved.strides is None else _attr(moved)


def _whole(view, shape) -> bool:
    """Whether a view attribute sees a whole row-major tensor of `shape` in order."""
    return _dims(view) == [Dim.of(0), *View.whole(tuple(shape)).strides]


def _constant_scalar(graph: Graph, value: Value) -> float | None:
    """The value of an f32 constant of one element, else None."""
    if (graph.op(value.node) != "constant" or value.type.dtype != "f32"
            or any(d != ONE for d in value.type.shape)):
        return None
    return float(np.asarray(graph.node(value.node)["attrs"]["value"]).reshape(()))


def _broadcast(graph: Graph, value: Value,
               shape: tuple[Dim, ...]) -> tuple[Value, list[Dim]] | None:
    """The tensor `value` is a view of and that view broadcast to `shape` (stride 0 along
    the axes it is broadcast over) as an attribute, where its last axis has stride 1."""
    x, view, _ = _operand(graph, value)
    strides, lead = [], len(shape) - value.type.rank
    if lead < 0:
        return None
    for axis, size in enumerate(shape):
        if axis < lead:
            strides.append(Dim.of(0))
        elif value.type.shape[axis - lead] == size:
            strides.append(view.strides[axis - lead])
        elif value.type.shape[axis - lead] == ONE:
            strides.append(Dim.of(0))
        else:
            return None
    if strides[-1] != ONE:
        return None
    return x, [view.offset, *strides]


def _before_softmax(graph: Graph, x: Value) -> tuple[Value, dict] | None:
    """The product x is made from, and what attention_strided does between it and the
    softmax: a scale by a constant (alpha), a bool mask's where(mask, scores, c) or
    where(mask, c, scores) for a constant c (fill, keep), then an added f32 bias (masks'
    usual order: PyTorch's scaled_dot_product_attention, Hugging Face's GPT-2). Each op is
    read only by the next."""
    found: dict = {"alpha": 1.0, "mask": None, "bias": None}
    shape = x.type.shape

    def step(v: Value, user: Value) -> bool:
        return v.type == x.type and only_user(graph, v) == user.node

    v = x
    if graph.op(v.node) == "add":
        ops = graph.operands(v.node)
        for y, bias in (ops, ops[::-1]):
            if (step(y, v) and bias.type.dtype == "f32"
                    and graph.op(y.node) in ("where", "mul", "div", "matmul_strided")):
                found["bias"] = _broadcast(graph, bias, shape)
                if found["bias"] is None:
                    return None
                v = y
                break
        else:
            return None
    masks = []  # the where ops' masks, last first
    while graph.op(v.node) == "where":
        cond, then, other = graph.operands(v.node)
        fill_then, fill_other = _constant_scalar(graph, then), _constant_scalar(graph, other)
        if cond.type.dtype != "bool" or (fill_then is None) == (fill_other is None):
            return None
        y, keep = (then, True) if fill_other is not None else (other, False)
        fill = fill_other if keep else fill_then
        # several: each fills with the same constant where the same kind of mask says so (a
        # causal mask and a key-padding mask): one mask, their union (or intersection)
        if not step(y, v) or (masks and (found["fill"], found["keep"]) != (fill, keep)):
            return None
        masks.append(cond)
        found["fill"], found["keep"] = fill, keep
        v = y
    if masks:
        found["mask"] = masks[::-1]
    if graph.op(v.node) in ("mul", "div"):
        a, b = graph.operands(v.node)
        c = _constant_scalar(graph, b)
        if c is None and graph.op(v.node) == "mul":
            a, c = b, _constant_scalar(graph, a)
        scale = None if c is None else c if graph.op(v.node) == "mul" else (
            1.0 / c if c != 0.0 else None)
        if scale is None or not math.isfinite(scale) or not step(a, v):
            return None
        found["alpha"] = scale
        v = a
    if graph.op(v.node) != "matmul_strided":  # read only by the next op: step() said so
        return None
    return v, found


def _attention(graph: Graph, nid: int) -> bool:
    """softmax(s, axis = -1) @ v' where s = alpha * q' @ k' (two matmul_strided of the same
    batch, s and the softmax read by nothing else), masked and biased in between or not
    (`_before_softmax`) -> attention_strided(q, k, v[, mask][, bias]): the scores are made,
    normalised and used one batch index at a time, never stored whole."""
    (x,) = graph.operands(nid)
    node = graph.node(nid)
    probs = Value(nid, 0, node["types"][0])
    user = only_user(graph, probs)
    made = _before_softmax(graph, x) if only_user(graph, x) == nid else None
    if (made is None or user is None or graph.op(user) != "matmul_strided"
            or node["attrs"]["axis"] not in (-1, x.type.rank - 1)):
        return False
    product, between = made
    first, second = graph.node(product.node)["attrs"], graph.node(user)["attrs"]
    a, v = graph.operands(user)
    batch, m, s = _dims(first["batch"]), Dim.of(first["m"]), Dim.of(first["n"])
    if (a != probs or v == probs or second["alpha"] != 1.0
            or (Dim.of(second["m"]), Dim.of(second["k"])) != (m, s)
            or not _whole(first["c_view"], [*batch, m, s])
            or not _whole(second["a_view"], [*_dims(second["batch"]), m, s])):
        return False
    n = Dim.of(second["n"])
    # the product with v may see the scores' batch axes merged or split ([B, H] as [B*H])
    v_view, c_view = (_rebatched(view, second["batch"], batch, tail)
                      for view, tail in ((second["b_view"], [s, n]), (second["c_view"], [m, n])))
    if v_view is None or c_view is None:
        return False
    q, k = graph.operands(product.node)
    mask, bias = between["mask"], between["bias"]
    if mask is not None:  # where(a, f, where(b, f, s)) is where(a | b, f, s): one mask
        gb, joined = GraphBuilder.like(graph, graph.node(user)), mask[0]
        for cond in mask[1:]:
            joined = gb.op("logical_and" if between["keep"] else "logical_or", joined, cond)
        mask = _broadcast(graph, joined, x.type.shape)
        if mask is None:
            return False
    extra = {"fill": between["fill"], "keep": between["keep"]} if mask else {}
    new = GraphBuilder.like(graph, graph.node(user)).checked(
        "attention_strided", q, k, v, None if mask is None else mask[0],
        None if bias is None else bias[0], want=graph.node(user)["types"],
        batch=first["batch"], m=first["m"], d=first["k"], s=first["n"], n=second["n"],
        q_view=first["a_view"], k_view=first["b_view"], v_view=v_view, c_view=c_view,
        shape=second["shape"], alpha=float(np.float32(first["alpha"] * between["alpha"])),
        mask_view=None if mask is None else mask[1], bias_view=None if bias is None else bias[1],
        **extra)
    if new is None:
        return False
    replace_node(graph, user, new)  # and the softmax, the scores' product and what is between
    return True
