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
    prod,
    tensors,
    try_broadcast,
    upcast,
)
from ._emit import onnx_op
from ._grad import float_only, swap_last, unbroadcast
from .registry import OpError, OpRecord, Prop, register


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


def _batches(kb, n, body) -> None:
    """body(a, b, c): pointers to one matrix of each operand, for every batch index (batch
    axes broadcast); a, b and c have the operands' storage types."""
    a_t, b_t = n.in_types
    out_t = n.out_types[0]
    batch, m, k, cols = _matrix_shapes(a_t, b_t)
    a, b, c = kb.input("a"), kb.input("b"), kb.output()
    out_batch = TensorType(out_t.dtype, batch)
    a_strides = kb.broadcast_strides(TensorType(a_t.dtype, a_t.shape[:-2]), out_batch)
    b_strides = kb.broadcast_strides(TensorType(b_t.dtype, b_t.shape[:-2]), out_batch)
    c_strides = kb.strides(batch)
    sizes = (kb.dim(m * k), kb.dim(k * cols), kb.dim(m * cols))

    def one_batch(index):
        offsets = (kb.b.mul(kb.dot(index, s), size)
                   for s, size in zip((a_strides, b_strides, c_strides), sizes, strict=True))
        body(*(kb.b.gep(p, [o]) for p, o in zip((a, b, c), offsets, strict=True)))

    kb.loop_nest([kb.dim(d) for d in batch], one_batch)


def _llvm(kb, n):
    """f32 through the packed GEMM (gemm.py), one call per batch, or one call for all when b
    has no batch axes (a's batch rows stacked: [batch * M, K] @ [K, N]); other dtypes by loops."""
    from ..codegen.llvm.gemm import Matrix, PackedB, gemm  # the lowering needs llvmlite

    a_t, b_t = n.in_types
    if a_t.dtype != "f32":
        _batches(kb, n, lambda a, b, c: _loops(kb, n, a, b, c))
        return
    batch, m, k, cols = _matrix_shapes(a_t, b_t)
    dk, dn = kb.dim(k), kb.dim(cols)

    def product(rows, a, b, c):
        gemm(kb, rows, dn, dk, Matrix(a, dk), Matrix(b, dn), Matrix(c, dn))

    if 1 in n.prepacked:  # a weight known before the call, in B's panels (gemm.prepack_b)
        a, b, c = kb.input("a"), kb.input("b"), kb.output()
        gemm(kb, kb.dim(prod(batch) * m), dn, dk, Matrix(a, dk), PackedB(b, dk), Matrix(c, dn))
        return
    if b_t.rank <= 2:
        product(kb.dim(prod(batch) * m), kb.input("a"), kb.input("b"), kb.output())
        return
    _batches(kb, n, lambda a, b, c: product(kb.dim(m), a, b, c))


def _loops(kb, n, a, b, c) -> None:
    """C = A @ B for one batch by loops. f64/ints run i-k-j, so the innermost loop streams a
    row of B into a row of C and vectorises; half floats accumulate each C element in f32
    registers (i-j-k), as the reference rounds once at the end."""
    a_t, b_t = n.in_types
    out_t = n.out_types[0]
    _, m, k, cols = _matrix_shapes(a_t, b_t)
    dk, dn = kb.dim(k), kb.dim(cols)
    with kb.for_range(kb.dim(m)) as i:
        a_row = kb.b.mul(i, dk)
        c_row = kb.b.mul(i, dn)
        if a_t.dtype in ("f16", "bf16"):
            with kb.for_range(dn) as j:
                def step(acc, p):
                    x = kb.load(a, kb.b.add(a_row, p), a_t.dtype)
                    y = kb.load(b, kb.b.add(kb.b.mul(p, dn), j), b_t.dtype)
                    return kb.add(acc, kb.mul(x, y))
                total = kb.accumulate(kb.dim(0), dk, kb.const(0.0, "f32"), step)
                kb.store(c, kb.b.add(c_row, j), total, out_t.dtype)
            return
        zero = kb.const(0, out_t.dtype)
        with kb.for_range(dn) as j:
            kb.store(c, kb.b.add(c_row, j), zero, out_t.dtype)
        with kb.for_range(dk) as p:
            x = kb.load(a, kb.b.add(a_row, p), a_t.dtype)
            b_row = kb.b.mul(p, dn)
            with kb.for_range(dn) as j:
                at = kb.b.add(c_row, j)
                y = kb.load(b, kb.b.add(b_row, j), b_t.dtype)
                kb.store(c, at, kb.add(kb.load(c, at, out_t.dtype), kb.mul(x, y)), out_t.dtype)


def _vjp(gb, node, cts):
    """da = ct @ b^T, db = a^T @ ct, on the operands as matrices (a 1-D a is [1, K], a 1-D b
    is [K, 1], as the forward takes them), summed over the batch axes each was broadcast
    along, then in each operand's own shape."""
    (ct,), (a, b) = cts, node.inputs
    batch, m, _k, n = _matrix_shapes(a.type, b.type)
    am = a if a.type.rank > 1 else gb.reshape(a, [1, a.type.shape[0]])
    bm = b if b.type.rank > 1 else gb.reshape(b, [b.type.shape[0], 1])
    ctm = gb.reshape(ct, [*batch, m, n]) if ct.type.rank != len(batch) + 2 else ct
    da = unbroadcast(gb, gb.matmul(ctm, swap_last(gb, bm)), am.type)
    db = unbroadcast(gb, gb.matmul(swap_last(gb, am), ctm), bm.type)
    return [da if am is a else gb.reshape(da, list(a.type.shape)),
            db if bm is b else gb.reshape(db, list(b.type.shape))]


register(OpRecord("matmul", tensors("a", "b"), _infer, _reference,
                  "Matrix product a @ b: batched and broadcasting, 1-D operands as numpy.",
                  promote=True, macs=_macs, onnx=onnx_op("MatMul"), llvm=_llvm,
                  props=frozenset({Prop.ANCHOR, Prop.CANNOT_FAIL}), packed_weight="b",
                  vjp=float_only(_vjp)))
