"""Per-call overhead of a tiny model: kiln native vs onnxruntime on the same exported ONNX.

    python benchmarks/overhead.py [--calls 50000]

The model adds a constant to a 1x4 tensor, so the time is almost all crossing into the
runtime and back: input checks, output allocation, the native call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    opts = parser.parse_args()
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
