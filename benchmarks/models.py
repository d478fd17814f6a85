"""Every example model, side by side in one run: kiln native vs onnxruntime (CPU, all graph
optimisations) on kiln's own exported ONNX vs the numpy reference.

    python benchmarks/models.py [--batches 1 32] [--threads 1 2] [--repeat 20] [--models mlp lenet]

Prints the median latency of each and the ratios native/onnxruntime and reference/native, with
kiln (threads=N) and onnxruntime (intra_op_num_threads=N) at each thread count. Each
configuration (model, batch, threads) runs in a fresh process, and in it native and
onnxruntime are timed in alternating rounds (the median round is shown; a round warms up, then
times at least --repeat calls and ROUND seconds of calls) with a pause between runtimes: a
runtime's threads spin for a while after its last call (onnxruntime's, OpenBLAS's under numpy,
kiln's own) and would take a core from the next one measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kiln
from kiln import KilnError

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5  # alternating rounds of native and onnxruntime timings (the median one is shown)
SETTLE = 0.2  # seconds between runtimes: spinning threads go to sleep
WARM_UP = 0.05  # seconds of untimed calls before each round
ROUND = 0.3  # seconds of timed calls at least, per round
SIZES = {"T": 16, "N": 32, "E": 64, "H": 64, "W": 64}  # other symbolic sizes than the batch


def inputs_for(model, batch: int, rng, sizes: dict[str, int] | None = None
               ) -> dict[str, np.ndarray]:
    """Random inputs, optional ones too (the exported ONNX graph takes every input): the
    batch symbol(s) at `batch`, other symbols at `sizes` (or SIZES)."""
    sizes = SIZES if sizes is None else sizes
    feeds = {}
    for port in model.inputs:
        env = {s: sizes.get(s, batch) for d in port.type.shape for s in d.symbols()}
        shape = tuple(d.evaluate(env) for d in port.type.shape)
        if port.type.dtype in ("i32", "i64"):
            feeds[port.name] = rng.integers(0, 2, size=shape).astype(port.type.np_dtype)
        elif port.type.dtype == "bool":
            feeds[port.name] = rng.random(shape) < 0.5
        else:
            feeds[port.name] = rng.standard_normal(shape).astype(port.type.np_dtype)
    return feeds


def median_ms(repeat: int, fn, *args, **kwargs) -> float:
    """Median wall time of fn(*args, **kwargs) in milliseconds, in the steady state: after
    warm-up calls for WARM_UP seconds (at least one), over at least `repeat` calls and at
    least ROUND seconds of them (a model of microseconds gets thousands of calls, not ten
    cold ones just after the pause)."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    while time.perf_counter() - start < WARM_UP:
        fn(*args, **kwargs)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - began < ROUND:
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def settled(measure, *args, **kwargs):
    """measure(*args, **kwargs) after a pause that lets other runtimes' threads stop spinning."""
    time.sleep(SETTLE)
    return measure(*args, **kwargs)


def onnx_session(model, threads: int, path: Path):
    import onnxruntime as ort

    model.export_onnx(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(path: Path, batch: int, threads: int, repeat: int, with_ref: bool) -> dict:
    """One configuration, timed in this process: native and onnxruntime in alternating rounds,
    and the numpy reference when asked."""
    ref = kiln.compile(str(path), target="reference")
    feeds = inputs_for(ref, batch, np.random.default_rng(0))
    out: dict = {"native": None, "ort": None, "ref": None, "reason": None}
    try:
        native = kiln.compile(str(path), target="native", threads=threads)
    except KilnError as err:
        native, out["reason"] = None, f"native: {err.code} {err.message}"
    with tempfile.TemporaryDirectory() as tmp:  # onnxruntime reads the file once, here
        session = onnx_session(ref, threads, Path(tmp) / f"{path.stem}.onnx")
    rounds: dict[str, list[float]] = {"native": [], "ort": []}
    for _ in range(ROUNDS):
        if native:
            rounds["native"].append(settled(median_ms, repeat, native, **feeds))
        rounds["ort"].append(settled(median_ms, repeat, session.run, None, feeds))
    out["native"] = statistics.median(rounds["native"]) if native else None
    out["ort"] = statistics.median(rounds["ort"])
    if with_ref:
        out["ref"] = settled(median_ms, max(3, repeat // 4), ref, **feeds)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", nargs="+", help="example names (default: every example)")
    parser.add_argument("--measure", nargs=3, metavar=("FILE", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)  # one configuration, in a child process
    parser.add_argument("--with-ref", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.measure:
        path, batch, threads = opts.measure
        print(json.dumps(measure(Path(path), int(batch), int(threads), opts.repeat,
                                 opts.with_ref)))
        return 0
    files = sorted((ROOT / "examples").glob("*.kiln"))
    if opts.models:
        files = [f for f in files if f.stem in opts.models]
    header = (f"{'model':<24}{'batch':>6}{'thr':>4}{'native ms':>11}{'ort ms':>9}"
              f"{'numpy ms':>10}{'native/ort':>11}{'numpy/native':>13}")
    print(header)
    print("-" * len(header))
    failed = 0
    for index, path in enumerate(files, 1):
        reasons = set()
        for batch in opts.batches:
            t_ref = None
            for threads in opts.threads:
                print(f"[{index}/{len(files)}] {path.stem}: batch {batch}, {threads} thread(s)...",
                      file=sys.stderr, flush=True)
                # each configuration in a fresh process: no thread pool, spinning onnxruntime
                # or OpenBLAS thread of another configuration takes a core from it
                child = subprocess.run(
                    [sys.executable, __file__, "--measure", str(path), str(batch), str(threads),
                     "--repeat", str(opts.repeat), *(["--with-ref"] if t_ref is None else [])],
                    capture_output=True, text=True)
                if child.returncode != 0:  # say which and why, and go on with the others
                    why = (child.stderr.strip().splitlines() or ["no message"])[-1]
                    print(f"{path.stem:<24}{batch:>6}{threads:>4}  failed: {why}", flush=True)
                    failed += 1
                    continue
                got = json.loads(child.stdout.strip().splitlines()[-1])
                t_ref = got["ref"] if t_ref is None else t_ref
                t_nat, t_ort = got["native"], got["ort"]
                if got["reason"]:
                    reasons.add(got["reason"])
                nat = f"{t_nat:>11.3f}" if t_nat else f"{'-':>11}"
                ratio = f"{t_nat / t_ort:>11.2f}" if t_nat else f"{'-':>11}"
                speedup = f"{t_ref / t_nat:>13.1f}" if t_nat else f"{'-':>13}"
                print(f"{path.stem:<24}{batch:>6}{threads:>4}{nat}{t_ort:>9.3f}{t_ref:>10.3f}"
                      f"{ratio}{speedup}", flush=True)
        for reason in sorted(reasons):
            print(f"  ({reason})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
