"""A convolution's last step on each block of its output, while the block is in cache: the
bias and a fused node's elementwise epilogue (fused.Epilogue), applied by a hook that the
step producing the block calls (the im2col GEMM, on each block of columns it finishes:
im2col.Im2col.finish), instead of a bias fill before the GEMM and a pass of the epilogue
over the whole output after it, which had left the caches (a ResNet stem's 3.2 MB output).

Winograd's output transform calling it on each row of a block of channels it stores was
slower (ResNet-18's layer-1 and layer-3 pairs at batch 1 and 8, two threads: 0.99 to 1.06):
its output is in L2 when the fused node's own loop runs, and the hook's rows, one per
channel a plane apart, are not better placed.

The hook is a kernel-shaped function of the convolution's kernel (`finisher`):
hook([arguments, sizes, c], [ldc, rows, cols], status) sets, for i < rows and j < cols,

    c[i ldc + j] = epilogue(c[i ldc + j] + bias[channel])

in place, the epilogue's other inputs read at the element's own index in y. It finds
where c lies in y from the two pointers (and from that the channel), so one hook serves
every sample, group and thread's block of the call; a shared function (the GEMM driver)
takes it as three pointers and calls it through `finish`.
"""

from __future__ import annotations

from llvmlite import ir

from .abi import I64, KERNEL_TYPE, PTR
from .irgen import element, i64


def finisher(kb, y: ir.Value, bias: ir.Value | None, epilogue, pixels: ir.Value,
             channels: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """The hook for output y ([batch, channels, pixels] f32) with `bias` (per channel, or
    None: added already) and `epilogue` (or None), as (function, its argument array [y,
    bias or null, the epilogue's inputs...], its size array [pixels, channels]), built in
    kb's current block. Marks the epilogue consumed: the fused node runs no loop of its
    own."""
    inputs = [] if epilogue is None else epilogue.inputs
    fn = _function(kb, bias is not None, epilogue)
    b = kb.b
    pointers = [y, ir.Constant(PTR, None) if bias is None else bias] + [p for p, _t in inputs]
    with b.goto_entry_block():
        args = b.alloca(PTR, len(pointers), name="finish_args")
        sizes = b.alloca(I64, 2, name="finish_sizes")
    for i, p in enumerate(pointers):
        b.store(b.bitcast(p, PTR), b.gep(args, [i64(i)]))
    for i, value in enumerate((pixels, channels)):
        b.store(value, b.gep(sizes, [i64(i)]))
    if epilogue is not None:
        epilogue.consumed = True
    return fn, args, sizes


def finish(kb, hook, c: ir.Value, ldc: ir.Value, rows: ir.Value, cols: ir.Value) -> None:
    """Call `hook` (its three pointers as `finisher` made them, passed as untyped pointers;
    the function null for none) on c[:rows, :cols], ldc floats a row."""
    b = kb.b
    fn, args, sizes = (b.bitcast(p, PTR) for p in hook)
    with b.if_then(b.icmp_unsigned("!=", fn, ir.Constant(PTR, None))):
        kb.call_kernel(b.bitcast(fn, KERNEL_TYPE.as_pointer()), [args, sizes, c],
                       [ldc, rows, cols], "finish")


def _function(kb, biased: bool, epilogue) -> ir.Function:
    """The hook: a helper of kb's kernel (args [the argument array, the size array, c],
    sizes [ldc, rows, cols]); the inner loop runs along a row, which LLVM vectorises."""
    name, count = "finish", 0
    while f"{kb.function.name}_{name}" in kb.module.globals:
        count += 1
        name = f"finish{count}"
    ikb = kb.helper(name)
    b = ikb.b
    c = ikb.buffer(2, "f32")
    table = b.bitcast(element(b, ikb.args_ptr, 0), PTR.as_pointer())
    dims = b.bitcast(element(b, ikb.args_ptr, 1), I64.as_pointer())
    ldc, rows, cols = (element(b, ikb.dims_ptr, i) for i in range(3))
    pixels, channels = (element(b, dims, i) for i in range(2))
    ikb.args_ptr = table  # the finisher's arguments from here on: y, bias, inputs
    y = ikb.buffer(0, "f32")
    bias = ikb.buffer(1, "f32") if biased else None
    inputs = [] if epilogue is None else [
        (ikb.buffer(2 + i, t.dtype), t) for i, (_p, t) in enumerate(epilogue.inputs)]
    start = b.sdiv(b.sub(b.ptrtoint(c, I64), b.ptrtoint(y, I64)), i64(4))  # c[0] in y
    zero = i64(0)
    with ikb.for_range(rows) as i:
        row = b.add(start, b.mul(i, ldc))
        add = None
        if bias is not None:
            add = b.load(b.gep(bias, [b.srem(b.sdiv(row, pixels), channels)]))
        with ikb.for_range(cols) as j:
            at = b.add(row, j)
            value = ikb.load(y, at, "f32")
            if add is not None:
                value = b.fadd(value, add, flags=ikb.flags)
            if epilogue is not None:
                value = epilogue.apply(ikb, value, [ikb.load(p, at if t.rank else zero, t.dtype)
                                                    for p, t in inputs])
            ikb.store(y, at, value, "f32")
    return ikb.finish()
