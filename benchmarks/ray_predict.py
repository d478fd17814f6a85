"""Ray batch inference (kiln.ray.predict) against a plain loop over the same compiled model.

    python benchmarks/ray_predict.py [--rows 200000] [--batch-size 1024] [--workers 2]
                                     [--hidden 512] [--repeat 3]

Both run examples/mlp.kiln on the same rows on this machine, with the same cores: the plain
loop calls one model (native code on `--workers` threads) batch after batch; Ray runs
`--workers` actors of one CPU each (native code on one thread each), timed twice: the whole
job through kiln.ray.predict, and, in a run whose Predictor times each batch, with its workers
running (from the first batch's start to the last one's end). Printed: medians of `--repeat` rounds,
rows/s of each and their ratio, and what one batch costs in worker time (wall time x workers /
batches), split into kiln's native call, kiln.ray's Python around it (columns, checks) and Ray
(scheduling, moving blocks, Arrow <-> numpy, waiting): the Ray overhead per batch; and the
start-up of a job (its actors started, the model built in each).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

import kiln
import kiln.ray

MLP = str(Path(__file__).resolve().parents[1] / "examples" / "mlp.kiln")


class Timed(kiln.ray.Predictor):
    """A Predictor that adds, per batch, its id, its seconds (the whole call, the model call)
    and the wall-clock times it started and ended, as columns (every row of a batch carries
    its batch's values), so the driver can split a batch's time."""

    def _call(self, inputs):
        start = time.perf_counter()
        out = super()._call(inputs)
        self.kiln_s = time.perf_counter() - start
        return out

    def __call__(self, batch):
        began, start = time.time(), time.perf_counter()
        out = super().__call__(batch)
        rows = len(out["output"])
        out["batch_id"] = np.full(rows, uuid.uuid4().hex)
        out["call_s"] = np.full(rows, time.perf_counter() - start)
        out["kiln_s"] = np.full(rows, self.kiln_s)
        out["began"] = np.full(rows, began)
        out["ended"] = np.full(rows, time.time())
        return out


TIMES = ("batch_id", "call_s", "kiln_s", "began", "ended")


def progress(text: str) -> None:
    print(f"\rray_predict: {text:<60}", end="", file=sys.stderr, flush=True)


def plain_loop(model, x: np.ndarray, batch: int) -> float:
    """Seconds to run every row through `model`, batch after batch."""
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    args, batch, workers = {"hidden": opts.hidden}, opts.batch_size, opts.workers
    x = np.random.default_rng(0).standard_normal((opts.rows, 784), np.float32)
    progress("compiling the model here")
    model = kiln.compile(MLP, args=args, threads=workers)
    progress("starting a local Ray cluster")
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             configure_logging=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray Data's per-job lines
    # blocks of a few batches each, so every worker gets some
    blocks = max(workers * 4, opts.rows // (batch * 8))
    tables = [pa.table({"x": ArrowTensorArray.from_numpy(part)})
              for part in np.array_split(x, blocks)]
    ds = ray.data.from_arrow(tables).materialize()  # in the object store, as a job's input is

    def ray_run(timed: bool) -> tuple[float, dict[str, np.ndarray]]:
        """Seconds from submitting the job to its last row (workers started, models built
        and every batch run), and the Timed columns by name, one value per batch."""
        if timed:
            out = ds.map_batches(Timed, fn_constructor_args=(source,), batch_size=batch,
                                 batch_format="numpy", num_cpus=1,
                                 compute=ray.data.ActorPoolStrategy(size=workers),
                                 fn_constructor_kwargs={"args": args})
        else:
            out = kiln.ray.predict(ds, MLP, args=args, batch_size=batch, concurrency=workers)
        start = time.perf_counter()
        parts, rows = [], 0
        for b in out.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(b["output"])
            parts.append({c: b[c] for c in TIMES if c in b})
        seconds = time.perf_counter() - start
        assert rows == opts.rows, rows
        if not parts[0]:
            return seconds, {}
        times = {c: np.concatenate([p[c] for p in parts]) for c in TIMES}
        _, first = np.unique(times["batch_id"], return_index=True)
        return seconds, {c: v[first] for c, v in times.items()}

    source = kiln.ray.ModelSource.of(MLP)
    loop_s, ray_s, steady_s, split = [], [], [], []
    for r in range(opts.repeat):
        progress(f"round {r + 1}/{opts.repeat}: plain loop")
        loop_s.append(plain_loop(model, x, batch))
        progress(f"round {r + 1}/{opts.repeat}: Ray, kiln.ray.predict")
        ray_s.append(ray_run(timed=False)[0])
        progress(f"round {r + 1}/{opts.repeat}: Ray, timed per batch")
        times = ray_run(timed=True)[1]
        # workers running: from the first batch's start to the last batch's end
        steady_s.append(times["ended"].max() - times["began"].min())
        split.append(times)
    progress("done")
    print(file=sys.stderr)

    loop, wall, steady = (statistics.median(t) for t in (loop_s, ray_s, steady_s))
    batches = statistics.median(len(t["batch_id"]) for t in split)
    call = np.concatenate([t["call_s"] for t in split])
    kiln_call = np.concatenate([t["kiln_s"] for t in split])
    per_batch = steady * workers / batches  # worker-seconds per batch, workers running
    kiln_ms, around_ms = np.median(kiln_call) * 1e3, np.median(call - kiln_call) * 1e3
    ray_ms = per_batch * 1e3 - kiln_ms - around_ms
    print(f"examples/mlp.kiln hidden={opts.hidden}: {opts.rows:,} rows, batches of {batch}, "
          f"{workers} CPUs (medians of {opts.repeat} rounds)")
    rows = [(f"plain loop ({workers} threads)", loop),
            (f"Ray, workers running ({workers})", steady),
            ("Ray, whole job (start-up incl.)", wall)]
    print(f"{'':<36}{'seconds':>9}{'rows/s':>12}{'vs loop':>9}")
    for name, seconds in rows:
        print(f"{name:<36}{seconds:>9.3f}{opts.rows / seconds:>12,.0f}{loop / seconds:>9.2f}")
    print(f"\none batch of {batch} rows, in worker time ({workers} x {steady:.3f} s / "
          f"{batches:.0f} batches): {per_batch * 1e3:.2f} ms; plain loop: "
          f"{loop / batches * 1e3:.2f} ms of wall time on {workers} threads")
    for name, ms in (("kiln native call", kiln_ms), ("kiln.ray around it", around_ms),
                     ("Ray: the overhead per batch", ray_ms)):
        print(f"  {name:<32}{ms:>9.2f} ms{ms / per_batch / 10:>6.0f} %")
    print(f"Ray's overhead per batch is worker time outside the Predictor's call: scheduling, "
          f"moving blocks, Arrow <-> numpy, and a worker waiting for its next batch.\n"
          f"Start-up (actors started, a model built in each): {wall - steady:.1f} s per job.")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
