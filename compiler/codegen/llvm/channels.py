"""Work split across the module's threads by channel (`by_channel`), shared by the
convolution kernels (conv.py, winograd.py, depthwise.py), and small bounds arithmetic."""

from __future__ import annotations

from llvmlite import ir

from .irgen import i64, smaller
from .spatial import ZERO
from .threads import parallel_rows

COPY_PARALLEL = 1 << 16  # floats a channel-split copy must move for threads to start


def by_channel(kb, name: str, pointers: list[ir.Value], sizes: list[ir.Value], strides,
                body, work, first: int | None = None) -> None:
    """body(kb, pointers, sizes) over sizes[0] channels, as a function of its own that the
    module's threads split by channel (blocks of whole channels: each pointer i moves
    strides(b, sizes)[i] floats a channel) when `work(b, sizes)` floats reach COPY_PARALLEL;
    inside a kernel already split by sample (`kb.serial`), or with one thread, the loop runs
    whole. `first`: the index of a size that holds the block's first channel (0 for the whole
    loop), for bodies that need where their block starts.

    Every `body` reads its sizes at run time and reports no failure, so its function depends
    only on the name, the pointer and size counts and the vector width: one per module,
    called by every convolution that needs it (16 Winograd convolutions of ResNet-18 shared
    0.3 MB of IR instead of 5.2 MB, LLVM's time with it)."""
    shared = f"kiln_{name}_{len(pointers)}x{len(sizes)}_v{kb.vector_width or 0}"
    inner = kb.module.globals.get(shared)
    if inner is None:
        ikb = kb.shared_helper(shared)
        body(ikb, [ikb.buffer(i, "f32") for i in range(len(pointers))],
             [ikb.b.load(ikb.b.gep(ikb.dims_ptr, [i64(i)])) for i in range(len(sizes))])
        inner = ikb.finish()

    def shift(b, ptrs, szs, row0):
        moved = [b.gep(p, [b.mul(row0, b.mul(step, i64(4)))])
                 for p, step in zip(ptrs, strides(b, szs), strict=True)]
        szs = list(szs)
        if first is not None:
            szs[first] = b.add(szs[first], row0)
        return moved, szs

    fn = inner if kb.serial else parallel_rows(
        kb.module, inner, len(pointers), len(sizes), shift, min_rows=1,
        min_work=COPY_PARALLEL, work=work, name=f"{inner.name}_parallel")
    kb.call_kernel(fn, pointers, sizes, name)


def clamp(b, value: ir.Value, most: ir.Value) -> ir.Value:
    """min(max(value, 0), most)."""
    value = b.select(b.icmp_signed("<", value, ZERO), ZERO, value)
    return smaller(b, value, most)
