"""The converter of ONNX's Einsum: an equation over labelled axes lowered to kiln's sum,
permute, reshape and batched matmul.

Operands are combined left to right. Before each step, the labels an operand holds alone (in
no other operand still to come and not in the output) are summed out; then the two operands
are one batched matmul: the labels both hold and later need are the batch, the labels both
hold and nothing later needs are contracted, each operand's own labels are its rows or
columns. `...` stands for the same broadcast axes in every operand, aligned on the right.
"""

from __future__ import annotations

from ..builder import GraphBuilder
from ..ir import Value
from .convert_base import (
    Unsupported,
    attr,
    converter_table,
    dtype_of,
    need,
)

CONVERTERS, converter = converter_table()

_ELLIPSIS_LABELS = "0123456789"  # labels of `...`'s axes: never letters, so never clash


def _parse(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Each operand's labels (one character per axis, `...` expanded) and the output's."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise Unsupported(f"Einsum equation {equation!r} has {len(terms)} operands, "
                          f"the node {len(ranks)}")
    widest = 0
    labels = []
    for term, rank in zip(terms, ranks, strict=True):
        letters = term.replace("...", "")
        if not all(c.isalpha() for c in letters) or term.count("...") > 1 or \
                (term.count(".") != 3 * term.count("...")):
            raise Unsupported(f"Einsum term {term!r} is not letters with at most one '...'")
        n = rank - len(letters)
        if n < 0 or (n and "..." not in term) or n > len(_ELLIPSIS_LABELS):
            raise Unsupported(f"Einsum term {term!r} does not fit an input of rank {rank}")
        widest = max(widest, n)
        labels.append(term.replace("...", _ELLIPSIS_LABELS[len(_ELLIPSIS_LABELS) - n:]))
    for one in labels:
        if len(set(one)) != len(one):
            raise Unsupported(f"Einsum of a diagonal (a label twice in one term: {equation!r})")
    broadcast = _ELLIPSIS_LABELS[len(_ELLIPSIS_LABELS) - widest:]
    if arrow:
        if rhs.count("...") > 1 or not all(c.isalpha() for c in rhs.replace("...", "")):
            raise Unsupported(f"Einsum output {rhs!r} is not letters with at most one '...'")
        if widest and "..." not in rhs and any(c in "".join(labels) for c in broadcast):
            raise Unsupported("Einsum summing over '...' axes")
        out = rhs.replace("...", broadcast)
    else:  # implicit: `...` first, then each label used once, alphabetically
        counts = "".join(labels)
        out = broadcast + "".join(sorted(c for c in set(counts)
                                         if c.isalpha() and counts.count(c) == 1))
    if len(set(out)) != len(out) or not set(out) <= set("".join(labels)):
        raise Unsupported(f"Einsum output {out!r} names a label twice or one no input has")
    return labels, out


def _sum_out(gb: GraphBuilder, x: Value, labels: str, keep: set[str]) -> tuple[Value, str]:
    """x summed over its labels not in `keep` (kiln's integer sum widens: cast back)."""
    axes = [i for i, c in enumerate(labels) if c not in keep]
    if not axes:
        return x, labels
    y = gb.op("sum", x, axis=axes, keepdims=False)
    if dtype_of(y) != dtype_of(x):
        y = gb.cast(y, dtype_of(x))
    return y, "".join(c for c in labels if c in keep)


def _arrange(gb: GraphBuilder, x: Value, labels: str, order: str) -> Value:
    """x with its axes permuted into `order` (a permutation of `labels`)."""
    perm = [labels.index(c) for c in order]
    return x if perm == list(range(len(perm))) else gb.permute(x, perm)


def _product(sizes: list):
    total = 1
    for size in sizes:
        total = size * total
    return total


def _contract(gb: GraphBuilder, a: Value, la: str, b: Value, lb: str,
              keep: set[str]) -> tuple[Value, str]:
    """The product of two operands with every shared label not in `keep` summed: a batched
    matmul [batch, rows, k] @ [batch, k, cols]."""
    size = {c: d for c, d in zip(la, a.type.shape, strict=True)}
    size.update(zip(lb, b.type.shape, strict=True))
    batch = "".join(c for c in la if c in lb and c in keep)
    inner = "".join(c for c in la if c in lb and c not in keep)
    rows = "".join(c for c in la if c not in lb)
    cols = "".join(c for c in lb if c not in la)
    dims = [[size[c] for c in part] for part in (batch, rows, inner, cols)]
    batch_n, rows_n, inner_n, cols_n = (_product(d) for d in dims)
    a = gb.reshape(_arrange(gb, a, la, batch + rows + inner), [batch_n, rows_n, inner_n])
    b = gb.reshape(_arrange(gb, b, lb, batch + inner + cols), [batch_n, inner_n, cols_n])
    y = gb.matmul(a, b)
    return gb.reshape(y, dims[0] + dims[1] + dims[3]), batch + rows + cols


@converter("Einsum")
def _einsum(gb, node):
    inputs = [need(node, i, f"input {i}") for i in range(len(node.inputs))]
    if not inputs:
        raise Unsupported("Einsum of no inputs")
    dtypes = {dtype_of(x) for x in inputs}
    if len(dtypes) != 1:
        raise Unsupported(f"Einsum of mixed element types {sorted(dtypes)}")
    if dtypes & {"bool"}:
        raise Unsupported("Einsum of bool inputs")
    equation = attr(node, "equation")
    if isinstance(equation, bytes):
        equation = equation.decode()
    labels, out = _parse(str(equation), [x.type.rank for x in inputs])
    for one, x in zip(labels, inputs, strict=True):
        for c, d in zip(one, x.type.shape, strict=True):
            for other, y in zip(labels, inputs, strict=True):
                if c in other and y.type.shape[other.index(c)] != d:
                    raise Unsupported(f"Einsum label {c!r} has sizes {d} and "
                                      f"{y.type.shape[other.index(c)]} (broadcast)")
    x, lx = inputs[0], labels[0]
    for i in range(1, len(inputs) + 1):
        later = set(out).union(*labels[i:])
        x, lx = _sum_out(gb, x, lx, later | (set(labels[i]) if i < len(inputs) else set()))
        if i < len(inputs):
            y, ly = _sum_out(gb, inputs[i], labels[i], later | set(lx))
            x, lx = _contract(gb, x, lx, y, ly, later)
    return [_arrange(gb, x, lx, out)]
