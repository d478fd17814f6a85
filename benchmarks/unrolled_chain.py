"""Compile time of an unrolled chain of n elementwise adds, per stage (issue 12 #11: compile time
must grow linearly with the size of the graph). Prints one row per n: seconds spent elaborating,
optimizing, generating LLVM IR and in LLVM, and the total's ratio to the previous row's.

    python benchmarks/unrolled_chain.py 1000 2000 4000 8000
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-bench-"))
os.environ.setdefault("KILN_PROGRESS", "0")

import kiln  # noqa: E402
from kiln.compiler.codegen.llvm import target as targets  # noqa: E402
from kiln.compiler.codegen.llvm.module import build_module, ir_text  # noqa: E402
from kiln.runtime import native  # noqa: E402


def chain(n: int) -> str:
    """A model whose forward adds its input to itself n times, one op per iteration."""
    return (f"model M {{\n  forward(x: f32[B, 8]) -> f32[B, 8] {{\n    y = x\n"
            f"    for i in range({n}) {{ y = y + x }}\n    return y\n  }}\n}}\n")


def stages(n: int) -> dict[str, float]:
    """Seconds per compile stage for a chain of n adds."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    program = kiln.load(chain(n))
    program.elaborate()
    out["elaborate"] = time.perf_counter() - t
    t = time.perf_counter()
    model = kiln.compile(program, target="reference").lowered()  # elaborates again: subtracted
    out["optimize"] = time.perf_counter() - t - out["elaborate"]
    target = targets.host()
    machine = target.machine()
    t = time.perf_counter()
    module, _ = build_module(model, native.llvm.get_process_triple(), str(machine.target_data),
                             vector_width=target.vector_width)
    text = ir_text(module, target.vector_width)
    out["codegen"] = time.perf_counter() - t
    t = time.perf_counter()
    native._machine_code(text, machine)
    out["llvm"] = time.perf_counter() - t
    return out


def main(sizes: list[int]) -> None:
    print(f"{'n':>6} {'elaborate':>10} {'optimize':>10} {'codegen':>10} {'llvm':>10} "
          f"{'total':>10} {'ratio':>6}")
    previous = None
    stages(10)  # imports and the first compile's set-up are not the chain's cost
    for n in sizes:
        s = stages(n)
        total = sum(s.values())
        ratio = f"{total / previous:6.2f}" if previous else ""
        print(f"{n:>6} {s['elaborate']:>10.2f} {s['optimize']:>10.2f} {s['codegen']:>10.2f} "
              f"{s['llvm']:>10.2f} {total:>10.2f} {ratio:>6}")
        previous = total


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 2000, 4000, 8000])
