"""Sizes of the inputs that a node needs equal: the axes its rule pairs.

An exporter often names the same size differently on two inputs (PyTorch's `dynamic_axes`
given as lists: `ids_dynamic_axes_1`, `mask_dynamic_axes_1`) or not at all (a fresh symbol
per axis): onnxruntime compares them when it runs, kiln when it converts, and an `Add` of
`[batch, seq]` and `[mask_0, mask_1]` cannot convert while the two are distinct symbols. When
a node does not convert, the importer asks `paired_axes` which axes the node's rule needs
equal, and where two of them are distinct symbols of the inputs it makes them one size and
converts the model again (importer.py `import_graph`).

    paired_axes("Add", {}, [TensorType(f32, (B, T)), TensorType(f32, (M0, M1))])
        == [(B, M0), (T, M1)]
"""

from __future__ import annotations

from typing import Any

from ..dims import Dim
from ..types import TensorType

# ops whose inputs broadcast multidirectionally (numpy's rule: axes aligned from the last)
BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
})


def paired_axes(op_type: str, attrs: dict[str, Any], types: list[TensorType | None]
                ) -> list[tuple[Dim, Dim]]:
    """The pairs of input sizes that `op_type`'s rule needs equal (or, broadcasting, one of
    them 1): those of the axes aligned from the last for a broadcasting op, a MatMul's or
    Gemm's contracted axes and MatMul's batch axes, a Concat's axes other than `axis`."""
    shapes = [t.shape for t in types if t is not None]
    if op_type in BROADCASTING:
        return [pair for a, b in zip(shapes, shapes[1:]) for pair in _aligned(a, b)]
    if op_type == "MatMul" and len(shapes) == 2 and min(len(s) for s in shapes) >= 1:
        a, b = shapes
        contracted = b[-2] if len(b) >= 2 else b[0]
        return [(a[-1], contracted), *_aligned(a[:-2], b[:-2])]
    if op_type == "Gemm" and len(shapes) >= 2 and all(len(s) == 2 for s in shapes[:2]):
        a, b = shapes[:2]
        return [(a[0 if attrs.get("transA") else 1], b[1 if attrs.get("transB") else 0])]
    if op_type == "Concat" and shapes and len({len(s) for s in shapes}) == 1:
        rank = len(shapes[0])
        axis = int(attrs.get("axis", 0)) % max(rank, 1)
        return [(s[k], shapes[0][k]) for s in shapes[1:] for k in range(rank) if k != axis]
    return []


def _aligned(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[tuple[Dim, Dim]]:
    """The pairs of axes numpy's broadcasting aligns (from the last)."""
    return list(zip(reversed(a), reversed(b)))
