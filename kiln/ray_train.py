"""Data-parallel training over Ray Train: `kiln train ... --ray-workers N`, and in Python

    import kiln.ray_train
    result = kiln.ray_train.fit("mlp.kiln", "digits", workers=4, epochs=5, batch=64,
                                args={"hidden": 128}, output="mlp.safetensors")
    result.history[-1]["val_loss"], result.weights["0.weight"]

Ray Train starts N workers (kiln.ray_train._worker on each); each runs `kiln train`'s loop
(kiln/train/loop.py) with a ShardTrainer (kiln/train/distributed.py): the same global batches
everywhere, each worker's gradients from its shard, summed by an allreduce, then the same
update on every worker. The sum is Ray's collective allreduce (ray.util.collective, "gloo":
a ring over the workers, no driver in the path), which Ray builds on torch.distributed;
where PyTorch is not installed, a small Ray actor sums the workers' vectors instead (each
sends its vector there and gets the sum back: torch-free, but all traffic goes through one
actor). Either way the terms are summed in one order, so every worker gets the same bits.

Rank 0 reports each epoch's metrics with `ray.train.report`, and a Ray Train Checkpoint: a
directory holding the checkpoint kiln.Trainer writes (`checkpoint.safetensors`) and the
metrics so far (`history.jsonl`); after the last epoch one more, with the trained weights
(`weights.safetensors`: the best epoch's with --early-stopping). The driver then prints
the table of metrics and writes --log, --plot, --checkpoint and -o from that checkpoint.

`--resume CKPT` (a kiln trainer checkpoint: `--checkpoint`'s, or a Ray Train checkpoint's
`checkpoint.safetensors`) is read by the driver and sent to every worker, which resumes from
it as `kiln train` does. With `--ray-retries N`, Ray Train starts the workers again (up to N
times) when one is lost; they resume from its last Checkpoint (`ray.train.get_checkpoint`),
not from --resume, and go on with the next epoch, the metrics so far and --early-stopping's
state (`early_stopping.safetensors`: the best epoch's weights and the epochs since) kept.

Ray is imported only here, and only when this module is used.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.errors import KilnError

__all__ = ["RayTrainResult", "fit", "fit_options"]

CHECKPOINT = "checkpoint.safetensors"  # a Ray Train checkpoint's kiln trainer checkpoint
HISTORY = "history.jsonl"  # its metrics of every epoch so far
WEIGHTS = "weights.safetensors"  # the final checkpoint's trained weights
EARLY = "early_stopping.safetensors"  # --early-stopping's best weights so far, and its state
EARLY_HEADER = "kiln_early_stopping"  # that file's metadata: {"val_loss", "stale"}
ALLREDUCE = ("auto", "gloo", "actor")


def _ray_train():
    """The ray module with Ray Train imported, or K0954 when it is not installed."""
    try:
        import ray
        import ray.train  # noqa: F401  (the part of Ray this module uses)
    except ImportError:
        raise KilnError("K0954", "training on Ray (--ray-workers) needs Ray Train, which is not "
                        "installed", hint="pip install 'kiln[ray]'  (or: pip install "
                        "'ray[train]')") from None
    return ray


# ---------------------------------------------------------------------- the sum over workers


class _GlooSum:
    """The allreduce of ray.util.collective's gloo backend, in a group of its own."""

    def __init__(self, world: int, rank: int, group: str):
        import ray.util.collective as collective

        self.collective, self.group = collective, group
        collective.init_collective_group(world, rank, backend="gloo", group_name=group)

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        total = np.array(vector, np.float64)  # summed in place
        self.collective.allreduce(total, group_name=self.group)
        return total

    def close(self) -> None:
        self.collective.destroy_collective_group(self.group)


class Reducer:
    """The Ray actor behind the torch-free allreduce: round after round, each of `world`
    workers adds its vector and gets the sum of all of them, added in rank order. Rounds are
    counted per attempt (a start of the workers: Ray Train starts them again after a worker
    is lost): the first call of a new attempt releases the calls of the lost one, which
    would otherwise wait for their lost partners for ever."""

    def __init__(self, world: int):
        import asyncio

        self.world = world
        self.attempt: str | None = None
        self.rounds: dict[tuple[str, int], dict] = {}
        self.asyncio = asyncio

    async def allreduce(self, attempt: str, round_: int, rank: int, vector: np.ndarray
                        ) -> np.ndarray | None:
        if attempt != self.attempt:
            self.attempt = attempt
            for key in [k for k in self.rounds if k[0] != attempt]:
                self.rounds.pop(key)["done"].set()  # its callers are gone: they get None
        key = (attempt, round_)
        entry = self.rounds.setdefault(key, {"parts": {}, "done": self.asyncio.Event(),
                                             "read": 0, "sum": None})
        entry["parts"][rank] = vector
        if len(entry["parts"]) == self.world:
            parts = entry["parts"]
            entry["sum"] = sum((parts[r] for r in range(1, self.world)), parts[0].copy())
            entry["done"].set()
        await entry["done"].wait()
        entry["read"] += 1
        if entry["read"] == self.world:  # every worker has its sum: forget the round
            self.rounds.pop(key, None)
        return entry["sum"]


class _ActorSum:
    """The allreduce through a Reducer actor, in attempt `attempt` of the workers."""

    def __init__(self, reducer: Any, rank: int, attempt: str = ""):
        self.reducer, self.rank, self.attempt, self.round = reducer, rank, attempt, 0

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        import ray

        self.round += 1
        return ray.get(self.reducer.allreduce.remote(self.attempt, self.round, self.rank,
                                                     np.asarray(vector, np.float64)))

    def close(self) -> None:
        pass


def _choose_allreduce(ray: Any, allreduce: str, workers: int) -> tuple[str, Any]:
    """The allreduce to use ("gloo" or "actor") and, for "actor", the Reducer actor."""
    if allreduce == "auto":
        import ray.util.collective as collective

        allreduce = "gloo" if collective.gloo_available() else "actor"
    if allreduce == "gloo":
        return "gloo", None
    # room for a lost attempt's calls beside the next attempt's, until it releases them
    reducer = ray.remote(num_cpus=0, max_concurrency=2 * max(2, workers))(Reducer)
    return "actor", reducer.remote(workers)


# ---------------------------------------------------------------------- each worker


def _attempt() -> str:
    """A name of this start of the workers that every worker of it shares (rank 0 draws it):
    after a worker is lost Ray Train starts them all again, and the new group must not meet
    the lost one's leftovers (a collective group of the same name, a Reducer's rounds)."""
    import ray.train

    try:
        from ray.train.collective import broadcast_from_rank_zero
    except ImportError:  # Ray Train v1: no collectives; fit_options restarts no run there
        return ""
    rank = ray.train.get_context().get_world_rank()
    return broadcast_from_rank_zero(uuid.uuid4().hex[:12] if rank == 0 else None)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `kiln train`'s loop with a ShardTrainer of this worker's rank."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    attempt = _attempt()
    if config["allreduce"] == "gloo":
        allreduce = _GlooSum(world, rank, f"{config['group']}-{attempt}")
    else:
        allreduce = _ActorSum(config["reducer"], rank, attempt)
    try:
        _train_worker(config, rank, world, allreduce)
    finally:
        allreduce.close()


@dataclasses.dataclass
class _Restart:
    """What Ray Train restored this run from, when it started the workers again after one
    was lost (all empty on a first start): the kiln checkpoint (a file in the worker's
    scratch directory) and its bytes, the metrics so far, --early-stopping's state."""

    resume: str | None = None
    checkpoint: bytes | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: tuple[float, dict[str, np.ndarray]] | None = None
    stale: int = 0


def _restored(tmp: str) -> _Restart:
    """The _Restart of this start of the workers (`tmp`: where its checkpoint is written)."""
    import ray.train

    from kiln.train.checkpoint import read_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return _Restart()
    with checkpoint.as_directory() as folder:
        restart = _Restart(os.path.join(tmp, "restored.safetensors"),
                           Path(folder, CHECKPOINT).read_bytes(),
                           [json.loads(line) for line in
                            Path(folder, HISTORY).read_text().splitlines() if line])
        if Path(folder, EARLY).exists():
            tensors, meta = read_checkpoint(os.path.join(folder, EARLY))
            state = json.loads(meta[EARLY_HEADER])
            restart.best, restart.stale = (state["val_loss"], tensors), state["stale"]
    Path(restart.resume).write_bytes(restart.checkpoint)
    return restart


def _save_early_stopping(folder: str, run: Any) -> None:
    """--early-stopping's state of `run` (kiln/train/loop.py: Run) into a checkpoint folder:
    the best epoch's weights, its validation loss and the epochs since."""
    from kiln.train.checkpoint import write_checkpoint

    if run.best is not None:
        state = {"val_loss": run.best[0], "stale": run.stale}
        write_checkpoint(os.path.join(folder, EARLY), run.best[1],
                         {EARLY_HEADER: json.dumps(state)})


def _train_worker(config: dict[str, Any], rank: int, world: int, allreduce: Any) -> None:
    """The loop of worker `rank` of `world`, summing through `allreduce`."""
    import ray.train

    from kiln.train.loop import loop_config, setup, train_epochs

    opts = copy.copy(config["opts"])
    # the driver's absolute path on one machine or a shared file system; else the path as
    # given, in the working directory Ray ships (`ray job submit --working-dir .`)
    opts.file = next((f for f in config["files"] if os.path.exists(f)), opts.file)
    with tempfile.TemporaryDirectory(prefix="kiln-ray-train-") as tmp:
        # Ray Train's checkpoint, where it restarted the run, comes before --resume: the run
        # goes on from its last reported epoch
        restart = _restored(tmp)
        opts.resume = restart.resume
        if opts.resume is None and config["resume"] is not None:
            opts.resume = os.path.join(tmp, "resume.safetensors")
            Path(opts.resume).write_bytes(config["resume"])
        run = setup(opts, config["args"], data=config["data"],
                    make_trainer=partial(config["make_trainer"], rank=rank, world=world,
                                         allreduce=allreduce))
        run.best, run.stale = restart.best, restart.stale
        # the last epoch's trainer checkpoint, for the final Ray Train checkpoint
        last: dict[str, Any] = {} if restart.checkpoint is None else {
            "checkpoint": restart.checkpoint}

        def report(row: dict[str, Any], history: list[dict[str, Any]], final: bool = False
                   ) -> None:
            run.trainer.check_in_sync()  # K0956 on every worker, before anything is kept
            if rank != 0:  # every worker reports (Ray Train waits for all); rank 0's counts
                ray.train.report(row)
                return
            with tempfile.TemporaryDirectory(dir=tmp) as folder:
                if final:
                    from kiln.runtime.weights import save_weights

                    save_weights(os.path.join(folder, WEIGHTS), run.trainer.state_dict())
                    if "checkpoint" in last:
                        Path(folder, CHECKPOINT).write_bytes(last["checkpoint"])
                else:
                    run.trainer.save_checkpoint(os.path.join(folder, CHECKPOINT),
                                                loop=loop_config(opts, run))
                    last["checkpoint"] = Path(folder, CHECKPOINT).read_bytes()
                    _save_early_stopping(folder, run)
                Path(folder, HISTORY).write_text("".join(json.dumps(r) + "\n"
                                                         for r in restart.history + history))
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder))

        history = train_epochs(run, opts, report)
        report(history[-1] if history else {}, history, final=True)


# ---------------------------------------------------------------------- the driver


@dataclasses.dataclass
class RayTrainResult:
    """What data-parallel training gives back: the metrics of each epoch (the rows of `kiln
    train`'s table) and the trained weights by path."""

    history: list[dict[str, Any]]
    weights: dict[str, np.ndarray]


def fit_options(opts: argparse.Namespace, args: dict[str, Any], data: Any = None,
                allreduce: str = "auto", make_trainer: Callable[..., Any] | None = None
                ) -> RayTrainResult:
    """Run `kiln train` with the parsed options `opts` (kiln/cli.py) on `opts.ray_workers`
    Ray Train workers (see the module's docstring): train, then print the table and write
    --log, --plot, --checkpoint and -o here. `data`: a loaded Dataset (else --data names one);
    `make_trainer`: what builds each worker's trainer, with ShardTrainer's arguments (default:
    ShardTrainer; a subclass of it to change what a worker does).
    """
    from kiln.compiler.files import memory_bytes, read_bounded
    from kiln.train.data import load_dataset
    from kiln.train.distributed import ShardTrainer
    from kiln.train.loop import check_train_outputs, plot_history, row_text, write_log

    workers = opts.ray_workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise KilnError("K0955", "the number of Ray workers (--ray-workers, workers=) must "
                        f"be a whole number >= 1, not {workers!r}")
    retries = getattr(opts, "ray_retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise KilnError("K0955", "the number of restarts (--ray-retries, retries=) must be a "
                        f"whole number >= 0, not {retries!r}")
    if allreduce not in ALLREDUCE:
        raise KilnError("K0955", f"allreduce must be one of {', '.join(ALLREDUCE)}, not "
                        f"{allreduce!r}")
    check_train_outputs(opts)  # before the workers train, not after (kiln.ray_train.fit's too)
    ray = _ray_train()
    if retries and not getattr(ray.train, "is_v2_enabled", lambda: False)():
        raise KilnError("K0955", "--ray-retries needs Ray Train v2 (its collectives name each "
                        "start of the workers)", hint="unset RAY_TRAIN_V2_ENABLED=0, or "
                        "upgrade Ray")
    opts.loss = opts.loss or "cross_entropy"  # `kiln train`'s default (None in its parser)
    if data is None:  # read here, once: the workers need no shared file system for it
        data = load_dataset(opts.data, opts.val_split, opts.seed)
    resume = None
    if opts.resume:
        resume = read_bounded(opts.resume, memory_bytes(), lambda why: KilnError(
            "K0838", f"checkpoint {opts.resume}: {why}"))
    if not ray.is_initialized():
        ray.init(address=opts.ray_address)
    kind, reducer = _choose_allreduce(ray, allreduce, workers)
    weights = None
    if opts.weights:  # read here: its arrays travel to the workers by value
        from kiln.runtime.weights import load_weights

        weights = load_weights(opts.weights)
    # the workers print nothing and write nothing of the user's: the driver does, below
    worker_opts = copy.copy(opts)
    worker_opts.quiet, worker_opts.resume, worker_opts.weights = True, None, weights
    worker_opts.log = worker_opts.plot = worker_opts.checkpoint = worker_opts.output = None
    config = {"opts": worker_opts, "args": args,
              "files": [os.path.abspath(opts.file), opts.file], "data": data, "resume": resume,
              "allreduce": kind, "reducer": reducer, "group": f"kiln-{uuid.uuid4().hex}",
              "make_trainer": make_trainer or ShardTrainer}
    with tempfile.TemporaryDirectory(prefix="kiln-ray-train-") as scratch:
        checkpoint = _train(ray, config, workers, opts.ray_storage or scratch, retries)
        if opts.ray_storage:  # where a later run may --resume from
            print(f"Ray Train checkpoint: {checkpoint.path}")
        with checkpoint.as_directory() as folder:
            from kiln.runtime.weights import load_weights

            history = [json.loads(line) for line in
                       Path(folder, HISTORY).read_text().splitlines() if line]
            weights = load_weights(os.path.join(folder, WEIGHTS))
            if opts.checkpoint and Path(folder, CHECKPOINT).exists():
                _copy(Path(folder, CHECKPOINT), opts.checkpoint)
    print(row_text({}, header=True))
    for row in history:
        print(row_text(row))
    if opts.log:
        write_log(opts.log, history)
    if opts.plot and history:
        plot_history(opts.plot, history)
    if opts.output:
        from kiln.runtime.weights import save_weights

        save_weights(opts.output, weights)
        print(f"wrote {opts.output}")
    return RayTrainResult(history, weights)


def _train(ray: Any, config: dict[str, Any], workers: int, storage: str, retries: int) -> Any:
    """Run the workers under Ray Train, starting them again from the last checkpoint up to
    `retries` times when one is lost; the final Checkpoint. A KilnError a worker raised is
    raised here as it is."""
    import ray.train

    if getattr(ray.train, "is_v2_enabled", lambda: False)():
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    else:
        from ray.train.data_parallel_trainer import DataParallelTrainer
    trainer = DataParallelTrainer(
        _worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers),
        run_config=ray.train.RunConfig(
            name=config["group"], storage_path=os.path.abspath(storage)
            if "://" not in storage else storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=retries)))
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps what a worker raised: a KilnError is raised as it is
        found = _kiln_error(e)
        if found is not None:
            raise found from None
        raise  # anything else (a worker that died, an unreachable cluster): Ray's own report
    return result.checkpoint


def _kiln_error(error: BaseException) -> KilnError | None:
    """The KilnError a Ray error holds (as its cause, or in its workers' failures)."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KilnError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        for name in ("worker_failures", "worker_exceptions"):
            failures = getattr(e, name, None)
            if isinstance(failures, dict):
                stack += list(failures.values())
        as_instance = getattr(e, "as_instanceof_cause", None)
        if callable(as_instance):
            try:
                stack.append(as_instance())
            except Exception:  # not every Ray error holds a cause it can rebuild
                pass
    return None


def _copy(source: Path, destination: str) -> None:
    """Copy a file of a checkpoint to `destination`, atomically."""
    from kiln.compiler.files import memory_bytes, read_bounded, write_atomically

    def refuse(why: str) -> KilnError:
        return KilnError("K0838", f"checkpoint {destination}: {why}")

    write_atomically(destination, read_bounded(source, memory_bytes(), refuse), refuse)


def fit(model: str | os.PathLike, data: Any, *, workers: int = 2,
        args: dict[str, Any] | None = None, address: str | None = None,
        storage: str | None = None, allreduce: str = "auto", retries: int = 0,
        make_trainer: Callable[..., Any] | None = None, **options: Any) -> RayTrainResult:
    """Train `model` (a .kiln file) on `workers` Ray Train workers: `kiln train MODEL
    --ray-workers N` in Python. `data`: a dataset name or .npz path as --data takes, or
    arrays (x, y) or (x, y, x_val, y_val); `options`: the other options of `kiln train` by
    their long names (`epochs=5, batch=64, lr=1e-3, model="MLP", output="w.safetensors"`);
    `address`, `storage`, `retries`: --ray-address, --ray-storage, --ray-retries;
    `allreduce`: "gloo" (Ray's collective, needs PyTorch), "actor" (torch-free) or "auto"
    (gloo where it works); `make_trainer`: as fit_options takes it."""
    from kiln.train.data import Dataset
    from kiln.train_options import train_options

    parser = argparse.ArgumentParser(add_help=False)
    train_options(parser)
    opts = parser.parse_args(["--data", data if isinstance(data, str) else "<arrays>"])
    unknown = sorted(set(options) - set(vars(opts)) - {"model"})
    if unknown:
        raise KilnError("K0955", f"kiln.ray_train.fit takes no option {unknown[0]!r}",
                        hint=f"its options: {', '.join(sorted(vars(opts)))}")
    opts.file, opts.model = os.fspath(model), options.pop("model", None)
    for name, value in options.items():
        setattr(opts, name, value)
    opts.ray_workers, opts.ray_address, opts.ray_storage = workers, address, storage
    opts.ray_retries = retries
    dataset = None
    if not isinstance(data, str):
        arrays = [np.asarray(a) for a in data]
        if len(arrays) not in (2, 4):
            raise KilnError("K0955", "data must be a dataset name, or arrays (x, y) or (x, y, "
                            f"x_val, y_val), not {len(arrays)} arrays")
        x, y = arrays[:2]
        x_val, y_val = arrays[2:] if len(arrays) == 4 else (x[:0], y[:0])
        dataset = Dataset(x, y, x_val, y_val)
    return fit_options(opts, dict(args or {}), dataset, allreduce, make_trainer)
