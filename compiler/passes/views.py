"""Batched products that read their operands, and write their result, where layout ops would
have moved them: matmul(view(x), view(y)) -> matmul_strided(x, y) (ops/linalg.py).

Multi-head attention splits one projection into queries, keys and values, each into heads,
and merges the heads again after the product with the values:

    q, k, v = split(x @ W + b, 3, axis = -1)                # [B, L, E] each: three copies
    qh = transpose(reshape(q, [B, L, H, D]), 1, 2)          # [B, H, L, D]: a copy
    scores = (qh * s) @ transpose(reshape(k, ...), 1, 2).T  # the scale and k^T: two copies
    out = reshape(transpose(weights @ vh, 1, 2), [B, L, E]) # vh and the merge: two copies

Each of those layout ops only says where an element is. A chain of them from a tensor x
(split, reshape and permute, the ops with Prop.RESHAPE or Prop.PERMUTE) is a view of x's
elements: an offset and a stride per axis. A batched f32 product whose operands are such
views of x and y, whose A (or B) has rows or columns of stride 1, reads them in place: per
batch index, a GEMM on matrices at the views' offsets with their row strides (a transposed
A or B read as gemm.py reads one). A result read only through such a chain (a transpose and a
reshape) is written through the inverse view into the chain's last tensor. A scale of A by a
constant is applied to each product's result instead, while it is in cache. Nothing is
copied; the layout ops that nothing else reads are removed.

The views are exact: a reshape is followed only where each group of axes it splits or
merges is one run of strides (as numpy's reshape without a copy), so every element of the
result is written once. Each product's elements are the same sums in the same order as the
matmul's; the scale by s after the sum rounds as s * (a @ b) does, which for s a power of
two (1 / sqrt(64)) is the same as (s * a) @ b, and otherwise within an ulp per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from ..ops.slicing import _split_parts
from .edit import only_user, replace_node
from .manager import PassContext, graph_pass

ONE = Dim.of(1)


@dataclass(frozen=True)
class View:
    """Elements of a row-major tensor: index i at offset + sum(i[a] * strides[a])."""

    shape: tuple[Dim, ...]
    strides: tuple[Dim, ...]
    offset: Dim

    @staticmethod
    def whole(shape: tuple[Dim, ...]) -> View:
        strides, step = [], ONE
        for d in reversed(shape):
            strides.append(step)
            step = step * d
        return View(tuple(shape), tuple(reversed(strides)), Dim.of(0))

    def permuted(self, perm: list[int]) -> View:
        """Axis i of the result is axis perm[i] of this view."""
        return View(tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm),
                    self.offset)

    def reshaped(self, shape: tuple[Dim, ...]) -> View | None:
        """The same elements, in row-major order, as `shape`; None where a group of axes it
        merges is not one run of strides (a reshape of that view would copy)."""
        old, new = list(self.shape), list(shape)
        strides: list[Dim] = []
        i = j = 0
        while i < len(old) or j < len(new):
            if j < len(new) and new[j] == ONE and (i == len(old) or old[i] != ONE):
                strides.append(ONE)  # a new axis of size 1: any stride
                j += 1
                continue
            if i < len(old) and old[i] == ONE and (j == len(new) or new[j] != ONE):
                i += 1  # an axis of size 1 dropped
                continue
            if i == len(old) or j == len(new):
                return None
            ends = _runs(old, i, new, j)
            if ends is None:
                return None
            i_end, j_end = ends  # old[i:i_end] and new[j:j_end]: the same elements
            if any(self.strides[a] != self.strides[a + 1] * old[a + 1]
                   for a in range(i, i_end - 1)):
                return None  # the old axes are not one run of strides
            step, group = self.strides[i_end - 1], []
            for d in reversed(new[j:j_end]):
                group.append(step)
                step = step * d
            strides.extend(reversed(group))
            i, j = i_end, j_end
        return View(tuple(shape), tuple(strides), self.offset)


def _runs(old: list[Dim], i: int, new: list[Dim], j: int) -> tuple[int, int] | None:
    """The ends of the shortest runs old[i:i_end] and new[j:j_end] of equal products (one
    axis each, or one split into several, or several merged into one where a size is
    symbolic; any grouping of known sizes), if any."""
    if old[i] == new[j]:
        return i + 1, j + 1
    if not (old[i].is_const and new[j].is_const):
        for sizes, at, total, one_side in ((new, j, old[i], True), (old, i, new[j], False)):
            product = sizes[at]
            for end in range(at + 1, len(sizes)):
                product = product * sizes[end]
                if product == total:
                    return (i + 1, end + 1) if one_side else (end + 1, j + 1)
        return None
    po, pn, i_end, j_end = old[i].value, new[j].value, i + 1, j + 1
    while po != pn:
        if po < pn:
            if i_end == len(old) or not old[i_end].is_const:
                return None
            po, i_end = po * old[i_end].value, i_end + 1
        else:
            if j_end == len(new) or not new[j_end].is_const:
                return None
            pn, j_end = pn * new[j_end].value, j_end + 1
    return i_end, j_end


def _is_layout(graph: Graph, value: Value) -> bool:
    op = graph.op(value.node)
    return op == "split" or has(op, Prop.RESHAPE) or has(op, Prop.PERMUTE)


def _step(graph: Graph, value: Value, view: View) -> View | None:
    """The view of `value` (the result of a layout op) given the view of its operand."""
    op, node = graph.op(value.node), graph.node(value.node)
    if op == "split":
        x = graph.operands(value.node)[0].type
        axis, parts = _split_parts(x, node["attrs"])
        start = sum(parts[:value.index], Dim.of(0))
        shape = list(view.shape)
        shape[axis] = parts[value.index]
        return View(tuple(shape), view.strides, view.offset + start * view.strides[axis])
    if has(op, Prop.PERMUTE):
        return view.permuted(REGISTRY[op].permutation(len(view.shape), node["attrs"]))
    return view.reshaped(value.type.shape)


def _operand(graph: Graph, value: Value) -> tuple[Value, View, int]:
    """The tensor `value` is a view of, through the longest chain of layout ops that has
    one, that view, and the number of ops the chain holds."""
    chain = [value]
    while _is_layout(graph, chain[-1]) and chain[-1].type.dtype == value.type.dtype:
        chain.append(graph.operands(chain[-1].node)[0])
    for start in range(len(chain) - 1, -1, -1):  # the longest chain whose view exists
        view: View | None = View.whole(chain[start].type.shape)
        for v in reversed(chain[:start]):
            view = _step(graph, v, view)
            if view is None:
                break
        if view is not None:
            return chain[start], view, start
    raise AssertionError("a chain of no ops always has a view")


def _scaled(graph: Graph, value: Value) -> tuple[Value, float] | None:
    """(x, s) where `value` is x * s (or s * x) for a finite constant f32 scalar s (an
    infinite one would make a 0 in x NaN before the sum, and not after it)."""
    if graph.op(value.node) != "mul":
        return None
    operands = graph.operands(value.node)
    for i, c in enumerate(operands):
        if c.type.rank == 0 and graph.op(c.node) == "constant":
            other, scale = operands[1 - i], float(graph.node(c.node)["attrs"]["value"])
            if other.type == value.type and math.isfinite(scale):
                return other, scale
    return None


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
            shape, strides = [ONE] * len(perm), [ONE] * len(perm)
            for i, p in enumerate(perm):
                shape[p], strides[p] = view.shape[i], view.strides[i]
            view = View(tuple(shape), tuple(strides), view.offset)
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
        if view is not None:
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
        scaled = _scaled(graph, a)
        alpha = 1.0
        if scaled is not None:
            a, alpha = scaled
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
        if not (scaled is not None or _copies(graph, a, a_ops) or _copies(graph, b, b_ops)
                or _copies(graph, target, c_ops)):
            continue
        m, k = a.type.shape[-2:]
        new = GraphBuilder.like(graph, node).checked(
            "matmul_strided", x, y, want=[target.type], batch=list(out.shape[:-2]), m=m,
            k=k, n=b.type.shape[-1], a_view=[a_view.offset, *a_view.strides],
            b_view=[b_view.offset, *b_view.strides], c_view=[c_view.offset, *c_view.strides],
            shape=list(target.type.shape), alpha=alpha)
        if new is None:
            continue
        replace_node(graph, target.node, new)  # and the matmul, and the layout ops it read
        ctx.count("matmul of views -> matmul_strided")
    for nid in graph.order():
        if nid in graph.g and graph.op(nid) == "softmax" and _attention(graph, nid):
            ctx.count("matmul_strided, softmax, matmul_strided -> attention_strided")
    return graph


def _dims(values) -> list[Dim]:
    return [Dim.of(v) for v in values]


def _whole(view, shape) -> bool:
    """Whether a view attribute sees a whole row-major tensor of `shape` in order."""
    return _dims(view) == [Dim.of(0), *View.whole(tuple(shape)).strides]


def _attention(graph: Graph, nid: int) -> bool:
    """softmax(s, axis = -1) @ v' where s = alpha * q' @ k' (two matmul_strided of the same
    batch, s and the softmax read by nothing else) -> attention_strided(q, k, v): the scores
    are made, normalised and used one batch index at a time, never stored whole."""
    (x,) = graph.operands(nid)
    node = graph.node(nid)
    probs = Value(nid, 0, node["types"][0])
    user = only_user(graph, probs)
    if (graph.op(x.node) != "matmul_strided" or only_user(graph, x) != nid or user is None
            or graph.op(user) != "matmul_strided"
            or node["attrs"]["axis"] not in (-1, x.type.rank - 1)):
        return False
    first, second = graph.node(x.node)["attrs"], graph.node(user)["attrs"]
    a, v = graph.operands(user)
    if (a != probs or v == probs or second["alpha"] != 1.0
            or _dims(first["batch"]) != _dims(second["batch"])
            or not _whole(first["c_view"], x.type.shape) or not _whole(second["a_view"],
                                                                        probs.type.shape)):
        return False
    q, k = graph.operands(x.node)
    new = GraphBuilder.like(graph, graph.node(user)).checked(
        "attention_strided", q, k, v, want=graph.node(user)["types"], batch=first["batch"],
        m=first["m"], d=first["k"], s=first["n"], n=second["n"], q_view=first["a_view"],
        k_view=first["b_view"], v_view=second["b_view"], c_view=second["c_view"],
        shape=second["shape"], alpha=first["alpha"])
    if new is None:
        return False
    replace_node(graph, user, new)  # and the softmax and the scores' product
    return True

