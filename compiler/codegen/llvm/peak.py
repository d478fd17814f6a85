"""The CPU's measured f32 FMA peak, the yardstick of `kiln profile`'s "% of peak".

A loop of independent vector FMA chains (enough of them to cover the FMA latency on every
port), compiled for this CPU at its vector width, run on one thread and timed: what one core
can do at best. A kernel on T threads is compared with T times that.
"""

from __future__ import annotations

import ctypes
import functools
import time

import llvmlite.binding as llvm
from llvmlite import ir

from . import target as targets
from .abi import I64
from .irgen import Vectors
from .loader import LoadedObject

CHAINS = 12  # independent accumulators: latency 4 x 2 FMA ports = 8 in flight, with room


@functools.lru_cache(maxsize=1)
def fma_peak_flops() -> float:
    """This CPU's measured single-core f32 peak in FLOP/s (an FMA counts as 2), the best of
    a few short runs."""
    target = targets.host()
    lanes = target.vector_width  # f32 lanes of the widest vectors kiln uses here
    machine = target.machine()
    module = ir.Module("peak")
    module.triple, module.data_layout = llvm.get_process_triple(), str(machine.target_data)
    fn = ir.Function(module, ir.FunctionType(ir.FloatType(), [I64]), "kiln_peak")
    entry, body, done = (fn.append_basic_block(n) for n in ("entry", "body", "done"))
    b = ir.IRBuilder(entry)
    vec = Vectors(b, lanes)
    x, y = (vec.splat(ir.Constant(ir.FloatType(), v)) for v in (1.0000001, 1e-7))
    b.branch(body)
    b.position_at_end(body)
    i = b.phi(I64)
    accs = [b.phi(vec.type) for _ in range(CHAINS)]
    new = [vec.fma(acc, x, y) for acc in accs]  # acc = acc * x + y, the chains independent
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(ir.Constant(I64, 0), entry)
    i.add_incoming(nxt, body)
    for k, (acc, n) in enumerate(zip(accs, new, strict=True)):
        acc.add_incoming(ir.Constant(vec.type, [float(k)] * lanes), entry)
        acc.add_incoming(n, body)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), body, done)
    b.position_at_end(done)
    total = new[0]
    for n in new[1:]:
        total = b.fadd(total, n)
    b.ret(b.extract_element(total, ir.Constant(ir.IntType(32), 0)))
    code = LoadedObject((machine.emit_object(llvm.parse_assembly(str(module))),), ["kiln_peak"])
    run = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(code.address("kiln_peak"))
    # many short runs, the best of them: on a busy machine some run undisturbed
    iterations, best, deadline = 100_000, float("inf"), time.perf_counter() + 0.25
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run(iterations)
        best = min(best, time.perf_counter() - start)
    return 2.0 * lanes * CHAINS * iterations / best


__all__ = ["fma_peak_flops"]
