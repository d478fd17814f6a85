"""threads.parallel_rows on its own: a kernel that logs each block of rows it is given,
compiled by llvmlite's JIT and run on the module's worker threads, so the blocks a parallel
region makes can be counted and checked to cover every row once."""

import ctypes

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from kiln.compiler.codegen.llvm.abi import I64, KERNEL_TYPE
from kiln.compiler.codegen.llvm.irgen import element
from kiln.compiler.codegen.llvm.threads import parallel_rows

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

MIN_WORK = 1000  # the region's min_work, in units of sizes[2]
OVERSPLIT = 4
MIN_ROWS = 2


def _logging_region():
    """A module whose `region(args, sizes, status)` runs parallel_rows over `log_block`, which
    appends its block's (first row, row count) to args[0] at the slot args[1] counts; sizes
    are [first row, rows, work]. Returns (engine, region, set_threads, shutdown)."""
    module = ir.Module("parallel_rows")
    module.triple = llvm.get_process_triple()
    inner = ir.Function(module, KERNEL_TYPE, "log_block")
    args_p, sizes_p, _status = inner.args
    b = ir.IRBuilder(inner.append_basic_block("entry"))
    log = b.bitcast(element(b, args_p, 0), I64.as_pointer())
    count = b.bitcast(element(b, args_p, 1), I64.as_pointer())
    slot = b.atomic_rmw("add", count, ir.Constant(I64, 1), "seq_cst")
    at = b.mul(slot, ir.Constant(I64, 2))
    b.store(element(b, sizes_p, 0), b.gep(log, [at]))
    b.store(element(b, sizes_p, 1), b.gep(log, [b.add(at, ir.Constant(I64, 1))]))
    b.ret_void()

    def shift(b, pointers, sizes, row0):  # a block's first row, as its sizes[0]
        return list(pointers), [row0, *sizes[1:]]

    fn = parallel_rows(module, inner, 2, 3, shift, min_rows=MIN_ROWS, min_work=MIN_WORK,
                       rows_index=1, work=lambda b, sizes: sizes[2], oversplit=OVERSPLIT,
                       name="region")
    fn.linkage = "external"
    target = llvm.Target.from_default_triple().create_target_machine()
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    engine = llvm.create_mcjit_compiler(parsed, target)
    engine.finalize_object()
    region = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        engine.get_function_address("region"))
    set_threads = ctypes.CFUNCTYPE(None, ctypes.c_int64)(
        engine.get_function_address("kiln_set_threads"))
    shutdown = ctypes.CFUNCTYPE(None)(engine.get_function_address("kiln_shutdown"))
    return engine, region, set_threads, shutdown


@pytest.fixture(scope="module")
def region():
    engine, run, set_threads, shutdown = _logging_region()

    def blocks(threads: int, rows: int, work: int) -> list[tuple[int, int]]:
        set_threads(threads)
        log = np.full(2 * 1024, -1, dtype=np.int64)
        count = np.zeros(1, dtype=np.int64)
        args = (ctypes.c_void_p * 2)(log.ctypes.data, count.ctypes.data)
        sizes = (ctypes.c_int64 * 3)(0, rows, work)
        status = ctypes.c_int64(0)
        run(ctypes.cast(args, ctypes.c_void_p), ctypes.cast(sizes, ctypes.c_void_p),
            ctypes.cast(ctypes.byref(status), ctypes.c_void_p))
        got = sorted((int(log[2 * i]), int(log[2 * i + 1])) for i in range(int(count[0])))
        first = 0  # every row in exactly one block, in order
        for row0, n in got:
            assert row0 == first and n >= 1
            first += n
        assert first == rows
        return got

    yield blocks
    shutdown()
    del engine


@pytest.mark.parametrize("threads, rows, work, expected", [
    (2, 64, MIN_WORK - 1, 1),  # too little work for threads: one call over every row
    (2, 64, MIN_WORK, 2),  # one block a thread while a smaller one would fall below min_work
    (2, 64, 3 * MIN_WORK, 2),
    (2, 64, 4 * MIN_WORK, 4),  # each block keeps min_work
    (2, 64, 7 * MIN_WORK, 6),
    (2, 64, 100 * MIN_WORK, 2 * OVERSPLIT),  # at most oversplit a thread
    (3, 66, 6 * MIN_WORK, 6),
    (3, 66, 5 * MIN_WORK, 3),
    (2, 51, 2 * MIN_WORK, 2),  # odd rows: 24 and 27, not one block of 26 and its remainder
    (3, 64, 3 * MIN_WORK, 3),  # 20, 20 and 24, not 22 and 42
    (2, 6, 100 * MIN_WORK, 3),  # no block below min_rows
    (4, 3, 100 * MIN_WORK, 1),  # fewer rows than two blocks of min_rows: one thread
])
def test_a_region_splits_its_rows_into_even_blocks_that_each_keep_the_minimum_work(
        region, threads, rows, work, expected):
    """As many blocks as it asks for, even ones (an odd count of rows on two threads was one
    block, so one thread: a [49, 4608] @ [4608, 512] product 1.65 ms, against 0.91 ms for
    50 rows). Blocks beyond one a thread (oversplit, claimed as threads come free) only while each
    keeps min_work: an LSTM cell at batch 32 on two threads, in 8 blocks of 4 rows, spent
    more on claiming blocks and on rows the other thread wrote the step before than the
    balance gained (LSTM 2x256 at batch 32, two threads: 9.1 -> 8.7 ms in one block a
    thread)."""
    blocks = region(threads, rows, work)
    assert len(blocks) == expected
    sizes = [n for _, n in blocks]
    assert all(n % MIN_ROWS == 0 for n in sizes[:-1])
    assert max(sizes) - min(sizes) <= len(blocks) * MIN_ROWS  # even, within rounding
