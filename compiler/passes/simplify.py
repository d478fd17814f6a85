"""Algebraic simplification: a short list of local rewrite rules (as tinygrad's symbolic.py).

A rule looks at one node and returns the value that replaces its output, or None. Every
replacement must have the node's exact type (dtype and shape), so a rule never changes what
broadcasting or promotion made of an expression: `x * 1` with `x: f32[3]` and `1: f32[2, 3]`
stays. The rules are keyed by op: each is that op's algebra (x*1 is mul's), except the
rules for every op with Prop.RESHAPE or Prop.PERMUTE, which the records say.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..builder import GraphBuilder
from ..dims import Dim
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from .edit import only_user, replace_node, users
from .manager import PassContext, graph_pass

Rule = Callable[[Graph, int], Value | None]


def _is_fill(graph: Graph, value: Value, c: float) -> bool:
    """Whether `value` is a constant whose every element equals c."""
    node = graph.node(value.node)
    return node["op"] == "constant" and bool(np.all(node["attrs"]["value"] == c))


def _drop_constant(c: float, slots: tuple[int, ...]) -> Rule:
    """x op c -> x, for the constant c at any of `slots`."""

    def rule(graph: Graph, nid: int) -> Value | None:
        operands = graph.operands(nid)
        for slot in slots:
            x = operands[1 - slot]
            if _is_fill(graph, operands[slot], c) and x.type == graph.node(nid)["types"][0]:
                return x
        return None

    return rule


def same_type(graph: Graph, nid: int) -> Value | None:
    """op(x) -> x when the result has x's type and the op moves no data."""
    x = graph.operands(nid)[0]
    return x if x.type == graph.node(nid)["types"][0] else None


def involution(graph: Graph, nid: int) -> Value | None:
    """op(op(x)) -> x."""
    (y,) = graph.operands(nid)
    return graph.operands(y.node)[0] if graph.op(y.node) == graph.op(nid) else None


def full_slice(graph: Graph, nid: int) -> Value | None:
    """x[:, 0:n, ...] -> x: only step-1 ranges (no index, no new axis) and x's shape, so every
    range is its whole axis."""
    items = graph.node(nid)["attrs"]["items"]
    whole = all(e[0] == "ellipsis" or (e[0] == "range" and e[3] == 1) for e in items)
    return same_type(graph, nid) if whole else None


def zero_pad(graph: Graph, nid: int) -> Value | None:
    """pad(x, widths all 0) -> x (a strided slice's adjoint places its last axis so)."""
    widths = graph.node(nid)["attrs"]["pads"]
    return same_type(graph, nid) if all(Dim.of(w) == Dim.of(0) for w in widths) else None


def _perm(graph: Graph, nid: int) -> list[int]:
    """The axis order of a Prop.PERMUTE node, by its record."""
    node = graph.node(nid)
    return REGISTRY[node["op"]].permutation(node["types"][0].rank, node["attrs"])


def merge_permutes(graph: Graph, nid: int) -> Value | None:
    """permute(permute(x, p), q) -> x when the two undo each other, else permute(x, p[q])
    (when the inner one has no other use)."""
    (y,) = graph.operands(nid)
    if not has(graph.op(y.node), Prop.PERMUTE):
        return None
    (x,) = graph.operands(y.node)
    inner = _perm(graph, y.node)
    perm = [inner[i] for i in _perm(graph, nid)]
    if perm == sorted(perm):
        return x
    node = graph.node(nid)
    if only_user(graph, y) != nid:
        return None
    new = GraphBuilder.like(graph, node).checked("permute", x, perm=perm, want=node["types"])
    return new[0] if new else None


def transposed_product(graph: Graph, nid: int) -> Value | None:
    """(a @ b)^T -> b^T @ a^T, for a permute swapping the last two axes of a matmul's result
    that nothing else reads, with a and b of the result's rank (no broadcast batch): a weight
    gradient dW = (x^T @ dy)^T, as a linear layer's rule makes it, becomes dy^T @ x, whose
    transposed operands the GEMM reads in place, with no pass over the result to transpose
    it. A transposed operand that is itself a transpose is that transpose's operand."""
    (y,) = graph.operands(nid)
    (t,) = graph.node(nid)["types"]
    rank = t.rank
    swap = [*range(rank - 2), rank - 1, rank - 2]
    if graph.op(y.node) != "matmul" or rank < 2 or _perm(graph, nid) != swap:
        return None
    a, b = graph.operands(y.node)
    if a.type.rank != rank or b.type.rank != rank or a.type.shape[:-2] != b.type.shape[:-2] \
            or only_user(graph, y) != nid:
        return None
    gb = GraphBuilder.like(graph, graph.node(y.node))

    def transposed(v: Value) -> Value:
        if has(graph.op(v.node), Prop.PERMUTE) and _perm(graph, v.node) == swap:
            return graph.operands(v.node)[0]
        return gb.permute(v, swap)

    new = gb.checked("matmul", transposed(b), transposed(a), want=[t])
    return new[0] if new else None


def merge_reshapes(graph: Graph, nid: int) -> Value | None:
    """reshape(reshape(x)) -> x when the shapes match, else reshape(x) (when the inner one
    has no other use)."""
    (y,) = graph.operands(nid)
    if not has(graph.op(y.node), Prop.RESHAPE):
        return None
    (x,) = graph.operands(y.node)
    node = graph.node(nid)
    (t,) = node["types"]
    if x.type == t:
        return x
    if only_user(graph, y) != nid:
        return None
    shape = [d.value if d.is_const else d for d in t.shape]
    new = GraphBuilder.like(graph, node).checked("reshape", x, shape=shape, want=[t])
    return new[0] if new else None


def square(graph: Graph, nid: int) -> Value | None:
    """x ** 2 -> x * x, for a constant exponent of 2 that does not broadcast x: the same
    value (a correctly rounded product, as numpy's power and libm's pow give it), where pow
    is a call per element that no loop vectorises in f64 and, in f32, e^(y ln|x|) in f64
    (mse_loss's square ran at 10 ns an element with libm's powf, 4 with kiln's)."""
    x, e = graph.operands(nid)
    node = graph.node(nid)
    (t,) = node["types"]
    if not _is_fill(graph, e, 2) or x.type != t:
        return None
    new = GraphBuilder.like(graph, node).checked("mul", x, x, want=[t])
    return new[0] if new else None


# op -> its rules, tried in order: (label, rule); the labels name the counts in the stats
_RESHAPE_RULES = (("reshape to x's shape -> x", same_type),
                  ("reshape(reshape(x)) -> reshape(x) or x", merge_reshapes))
_PERMUTE_RULES = (("permute(permute(x)) -> permute(x) or x", merge_permutes),
                  ("(a @ b)^T -> b^T @ a^T", transposed_product))
def _part(graph: Graph, value: Value) -> int | None:
    """The split node `value` is a result of, where each of its results is read by at most
    one op, else None."""
    nid = value.node
    if graph.op(nid) != "split":
        return None
    for i, t in enumerate(graph.node(nid)["types"]):
        if len(users(graph, Value(nid, i, t))) > 1:
            return None
    return nid


def add_of_parts(graph: Graph, nid: int) -> Value | None:
    """split(x)[i] + split(y)[i] -> split(x + y)[i], where the two splits are alike and every
    part of each is read only by the sum with the other's same part (ONNX's recurrent cells:
    each gate's input projection plus its recurrent one, four parts and four adds: one add
    and one split instead of two splits). Each add gets its own x + y and split, which cse
    makes one; the old splits go once no add reads them."""
    a, b = graph.operands(nid)
    first, second = _part(graph, a), _part(graph, b)
    if (first is None or second is None or first == second or a.index != b.index
            or graph.node(first)["attrs"] != graph.node(second)["attrs"]):
        return None
    if first > second:  # x + y whichever order the add has (equal in IEEE), for cse
        first, second = second, first
    (x,), (y,) = graph.operands(first), graph.operands(second)
    if x.type != y.type or graph.node(nid)["types"][0] != a.type:
        return None
    for i, t in enumerate(graph.node(first)["types"]):
        mine, theirs = Value(first, i, t), Value(second, i, graph.node(second)["types"][i])
        user, other = only_user(graph, mine), only_user(graph, theirs)
        if user is None and other is None and not users(graph, mine) + users(graph, theirs):
            continue  # an earlier add's parts, already taken
        if (user is None or user != other or graph.op(user) != "add"
                or {v.node for v in graph.operands(user)} != {first, second}):
            return None
    gb = GraphBuilder.like(graph, graph.node(nid))
    parts = gb.results("split", gb.add(x, y), **graph.node(first)["attrs"])
    return parts[a.index]


RULES: dict[str, tuple[tuple[str, Rule], ...]] = {
    "mul": (("x*1 -> x", _drop_constant(1, (0, 1))),),
    "add": (("x+0 -> x", _drop_constant(0, (0, 1))),  # -0.0 + 0.0 is 0.0: sign of zero only
            ("split(x)[i] + split(y)[i] -> split(x + y)[i]", add_of_parts)),
    "sub": (("x-0 -> x", _drop_constant(0, (1,))),),
    "div": (("x/1 -> x", _drop_constant(1, (1,))),),
    "neg": (("-(-x) -> x", involution),),
    "pow": (("x**1 -> x", _drop_constant(1, (1,))), ("x**2 -> x*x", square)),
    **{op: _PERMUTE_RULES for op, rec in REGISTRY.items() if rec.has(Prop.PERMUTE)},
    **{op: _RESHAPE_RULES for op, rec in REGISTRY.items() if rec.has(Prop.RESHAPE)},
    "cast": (("cast to x's dtype -> x", same_type),),
    "dropout": (("dropout (inference) -> x", same_type),),  # the shape rule rejects training
    "slice": (("x[:, ...] -> x", full_slice),),
    "pad": (("pad by zeros -> x", zero_pad),),
}


@graph_pass("simplify")
def simplify(graph: Graph, ctx: PassContext) -> Graph:
    """Algebraic simplification by the rules in RULES (x*1, x+0, x-0, x/1, -(-x), x**1,
    x**2 as x*x, transposes
    that cancel, a transposed matmul as the matmul of its transposed operands, reshape chains,
    no-op reshape/cast/slice/pad, inference dropout), one sweep in topological order, so chains
    collapse from their first link."""
    for nid in graph.order():
        if nid not in graph.g:
            continue
        for label, rule in RULES.get(graph.op(nid), ()):
            new = rule(graph, nid)
            if new is not None:
                replace_node(graph, nid, [new])
                ctx.count(label)
                break
    return graph
