"""kiln's native f32 matmul (the packed GEMM of compiler/codegen/llvm/gemm.py) against numpy's
np.matmul and the CPU's fp32 FMA peak, with both on --threads threads (default 1).

    python benchmarks/gemm.py [--peak GFLOPS] [--repeat 7] [--threads 1]

Prints, per shape, the median GFLOP/s of kiln and numpy, kiln's share of the peak and the ratio
kiln/numpy. The peak is measured with a JIT-compiled loop of independent FMAs on the widest
vectors unless given (one core's; "% peak" is of threads x that). numpy runs with
OPENBLAS_NUM_THREADS=--threads and kiln with threads=--threads; this
process drops OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some machines set and which slow a
current OpenBLAS (it says so when it does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Square sizes, then the matmuls of the examples: mlp.kiln's Linear layers at batch 1 and 32
SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (1, 784, 512), (32, 784, 512), (1, 512, 512), (32, 512, 512), (32, 512, 10)]



def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", type=float, help="fp32 peak GFLOP/s (default: measured)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per median")
    parser.add_argument("--threads", type=int, default=1, help="threads of kiln and of numpy")
    return parser.parse_args(argv)


ARGS = parse_args(sys.argv[1:])
DROPPED = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.pop(v, None)]
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)  # read when numpy loads OpenBLAS

import numpy as np  # noqa: E402

import kiln  # noqa: E402

SETTLE = 0.2  # seconds of pause first: OpenBLAS's and kiln's idle threads stop spinning


def median_seconds(fn, repeat: int, work: float) -> float:
    """Median time of fn(), each sample repeating it enough to last about 20 ms, after a
    pause: the other library's threads, spinning after its last call, would take a core."""
    time.sleep(SETTLE)
    fn()
    reps = max(1, int(2e7 / work))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - start) / reps)
    return statistics.median(samples)


def fma_peak() -> float:
    """GFLOP/s of one core running independent FMAs on the host's widest vectors (the
    measurement `kiln profile` uses: codegen/llvm/peak.py)."""
    from kiln.compiler.codegen.llvm.peak import fma_peak_flops

    return fma_peak_flops() / 1e9


def main() -> None:
    from kiln.compiler.codegen.llvm.microkernels import tiling

    if DROPPED:
        print(f"unset for this process (they slow OpenBLAS): {', '.join(DROPPED)}")
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"numpy {np.__version__} on {blas['name']} {blas.get('version', '')}, "
          f"OPENBLAS_NUM_THREADS={ARGS.threads}; kiln native: {ARGS.threads} thread(s), "
          f"{tiling()}")
    peak = ARGS.peak or fma_peak()
    print(f"fp32 FMA peak of one core: {peak:.1f} GFLOP/s"
          f"{'' if ARGS.peak else ' (measured)'}\n")
    native = kiln.compile("model G { forward(a: f32[M, K], b: f32[K, N]) { return a @ b } }",
                          target="native", threads=ARGS.threads)
    rng = np.random.default_rng(0)
    print(f"{'M x K x N':>18} {'kiln GFLOP/s':>13} {'% peak':>7} {'numpy GFLOP/s':>14} "
          f"{'kiln/numpy':>11}")
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        flops = 2.0 * m * k * n
        ours = flops / median_seconds(lambda a=a, b=b: native(a, b), ARGS.repeat, flops) / 1e9
        theirs = flops / median_seconds(lambda a=a, b=b, out=out: np.matmul(a, b, out=out),
                                        ARGS.repeat, flops) / 1e9
        share = 100 * ours / (peak * ARGS.threads)
        print(f"{f'{m} x {k} x {n}':>18} {ours:13.1f} {share:6.0f}% {theirs:14.1f} "
              f"{ours / theirs:11.2f}")


if __name__ == "__main__":
    main()
