"""Depthwise convolutions alone (MobileNet's, EfficientNet's, ConvNeXt's): kiln's direct kernel
(compiler/codegen/llvm/depthwise.py) beside the same convolution through the GEMM (the path
every depthwise convolution took before, and still takes when a plane passes the kernel's
stack buffer) and onnxruntime on kiln's export.

    python benchmarks/depthwise.py [--threads 1] [--batch 1] [--repeat 9]

Both kiln builds are compiled in this process, each into a compile cache of its own (the
direct kernel turned off for the first by `depthwise.MAX_TAPS = 0`, which `eligible` reads),
and the three are timed in alternating rounds; the medians, and the ratios direct / GEMM and
direct / onnxruntime (below 1: the direct kernel is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import ort_session  # noqa: E402

# channels, image side, kernel, stride: MobileNetV2/V3's, EfficientNet-B0's and ConvNeXt-T's
CONFIGS = [(96, 56, 3, 1), (256, 28, 3, 1), (96, 112, 3, 2), (576, 14, 5, 1), (240, 28, 5, 2),
           (128, 56, 7, 1), (384, 14, 7, 1)]
SOURCE = """import std.nn
model Depthwise {{
  conv = nn.Conv2d({c}, {c}, {k}, stride = {s}, padding = {p}, groups = {c})
  forward(x: f32[B, {c}, {h}, {h}]) {{ return x |> conv }}
}}
"""


def _per_call_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def measure(c: int, h: int, k: int, s: int, batch: int, threads: int, repeat: int,
            tmp: Path) -> tuple[float, float, float]:
    """(GEMM path, direct kernel, onnxruntime) median ms of one configuration."""
    from kiln.compiler.codegen.llvm import depthwise

    path = tmp / f"dw_{c}_{h}_{k}_{s}.kiln"
    path.write_text(SOURCE.format(c=c, h=h, k=k, s=s, p=k // 2))
    models = []
    taps = depthwise.MAX_TAPS
    try:
        for limit in (0, taps):
            depthwise.MAX_TAPS = limit
            os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(dir=tmp)
            models.append(kiln.compile(path, target="native", threads=threads, seed=0))
    finally:
        depthwise.MAX_TAPS = taps
    models[0].export_onnx(tmp / "dw.onnx")
    session = ort_session(tmp / "dw.onnx", threads)
    x = np.random.default_rng(0).standard_normal((batch, c, h, h)).astype(np.float32)
    name = session.get_inputs()[0].name
    np.testing.assert_allclose(models[1](x), models[0](x), rtol=1e-4, atol=1e-4)
    runs = [lambda: models[0](x), lambda: models[1](x), lambda: session.run(None, {name: x})]
    calls = max(1, int(0.1 / (_per_call_ms(runs[0], 2) / 1e3)))
    rounds: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for times, run in zip(rounds, runs, strict=True):
            times.append(_per_call_ms(run, calls))
    gemm, direct, ort = (statistics.median(t) for t in rounds)
    return gemm, direct, ort


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=9)
    opts = parser.parse_args()
    print(f"{'channels':>8}{'side':>6}{'k':>3}{'s':>3}{'gemm ms':>10}{'direct ms':>11}"
          f"{'ort ms':>9}{'direct/gemm':>13}{'direct/ort':>12}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (c, h, k, s) in enumerate(CONFIGS, 1):
            print(f"{i}/{len(CONFIGS)}: {c} channels, {h}x{h}, {k}x{k}, stride {s}...",
                  file=sys.stderr, flush=True)
            gemm, direct, ort = measure(c, h, k, s, opts.batch, opts.threads, opts.repeat,
                                        Path(tmp))
            print(f"{c:>8}{h:>6}{k:>3}{s:>3}{gemm:>10.3f}{direct:>11.3f}{ort:>9.3f}"
                  f"{direct / gemm:>13.2f}{direct / ort:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
