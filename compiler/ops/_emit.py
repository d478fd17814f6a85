"""The pieces the op families build their ONNX emitters from.

A record's onnx(b, n) appends the ONNX nodes computing n.outputs from n.inputs
(compiler/codegen/onnx.py: OnnxBuilder b, OnnxNode n).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from ..dims import Dim
from ..types import NUMPY_DTYPES
from ._common import FLOATS, INTS, number

# ONNX emitters -----------------------------------------------------------------------------
# A record's onnx(b, n) appends the ONNX nodes computing n.outputs from n.inputs
# (compiler/codegen/onnx.py: OnnxBuilder b, OnnxNode n); the family modules build theirs from
# the pieces below.
Emitter = Callable[[Any, Any], None]

# The references compute half floats in f32 and round once, and so do the emitted graphs: f16
# would round at every step of a formula or an accumulation, and onnxruntime's CPU kernels lack
# bf16 for nearly every op. Both widen to f32 exactly.
HALF_UP = {"f16": "f32", "bf16": "f32"}
BF16_UP = {"bf16": "f32"}  # data movement: exact in f16, but Expand, Pad... have no bf16 kernel


def onnx_dtype(dtype: str) -> int:
    """The TensorProto element type of a kiln dtype (Cast's `to`)."""
    from onnx.helper import np_dtype_to_tensor_dtype  # onnx is loaded only when emitting

    return int(np_dtype_to_tensor_dtype(NUMPY_DTYPES[dtype]))


def trimmed(inputs: Iterable[str | None]) -> list[str | None]:
    """Inputs without trailing absent ones: onnxruntime 1.32's optimizer crashes on some ops
    (LayerNormalization) given an explicit empty name for a trailing optional input."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def one(b, op_type: str, *inputs: str | None, **attrs: Any) -> str:
    """Append a one-output ONNX node; returns its fresh output name."""
    return b.node(op_type, list(inputs), 1, **attrs)[0]


def cast(b, x: str, dtype: str, out: str | None = None) -> str:
    """x converted to the kiln dtype `dtype` (written to `out` when given)."""
    return b.node("Cast", [x], [out] if out else 1, to=onnx_dtype(dtype))[0]


def widened(emit: Emitter, table: dict[str, str] = HALF_UP,
            inputs: tuple[int, ...] | None = None) -> Emitter:
    """`emit` run in wider dtypes: inputs (all, or those at positions `inputs`) whose dtype
    `table` maps are cast up; outputs of such dtypes are computed wide and cast back."""

    def lowered(b, n) -> None:
        ins, in_types = list(n.inputs), list(n.in_types)
        for i in range(len(ins)) if inputs is None else inputs:
            if ins[i] is not None and in_types[i].dtype in table:
                wide = table[in_types[i].dtype]
                ins[i], in_types[i] = cast(b, ins[i], wide), in_types[i].with_dtype(wide)
        outs = [b.fresh("wide") if t.dtype in table else o
                for o, t in zip(n.outputs, n.out_types, strict=True)]
        out_types = [t.with_dtype(table.get(t.dtype, t.dtype)) for t in n.out_types]
        emit(b, dataclasses.replace(n, inputs=ins, in_types=in_types, outputs=outs,
                                    out_types=out_types))
        for wide, out, t in zip(outs, n.outputs, n.out_types, strict=True):
            if wide != out:
                cast(b, wide, t.dtype, out)

    return lowered


def onnx_op(op_type: str, table: dict[str, str] = HALF_UP, **attrs: Any) -> Emitter:
    """An op that is one ONNX op; each attr is a value or a function of the kiln attributes."""

    def emit(b, n) -> None:
        values = {k: v(n.attrs) if callable(v) else v for k, v in attrs.items()}
        b.node(op_type, n.inputs, n.outputs, **values)

    return widened(emit, table)


def attr_number(name: str) -> Callable[[dict], float]:
    """An ONNX float attribute read from the kiln attribute `name`."""
    return lambda a: float(number(a[name], name))


def by_kind(default: Emitter | None = None, **kinds: Emitter) -> Emitter:
    """The emitter for the kind of the first input's dtype (float=, int=, bool=), else default."""

    def emit(b, n) -> None:
        dtype = n.in_types[0].dtype
        kind = "float" if dtype in FLOATS else "int" if dtype in INTS else "bool"
        (kinds.get(kind) or default)(b, n)

    return emit


def identity(b, n) -> None:
    """The emitter of an op whose result is its first input."""
    b.node("Identity", n.inputs[:1], n.outputs)


def chain(b, x: str, steps: Iterable[tuple[str, list[str]]], outputs: list[str]) -> None:
    """Apply steps (op_type, further inputs) to x in turn; the last writes `outputs` (an
    Identity when there are no steps)."""
    steps = list(steps)
    if not steps:
        b.node("Identity", [x], outputs)
    for i, (op_type, more) in enumerate(steps):
        (x,) = b.node(op_type, [x, *more], outputs if i == len(steps) - 1 else 1)


# b.const, b.dim and b.shape are the builder's; the three below stand in for them where a 0-d
# value is needed: b.const writes a 0-d array as a 1-element 1-D initializer (through
# np.ascontiguousarray), so constant sizes from b.dim, and b.shape mixing constant and symbolic
# sizes (a Concat of [1]- and [1, 1]-shaped parts), come out the wrong rank.
def full_of(b, dims: Iterable[Dim | int], value: Any, dtype: str) -> str:
    """A tensor of shape `dims` (symbolic where needed) filled with `value`."""
    return one(b, "Expand", b.const(value, dtype), b.shape(dims))


def onnx_pads(b, pairs: Iterable[tuple[Dim | int, Dim | int]]) -> list[int]:
    """ONNX's pads [x1_begin, x2_begin, ..., x1_end, x2_end] from (begin, end) pairs."""
    pairs = [(Dim.of(lo), Dim.of(hi)) for lo, hi in pairs]
    flat = [lo for lo, _ in pairs] + [hi for _, hi in pairs]
    if not all(p.is_const for p in flat):
        raise b.unsupported("padding that depends on a symbolic size (ONNX pads are attributes)")
    return [p.value for p in flat]
