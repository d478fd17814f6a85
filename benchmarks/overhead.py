"""Per-call overhead of a tiny model: kiln native vs onnxruntime on the same exported ONNX.

    python benchmarks/overhead.py [--calls 50000] [--against REV] [--rounds 15]

The model adds a constant to a 1x4 tensor, so the time is almost all crossing into the
runtime and back: input checks, output allocation, the native call. --against REV also
loads runtime/native.py as it was at git revision REV, builds the same compiled model with
both, and times them in alternating rounds in this process (medians of `rounds`, each the
best of 3 x 2000 calls).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

import kiln

SOURCE = "model Tiny { forward(x: f32[B, 4]) -> f32[B, 4] { return x + 1.0 } }"


def per_call_us(fn, calls: int) -> float:
    for _ in range(min(calls, 1000)):
        fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        runs.append((time.perf_counter() - start) / (calls // 5) * 1e6)
    return statistics.median(runs)


def native_at(rev: str):
    """runtime/native.py as it was at git revision `rev`, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{rev}:runtime/native.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    name = "kiln.runtime._native_at_" + rev.replace("~", "_").replace("^", "_")
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "kiln.runtime"
    sys.modules[name] = module  # (dataclasses look their module up)
    exec(compile(text, f"{rev}:runtime/native.py", "exec"), module.__dict__)  # noqa: S102
    return module


def against(rev: str, rounds: int) -> None:
    """The tiny model's call with runtime/native.py at `rev` and as it is now, alternating."""
    from kiln import api
    from kiln.runtime import native

    compilation, params = api.prepare(SOURCE)
    models = {rev: native_at(rev).NativeModel(compilation, params, threads=1),
              "now": native.NativeModel(compilation, params, threads=1)}
    x = np.zeros((1, 4), np.float32)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            best = min(timeit.repeat(lambda m=model: m(x), number=2000, repeat=3))
            times[key].append(best / 2000 * 1e6)
    before, after = (statistics.median(times[k]) for k in models)
    print(f"native.py at {rev}: {before:.2f} us a call, now: {after:.2f} us "
          f"({before / after:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--against", metavar="REV", help="time native.py at REV too")
    parser.add_argument("--rounds", type=int, default=15)
    opts = parser.parse_args()
    if opts.against:
        against(opts.against, opts.rounds)
    import onnxruntime as ort

    x = np.zeros((1, 4), np.float32)
    native = kiln.compile(SOURCE, target="native")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        native.export_onnx(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        t_native = per_call_us(lambda: native(x), opts.calls)
        t_ort = per_call_us(lambda: session.run(None, {"x": x}), opts.calls)
    print(f"{'runtime':<14}{'us per call':>12}")
    print(f"{'kiln native':<14}{t_native:>12.2f}")
    print(f"{'onnxruntime':<14}{t_ort:>12.2f}")
    print(f"ratio kiln/onnxruntime: {t_native / t_ort:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
