"""Compile time: cold and warm, in-process and through the CLI.

Per model, each in a fresh Python process (so no import, parse or table is shared):

- `cold`: `kiln.compile(FILE)` with an empty compile cache (LLVM builds everything; the model's
  entry is written);
- `warm`: the same call again: a hit of the model's entry (runtime/modelcache.py), which loads
  its code without parsing, elaborating or LLVM;
- `+weights`: warm, with a full set of weights from a file (no initial values at all);
- `cli warm`: `kiln run FILE --random-inputs` with the warm cache, the whole command's wall time;
- `long warm`: the warm compile the long way (what a warm compile was before model entries, and
  still is for source text): parse, elaborate and draw, optimize, object code from the caches.

and the split of one warm hit (imports, key: reading the model file and hashing, load: the
entry's checks, library, initial values and bound arrays) and of one long warm compile
(import, parse the file and the standard library, elaborate and draw initial values, optimize,
code). Wall-clock seconds, median of --repeat runs (cold: one run), excluding the interpreter's
start and `import kiln` (a few ms: the compiler loads on first use).

Every child imports kiln from bytecode, as an installed kiln does (pip compiles the .pyc
files when it installs): a first child writes them to a folder of the run's own
(PYTHONPYCACHEPREFIX), even where the environment says not to (PYTHONDONTWRITEBYTECODE), and
the timed ones read them. `--source-imports` times the imports from source instead (what an
editable install gives under PYTHONDONTWRITEBYTECODE: about 0.04 s more a warm hit, 0.35 s a
cold compile).

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

HIT = r"""
import json, sys, time
import kiln
t1 = time.perf_counter()
from kiln.runtime import modelcache
t2 = time.perf_counter()
modelcache.Request.of(sys.argv[1], None, None, 1, False)
t3 = time.perf_counter()
model = kiln.compile(sys.argv[1], weights=sys.argv[2] or None)
t4 = time.perf_counter()
print(json.dumps({"imports": t2 - t1, "key": t3 - t2, "load": t4 - t3, "total": t4 - t1,
                  "hit": type(model).__name__ == "CachedNativeModel"}))
"""

LONG = r"""
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


def child(script: str, path: Path, cache: str, weights: str = "") -> dict:
    env = {**os.environ, "KILN_CACHE_DIR": cache, "KILN_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-c", script, str(path), weights], env=env,
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
    parser.add_argument("--source-imports", action="store_true",
                        help="import kiln from source in every child, not from bytecode")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as pyc:
        if not opts.source_imports:  # (the children inherit this environment)
            os.environ["PYTHONPYCACHEPREFIX"] = pyc
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            print("  writing kiln's bytecode...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:  # every module the children import
                child(LONG, ROOT / "examples" / "mlp.kiln", str(Path(tmp) / "cache"))
                cli(ROOT / "examples" / "mlp.kiln", str(Path(tmp) / "cache"))
        measure(opts)


def measure(opts) -> None:
    print(f"{'model':<12}{'cold':>7}{'warm':>7}{'+weights':>9}{'cli warm':>9}{'long warm':>10}"
          "   warm split | long warm split")
    for name in opts.models:
        path = ROOT / "examples" / f"{name}.kiln"
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "cache")
            print(f"  {name}: compiling cold...", file=sys.stderr, flush=True)
            cold = child(HIT, path, cache)["total"]
            weights = str(Path(tmp) / "w.safetensors")
            subprocess.run([sys.executable, "-c", "import kiln,sys; kiln.compile(sys.argv[1], "
                            "target='reference').save_weights(sys.argv[2])", str(path), weights],
                           env={**os.environ, "KILN_PROGRESS": "0"}, check=True)
            print(f"  {name}: warm runs...", file=sys.stderr, flush=True)
            warm = [child(HIT, path, cache) for _ in range(opts.repeat)]
            loaded = [child(HIT, path, cache, weights)["total"] for _ in range(opts.repeat)]
            run = [cli(path, cache) for _ in range(opts.repeat)]
            long = [child(LONG, path, cache) for _ in range(opts.repeat)]
        if not all(w["hit"] for w in warm):
            print(f"  {name}: the warm compiles missed the model entry (no cc?)", file=sys.stderr)
        med = {k: statistics.median(w[k] for w in warm) for k in ("imports", "key", "load",
                                                                  "total")}
        long_med = {k: statistics.median(w[k] for w in long) for k in long[0]}
        split = ", ".join(f"{k} {v:.2f}" for k, v in med.items() if k != "total")
        long_split = ", ".join(f"{k} {v:.2f}" for k, v in long_med.items() if k != "total")
        print(f"{name:<12}{cold:>7.2f}{med['total']:>7.2f}{statistics.median(loaded):>9.2f}"
              f"{statistics.median(run):>9.2f}{long_med['total']:>10.2f}   {split} | "
              f"{long_split}", flush=True)


if __name__ == "__main__":
    main()
