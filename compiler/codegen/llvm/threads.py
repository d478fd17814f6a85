"""Parallelism for native kernels: real OS threads (pthreads) on disjoint ranges of work.

The module holds `kiln_threads` (set by `void kiln_set_threads(i64)`, called by the runtime
with `threads=N`). `parallel_rows` wraps a kernel-shaped function whose first size is a row
count: when there are threads to spare and the work is large enough to pay for starting them,
the rows are cut into contiguous blocks, one per thread, the caller running the first block
itself and joining the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from .kernel import I64, KERNEL_TYPE, PTR, VOID

MAX_THREADS = 64
I32 = ir.IntType(32)
THREADS = "kiln_threads"


def threads_global(module: ir.Module) -> ir.GlobalVariable:
    """`i64 kiln_threads` (1 until set) and its setter `kiln_set_threads`."""
    var = module.globals.get(THREADS)
    if var is not None:
        return var
    var = ir.GlobalVariable(module, I64, THREADS)
    var.initializer = ir.Constant(I64, 1)
    var.linkage = "internal"
    setter = ir.Function(module, ir.FunctionType(VOID, [I64]), "kiln_set_threads")
    b = ir.IRBuilder(setter.append_basic_block("entry"))
    count = b.select(b.icmp_signed("<", setter.args[0], ir.Constant(I64, 1)), ir.Constant(I64, 1),
                     setter.args[0])
    b.store(b.select(b.icmp_signed(">", count, ir.Constant(I64, MAX_THREADS)),
                     ir.Constant(I64, MAX_THREADS), count), var)
    b.ret_void()
    return var


def _pthread(module: ir.Module):
    create = module.globals.get("pthread_create") or ir.Function(
        module, ir.FunctionType(I32, [I64.as_pointer(), PTR, _START.as_pointer(), PTR]),
        "pthread_create")
    join = module.globals.get("pthread_join") or ir.Function(
        module, ir.FunctionType(I32, [I64, PTR.as_pointer()]), "pthread_join")
    return create, join


_START = ir.FunctionType(PTR, [PTR])


def _worker(module: ir.Module, inner: ir.Function) -> ir.Function:
    """void* worker(void* ctx): ctx = {i8** args, i64* sizes, i64* status}; runs inner."""
    name = f"{inner.name}_worker"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, _START, name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx = b.bitcast(fn.args[0], PTR.as_pointer())
    field = [b.load(b.gep(ctx, [ir.Constant(I64, i)])) for i in range(3)]
    b.call(inner, [b.bitcast(field[0], PTR.as_pointer()), b.bitcast(field[1], I64.as_pointer()),
                   b.bitcast(field[2], I64.as_pointer())])
    b.ret(ir.Constant(PTR, None))
    return fn


def parallel_rows(module: ir.Module, inner: ir.Function, n_pointers: int, n_sizes: int,
                  shift: Callable, min_rows: int, min_work: int, rows_index: int = 0,
                  work: Callable | None = None, alone: ir.Function | None = None,
                  name: str | None = None) -> ir.Function:
    """A kernel-shaped function running `inner` on row blocks in parallel.

    sizes[rows_index] is the row count; `shift(b, pointers, sizes, row0)` returns the pointers
    and sizes of the block starting at row0 (its row count is set afterwards); `work(b, sizes)`
    (default sizes[0] * sizes[1] * sizes[2], a GEMM's m * n * k) must reach `min_work` for
    threads to start. Blocks are multiples of `min_rows`. `alone` (default `inner`) is what
    runs when no threads start.
    """
    name = name or f"{inner.name}_parallel"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    threads = threads_global(module)
    create, join = _pthread(module)
    worker = _worker(module, inner)
    fn = ir.Function(module, KERNEL_TYPE, name)
    fn.linkage = "internal"
    args_p, sizes_p, status_p = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pointers = [b.load(b.gep(args_p, [ir.Constant(I64, i)])) for i in range(n_pointers)]
    sizes = [b.load(b.gep(sizes_p, [ir.Constant(I64, i)])) for i in range(n_sizes)]
    rows = sizes[rows_index]
    amount = work(b, sizes) if work else b.mul(b.mul(sizes[0], sizes[1]), sizes[2])
    # as many threads as there are row blocks, at most kiln_threads, when the work pays
    blocks = b.sdiv(rows, ir.Constant(I64, min_rows))
    count = b.load(threads)
    count = b.select(b.icmp_signed("<", blocks, count), blocks, count)
    serial = b.or_(b.icmp_signed("<=", count, ir.Constant(I64, 1)),
                   b.icmp_signed("<", amount, ir.Constant(I64, min_work)))
    with b.if_else(serial) as (one, many):
        with one:
            b.call(alone or inner, [args_p, sizes_p, status_p])
        with many:
            # rows per block: ceil(rows / count), rounded up to a multiple of min_rows, so the
            # blocks cover every row (the last block may be short)
            share = b.sdiv(b.add(rows, b.sub(count, ir.Constant(I64, 1))), count)
            per = b.mul(b.sdiv(b.add(share, ir.Constant(I64, min_rows - 1)),
                               ir.Constant(I64, min_rows)), ir.Constant(I64, min_rows))
            tids = b.alloca(I64, MAX_THREADS, name="tids")
            block_args = b.alloca(PTR, MAX_THREADS * n_pointers, name="block_args")
            block_sizes = b.alloca(I64, MAX_THREADS * n_sizes, name="block_sizes")
            contexts = b.alloca(PTR, MAX_THREADS * 3, name="contexts")
            started = b.alloca(I64, name="started")
            b.store(ir.Constant(I64, 0), started)
            spawn = b.append_basic_block("spawn")
            spawned = b.append_basic_block("spawned")
            b.branch(spawn)
            # blocks 1.. go to new threads; block 0 (rows [0, per)) runs here
            b.position_at_end(spawn)
            t = b.add(b.load(started), ir.Constant(I64, 1))
            row0 = b.mul(t, per)
            left = b.sub(rows, row0)
            live = b.and_(b.icmp_signed("<", t, count),
                          b.icmp_signed(">", left, ir.Constant(I64, 0)))
            body = b.append_basic_block("spawn.body")
            b.cbranch(live, body, spawned)
            b.position_at_end(body)
            ptrs, szs = shift(b, pointers, sizes, row0)
            szs[rows_index] = b.select(b.icmp_signed("<", left, per), left, per)
            my_args = b.gep(block_args, [b.mul(t, ir.Constant(I64, n_pointers))])
            my_sizes = b.gep(block_sizes, [b.mul(t, ir.Constant(I64, n_sizes))])
            for i, p in enumerate(ptrs):
                b.store(p, b.gep(my_args, [ir.Constant(I64, i)]))
            for i, s in enumerate(szs):
                b.store(s, b.gep(my_sizes, [ir.Constant(I64, i)]))
            ctx = b.gep(contexts, [b.mul(t, ir.Constant(I64, 3))])
            for i, v in enumerate((b.bitcast(my_args, PTR), b.bitcast(my_sizes, PTR),
                                   b.bitcast(status_p, PTR))):
                b.store(v, b.gep(ctx, [ir.Constant(I64, i)]))
            b.call(create, [b.gep(tids, [t]), ir.Constant(PTR, None), worker, b.bitcast(ctx, PTR)])
            b.store(t, started)
            b.branch(spawn)
            b.position_at_end(spawned)
            first = b.alloca(I64, n_sizes, name="first_sizes")
            first_sizes = list(sizes)
            first_sizes[rows_index] = b.select(b.icmp_signed("<", rows, per), rows, per)
            for i, size in enumerate(first_sizes):
                b.store(size, b.gep(first, [ir.Constant(I64, i)]))
            b.call(inner, [args_p, first, status_p])
            last = b.load(started)
            join_head = b.append_basic_block("join")
            join_body = b.append_basic_block("join.body")
            joined = b.append_basic_block("joined")
            counter = b.alloca(I64, name="joining")
            b.store(ir.Constant(I64, 1), counter)
            b.branch(join_head)
            b.position_at_end(join_head)
            j = b.load(counter)
            b.cbranch(b.icmp_signed("<=", j, last), join_body, joined)
            b.position_at_end(join_body)
            b.call(join, [b.load(b.gep(tids, [j])), ir.Constant(PTR.as_pointer(), None)])
            b.store(b.add(j, ir.Constant(I64, 1)), counter)
            b.branch(join_head)
            b.position_at_end(joined)
    b.ret_void()
    return fn
