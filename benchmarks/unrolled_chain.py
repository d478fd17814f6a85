"""Compile time of an unrolled chain of n ops, per stage (issue 12 #11: compile time must grow
linearly with the size of the graph). Prints one row per n: seconds spent elaborating,
optimizing, generating LLVM IR and in LLVM, and the total's ratio to the previous row's. The
chain is `y = y + x` (elementwise: fused into kernels of up to fuse.MAX_GROUP ops) or, with
--op softmax, `y = softmax(y)` (one kernel each: inlined into `run` up to
module.MAX_INLINED_KERNELS).

    python benchmarks/unrolled_chain.py 1000 2000 4000 8000
    python benchmarks/unrolled_chain.py --op softmax 250 500 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("KILN_CACHE_DIR", tempfile.mkdtemp(prefix="kiln-bench-"))
os.environ.setdefault("KILN_PROGRESS", "0")

import kiln  # noqa: E402
from kiln.compiler.codegen.llvm import machine  # noqa: E402
from kiln.compiler.codegen.llvm import target as targets  # noqa: E402
from kiln.compiler.codegen.llvm.module import build_module, ir_text  # noqa: E402
from kiln.compiler.initializers import generate_params  # noqa: E402
from kiln.compiler.pipelines import optimize  # noqa: E402

STEPS = {"add": "y + x", "softmax": "softmax(y)"}


def chain(n: int, op: str = "add") -> str:
    """A model whose forward applies one op n times to its running value."""
    return (f"model M {{\n  forward(x: f32[B, 8]) -> f32[B, 8] {{\n    y = x\n"
            f"    for i in range({n}) {{ y = {STEPS[op]} }}\n    return y\n  }}\n}}\n")


def stages(n: int, op: str = "add") -> dict[str, float]:
    """Seconds per compile stage for a chain of n ops."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    elaborated = kiln.load(chain(n, op)).elaborate()
    out["elaborate"] = time.perf_counter() - t
    params = generate_params(elaborated.params, 0)
    t = time.perf_counter()
    graph, _ = optimize(elaborated, 1, params=params)
    model = dataclasses.replace(elaborated, graph=graph)
    out["optimize"] = time.perf_counter() - t
    target = targets.host()
    target_machine = target.machine()
    t = time.perf_counter()
    module, _ = build_module(model, machine.llvm.get_process_triple(),
                             str(target_machine.target_data),
                             vector_width=target.vector_width)
    text = ir_text(module, target.vector_width)
    out["codegen"] = time.perf_counter() - t
    t = time.perf_counter()
    machine.machine_code(text, target_machine)
    out["llvm"] = time.perf_counter() - t
    return out


def main(sizes: list[int], op: str = "add") -> None:
    print(f"{'n':>6} {'elaborate':>10} {'optimize':>10} {'codegen':>10} {'llvm':>10} "
          f"{'total':>10} {'ratio':>6}")
    previous = None
    stages(10, op)  # imports and the first compile's set-up are not the chain's cost
    for n in sizes:
        s = stages(n, op)
        total = sum(s.values())
        ratio = f"{total / previous:6.2f}" if previous else ""
        print(f"{n:>6} {s['elaborate']:>10.2f} {s['optimize']:>10.2f} {s['codegen']:>10.2f} "
              f"{s['llvm']:>10.2f} {total:>10.2f} {ratio:>6}")
        previous = total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 2000, 4000, 8000])
    parser.add_argument("--op", choices=sorted(STEPS), default="add")
    options = parser.parse_args()
    main(options.sizes, options.op)
