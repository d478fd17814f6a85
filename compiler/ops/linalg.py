"""Linear algebra: matmul with numpy semantics (batched, broadcasting, 1-D operands)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dims import Dim
from ..types import TensorType, shape_str
from ._common import (
    NUMERIC,
    as_dtype,
    attrs,
    check_dtype,
    check_same_dtype,
    dtype_name,
    optional,
    prod,
    tensors,
    to_dims,
    try_broadcast,
    upcast,
)
from ._emit import onnx_op
from ._grad import float_only, swap_last, unbroadcast
from .registry import OpError, OpRecord, Prop, internal, register


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
    batch, m, k, n = _matrix_shapes(a.type, b.type)
    am = a if a.type.rank > 1 else gb.reshape(a, [1, a.type.shape[0]])
    bm = b if b.type.rank > 1 else gb.reshape(b, [b.type.shape[0], 1])
    ctm = gb.reshape(ct, [*batch, m, n]) if ct.type.rank != len(batch) + 2 else ct
    da = unbroadcast(gb, gb.matmul(ctm, swap_last(gb, bm)), am.type)
    if bm.type.rank == 2 and am.type.rank > 2:  # a linear layer over [..., M, K] rows: one
        # GEMM over all of them, not a batched product summed over its batch
        rows = prod(batch) * m
        db = gb.matmul(swap_last(gb, gb.reshape(am, [rows, k])), gb.reshape(ctm, [rows, n]))
    else:
        db = unbroadcast(gb, gb.matmul(swap_last(gb, am), ctm), bm.type)
    return [da if am is a else gb.reshape(da, list(a.type.shape)),
            db if bm is b else gb.reshape(db, list(b.type.shape))]


register(OpRecord("matmul", tensors("a", "b"), _infer, _reference,
                  "Matrix product a @ b: batched and broadcasting, 1-D operands as numpy.",
                  promote=True, macs=_macs, onnx=onnx_op("MatMul"), llvm=_llvm,
                  props=frozenset({Prop.ANCHOR, Prop.CANNOT_FAIL}), packed_weight="b",
                  vjp=float_only(_vjp)))


# matmul_bt: a @ b^T, b stored as [N, K] ------------------------------------------------------
def _bt_infer(types, _attrs):
    a, b = types
    check_dtype(a, ("f32", "f64"), "a")
    dtype = check_same_dtype([a, b], ["a", "b"])
    if a.rank < 2 or b.rank != 2:
        raise OpError(f"a must have rank 2 or more and b be a matrix, not {shape_str(a.shape)}"
                      f" and {shape_str(b.shape)}", arg="b")
    if a.shape[-1] != b.shape[1]:
        raise OpError(f"a's rows and b's must be as long: {shape_str(a.shape)} @ "
                      f"{shape_str(b.shape)}^T", arg="b")
    return [TensorType(dtype, (*a.shape[:-1], b.shape[0]))]


def _bt_reference(env, inputs, _attrs):
    a, b = inputs
    return [as_dtype(upcast(a) @ upcast(b).T, dtype_name(a))]


def _bt_macs(input_types, _output_types, _attrs) -> Dim:
    a, (n, k) = input_types[0], input_types[1].shape
    return prod(a.shape[:-1]) * k * n


def _bt_onnx(b, n):
    from ._emit import one

    a, bm = n.inputs
    b.node("MatMul", [a, one(b, "Transpose", bm, perm=[1, 0])], n.outputs)


def _bt_llvm(kb, n):
    """The GEMM packing B's panels from b's rows (gemm.TransposedB): no copy of b^T."""
    from ..codegen.llvm.gemm import Matrix, TransposedB, gemm  # the lowering needs llvmlite

    a_t, b_t = n.in_types
    if a_t.dtype != "f32":  # only the native pipeline's f32 rewrite makes it
        raise OpError("matmul_bt runs natively in f32 only", arg="a", code="K0302")
    dk, dn = kb.dim(a_t.shape[-1]), kb.dim(b_t.shape[0])
    gemm(kb, kb.dim(prod(a_t.shape[:-1])), dn, dk, Matrix(kb.input("a"), dk),
         TransposedB(kb.input("b"), dk), Matrix(kb.output(), dn))


def _bt_vjp(gb, node, cts):
    """da = ct @ b, db = ct^T @ a over all of a's rows ([N, K], b's layout)."""
    (ct,), (a, b) = cts, node.inputs
    k, n = a.type.shape[-1], b.type.shape[0]
    rows = prod(a.type.shape[:-1])
    a2 = a if a.type.rank == 2 else gb.reshape(a, [rows, k])
    ct2 = ct if ct.type.rank == 2 else gb.reshape(ct, [rows, n])
    return [gb.matmul(ct, b), gb.matmul(swap_last(gb, ct2), a2)]


register(internal(OpRecord(
    "matmul_bt", tensors("a", "b"), _bt_infer, _bt_reference,
    "a @ b^T for a [..., M, K] and a matrix b [N, K]: a linear layer x @ W^T whose weight is "
    "not known before the call (a training step's), read by the GEMM in place (the native "
    "pipeline's rewrite of matmul(x, permute(W))).",
    macs=_bt_macs, onnx=_bt_onnx, llvm=_bt_llvm,
    props=frozenset({Prop.ANCHOR, Prop.CANNOT_FAIL}), vjp=float_only(_bt_vjp))))


# shifted_matmul: the products of one matrix with row-shifted windows of another -------------
def _shifts(attrs) -> tuple[list[int | Dim], int, int]:
    """The op's shifts, span and step, checked. A shift may be a size (a convolution's weight
    gradient over images of symbolic width: i * Wp + j); then the shifts are in increasing
    order, the last the furthest."""
    shifts, span, step = attrs["shifts"], attrs["span"], attrs["step"]
    if (not isinstance(shifts, list | tuple) or not shifts
            or not all(isinstance(s, Dim) or isinstance(s, int) and not isinstance(s, bool)
                       and s >= 0 for s in shifts)):
        raise OpError(f"shifts must be a non-empty list of non-negative ints, not {shifts!r}",
                      arg="shifts", code="K0303")
    for name, value in (("span", span), ("step", step)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise OpError(f"{name} must be a positive int, not {value!r}", arg=name,
                          code="K0303")
    return list(shifts), span, step


def _sized(shifts: list[int | Dim]) -> bool:
    """Whether some shift is a size (a Dim) rather than a number."""
    return not all(isinstance(s, int) for s in shifts)


def _furthest(shifts: list[int | Dim]) -> int | Dim:
    """The largest shift: the last where one is a size (they are given in increasing order)."""
    return Dim.of(shifts[-1]) if _sized(shifts) else max(shifts)


def _window_rows(k, shifts: list[int | Dim], span: int, step: int):
    """The rows b needs: the furthest window's last row, plus one."""
    return (k - 1) * step + _furthest(shifts) + span


def _shifted_infer(types, attrs):
    a, b = types
    check_dtype(a, ("f32", "f64"), "a")  # f64: gradient checks by finite differences
    dtype = check_same_dtype([a, b], ["a", "b"])
    shifts, span, step = _shifts(attrs)
    if a.rank != 2 or b.rank != 2:
        raise OpError(f"a and b must be matrices, not {shape_str(a.shape)} and "
                      f"{shape_str(b.shape)}", arg="b")
    m, k = a.shape
    rows, cols = b.shape
    need = _window_rows(k, shifts, span, step)
    # more rows than the furthest window reads (a padded layout's whole zero samples): a
    # constant number more, so that the ONNX emitter can count the windows' ends from b's end;
    # with shifts that are sizes, a number of sizes more (the kernel checks it at run time)
    spare = Dim.of(rows - need)
    if not (spare.is_const and spare.value >= 0) and not (_sized(shifts)
                                                         and not spare.is_const):
        raise OpError(f"b must have {need} rows ((a's {k} columns - 1) * step {step}, the "
                      f"largest shift, {_furthest(shifts)}, and span, {span}), not {rows}",
                      arg="b")
    return [TensorType(dtype, (Dim.of(len(shifts)), m, cols * span))]


def _shifted_reference(env, inputs, attrs):
    a, b = (upcast(x) for x in inputs)
    shifts, span, step = _shifts(attrs)
    shifts = [env.eval_dim(s) for s in shifts]
    k = a.shape[1]
    out = np.stack([a @ np.concatenate([b[s + j:s + j + (k - 1) * step + 1:step]
                                        for j in range(span)], axis=1) for s in shifts])
    return [as_dtype(out, dtype_name(inputs[0]))]


def _shifted_macs(input_types, _output_types, attrs) -> Dim:
    (m, k), (_rows, cols) = (t.shape for t in input_types)
    return Dim.of(len(attrs["shifts"]) * attrs["span"]) * m * k * cols


def _shifted_onnx(b, n):
    """Per shift: b's windows as Slices (each end counted from b's end, so a symbolic K needs
    no arithmetic; every step-th row), side by side (Concat), a MatMul, a new leading axis;
    then one Concat."""
    from ._emit import one

    a, bm = n.inputs
    shifts, span, step = _shifts(n.attrs)
    (_m, k), (rows, _cols) = (t.shape for t in n.in_types)
    if _sized(shifts):  # sizes: each window's ends counted from its start
        products = []
        for s in shifts:
            windows = [one(b, "Slice", bm, b.shape([Dim.of(s) + j]),
                           b.shape([Dim.of(s) + j + (k - 1) * step + 1]), b.ints([0]),
                           b.ints([step])) for j in range(span)]
            window = windows[0] if span == 1 else one(b, "Concat", *windows, axis=1)
            products.append(one(b, "Unsqueeze", one(b, "MatMul", a, window), b.ints([0])))
        b.node("Concat", products, n.outputs, axis=0)
        return
    last = max(shifts) + span - 1  # the largest first row of a window
    spare = (rows - _window_rows(k, shifts, span, step)).value  # past the furthest window
    products = []
    for s in shifts:
        windows = []
        for j in range(span):
            end = s + j - last - spare  # one past the window's last row, from b's end
            end = end if end < 0 else np.iinfo(np.int64).max
            windows.append(one(b, "Slice", bm, b.ints([s + j]), b.ints([end]), b.ints([0]),
                               b.ints([step])))
        window = windows[0] if span == 1 else one(b, "Concat", *windows, axis=1)
        products.append(one(b, "Unsqueeze", one(b, "MatMul", a, window), b.ints([0])))
    b.node("Concat", products, n.outputs, axis=0)


def _shifted_llvm(kb, n):
    """One GEMM per shift, nothing copied: the window of `span` rows side by side is b read
    from row `shift` on with a row stride of `step` rows (rows r..r+span-1 are contiguous),
    so consecutive rows of the window overlap in memory when step < span."""
    from ..codegen.llvm.gemm import Matrix, gemm  # the lowering needs llvmlite

    if n.in_types[0].dtype != "f32":  # only conv's f32 rule makes it
        raise OpError("shifted_matmul runs natively in f32 only", arg="a", code="K0302")
    (m, k), (rows, cols) = (t.shape for t in n.in_types)
    shifts, span, step = _shifts(n.attrs)
    a, b, c = kb.input("a"), kb.input("b"), kb.output()
    dm, dk, dc = kb.dim(m), kb.dim(k), kb.dim(cols)
    width = kb.b.mul(dc, kb.dim(span))

    def products() -> None:
        for t, s in enumerate(shifts):
            window = kb.b.gep(b, [kb.b.mul(kb.dim(s), dc)])
            out = kb.b.gep(c, [kb.b.mul(kb.dim(t), kb.b.mul(dm, width))])
            gemm(kb, dm, width, dk, Matrix(a, dk), Matrix(window, kb.b.mul(dc, kb.dim(step))),
                 Matrix(out, width))

    if not _sized(shifts):  # the shape rule checked b's rows
        products()
        return
    # shifts that are sizes: b's rows must cover the furthest window, checked before any read
    ok = kb.b.icmp_signed(">=", kb.dim(rows), kb.dim(Dim.of(_window_rows(k, shifts, span,
                                                                         step))))
    kb.check(ok, "shifted_matmul: b has fewer rows than its furthest window reads")
    with kb.b.if_then(ok):
        products()


def _shifted_vjp(gb, node, cts):
    """With W_t the window of shift t (span slices of b side by side, each every step-th
    row): da = sum over t of g[t] @ W_t^T, and each slice of b gets a^T @ (its columns of
    g[t]) placed at its rows."""
    from .slicing import place
    from .views import range_on

    (g,), (a, b) = cts, node.inputs
    shifts, span, step = _shifts(node.attrs)
    (m, k), (rows, cols) = a.type.shape, b.type.shape
    da = db = None
    for t, s in enumerate(shifts):
        gt = gb.reshape(gb.op("slice", g, items=range_on(0, t, t + 1)), [m, cols * span])
        for j in range(span):
            part = gt if span == 1 else gb.op("slice", gt, items=range_on(1, j * cols,
                                                                          (j + 1) * cols))
            window = gb.op("slice", b, items=range_on(0, s + j, (k - 1) * step + s + j + 1,
                                                      step))
            term_a = gb.matmul(part, swap_last(gb, window))
            term_b = place(gb, gb.matmul(swap_last(gb, a), part), 0, rows, Dim.of(s + j), k,
                           step)
            da = term_a if da is None else gb.add(da, term_a)
            db = term_b if db is None else gb.add(db, term_b)
    return [da, db]


register(internal(OpRecord(
    "shifted_matmul", tensors("a", "b") + attrs("shifts", ("span", 1), ("step", 1)),
    _shifted_infer, _shifted_reference,
    "out[t] = a @ [b[s_t :: step][:K] | b[s_t + 1 :: step][:K] | ... span windows side by "
    "side], s_t = shifts[t], for a [M, K]: a convolution's weight gradient over channels-last "
    "rows (a shift per kernel row, the span its width, the step its stride; a shift may be a "
    "size, i * Wp + j over images of symbolic width); b may have rows past the furthest "
    "window, which are not read.",
    macs=_shifted_macs, onnx=_shifted_onnx, llvm=_shifted_llvm,
    props=frozenset({Prop.CANNOT_FAIL}), vjp=_shifted_vjp)))


# matmul_at: a^T @ b, a stored as [K, M] -------------------------------------------------------
def _at_infer(types, _attrs):
    a, b = types
    check_dtype(a, ("f32", "f64"), "a")
    dtype = check_same_dtype([a, b], ["a", "b"])
    if a.rank != 2 or b.rank != 2:
        raise OpError(f"a and b must be matrices, not {shape_str(a.shape)} and "
                      f"{shape_str(b.shape)}", arg="b")
    if a.shape[0] != b.shape[0]:
        raise OpError(f"a and b must have as many rows: {shape_str(a.shape)}^T @ "
                      f"{shape_str(b.shape)}", arg="b")
    return [TensorType(dtype, (a.shape[1], b.shape[1]))]


def _at_reference(env, inputs, _attrs):
    a, b = inputs
    return [as_dtype(upcast(a).T @ upcast(b), dtype_name(a))]


def _at_macs(input_types, _output_types, _attrs) -> Dim:
    (k, m), (_k, n) = (t.shape for t in input_types)
    return k * m * n


def _at_onnx(b, n):
    from ._emit import one

    a, bm = n.inputs
    b.node("MatMul", [one(b, "Transpose", a, perm=[1, 0]), bm], n.outputs)


def _at_llvm(kb, n):
    """The GEMM reading A transposed in place (gemm.Matrix's transposed A): no copy of a."""
    from ..codegen.llvm.gemm import Matrix, gemm  # the lowering needs llvmlite

    if n.in_types[0].dtype != "f32":  # only the native pipeline's f32 rewrite makes it
        raise OpError("matmul_at runs natively in f32 only", arg="a", code="K0302")
    (k, m), (_k, cols) = (t.shape for t in n.in_types)
    dm, dn = kb.dim(m), kb.dim(cols)
    gemm(kb, dm, dn, kb.dim(k), Matrix(kb.input("a"), dm, transposed=True),
         Matrix(kb.input("b"), dn), Matrix(kb.output(), dn))


def _at_vjp(gb, node, cts):
    """da = b @ ct^T ([K, M], a's layout), db = a @ ct."""
    (ct,), (a, b) = cts, node.inputs
    return [gb.matmul(b, swap_last(gb, ct)), gb.matmul(a, ct)]


register(internal(OpRecord(
    "matmul_at", tensors("a", "b"), _at_infer, _at_reference,
    "a^T @ b for matrices a [K, M] and b [K, N]: a weight gradient x^T @ dy whose x the GEMM "
    "reads transposed in place (the native pipeline's rewrite of matmul(permute(x), b)).",
    macs=_at_macs, onnx=_at_onnx, llvm=_at_llvm, props=frozenset({Prop.CANNOT_FAIL}),
    vjp=float_only(_at_vjp))))


# matmul_strided: a batched product of strided views, written through one ----------------------
# A view of a tensor's elements, flat: [offset, *strides], element strides as sizes, one per
# axis of what it views (the batch axes, then rows, then columns). passes/views.py makes them
# from the layout ops (split, reshape, transpose, permute) between a product and the tensors
# it reads and writes, so that none of those ops copies anything.
def _views(attrs, names: tuple[str, ...], ranks: int) -> list[list[Dim]]:
    """The view attributes `names`, each an offset and ranks + 2 strides, checked: c_view's
    columns of stride 1, the others' rows or columns (a matrix, or the transpose of one)."""
    views = []
    for name in names:
        view = attrs[name]
        if not isinstance(view, list | tuple) or len(view) != ranks + 3:
            raise OpError(f"{name} must be an offset and {ranks + 2} strides", arg=name,
                          code="K0303")
        view = list(to_dims(view, name))
        if view[-1] != 1 and (name == "c_view" or view[-2] != 1):
            raise OpError(f"{name} must have " + ("columns" if name == "c_view" else
                                                  "rows or columns") + " of stride 1",
                          arg=name, code="K0303")
        views.append(view)
    return views


def _alpha(attrs) -> float:
    alpha = attrs["alpha"]
    if not isinstance(alpha, float):
        raise OpError(f"alpha must be a float, not {alpha!r}", arg="alpha", code="K0303")
    return alpha


def _strided_parts(attrs) -> tuple[list[Dim], Dim, Dim, Dim, list[list[Dim]], list[Dim], float]:
    """The batch sizes, m, k, n, the three views (a, b, c) and out's shape, checked."""
    batch = list(to_dims(attrs["batch"], "batch"))
    m, k, n = (Dim.of(attrs[name]) for name in ("m", "k", "n"))
    views = _views(attrs, ("a_view", "b_view", "c_view"), len(batch))
    return batch, m, k, n, views, list(to_dims(attrs["shape"], "shape")), _alpha(attrs)


def _strided_infer(types, attrs):
    for t, name in zip(types, ("a", "b"), strict=True):
        check_dtype(t, ("f32",), name)
    *_, shape, _alpha = _strided_parts(attrs)
    return [TensorType("f32", tuple(shape))]


def _as_view(x: np.ndarray, view: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """The elements of x (flat, row-major) that `view` ([offset, *strides]) sees, as `shape`."""
    flat = np.ascontiguousarray(x).reshape(-1)
    return np.lib.stride_tricks.as_strided(flat[view[0]:], shape=shape,
                                           strides=[s * flat.itemsize for s in view[1:]])


def _through_view(shape: list[int], view: list[int], value: np.ndarray) -> np.ndarray:
    """A new f32 tensor of `shape` whose elements `view` sees (all of them) hold `value`."""
    out = np.empty(shape, np.float32)
    _as_view(out, view, value.shape)[...] = value
    return out


def _strided_reference(env, inputs, attrs):
    a, b = inputs
    batch, m, k, n, views, shape, alpha = _strided_parts(attrs)
    batch, (m, k, n) = [env.eval_dim(d) for d in batch], (env.eval_dim(d) for d in (m, k, n))
    av, bv, cv = ([env.eval_dim(d) for d in v] for v in views)
    product = np.matmul(_as_view(a, av, (*batch, m, k)), _as_view(b, bv, (*batch, k, n)))
    if alpha != 1.0:
        product = product * np.float32(alpha)
    return [_through_view([env.eval_dim(d) for d in shape], cv, product)]


def _strided_macs(_input_types, _output_types, attrs) -> Dim:
    batch, m, k, n, *_ = _strided_parts(attrs)
    return prod(batch) * m * k * n


def _view_matrix(b, ptr, view: list, index: list, plain: bool, as_b: bool):
    """The matrix of a view (its offset and strides as i64 values) at batch index `index`:
    row-major where `plain` (columns of stride 1), else transposed (rows of stride 1): as A a
    transposed Matrix, as B a gemm.TransposedB."""
    from ..codegen.llvm.gemm import Matrix, TransposedB

    offset = view[0]
    for i, stride in zip(index, view[1:-2], strict=True):
        offset = b.add(offset, b.mul(i, stride))
    at = b.gep(ptr, [offset])
    if plain:
        return Matrix(at, view[-2])
    return TransposedB(at, view[-1]) if as_b else Matrix(at, view[-1], transposed=True)


def _scale_rows(kb, c, ldc, rows, cols, alpha: float) -> None:
    """C[:rows, :cols] *= alpha, C's rows ldc floats apart."""
    b = kb.b
    scale = kb.const(alpha, "f32")
    with kb.for_range(rows) as i:
        row = b.gep(c, [b.mul(i, ldc)])
        with kb.for_range(cols) as j:
            kb.store(row, j, kb.mul(kb.load(row, j, "f32"), scale), "f32")


def _strided_llvm(kb, n):
    """One GEMM per batch index, each operand a matrix at its view's offset: A row-major or
    transposed, B a matrix or the transpose of one (gemm.TransposedB), C row-major; C scaled
    by alpha after its product, while it is in cache."""
    from ..codegen.llvm.gemm import gemm  # the lowering needs llvmlite

    batch, m, k, cols, views, _shape, alpha = _strided_parts(n.attrs)
    av, bv, cv = ([kb.dim(x) for x in view] for view in views)
    a_plain, b_plain = (view[-1] == 1 for view in views[:2])
    dm, dk, dn = kb.dim(m), kb.dim(k), kb.dim(cols)

    def one_batch(index):
        c = _view_matrix(kb.b, kb.output(), cv, index, True, False)
        gemm(kb, dm, dn, dk, _view_matrix(kb.b, kb.input("a"), av, index, a_plain, False),
             _view_matrix(kb.b, kb.input("b"), bv, index, b_plain, True), c)
        if alpha != 1.0:
            _scale_rows(kb, c.ptr, c.stride, dm, dn, alpha)

    kb.loop_nest([kb.dim(d) for d in batch], one_batch)


def _onnx_indices(b, view: list[Dim], sizes: list[Dim]) -> str:
    """The flat element indices a view sees, as an i64 tensor of shape `sizes`: its offset
    plus each axis' Range times its stride."""
    from ._emit import one

    total = b.dim(view[0])
    for axis, (size, stride) in enumerate(zip(sizes, view[1:], strict=True)):
        steps = one(b, "Mul", one(b, "Range", b.dim(0), b.dim(size), b.dim(1)), b.dim(stride))
        at = [1] * len(sizes)
        at[axis] = -1
        total = one(b, "Add", total, one(b, "Reshape", steps, b.ints(at)))
    return total


def _onnx_view(b, x: str, view: list[Dim], sizes: list[Dim]) -> str:
    """A view of x's flat elements, as a tensor of shape `sizes` (a Gather)."""
    from ._emit import one

    return one(b, "Gather", one(b, "Reshape", x, b.ints([-1])), _onnx_indices(b, view, sizes),
               axis=0)


def _onnx_through(b, value: str, view: list[Dim], sizes: list[Dim], shape: list[Dim],
                  outputs: list[str]) -> None:
    """`outputs`: a tensor of `shape` that `value` (of shape `sizes`) fills through `view`
    (a ScatterND into zeros, then a Reshape)."""
    from ._emit import one

    where = one(b, "Unsqueeze", _onnx_indices(b, view, sizes), b.ints([-1]))
    zeros = one(b, "Expand", b.const(np.float32(0)), b.shape([prod(shape)]))
    b.node("Reshape", [one(b, "ScatterND", zeros, where, value), b.shape(shape)], outputs)


def _strided_onnx(b, n):
    """The views as Gathers of the flat operands at their element indices, MatMul, and a
    ScatterND of the product into the flat result at c's indices."""
    from ._emit import one

    batch, m, k, cols, (av, bv, cv), shape, alpha = _strided_parts(n.attrs)
    product = one(b, "MatMul", _onnx_view(b, n.inputs[0], av, [*batch, m, k]),
                  _onnx_view(b, n.inputs[1], bv, [*batch, k, cols]))
    if alpha != 1.0:
        product = one(b, "Mul", product, b.const(np.float32(alpha)))
    _onnx_through(b, product, cv, [*batch, m, cols], shape, n.outputs)


register(internal(OpRecord(
    "matmul_strided", tensors("a", "b") + attrs("batch", "m", "k", "n", "a_view", "b_view",
                                                "c_view", "shape", ("alpha", 1.0)),
    _strided_infer, _strided_reference,
    "alpha * (a' @ b') for views a' [*batch, m, k] of a and b' [*batch, k, n] of b, written "
    "through the view c_view of a result of `shape`, which it covers once: the native "
    "pipeline's rewrite of a batched product whose operands or result pass through layout "
    "ops (passes/views.py), read and written in place.",
    macs=_strided_macs, onnx=_strided_onnx, llvm=_strided_llvm,
    props=frozenset({Prop.ANCHOR, Prop.CANNOT_FAIL}))))


# attention_strided: softmax(alpha * q' @ k') @ v' of views, its scores never stored ---------
SCORES_MOST = 1 << 40  # floats of one batch index's scores the kernel allocates, at most
# floats of scores a block of queries holds (as many rows as fit, in whole tiles): 512 KiB,
# in L2 from the scores' product to the softmax and the product with v
SCORES_BLOCK = 1 << 17


def _attention_parts(attrs):
    """The batch sizes, m (queries), d (q's and k's depth), s (keys), n (v's width), the
    four views (q [*batch, m, d], k [*batch, d, s], v [*batch, s, n], c [*batch, m, n]),
    the result's shape and alpha, checked."""
    batch = list(to_dims(attrs["batch"], "batch"))
    m, d, s, n = (Dim.of(attrs[name]) for name in ("m", "d", "s", "n"))
    views = _views(attrs, ("q_view", "k_view", "v_view", "c_view"), len(batch))
    return batch, m, d, s, n, views, list(to_dims(attrs["shape"], "shape")), _alpha(attrs)


def _score_views(attrs, ranks: int, mask, bias) -> tuple[list[Dim] | None, list[Dim] | None]:
    """The views of the mask and the bias ([*batch, m, s], a stride 0 along an axis they are
    broadcast over, keys of stride 1), each None where that input is absent, checked."""
    views = []
    for name, given in (("mask_view", mask), ("bias_view", bias)):
        view = attrs[name]
        if (view is None) != (given is None):
            raise OpError(f"{name} is given exactly when its input is", arg=name, code="K0303")
        if view is not None:
            if not isinstance(view, list | tuple) or len(view) != ranks + 3:
                raise OpError(f"{name} must be an offset and {ranks + 2} strides", arg=name,
                              code="K0303")
            view = list(to_dims(view, name))
            if view[-1] != 1:
                raise OpError(f"{name} must have keys of stride 1", arg=name, code="K0303")
        views.append(view)
    return views[0], views[1]


def _fill(attrs) -> float:
    """The mask's fill value, checked (and `keep`, which says where it goes)."""
    fill = attrs["fill"]
    if not isinstance(fill, float):
        raise OpError(f"fill must be a float, not {fill!r}", arg="fill", code="K0303")
    if not isinstance(attrs["keep"], bool):
        raise OpError(f"keep must be true or false, not {attrs['keep']!r}", arg="keep",
                      code="K0303")
    return fill


def _attention_infer(types, attrs):
    q, k, v, mask, bias = types
    for t, name in ((q, "q"), (k, "k"), (v, "v"), (bias, "bias")):
        if t is not None:
            check_dtype(t, ("f32",), name)
    if mask is not None:
        check_dtype(mask, ("bool",), "mask")
    batch, *_, shape, _alpha = _attention_parts(attrs)
    _score_views(attrs, len(batch), mask, bias)
    _fill(attrs)
    return [TensorType("f32", tuple(shape))]


def _masked_scores(scores, mask, bias, attrs) -> np.ndarray:
    """The scores where the mask keeps them (else fill; `keep` false: where it is false),
    plus the bias: what the softmax reads."""
    if mask is not None:
        fill = np.float32(attrs["fill"])
        scores = np.where(mask, scores, fill) if attrs["keep"] else np.where(mask, fill, scores)
    return scores if bias is None else scores + bias


def _attention_reference(env, inputs, attrs):
    from .reduce import softmax

    q, k, v, mask, bias = inputs
    batch, m, d, s, n, views, shape, alpha = _attention_parts(attrs)
    batch, (m, d, s, n) = [env.eval_dim(x) for x in batch], (env.eval_dim(x) for x in (m, d, s, n))
    qv, kv, vv, cv = ([env.eval_dim(x) for x in view] for view in views)
    scores = np.matmul(_as_view(q, qv, (*batch, m, d)), _as_view(k, kv, (*batch, d, s)))
    if alpha != 1.0:
        scores = scores * np.float32(alpha)
    mv, bv = (None if view is None else [env.eval_dim(x) for x in view]
              for view in _score_views(attrs, len(batch), mask, bias))
    scores = _masked_scores(scores, None if mask is None else _as_view(mask, mv, scores.shape),
                            None if bias is None else _as_view(bias, bv, scores.shape), attrs)
    product = np.matmul(softmax(scores, -1), _as_view(v, vv, (*batch, s, n)))
    return [_through_view([env.eval_dim(x) for x in shape], cv, product)]


def _attention_macs(_input_types, _output_types, attrs) -> Dim:
    batch, m, d, s, n, *_ = _attention_parts(attrs)
    return prod(batch) * m * s * (d + n)


def _attention_llvm(kb, n):
    """Per batch index, a block of queries at a time (`_attention_range`): their scores
    q' @ k' into a buffer, scaled by alpha, masked and biased (one vectorised pass over each
    row, where there is any of these), softmax along its rows in place (reductions.py's row
    softmax), then scores @ v' written through c's view. The scores stay in cache from one
    step to the next; the whole [*batch, m, s] of them is never stored. The batch indices are
    shared by the module's threads (each with its own buffers, its GEMMs whole), once there
    are enough multiply-adds."""
    from llvmlite import ir

    from ..codegen.llvm import irgen
    from ..codegen.llvm.gemm import PARALLEL_WORK
    from ..codegen.llvm.threads import parallel_rows

    batch, m, d, s, cols, views, _shape, alpha = _attention_parts(n.attrs)
    mask, bias = kb.input("mask"), kb.input("bias")
    extra = [v for v in _score_views(n.attrs, len(batch), mask, bias) if v is not None]
    sizes = [kb.dim(x) for x in (m, d, s, cols, *batch)] + [
        kb.dim(x) for v in [*views, *extra] for x in v]
    pointers = [kb.input("q"), kb.input("k"), kb.input("v"), kb.output()] + [
        x for x in (mask, bias) if x is not None]
    scores = _ScoreRows(alpha, mask is not None, bias is not None, _fill(n.attrs),
                        n.attrs["keep"])
    count = kb.numel(batch)
    zero = ir.Constant(ir.IntType(64), 0)
    plain = tuple(view[-1] == 1 for view in views[:3])
    if kb.serial:  # a caller's threads run this kernel already
        _attention_range(kb, pointers, zero, count, sizes, len(batch), scores, plain)
        return
    inner = kb.helper("heads")
    start, rows, *rest = (irgen.element(inner.b, inner.dims_ptr, i)
                          for i in range(2 + len(sizes)))
    inner.serial = True
    buffers = [inner.buffer(i, "f32") for i in range(4)]
    if scores.mask:
        buffers.append(inner.buffer(4, "bool"))
    if scores.bias:
        buffers.append(inner.buffer(len(buffers), "f32"))
    _attention_range(inner, buffers, start, rows, rest, len(batch), scores, plain)
    fn = parallel_rows(kb.module, inner.finish(), len(pointers), 2 + len(sizes),
                       lambda b, ptrs, sizes, row0: (list(ptrs), [b.add(sizes[0], row0),
                                                                  *sizes[1:]]),
                       min_rows=1, min_work=PARALLEL_WORK, rows_index=1,
                       work=lambda b, sizes: b.mul(b.mul(sizes[1], b.mul(sizes[2], sizes[4])),
                                                   b.add(sizes[3], sizes[5])))
    kb.call_kernel(fn, pointers, [zero, count, *sizes], "heads")


@dataclass(frozen=True)
class _ScoreRows:
    """What attention_strided does to its scores before the softmax: scale by alpha, then
    where a mask (keep: true) keeps them, else fill; then add a bias."""

    alpha: float
    mask: bool
    bias: bool
    fill: float
    keep: bool

    def any(self) -> bool:
        return self.alpha != 1.0 or self.mask or self.bias

    def emit(self, kb, scores, ds, dm, width: int, mask_row, bias_row) -> None:
        """Rows 0 .. dm of the scores (ds floats each) in place, one vector at a time;
        mask_row(i) and bias_row(i): where row i of the mask (bytes) and of the bias start."""
        from llvmlite import ir

        from ..codegen.llvm.reductions import RowVectors

        b = kb.b
        rows = RowVectors(kb, ds, width)
        i8s, lanes = ir.VectorType(ir.IntType(8), width), ir.VectorType(ir.IntType(1), width)
        masked_load = None
        if self.mask:
            symbol = f"llvm.masked.load.v{width}i8.p0"
            masked_load = kb.module.globals.get(symbol) or ir.Function(
                kb.module, ir.FunctionType(i8s, [i8s.as_pointer(), ir.IntType(32), lanes, i8s]),
                symbol)
        with kb.for_range(dm) as i:
            row = b.gep(scores, [b.mul(i, ds)])
            mrow = mask_row(i) if self.mask else None
            brow = bias_row(i) if self.bias else None

            def one(j, tail, carried):
                v = rows.load(row, j, tail)
                if self.alpha != 1.0:
                    v = b.fmul(v, rows.splat(self.alpha))
                if self.mask:
                    at = b.bitcast(b.gep(mrow, [j]), i8s.as_pointer())
                    bytes_ = b.load(at, align=1) if tail is None else b.call(
                        masked_load, [at, ir.Constant(ir.IntType(32), 1), tail,
                                      ir.Constant(i8s, None)])
                    set_ = b.icmp_unsigned("!=", bytes_, ir.Constant(i8s, None))
                    fill = rows.splat(self.fill)
                    v = b.select(set_, v, fill) if self.keep else b.select(set_, fill, v)
                if self.bias:
                    v = b.fadd(v, rows.load(brow, j, tail))
                rows.store(v, row, j, tail)
                return carried

            rows.sweep(ir.Constant(ir.IntType(64), 0), one)


def _rows_from(kb, matrix, row):
    """The matrix of `matrix`'s rows from `row` on (gemm.Matrix, row-major or transposed)."""
    from llvmlite import ir

    from ..codegen.llvm.gemm import Matrix

    return Matrix(matrix.at(kb, row, ir.Constant(row.type, 0)), matrix.stride,
                  transposed=matrix.transposed)


def _line(b, ptr):
    """ptr rounded up to the next cache line (64 bytes)."""
    from llvmlite import ir

    i64 = ir.IntType(64)
    at = b.and_(b.add(b.ptrtoint(ptr, i64), ir.Constant(i64, 63)), ir.Constant(i64, -64))
    return b.inttoptr(at, ptr.type)


def _packed(kb, source, depth, cols, buffer, nr: int):
    """B (`source`: depth x cols) packed into `buffer` (on a cache line) as gemm.PackedB
    reads it, NR-wide panels of all its rows, zero past its last column: once for all of a
    batch index's queries."""
    from llvmlite import ir

    from ..codegen.llvm.gemm import PackedB

    b = kb.b
    with kb.for_range(cols, step=nr) as col:
        width = b.select(b.icmp_signed("<", b.sub(cols, col), ir.Constant(col.type, nr)),
                         b.sub(cols, col), ir.Constant(col.type, nr))
        source.pack(kb, b.gep(buffer, [b.mul(col, depth)]), ir.Constant(col.type, 0), depth,
                    col, width, nr)
    return PackedB(buffer, depth)


def _attention_range(kb, pointers, start, count, sizes, ranks: int, scores_do: _ScoreRows,
                     plain: tuple[bool, bool, bool]) -> None:
    """Batch indices start .. start + count of attention_strided (`_attention_llvm`), its
    sizes as run-time values: m, d, s, n, the batch sizes, then the views' offsets and
    strides (q, k, v, c, then the mask's and the bias's where given); `plain`: whether q's,
    k's and v's views have columns of stride 1 (else rows). The queries go in blocks whose
    scores fit SCORES_BLOCK floats (in L2 from one step to the next), each block's rows
    whole (a row's softmax needs all its keys, no more); in f32, k' and v' are packed once
    per batch index for all its blocks."""
    from llvmlite import ir

    from ..codegen.llvm import irgen
    from ..codegen.llvm.gemm import Matrix, gemm
    from ..codegen.llvm.microkernels import tiling
    from ..codegen.llvm.reductions import _softmax_row_range

    b = kb.b
    i64 = ir.IntType(64)
    dm, dd, ds, dn, *rest = sizes
    batch, rest = rest[:ranks], rest[ranks:]
    views = [rest[i * (ranks + 3):(i + 1) * (ranks + 3)] for i in range(len(pointers))]
    t = tiling(kb.vector_width)
    width = kb.vector_width or t.width
    prepack = kb.precision != "bf16"  # a bf16 GEMM reads its B in bf16 pairs: packs its own
    # the rows of scores a block holds: as many whole tiles of MR rows as SCORES_BLOCK floats
    # hold (one tile at least), all m when fewer; its floats counted without overflow (at
    # most SCORES_MOST; at least one: malloc(0) may return null)
    one, none, mr = ir.Constant(i64, 1), ir.Constant(i64, 0), ir.Constant(i64, t.mr)
    queries, keys = (b.select(b.icmp_signed("==", x, none), one, x) for x in (dm, ds))
    fits = b.icmp_signed("<=", mr, b.sdiv(ir.Constant(i64, SCORES_MOST), keys))
    kb.check(fits, "attention's scores of one batch index are too large to hold")
    tiles = b.sdiv(b.sdiv(ir.Constant(i64, SCORES_BLOCK), keys), mr)
    block = b.mul(b.select(b.icmp_signed("<", tiles, one), one, tiles), mr)
    block = b.select(b.icmp_signed("<", queries, block), queries, block)
    scores = kb.scratch(b.select(fits, b.mul(block, keys), one), "f32", zeroed=False)
    blocks = [scores]
    if prepack:  # k' [d, s] and v' [s, n], their columns padded to whole panels, each on a
        # cache line (16 floats more), as Matrix.pack's aligned stores want
        def padded(x):
            return b.mul(b.sdiv(b.add(x, ir.Constant(i64, t.nr - 1)), ir.Constant(i64, t.nr)),
                         ir.Constant(i64, t.nr))

        spare = ir.Constant(i64, 16)
        k_pack = kb.scratch(b.select(fits, b.add(b.mul(dd, padded(ds)), spare), one), "f32",
                            zeroed=False)
        v_pack = kb.scratch(b.select(fits, b.add(b.mul(ds, padded(dn)), spare), one), "f32",
                            zeroed=False)
        blocks += [k_pack, v_pack]

    with kb.allocated(blocks, "attention's scores"), b.if_then(fits):
        with kb.for_range(count) as r:
            index, left = [], b.add(start, r)  # the batch index of flat position r
            for size in reversed(batch):
                index.append(b.urem(left, size))
                left = b.udiv(left, size)
            index.reverse()
            (q, k, v, out, *extra), (qv, kv, vv, cv, *extra_views) = pointers, views
            q_all = _view_matrix(b, q, qv, index, plain[0], False)
            out_all = _view_matrix(b, out, cv, index, True, False)
            k_all = _view_matrix(b, k, kv, index, plain[1], True)
            v_all = _view_matrix(b, v, vv, index, plain[2], True)
            if prepack:
                k_all = _packed(kb, k_all, dd, ds, _line(b, k_pack), t.nr)
                v_all = _packed(kb, v_all, ds, dn, _line(b, v_pack), t.nr)
            starts = [_view_matrix(b, x, view, index, True, False)
                      for x, view in zip(extra, extra_views, strict=True)]
            with irgen.loop(b, dm, name="queries") as queries_loop:
                row0 = queries_loop.index
                rows = b.select(b.icmp_signed("<", b.sub(dm, row0), block), b.sub(dm, row0),
                                block)
                gemm(kb, rows, ds, dd, _rows_from(kb, q_all, row0), k_all, Matrix(scores, ds))
                if scores_do.any():
                    def row_of(matrix):
                        return lambda i: matrix.at(kb, b.add(row0, i), ir.Constant(i64, 0))

                    given = iter(starts)
                    mask_row = row_of(next(given)) if scores_do.mask else None
                    bias_row = row_of(next(given)) if scores_do.bias else None
                    scores_do.emit(kb, scores, ds, rows, width, mask_row, bias_row)
                _softmax_row_range(kb, scores, scores, ir.Constant(i64, 0), rows, ds, width,
                                   False)
                gemm(kb, rows, dn, ds, Matrix(scores, ds), v_all, _rows_from(kb, out_all, row0))
                queries_loop.advance(rows)


def _attention_onnx(b, n):
    """The views as Gathers, MatMul, Mul by alpha, the mask's Where and the bias's Add,
    Softmax, MatMul, and a ScatterND into the result at c's indices."""
    from ._emit import one

    batch, m, d, s, cols, (qv, kv, vv, cv), shape, alpha = _attention_parts(n.attrs)
    q, k, v, mask, bias = n.inputs
    scores = one(b, "MatMul", _onnx_view(b, q, qv, [*batch, m, d]),
                 _onnx_view(b, k, kv, [*batch, d, s]))
    if alpha != 1.0:
        scores = one(b, "Mul", scores, b.const(np.float32(alpha)))
    mv, bv = _score_views(n.attrs, len(batch), mask, bias)
    if mask is not None:
        fill, kept = b.const(np.float32(n.attrs["fill"])), _onnx_view(b, mask, mv, [*batch, m, s])
        scores = one(b, "Where", kept, *((scores, fill) if n.attrs["keep"] else (fill, scores)))
    if bias is not None:
        scores = one(b, "Add", scores, _onnx_view(b, bias, bv, [*batch, m, s]))
    product = one(b, "MatMul", one(b, "Softmax", scores, axis=-1),
                  _onnx_view(b, v, vv, [*batch, s, cols]))
    _onnx_through(b, product, cv, [*batch, m, cols], shape, n.outputs)


register(internal(OpRecord(
    "attention_strided", tensors("q", "k", "v") + optional("mask", "bias") + attrs(
        "batch", "m", "d", "s", "n", "q_view", "k_view", "v_view", "c_view", "shape",
        ("alpha", 1.0), ("mask_view", None), ("bias_view", None), ("fill", float("-inf")),
        ("keep", True)),
    _attention_infer, _attention_reference,
    "softmax(where(mask', alpha * q' @ k', fill) + bias', axis = -1) @ v' for views "
    "q' [*batch, m, d], k' [*batch, d, s] and v' [*batch, s, n] of q, k and v, and, where "
    "given, mask' and bias' [*batch, m, s] of a bool mask (keep false: fill where it is "
    "true) and an f32 bias, written through the view c_view of a result of `shape`: the "
    "native pipeline's rewrite of attention's two products and what runs between them "
    "(passes/views.py), its scores kept one batch index at a time.",
    macs=_attention_macs, onnx=_attention_onnx, llvm=_attention_llvm)))
