"""Linear algebra: matmul with numpy semantics (batched, broadcasting, 1-D operands)."""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    NUMERIC,
    as_dtype,
    check_dtype,
    check_same_dtype,
    dtype_name,
    onnx_op,
    prod,
    tensors,
    try_broadcast,
    upcast,
)
from .registry import OpError, OpRecord, register


def _matrix_shapes(a: TensorType, b: TensorType):
    """Batch shape, M, K, N of a @ b (a 1-D a is [1, K], a 1-D b is [K, 1], as numpy)."""
    for t, name in ((a, "a"), (b, "b")):
        if t.rank == 0:
            raise OpError(f"operands must have rank 1 or more: {shape_str(a.shape)} @ "
                          f"{shape_str(b.shape)}", arg=name)
    ash = a.shape if a.rank > 1 else (Dim.of(1), a.shape[0])
    bsh = b.shape if b.rank > 1 else (b.shape[0], Dim.of(1))
    if ash[-1] != bsh[-2]:
        raise OpError(f"inner dimensions differ: {shape_str(a.shape)} @ {shape_str(b.shape)}",
                      arg="b")
    batch = try_broadcast(ash[:-2], bsh[:-2])
    if batch is None:
        raise OpError(f"batch dimensions cannot broadcast: {shape_str(a.shape)} @ "
                      f"{shape_str(b.shape)}", arg="b")
    return batch, ash[-2], ash[-1], bsh[-1]


def _infer(types, _attrs):
    a, b = types
    check_dtype(a, NUMERIC, "a")
    check_dtype(b, NUMERIC, "b")
    dtype = check_same_dtype([a, b], ["a", "b"])
    batch, m, _k, n = _matrix_shapes(a, b)
    shape = batch + ((m,) if a.rank > 1 else ()) + ((n,) if b.rank > 1 else ())
    return [TensorType(dtype, shape)]


def _reference(env, inputs, _attrs):
    a, b = inputs
    return [as_dtype(np.matmul(upcast(a), upcast(b)), dtype_name(a))]


def _macs(input_types, _output_types, _attrs) -> Dim:
    batch, m, k, n = _matrix_shapes(*input_types)
    return prod(batch) * m * k * n


register(OpRecord("matmul", tensors("a", "b"), _infer, _reference,
                  "Matrix product a @ b: batched and broadcasting, 1-D operands as numpy.",
                  promote=True, macs=_macs, onnx=onnx_op("MatMul")))
