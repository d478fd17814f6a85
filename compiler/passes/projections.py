"""Products by the row blocks of one weight, merged into one product.

MultiheadAttention (std.transformer) keeps torch's packed `in_proj_weight` [3E, E] and splits
it: `q = x @ w_q.T + b_q`, and the same for k and v. In self-attention, where the three
inputs are one tensor, that is three GEMMs of width E where one of width 3E does the same
work with one pass over x (and, exported, one Gemm where PyTorch's export has one too):

    split(W)_i^T and x @ that, for every part i          ->  split(x @ W^T, axis=-1)_i
    x @ split(W, axis=-1)_i, for every part i            ->  split(x @ W, axis=-1)_i
    split(Y)_i + split(b)_i, for every part i            ->  split(Y + b, axis=-1)_i

The rewrite applies only when every part of the split feeds exactly one such product (so
nothing else reads a part) and every product's left operand is the same tensor (the same
value, or the same layout op of the same value: `transpose(query, 0, 1)` three times before
cse). Both sides compute each element from the same products and sums in the same order, so
the results are identical.
"""

from __future__ import annotations

from ..builder import GraphBuilder
from ..ir import Graph, Value
from ..ops import REGISTRY, Prop, has
from ..ops._common import normalize_axis
from .edit import attr_key, only_user, outputs_of, replace_node
from .manager import PassContext, graph_pass


@graph_pass("merge_split_projections")
def merge_split_projections(graph: Graph, ctx: PassContext) -> Graph:
    """x @ split(W)_i^T for all i -> split(x @ W^T), then the split bias added before the
    split (see the module's docstring)."""
    for nid in graph.order():
        if nid not in graph.g or graph.op(nid) != "split":
            continue
        merged = _merge_products(graph, nid)
        if merged is None:
            continue
        ctx.count("products merged")
        if _merge_bias(graph, merged):
            ctx.count("biases merged")
    return graph


def _parts(graph: Graph, sid: int, rank: int) -> list | None:
    """The part sizes of split node `sid` when it splits a rank-`rank` tensor along its first
    axis (the weight's rows, a bias's elements), else None."""
    (x,) = graph.operands(sid)
    attrs = graph.node(sid)["attrs"]
    if x.type.rank != rank or normalize_axis(attrs["axis"], rank) != 0:
        return None
    return [t.shape[0] for t in graph.node(sid)["types"]]


def _merge_products(graph: Graph, sid: int) -> int | None:
    """Rewrite the products of split `sid`'s parts; returns the new split's node, or None.
    A split of W's rows is read transposed (x @ split(W)_i^T: a packed in_proj_weight); one
    of its columns as it is (x @ split(W, axis = -1)_i: an imported GRU's R^T, one part a
    gate)."""
    (weight,) = graph.operands(sid)
    columns = (weight.type.rank == 2
               and normalize_axis(graph.node(sid)["attrs"]["axis"], 2) == 1)
    parts = _parts_of_result(graph, sid) if columns else _parts(graph, sid, 2)
    if parts is None or len(parts) < 2:
        return None
    products, lefts = [], []
    for part in outputs_of(graph, sid):
        if columns:
            flipped = part
        else:
            flip = only_user(graph, part)
            if (flip is None or not has(graph.op(flip), Prop.PERMUTE)
                    or _perm(graph, flip) != [1, 0]):
                return None
            flipped = outputs_of(graph, flip)[0]
        product = only_user(graph, flipped)
        if product is None or graph.op(product) != "matmul":
            return None
        left, right = graph.operands(product)
        if right != flipped:
            return None
        products.append(product)
        lefts.append(left)
    if not all(_same(graph, lefts[0], left) for left in lefts[1:]):
        return None
    gb = GraphBuilder.like(graph, graph.node(products[0]))
    whole = gb.matmul(lefts[0], weight if columns else gb.permute(weight, [1, 0]))
    want = [graph.node(p)["types"][0] for p in products]
    new = gb.checked("split", whole, axis=-1, sizes=parts, want=want)
    if new is None:  # the unused product goes with the next dce
        return None
    for product, value in zip(products, new, strict=True):
        replace_node(graph, product, [value])
    return new[0].node


def _merge_bias(graph: Graph, sid: int) -> bool:
    """split(Y)_i + split(b)_i for every i -> split(Y + b)_i, when b is 1-D and split into
    the same parts."""
    sums, bias_split = [], None
    for i, part in enumerate(outputs_of(graph, sid)):
        total = only_user(graph, part)
        if total is None or graph.op(total) != "add":
            return False
        a, b = graph.operands(total)
        other = b if a == part else a
        if (other.index != i or graph.op(other.node) != "split"
                or bias_split not in (None, other.node)):
            return False
        bias_split = other.node
        sums.append(total)
    if _parts(graph, bias_split, 1) != _parts_of_result(graph, sid):
        return False
    (whole,) = graph.operands(sid)
    (bias,) = graph.operands(bias_split)
    gb = GraphBuilder.like(graph, graph.node(sums[0]))
    want = [graph.node(s)["types"][0] for s in sums]
    new = gb.checked("split", gb.add(whole, bias), axis=-1,
                     sizes=_parts_of_result(graph, sid), want=want)
    if new is None:
        return False
    for total, value in zip(sums, new, strict=True):
        replace_node(graph, total, [value])
    return True


def _parts_of_result(graph: Graph, sid: int) -> list:
    """The part sizes of split `sid` along its (last) axis."""
    return [t.shape[-1] for t in graph.node(sid)["types"]]


def _perm(graph: Graph, nid: int) -> list[int]:
    node = graph.node(nid)
    return REGISTRY[node["op"]].permutation(node["types"][0].rank, node["attrs"])


def _same(graph: Graph, a: Value, b: Value, depth: int = 4) -> bool:
    """Whether a and b are certainly one tensor: the same value, or the same output of two
    layout ops (movement, permute, reshape: no arithmetic, nothing random) with equal
    attributes applied to the same tensors."""
    if a == b:
        return True
    if depth == 0 or a.index != b.index or a.type != b.type:
        return False
    na, nb = graph.node(a.node), graph.node(b.node)
    record = REGISTRY.get(na["op"])
    if na["op"] != nb["op"] or record is None or not (
            record.has(Prop.MOVEMENT) or record.has(Prop.PERMUTE) or record.has(Prop.RESHAPE)):
        return False
    if attr_key(na["attrs"]) != attr_key(nb["attrs"]):
        return False
    xs, ys = graph.operands(a.node), graph.operands(b.node)
    return len(xs) == len(ys) and all(
        (x is None and y is None) or (x is not None and y is not None
                                      and _same(graph, x, y, depth - 1))
        for x, y in zip(xs, ys, strict=True))
