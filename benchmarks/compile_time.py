"""Compile time: cold and warm, in-process and through the CLI.

Per model, each in a fresh Python process (so no import, parse or table is shared):

- `cold`: `kiln.compile(FILE)` with an empty compile cache (LLVM builds everything);
- `warm`: the same call again with the cache the cold run filled (what a user sees the
  second time, or with other weights);
- `warm+weights`: warm, with a full set of weights from a file (no initial values drawn);
- `cli warm`: `kiln run FILE --random-inputs` with the warm cache, the whole command's wall time;

and the split of one warm in-process compile: import, parse (the file and the standard
library), elaborate and draw initial values, optimize, code (object code from the caches and
its arrays bound). Wall-clock seconds, median of --repeat runs (cold: one run).

    python benchmarks/compile_time.py [--models resnet18 gpt] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import kiln
t1 = time.perf_counter()
from kiln.api import load, prepare
from kiln.runtime.native import NativeModel
path, weights = sys.argv[1], sys.argv[2] or None
program = load(path)
t2 = time.perf_counter()
compilation, params = prepare(program, weights=weights)
t3 = time.perf_counter()
from kiln.compiler.driver import Weights
compilation.lowered(Weights.of(params))
t4 = time.perf_counter()
NativeModel(compilation, params)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "parse": t2 - t1, "elaborate+init": t3 - t2,
                  "optimize": t4 - t3, "code": t5 - t4, "total": t5 - t1}))
"""


def child(path: Path, cache: str, weights: str = "") -> dict:
    env = {**os.environ, "KILN_CACHE_DIR": cache, "KILN_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), weights], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(path: Path, cache: str) -> float:
    env = {**os.environ, "KILN_CACHE_DIR": cache, "KILN_PROGRESS": "0"}
    kiln = Path(sys.executable).with_name("kiln")
    start = time.perf_counter()
    subprocess.run([str(kiln), "run", str(path), "--random-inputs"], env=env,
                   capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "lenet", "resnet18", "gpt"])
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    head = f"{'model':<14}{'cold':>8}{'warm':>8}{'+weights':>10}{'cli warm':>10}   warm split"
    print(head)
    for name in opts.models:
        path = ROOT / "examples" / f"{name}.kiln"
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "cache")
            print(f"  {name}: compiling cold...", file=sys.stderr, flush=True)
            cold = child(path, cache)["total"]
            weights = str(Path(tmp) / "w.safetensors")
            subprocess.run([sys.executable, "-c", "import kiln,sys; kiln.compile(sys.argv[1], "
                            "target='reference').save_weights(sys.argv[2])", str(path), weights],
                           env={**os.environ, "KILN_PROGRESS": "0"}, check=True)
            print(f"  {name}: warm runs...", file=sys.stderr, flush=True)
            warm = [child(path, cache) for _ in range(opts.repeat)]
            loaded = [child(path, cache, weights)["total"] for _ in range(opts.repeat)]
            run = [cli(path, cache) for _ in range(opts.repeat)]
        med = {k: statistics.median(w[k] for w in warm) for k in warm[0]}
        split = ", ".join(f"{k} {v:.2f}" for k, v in med.items() if k != "total")
        print(f"{name:<14}{cold:>8.2f}{med['total']:>8.2f}{statistics.median(loaded):>10.2f}"
              f"{statistics.median(run):>10.2f}   {split}", flush=True)


if __name__ == "__main__":
    main()
