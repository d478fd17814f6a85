"""Parallelism for native kernels: real OS threads (pthreads) on disjoint ranges of work.

The module holds `kiln_threads` (set by `void kiln_set_threads(i64)`, called by the runtime
with `threads=N`) and a pool of worker threads (`_Pool`), started on first use and asleep
between calls, so a parallel region costs a wake-up, not a thread start (nor the page faults
of a new thread's stack). `parallel_rows` wraps a kernel-shaped function whose first size is a
row count: when there are threads to spare and the work is large enough, the rows are cut
into contiguous blocks, one per thread, the caller running the first block itself and
waiting for the rest. `kiln_shutdown()` stops the workers; the runtime calls it before it
frees the code.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from .abi import I1, I32, I64, KERNEL_TYPE, PTR, VOID, declare
from .irgen import element, larger, smaller

MAX_THREADS = 64
MAX_PIECES = 256  # blocks asked of one parallel region (see parallel_rows' oversplit)
MAX_BLOCKS = 2 * MAX_PIECES + 1  # blocks it may make (their size is rounded down)
# (at most pieces, or with `short_last` rows // per <= 2 * pieces: per is at least half of
# ceil(rows / pieces) or min_rows, and one more for the remainder's block)
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
    _Pool(module)  # and kiln_shutdown, which every model exports
    return var


_START = ir.FunctionType(PTR, [PTR])
SPINS = 1 << 14  # polls of an idle worker before it sleeps (a few microseconds of spinning)
SYS_FUTEX, FUTEX_WAIT, FUTEX_WAKE = 202, 128, 129  # x86-64 Linux; the _PRIVATE operations
IDLE, POSTED, RUNNING, RETRACTED = 0, 1, 2, 3  # a worker's state


def _i32(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


class _Pool:
    """The module's worker threads: started on first use, then sleeping between calls.

    Per worker i: `gen[i]` (an i32 futex word: a new value means a new task), `fn[i]` and
    `ctx[i]` (the task: fn(ctx)), `done[i]` (the generation it finished), `sleeping[i]`, and
    `state[i]`: IDLE, POSTED (a task waits for it), RUNNING (it took the task) or RETRACTED
    (the caller took the task back before the worker came: a worker the OS has not scheduled
    yet never holds a caller up; it goes back to IDLE when it wakes). One caller at a time
    dispatches (`busy`, taken by compare-and-swap; a second caller, say another Python
    thread, runs its work alone instead of waiting). Exported:
    `kiln_shutdown()` stops and joins the workers (the runtime calls it before freeing the
    code they run); a later call starts them again. After a fork the child starts its own.
    """

    def __init__(self, module: ir.Module):
        self.module = module
        g = module.globals
        if "kiln_pool_gen" not in g:
            self._define()
        self.gen, self.done, self.sleeping = (g[f"kiln_pool_{n}"] for n in ("gen", "done",
                                                                              "sleeping"))
        self.fn, self.ctx, self.tids = (g[f"kiln_pool_{n}"] for n in ("fn", "ctx", "tids"))
        self.workers, self.busy, self.owner = (g[f"kiln_pool_{n}"] for n in ("workers", "busy",
                                                                              "owner"))
        self.stop, self.state = g["kiln_pool_stop"], g["kiln_pool_state"]

    def _global(self, name: str, ty, init=None) -> ir.GlobalVariable:
        var = ir.GlobalVariable(self.module, ty, f"kiln_pool_{name}")
        var.initializer = ir.Constant(ty, init if init is not None else None)
        var.linkage = "internal"
        return var

    def _define(self) -> None:
        words = ir.ArrayType(I32, MAX_THREADS)
        for name in ("gen", "done", "sleeping", "state"):
            self._global(name, words)
        for name in ("fn", "ctx"):
            self._global(name, ir.ArrayType(PTR, MAX_THREADS))
        self._global("tids", ir.ArrayType(I64, MAX_THREADS))
        for name in ("workers", "owner"):
            self._global(name, I64, 0)
        for name in ("busy", "stop"):
            self._global(name, I32, 0)
        self.__init__(self.module)
        self._worker()
        self._shutdown()
        self._acquirer()
        self._runner()

    # ------------------------------------------------------------------ helpers
    def slot(self, b: ir.IRBuilder, array: ir.GlobalVariable, i: ir.Value) -> ir.Value:
        return b.gep(array, [ir.Constant(I64, 0), i])

    def pause(self, b: ir.IRBuilder) -> None:
        if "x86" in (self.module.triple or ""):
            fn = declare(self.module, "llvm.x86.sse2.pause", VOID, [])
            b.call(fn, [])

    def futex(self, b: ir.IRBuilder, word: ir.Value, op: int, value: ir.Value) -> None:
        syscall = declare(self.module, "syscall", I64, [I64], var_arg=True)
        b.call(syscall, [ir.Constant(I64, SYS_FUTEX), word, ir.Constant(I32, op), value,
                         ir.Constant(PTR, None)])

    def wake(self, b: ir.IRBuilder, i: ir.Value) -> None:
        """Wake worker i if it sleeps (seq_cst against its own sleeping/gen dance)."""
        asleep = b.load_atomic(self.slot(b, self.sleeping, i), "seq_cst", 4)
        with b.if_then(b.icmp_signed("!=", asleep, ir.Constant(I32, 0))):
            self.futex(b, self.slot(b, self.gen, i), FUTEX_WAKE, ir.Constant(I32, 1))

    # ------------------------------------------------------------------ the worker
    def _worker(self) -> None:
        fn = ir.Function(self.module, _START, "kiln_pool_worker")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        i = b.ptrtoint(fn.args[0], I64)
        seen = b.alloca(I32, name="seen")
        spins = b.alloca(I64, name="spins")
        b.store(ir.Constant(I32, 0), seen)
        wait, poll, sleep, run, leave = (fn.append_basic_block(n) for n in (
            "wait", "poll", "sleep", "run", "leave"))
        b.branch(wait)
        b.position_at_end(wait)
        b.store(ir.Constant(I64, 0), spins)
        b.branch(poll)
        b.position_at_end(poll)
        g = b.load_atomic(self.slot(b, self.gen, i), "acquire", 4)
        new = b.icmp_signed("!=", g, b.load(seen))
        more = b.append_basic_block("spin")
        b.cbranch(new, run, more)
        b.position_at_end(more)
        count = b.load(spins)
        b.store(b.add(count, ir.Constant(I64, 1)), spins)
        spin = b.append_basic_block("pause")
        b.cbranch(b.icmp_signed("<", count, ir.Constant(I64, SPINS)), spin, sleep)
        b.position_at_end(spin)
        self.pause(b)
        b.branch(poll)
        b.position_at_end(sleep)  # announce the sleep, look again, then wait on gen[i]
        b.store_atomic(ir.Constant(I32, 1), self.slot(b, self.sleeping, i), "seq_cst", 4)
        g = b.load_atomic(self.slot(b, self.gen, i), "seq_cst", 4)
        with b.if_then(b.icmp_signed("==", g, b.load(seen))):
            self.futex(b, self.slot(b, self.gen, i), FUTEX_WAIT, b.load(seen))
        b.store_atomic(ir.Constant(I32, 0), self.slot(b, self.sleeping, i), "seq_cst", 4)
        b.branch(wait)
        b.position_at_end(run)
        g = b.load_atomic(self.slot(b, self.gen, i), "acquire", 4)
        b.store(g, seen)
        stop = b.load_atomic(self.stop, "acquire", 4)
        work = b.append_basic_block("work")
        b.cbranch(b.icmp_signed("!=", stop, ir.Constant(I32, 0)), leave, work)
        b.position_at_end(work)
        claim = b.cmpxchg(self.slot(b, self.state, i), _i32(POSTED), _i32(RUNNING), "acq_rel",
                          "monotonic")
        with b.if_then(b.extract_value(claim, 1)):
            task = b.bitcast(b.load(self.slot(b, self.fn, i)), _START.as_pointer())
            b.call(task, [b.load(self.slot(b, self.ctx, i))])
        b.store_atomic(g, self.slot(b, self.done, i), "release", 4)
        b.store_atomic(_i32(IDLE), self.slot(b, self.state, i), "release", 4)
        b.branch(wait)
        b.position_at_end(leave)
        b.ret(ir.Constant(PTR, None))

    def _shutdown(self) -> None:
        """void kiln_shutdown(): stop and join every worker (none run module code after)."""
        fn = ir.Function(self.module, ir.FunctionType(VOID, []), "kiln_shutdown")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        head, spin, owned = (fn.append_basic_block(n) for n in ("lock", "lock.spin", "owned"))
        b.branch(head)  # wait for a parallel region of another caller to finish
        b.position_at_end(head)
        pair = b.cmpxchg(self.busy, ir.Constant(I32, 0), ir.Constant(I32, 1), "acquire",
                         "monotonic")
        b.cbranch(b.extract_value(pair, 1), owned, spin)
        b.position_at_end(spin)
        self.pause(b)
        b.branch(head)
        b.position_at_end(owned)
        self._stop_all(b)
        self.release(b)
        b.ret_void()

    def _stop_all(self, b: ir.IRBuilder) -> None:
        join = declare(self.module, "pthread_join", I32, [I64, PTR.as_pointer()])
        count = b.load(self.workers)
        b.store_atomic(ir.Constant(I32, 1), self.stop, "seq_cst", 4)
        self._each(b, count, lambda i: (self._bump(b, i), self.wake(b, i)))
        self._each(b, count, lambda i: b.call(join, [b.load(self.slot(b, self.tids, i)),
                                                     ir.Constant(PTR.as_pointer(), None)]))
        b.store(ir.Constant(I64, 0), self.workers)
        b.store_atomic(ir.Constant(I32, 0), self.stop, "seq_cst", 4)

    def _bump(self, b: ir.IRBuilder, i: ir.Value) -> ir.Value:
        """gen[i] += 1 (only the dispatcher writes it); returns the new generation."""
        at = self.slot(b, self.gen, i)
        g = b.add(b.load_atomic(at, "monotonic", 4), ir.Constant(I32, 1))
        b.store_atomic(g, at, "seq_cst", 4)
        return g

    def _each(self, b: ir.IRBuilder, stop: ir.Value, body, start: int = 1) -> None:
        """body(i) for i in [start, stop] (workers are numbered from 1: 0 is the caller)."""
        with b.goto_entry_block():  # an entry-block slot: LLVM keeps it in a register
            counter = b.alloca(I64)
        b.store(ir.Constant(I64, start), counter)
        head, loop, done = (b.append_basic_block(n) for n in ("each", "each.body", "each.done"))
        b.branch(head)
        b.position_at_end(head)
        i = b.load(counter)
        b.cbranch(b.icmp_signed("<=", i, stop), loop, done)
        b.position_at_end(loop)
        body(i)
        b.store(b.add(i, ir.Constant(I64, 1)), counter)
        b.branch(head)
        b.position_at_end(done)

    # ------------------------------------------------------------------ the dispatcher
    # One function each (`kiln_pool_acquire`, `kiln_pool_run`) that every parallel region
    # calls, rather than its own copy of them: less code to build and for LLVM to compile.
    def acquire(self, b: ir.IRBuilder, wanted: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Take the pool for one parallel region: (i1 taken, workers available). Starts the
        workers missing for `wanted` threads (after a fork, the child's own)."""
        got = b.call(self.module.globals["kiln_pool_acquire"], [wanted])
        return b.icmp_signed(">=", got, ir.Constant(I64, 0)), got

    def run(self, b: ir.IRBuilder, claim: ir.Function, ctx: ir.Value, last: ir.Value) -> None:
        """claim(ctx) on this thread and on each of workers 1 .. last that is idle; returns
        when all of them are done with it (a worker that had not started it: taken back)."""
        b.call(self.module.globals["kiln_pool_run"], [b.bitcast(claim, PTR), ctx, last])

    def _function(self, name: str, ret, args: list) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")  # one copy, called by every region
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def _acquirer(self) -> None:
        """i64 kiln_pool_acquire(i64 wanted): the workers available once the pool is taken
        for this caller, or -1 when another caller has it."""
        fn, b = self._function("kiln_pool_acquire", I64, [I64])
        taken, workers = self._acquire(b, fn.args[0])
        b.ret(b.select(taken, workers, ir.Constant(I64, -1)))

    def _runner(self) -> None:
        """void kiln_pool_run(i8* claim, i8* ctx, i64 last): see `run`."""
        fn, b = self._function("kiln_pool_run", VOID, [PTR, PTR, I64])
        claim = b.bitcast(fn.args[0], _START.as_pointer())
        ctx, last = fn.args[1], fn.args[2]
        generations = b.alloca(I32, MAX_THREADS, name="generations")
        posted = b.alloca(I1, MAX_THREADS, name="posted")

        def post(t):  # workers 1 .. last, those that are idle
            ready = self.idle(b, t)
            b.store(ready, b.gep(posted, [t]))
            with b.if_then(ready):
                b.store(self.post(b, t, claim, ctx), b.gep(generations, [t]))

        self._each(b, last, post)
        b.call(claim, [ctx])

        def finish(t):
            with b.if_then(b.load(b.gep(posted, [t]))):
                self.finish(b, t, b.load(b.gep(generations, [t])))

        self._each(b, last, finish)
        b.ret_void()

    def _acquire(self, b: ir.IRBuilder, wanted: ir.Value) -> tuple[ir.Value, ir.Value]:
        pair = b.cmpxchg(self.busy, ir.Constant(I32, 0), ir.Constant(I32, 1), "acquire",
                         "monotonic")
        taken = b.extract_value(pair, 1)
        with b.if_then(taken):
            getpid = declare(self.module, "getpid", I32, [])
            pid = b.sext(b.call(getpid, []), I64)
            with b.if_then(b.icmp_signed("!=", pid, b.load(self.owner))):
                b.store(ir.Constant(I64, 0), self.workers)  # a fork: those threads are gone
                b.store(pid, self.owner)
            create = declare(self.module, "pthread_create", I32,
                           [I64.as_pointer(), PTR, _START.as_pointer(), PTR])
            worker = self.module.globals["kiln_pool_worker"]
            self._each(b, b.sub(wanted, ir.Constant(I64, 2)),
                       lambda i: self._start(b, create, worker, i), start=0)
        return taken, b.load(self.workers)

    def _start(self, b, create, worker, i) -> None:
        """Start worker i + 1 if it is not running."""
        index = b.add(i, ir.Constant(I64, 1))
        with b.if_then(b.icmp_signed("==", index, b.add(b.load(self.workers),
                                                         ir.Constant(I64, 1)))):
            at = self.slot(b, self.gen, index)
            b.store_atomic(ir.Constant(I32, 0), at, "seq_cst", 4)
            b.store_atomic(ir.Constant(I32, 0), self.slot(b, self.done, index), "seq_cst", 4)
            b.store_atomic(ir.Constant(I32, 0), self.slot(b, self.sleeping, index), "seq_cst",
                           4)
            b.store_atomic(_i32(IDLE), self.slot(b, self.state, index), "seq_cst", 4)
            result = b.call(create, [self.slot(b, self.tids, index), ir.Constant(PTR, None),
                                     worker, b.inttoptr(index, PTR)])
            with b.if_then(b.icmp_signed("==", result, ir.Constant(I32, 0))):
                b.store(index, self.workers)

    def post(self, b: ir.IRBuilder, i: ir.Value, fn: ir.Value, ctx: ir.Value) -> ir.Value:
        """Give worker i the task fn(ctx); returns the generation to wait for."""
        b.store(b.bitcast(fn, PTR), self.slot(b, self.fn, i))
        b.store(ctx, self.slot(b, self.ctx, i))
        b.store_atomic(_i32(POSTED), self.slot(b, self.state, i), "release", 4)
        g = self._bump(b, i)
        self.wake(b, i)
        return g

    def idle(self, b: ir.IRBuilder, i: ir.Value) -> ir.Value:
        """Whether worker i can take a task (it is not still waking from a retracted one)."""
        state = b.load_atomic(self.slot(b, self.state, i), "acquire", 4)
        return b.icmp_signed("==", state, _i32(IDLE))

    def finish(self, b: ir.IRBuilder, i: ir.Value, g: ir.Value) -> None:
        """Take back worker i's task if it has not started it; else wait until it is done."""
        pair = b.cmpxchg(self.slot(b, self.state, i), _i32(POSTED), _i32(RETRACTED),
                         "acq_rel", "monotonic")
        with b.if_then(b.not_(b.extract_value(pair, 1))):
            self.wait(b, i, g)

    def wait(self, b: ir.IRBuilder, i: ir.Value, g: ir.Value) -> None:
        """Spin until worker i has finished generation g."""
        fn = b.function
        head, spin, done = (fn.append_basic_block(n) for n in ("await", "await.spin",
                                                                "await.done"))
        b.branch(head)
        b.position_at_end(head)
        finished = b.load_atomic(self.slot(b, self.done, i), "acquire", 4)
        b.cbranch(b.icmp_signed("==", finished, g), done, spin)
        b.position_at_end(spin)
        self.pause(b)
        b.branch(head)
        b.position_at_end(done)

    def release(self, b: ir.IRBuilder) -> None:
        b.store_atomic(ir.Constant(I32, 0), self.busy, "release", 4)


def _claimer(module: ir.Module, inner: ir.Function, n_pointers: int, n_sizes: int
             ) -> ir.Function:
    """void* claim(void* ctx), ctx = {i8** args, i64* sizes, i64* status, i64* next, total}:
    runs inner on blocks (args + b * n_pointers, sizes + b * n_sizes) for b taken one at a time
    from the shared counter `next` until none is left. The caller and its workers all run it,
    so the blocks get done by whichever threads are running."""
    name = f"{inner.name}_claim"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, _START, name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ctx = b.bitcast(fn.args[0], PTR.as_pointer())
    field = [element(b, ctx, i) for i in range(5)]
    args = b.bitcast(field[0], PTR.as_pointer())
    sizes = b.bitcast(field[1], I64.as_pointer())
    status = b.bitcast(field[2], I64.as_pointer())
    counter = b.bitcast(field[3], I64.as_pointer())
    total = b.ptrtoint(field[4], I64)
    head, body, done = (fn.append_basic_block(n) for n in ("claim", "claim.run", "claim.done"))
    b.branch(head)
    b.position_at_end(head)
    block = b.atomic_rmw("add", counter, ir.Constant(I64, 1), "monotonic")
    b.cbranch(b.icmp_signed("<", block, total), body, done)
    b.position_at_end(body)
    b.call(inner, [b.gep(args, [b.mul(block, ir.Constant(I64, n_pointers))]),
                   b.gep(sizes, [b.mul(block, ir.Constant(I64, n_sizes))]), status])
    b.branch(head)
    b.position_at_end(done)
    b.ret(ir.Constant(PTR, None))
    return fn


def parallel_rows(module: ir.Module, inner: ir.Function, n_pointers: int, n_sizes: int,
                  shift: Callable, min_rows: int, min_work: int, rows_index: int = 0,
                  work: Callable | None = None, alone: ir.Function | None = None,
                  name: str | None = None, oversplit: int = 1,
                  short_last: bool = False, even: bool = True) -> ir.Function:
    """A kernel-shaped function running `inner` on row blocks in parallel.

    sizes[rows_index] is the row count; `shift(b, pointers, sizes, row0)` returns the pointers
    and sizes of the block starting at row0 (its row count is set afterwards); `work(b, sizes)`
    (default sizes[0] * sizes[1] * sizes[2], a GEMM's m * n * k) must reach `min_work` for
    threads to start. Blocks are multiples of `min_rows`, up to `oversplit` per thread as long
    as each keeps `min_work`: more, smaller blocks balance uneven ones, claimed as threads come
    free. The rows left over past the last whole block join it, or, with `short_last` (for
    kernels whose result does not depend on where a block starts or ends: a GEMM's columns),
    form a shorter block of their own, so that no block is nearly twice the others.
    `even` False makes blocks of ceil(rows / pieces) rows, rows // that many of them (an odd
    count of rows on two threads is one block): a convolution split by sample, whose path
    depends on a block's samples (module._batch_split says why, and what stays open).
    `alone` (default `inner`) is what runs when no threads start.
    """
    name = name or f"{inner.name}_parallel"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    threads = threads_global(module)
    pool = _Pool(module)
    claim = _claimer(module, inner, n_pointers, n_sizes)
    fn = ir.Function(module, KERNEL_TYPE, name)
    fn.linkage = "internal"
    args_p, sizes_p, status_p = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pointers = [element(b, args_p, i) for i in range(n_pointers)]
    sizes = [element(b, sizes_p, i) for i in range(n_sizes)]
    rows = sizes[rows_index]
    amount = work(b, sizes) if work else b.mul(b.mul(sizes[0], sizes[1]), sizes[2])
    # as many threads as there are row blocks, at most kiln_threads, when the work pays
    blocks = b.sdiv(rows, ir.Constant(I64, min_rows))
    count = b.load(threads)
    count = smaller(b, blocks, count)
    serial = b.or_(b.icmp_signed("<=", count, ir.Constant(I64, 1)),
                   b.icmp_signed("<", amount, ir.Constant(I64, min_work)))
    alone_call = [args_p, sizes_p, status_p]
    with b.if_else(serial) as (one, many):
        with one:
            b.call(alone or inner, alone_call)
        with many:
            taken, workers = pool.acquire(b, count)
            limit = b.add(workers, ir.Constant(I64, 1))
            count = smaller(b, limit, count)
            usable = b.and_(taken, b.icmp_signed(">", count, ir.Constant(I64, 1)))
            with b.if_else(usable) as (shared, busy):
                with busy:  # another caller has the pool (or no worker could start)
                    with b.if_then(taken):
                        pool.release(b)
                    b.call(alone or inner, alone_call)
                with shared:
                    # more blocks than threads only while each block keeps min_work: a
                    # smaller one costs its claim, and rows that another thread wrote the
                    # step before (a recurrent cell) more than the balance gains
                    split = ir.Constant(I64, oversplit)
                    if oversplit > 1:
                        each = b.sdiv(amount, b.mul(count, ir.Constant(I64, max(min_work, 1))))
                        split = smaller(b, split, larger(b, each, ir.Constant(I64, 1)))
                    wanted = b.mul(count, split)
                    wanted = smaller(b, wanted, ir.Constant(I64, MAX_PIECES))
                    pieces = smaller(b, blocks, wanted)
                    _split(b, pool, claim, pointers, sizes, rows, count, pieces, shift,
                           min_rows, rows_index, n_pointers, n_sizes, status_p, short_last,
                           even)
                    pool.release(b)
    b.ret_void()
    return fn


def _split(b, pool: _Pool, claim, pointers, sizes, rows, count, pieces, shift, min_rows: int,
           rows_index: int, n_pointers: int, n_sizes: int, status_p,
           short_last: bool = False, even: bool = True) -> None:
    """About `pieces` blocks of rows, claimed one at a time by this thread and `count` - 1 idle
    workers; then each worker's task is taken back if it has not started it, or waited for."""
    # rows per block, a multiple of min_rows (at least one): no block is shorter than
    # min_rows (a GEMM block of at most MR rows would take another path and sum in another
    # order: the threads must not change the result). With `short_last`, ceil(rows / pieces)
    # rounded down, and the remainder a block of its own; otherwise rows // pieces rounded
    # down, `pieces` blocks, the last one taking the remainder too (ceil there made 49 rows
    # one block of 25 and a remainder: one thread did all the work)
    one = ir.Constant(I64, 1)
    rounded_up = short_last or not even
    share = b.sdiv(b.add(rows, b.sub(pieces, one)) if rounded_up else rows, pieces)
    per = b.mul(b.sdiv(share, ir.Constant(I64, min_rows)), ir.Constant(I64, min_rows))
    per = b.select(b.icmp_signed("<", per, ir.Constant(I64, min_rows)),
                   ir.Constant(I64, min_rows), per)
    blocks = (b.sdiv(b.add(rows, b.sub(per, one)), per) if short_last
              else smaller(b, pieces, b.sdiv(rows, per)) if even else b.sdiv(rows, per))
    with b.goto_entry_block():
        block_args = b.alloca(PTR, MAX_BLOCKS * n_pointers, name="block_args")
        block_sizes = b.alloca(I64, MAX_BLOCKS * n_sizes, name="block_sizes")
        context = b.alloca(PTR, 5, name="context")
        counter = b.alloca(I64, name="next_block")

    def describe(t):  # block t's pointers and sizes
        row0 = b.mul(t, per)
        last_block = b.icmp_signed("==", t, b.sub(blocks, ir.Constant(I64, 1)))
        ptrs, szs = shift(b, pointers, sizes, row0)
        szs[rows_index] = b.select(last_block, b.sub(rows, row0), per)
        my_args = b.gep(block_args, [b.mul(t, ir.Constant(I64, n_pointers))])
        my_sizes = b.gep(block_sizes, [b.mul(t, ir.Constant(I64, n_sizes))])
        for i, p in enumerate(ptrs):
            b.store(p, b.gep(my_args, [ir.Constant(I64, i)]))
        for i, v in enumerate(szs):
            b.store(v, b.gep(my_sizes, [ir.Constant(I64, i)]))

    pool._each(b, b.sub(blocks, ir.Constant(I64, 1)), describe, start=0)
    b.store(ir.Constant(I64, 0), counter)
    for i, v in enumerate((b.bitcast(block_args, PTR), b.bitcast(block_sizes, PTR),
                           b.bitcast(status_p, PTR), b.bitcast(counter, PTR),
                           b.inttoptr(blocks, PTR))):
        b.store(v, b.gep(context, [ir.Constant(I64, i)]))
    ctx = b.bitcast(context, PTR)

    helpers = b.sub(count, ir.Constant(I64, 1))
    pool.run(b, claim, ctx, smaller(b, blocks, helpers))
