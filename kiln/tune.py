"""Hyperparameter search with Ray Tune: grid, random and Bayesian (Optuna's TPE) search over
the learning rate, batch size, weight decay and a model's own arguments, bad trials stopped
early by ASHA, a results table, and the best trial's weights saved.

    import kiln.tune
    from kiln.tune import loguniform
    result = kiln.tune.run("mlp.kiln", data="digits", space={
        "lr": loguniform(1e-4, 1e-1), "batch": [32, 64], "hidden": [64, 128, 256]},
        search="optuna", num_samples=16, scheduler="asha", epochs=10,
        output="best.safetensors")
    print(result.table())            # every trial, best first
    result.best.config               # {"lr": 0.0042, "batch": 32, "hidden": 128}

Each trial is the single-process kiln.Trainer of `kiln train`: the same shuffling (seeded by
(seed, epoch)), one epoch at a time, the metrics reported to Tune after each epoch (so ASHA
can stop the trial there) with a checkpoint of the trainer and its weights. Every trial
starts from the same seed: a configuration gives the same numbers whenever it runs, and its
`kiln train` command (the same options, --seed) gives them again.

Ray and Optuna are imported only here, and only when this module is used: `import kiln`
and the CLI never load them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.compiler.errors import KilnError

if TYPE_CHECKING:
    from kiln.compiler.elaborate import Program
    from kiln.train import Trainer
    from kiln.train.data import Dataset

__all__ = ["RANGES", "LogUniform", "RandInt", "TrialResult", "TuneResult", "Uniform",
           "loguniform", "randint", "run", "uniform"]

# what a space may set besides the model's own arguments: the options of the training loop
TRAINING = ("lr", "batch", "weight_decay", "momentum")
DEFAULTS = {"lr": 1e-3, "batch": 64}
CLASSIFICATION = ("val_accuracy", "val_precision", "val_recall", "val_f1")
METRICS = ("train_loss", "val_loss", *CLASSIFICATION)
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("asha",)
TRAINER_FILE = "trainer.safetensors"  # in each checkpoint: to resume the trial
WEIGHTS_FILE = "weights.safetensors"  # in each checkpoint: the model's weights alone


def _modules():
    """Ray with Ray Tune, or K0961 naming what of Ray Tune and Optuna is not installed."""
    import importlib

    missing = []
    for modules in (("ray", "ray.tune"), ("optuna",)):  # Optuna: the TPE sampler
        try:
            for module in modules:
                importlib.import_module(module)
        except ImportError as e:
            missing.append((e.name or modules[0]).split(".")[0])  # ray, not ray.tune
    if missing:
        raise KilnError("K0961", f"kiln.tune needs Ray Tune and Optuna, but "
                        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        "installed", hint="pip install 'kiln[tune]'  (or: pip install "
                        "'ray[tune]' optuna)")
    import ray

    return ray, ray.tune


def _refuse(message: str, hint: str | None = None) -> KilnError:
    return KilnError("K0960", message, hint=hint)


# ---------------------------------------------------------------------- the search space


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [lo, hi]."""

    lo: float
    hi: float

    def domain(self, tune):
        return tune.uniform(self.lo, self.hi)

    def ends(self) -> list:
        return [self.lo, self.hi]

    def __str__(self) -> str:
        return f"uniform({self.lo:g}, {self.hi:g})"


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
    """A float whose logarithm is drawn uniformly: lo > 0 (learning rates, decays)."""

    def domain(self, tune):
        return tune.loguniform(self.lo, self.hi)

    def __str__(self) -> str:
        return f"loguniform({self.lo:g}, {self.hi:g})"


@dataclasses.dataclass(frozen=True)
class RandInt(Uniform):
    """An int drawn uniformly from lo..hi, both included."""

    def domain(self, tune):
        return tune.randint(self.lo, self.hi + 1)  # Tune's upper end is excluded

    def __str__(self) -> str:
        return f"randint({self.lo}, {self.hi})"


def _checked(dist: Uniform, name: str | None = None) -> Uniform:
    where = f"{name} = " if name else ""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                  for v in (dist.lo, dist.hi))
    if not numbers or dist.lo > dist.hi:
        raise _refuse(f"{where}{dist}: the ends must be finite numbers, lo <= hi")
    if isinstance(dist, LogUniform) and dist.lo <= 0:
        raise _refuse(f"{where}{dist}: a log-uniform range must be above 0")
    if isinstance(dist, RandInt) and not all(isinstance(v, int) for v in (dist.lo, dist.hi)):
        raise _refuse(f"{where}{dist}: the ends of randint are ints")
    return dist


def uniform(lo: float, hi: float) -> Uniform:
    """A float drawn uniformly from [lo, hi] (random and Optuna search)."""
    return _checked(Uniform(lo, hi))


def loguniform(lo: float, hi: float) -> LogUniform:
    """A float whose logarithm is uniform over [log lo, log hi], 0 < lo <= hi."""
    return _checked(LogUniform(lo, hi))


def randint(lo: int, hi: int) -> RandInt:
    """An int drawn uniformly from lo..hi, both ends included."""
    return _checked(RandInt(lo, hi))


# the ranges by name, as `kiln tune --param lr=loguniform:1e-4:1e-1` writes them
RANGES = {"uniform": uniform, "loguniform": loguniform, "randint": randint}


def _values(name: str, spec: Any, search: str) -> list | Uniform:
    """A space entry as a list of values (a grid axis, or a choice) or a checked range; a
    single value is a list of one. K0960 for what the search cannot take."""
    if isinstance(spec, Uniform):
        if search == "grid":
            raise _refuse(f"grid search takes lists of values, but {name} = {spec}",
                          hint="list the values ([1e-3, 1e-2]), or search \"random\" or "
                          "\"optuna\" (kiln tune --search)")
        return _checked(spec, name)
    values = list(spec) if isinstance(spec, list | tuple) else [spec]
    if not values:
        raise _refuse(f"{name} has no values to try")
    return values


@dataclasses.dataclass(frozen=True)
class Space:
    """A checked search space: the training options and the model's arguments it varies."""

    entries: dict[str, list | Uniform]

    def param_space(self, tune, search: str) -> dict[str, Any]:
        """The space as Tune takes it: a grid axis per list for a grid, else a choice per
        list and a Tune domain per range."""
        out = {}
        for name, spec in self.entries.items():
            if isinstance(spec, Uniform):
                out[name] = spec.domain(tune)
            else:
                out[name] = tune.grid_search(spec) if search == "grid" else tune.choice(spec)
        return out

    def corners(self) -> list[dict[str, Any]]:
        """Configurations that together try every listed value and both ends of every
        range, one entry changed at a time: what is checked before any trial runs."""
        first = {n: (s.lo if isinstance(s, Uniform) else s[0]) for n, s in self.entries.items()}
        out = [first]
        for name, spec in self.entries.items():
            values = spec.ends() if isinstance(spec, Uniform) else spec
            out += [{**first, name: v} for v in values[1:]]
        return out


def check_space(space: Mapping[str, Any], search: str, model_args: list[str]) -> Space:
    """The space checked against the search and the model (K0960): every entry a training
    option (lr, batch, weight_decay, momentum) or one of the model's arguments."""
    if not isinstance(space, Mapping) or not space:
        raise _refuse("the search space is empty: give it at least one entry",
                      hint="e.g. space={\"lr\": [1e-3, 1e-2]}")
    entries = {}
    for name, spec in space.items():
        if name not in TRAINING and name not in model_args:
            raise _refuse(f"the search space sets {name!r}, which is neither a training option "
                          "nor an argument of the model",
                          hint=f"training options: {', '.join(TRAINING)}; the model's "
                          f"arguments: {', '.join(model_args) or 'none'}")
        entries[name] = _values(name, spec, search)
    for name, check in (("lr", _positive_float), ("batch", _positive_int),
                        ("weight_decay", _non_negative), ("momentum", _non_negative)):
        spec = entries.get(name)
        if spec is not None:
            for v in spec.ends() if isinstance(spec, Uniform) else spec:
                if not check(v):
                    raise _refuse(f"{name} = {v!r} in the search space: {check.__doc__}")
    return Space(entries)


def _positive_float(v: Any) -> bool:
    """it must be a number above 0"""
    return _non_negative(v) and v > 0


def _positive_int(v: Any) -> bool:
    """it must be an int >= 1"""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _non_negative(v: Any) -> bool:
    """it must be a finite number >= 0"""
    return (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0)


# ---------------------------------------------------------------------- one trial


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every trial shares (sent to each by value): the model, the loss, the optimizer,
    the fixed model arguments, the seed and the epochs."""

    path: str
    model: str | None
    loss: str
    optimizer: str
    args: dict[str, Any]
    seed: int
    epochs: int
    target: str

    def trainer(self, config: Mapping[str, Any]) -> Trainer:
        """The Trainer of one configuration (its model arguments over the fixed ones)."""
        from kiln.compiler.train.optim import by_name
        from kiln.train import Trainer

        hyper = {k: config.get(k, DEFAULTS.get(k)) for k in ("lr", "weight_decay", "momentum")}
        optimizer = by_name(self.optimizer, **{k: v for k, v in hyper.items() if v is not None})
        args = {**self.args, **{k: v for k, v in config.items() if k not in TRAINING}}
        # one thread: Tune runs a trial per CPU
        return Trainer(self.path, loss=self.loss, optimizer=optimizer, seed=self.seed,
                       model=self.model, args=args, target=self.target, threads=1)

    def check(self, program: Program, space: Space, data: str | os.PathLike | Dataset,
              val_split: float, metric: str) -> Dataset:
        """The dataset (loaded, when named), after refusing here what a trial would refuse:
        the model at every listed value and range end of the space (K02xx), a metric the
        loss or the data cannot give (K0960), examples the model cannot take (K0830)."""
        from kiln.train.data import Dataset, load_dataset

        for config in space.corners():
            program.elaborate(self.model, {**self.args, **{k: v for k, v in config.items()
                                                           if k not in TRAINING}})
        trainer = self.trainer(space.corners()[0])
        if metric in CLASSIFICATION and not trainer.loss.class_index:
            raise _refuse(f"{metric} is a classification metric, but {trainer.loss.name} is "
                          "not a classification loss", hint="search on val_loss (mode \"min\")")
        if not isinstance(data, Dataset):
            data = load_dataset(data, val_split, self.seed)
        if metric != "train_loss" and not len(data.x_val):
            raise _refuse(f"the metric {metric} needs validation examples, and the data has "
                          "none", hint="give --val-split above 0, or search on train_loss")
        examples(trainer, data)
        return data


def examples(trainer: Trainer, data: Dataset) -> tuple[np.ndarray, ...]:
    """x, y, x_val, y_val shaped to the trainer's model, as `kiln train` shapes them."""
    from kiln.train.data import shape_examples
    from kiln.train.loop import _targets

    port = trainer.inputs[0]
    if len(trainer.inputs) != 1:
        raise _refuse(f"kiln.tune trains models of one input; {trainer.model_name} takes "
                      f"{len(trainer.inputs)}")
    return (shape_examples(data.x, port), _targets(trainer, data.y),
            shape_examples(data.x_val, port), _targets(trainer, data.y_val))


def train_trial(config: dict[str, Any], setup: Setup, data: Dataset) -> None:
    """One trial, run by Tune in a worker: train epoch by epoch, reporting the metrics and a
    checkpoint after each; resumes from Tune's checkpoint when the trial is restarted."""
    from ray import tune

    from kiln.runtime.weights import save_weights
    from kiln.train.loop import shuffled_batches

    trainer = setup.trainer(config)
    x, y, x_val, y_val = examples(trainer, data)
    batch = config.get("batch", DEFAULTS["batch"])
    steps_per_epoch = -(-len(x) // batch)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as where:
            trainer.load_checkpoint(Path(where, TRAINER_FILE))
    for epoch in range(trainer.step_count // steps_per_epoch, setup.epochs):
        _, parts = shuffled_batches(len(x), batch, setup.seed, epoch)
        total = sum(trainer.step(x[part], y[part]) * len(part) for part in parts)
        metrics = {"epoch": epoch + 1, "train_loss": total / max(len(x), 1)}
        if len(x_val):
            scores = trainer.evaluate(x_val, y_val)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
        with tempfile.TemporaryDirectory(prefix="kiln-tune-") as where:
            trainer.save_checkpoint(Path(where, TRAINER_FILE))
            save_weights(Path(where, WEIGHTS_FILE), trainer.state_dict())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(where))


# ---------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """One trial: its configuration, its last reported metrics, the epochs it ran (fewer than
    asked when ASHA stopped it) and, for a trial that failed, why."""

    id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    epochs: int
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """A finished search: every trial, best first (failed trials last), the best trial, its
    weights (by parameter path), and where Tune keeps the experiment."""

    trials: list[TrialResult]
    best: TrialResult
    weights: dict[str, np.ndarray]
    metric: str
    mode: str
    path: str

    def table(self) -> str:
        """The trials as a plain-text table, best first, the best marked with *."""
        names = list(self.best.config)
        shown = [m for m in METRICS if any(m in t.metrics for t in self.trials)]
        head = ["", "trial", *names, "epochs", *shown]
        rows = [head]
        for t in self.trials:
            rows.append(["*" if t is self.best else "", t.id,
                         *(_cell(t.config.get(n)) for n in names), str(t.epochs),
                         *(_cell(t.metrics.get(m)) for m in shown)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"{t.id}: {t.error}" for t in self.trials if t.error]
        return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _kiln_cause(error: BaseException | None) -> KilnError | None:
    """The KilnError a trial raised, inside the errors Ray wraps it in, if it was one."""
    while error is not None and not isinstance(error, KilnError):
        error = getattr(error, "cause", None) or error.__cause__
    return error


def _reason(error: BaseException) -> str:
    """Why a trial failed, in a line: its KilnError, else the error's last line."""
    cause = _kiln_cause(error)
    if cause is not None:
        return f"error[{cause.code}]: {cause.message}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _trial_result(result, names: list[str]) -> TrialResult:
    metrics = {m: float(result.metrics[m]) for m in METRICS if m in (result.metrics or {})}
    return TrialResult(str((result.metrics or {}).get("trial_id", Path(result.path).name)),
                       {n: result.config.get(n) for n in names}, metrics,
                       int((result.metrics or {}).get("epoch", 0)),
                       None if result.error is None else _reason(result.error))


def _order(trials: list[TrialResult], metric: str, mode: str) -> list[TrialResult]:
    """Best first: by the metric (its direction by mode), then trials without it."""
    def key(t: TrialResult):
        v = t.metrics.get(metric)
        if v is None or not math.isfinite(v):
            return (1, 0.0)
        return (0, -v if mode == "max" else v)
    return sorted(trials, key=key)


# ---------------------------------------------------------------------- the search


def run(path: str | os.PathLike, *, data: Any, space: Mapping[str, Any],
        loss: str = "cross_entropy", search: str = "grid", num_samples: int | None = None,
        scheduler: str | None = None, metric: str = "val_accuracy", mode: str = "max",
        epochs: int = 5, seed: int = 0, optimizer: str = "adam", model: str | None = None,
        args: Mapping[str, Any] | None = None, val_split: float = 0.2,
        output: str | os.PathLike | None = None, storage: str | os.PathLike | None = None,
        name: str | None = None, max_concurrent: int | None = None,
        target: str = "native", address: str | None = None, retries: int = 0,
        verbose: int = 0) -> TuneResult:
    """Search hyperparameters of the model in `path` trained on `data` (see the module's
    docstring and docs/scale-out.md).

    data: a `kiln train --data` name (digits, iris, ...) or .npz path, or a
    kiln.train.data.Dataset; space: {name: values} where name is lr, batch, weight_decay,
    momentum or a model argument, and values a list (grid axis or choice), a range
    (loguniform, uniform, randint: random and Optuna search) or one value; search: "grid"
    (every combination once), "random" or "optuna" (num_samples trials, default 10);
    scheduler: "asha" to stop bad trials early, or None; metric, mode: what "best" means
    (a metric of METRICS, "max" or "min"); output: where the best trial's weights go
    (.safetensors or .npz); storage, name: where Tune keeps the experiment (default
    ~/ray_results); max_concurrent: trials at once (default: one per free CPU).
    address: a Ray cluster to connect to ("auto", "ray://head:10001"); without it, the
    cluster this process is connected to, else a local one started here. retries: how
    often a failed trial is started again, from its last checkpoint (for workers lost on a
    cluster; a trial that fails by itself fails again). verbose: Tune's
    progress reports (0: only where the experiment is kept; 1: a status table now and then;
    2: every result).
    """
    from kiln.api import load

    _check_options(search, scheduler, metric, mode, epochs, num_samples, max_concurrent)
    if not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0):
        raise _refuse(f"retries must be an int >= 0, not {retries!r}")
    program = load(Path(path))
    checked = check_space(space, search, [p.name for p in program.model_ref(model).defn.params])
    ray, tune = _modules()
    if output is not None:
        from kiln.runtime.weights import check_tensor_file

        check_tensor_file(output, "weights")  # before the search, not after it
    setup = Setup(os.path.abspath(os.fspath(path)), model, loss, optimizer, dict(args or {}),
                  seed, epochs, target)
    data = setup.check(program, checked, data, val_split, metric)
    if address is not None and not ray.is_initialized():
        ray.init(address=address)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, setup=setup, data=data),
                            {"cpu": 1}),
        param_space=checked.param_space(tune, search),
        tune_config=tune.TuneConfig(metric=metric, mode=mode,
                                    search_alg=_search_algorithm(search, seed),
                                    scheduler=_scheduler(scheduler, epochs),
                                    num_samples=1 if search == "grid" else num_samples or 10,
                                    max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=name, storage_path=_storage(storage),
            verbose=verbose, checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=retries)))
    # a trial of a small model checkpoints every second or so, which makes Tune snapshot its
    # state often (num_to_keep forces one per checkpoint): its warning about that says
    # nothing the user can act on here, unless they asked for it
    quiet = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    with _environment(quiet):
        grid = tuner.fit()
    names = list(checked.entries)
    trials = _order([_trial_result(r, names) for r in grid], metric, mode)
    if trials[0].metrics.get(metric) is None:
        _every_trial_failed(grid, trials)
    best_result = grid.get_best_result(metric, mode, scope="last")
    best = next(t for t in trials if t.config == {n: best_result.config.get(n) for n in names}
                and t.metrics.get(metric) == best_result.metrics[metric])
    weights = _best_weights(best_result)
    if output is not None:
        from kiln.runtime.weights import save_weights

        save_weights(output, weights)
    return TuneResult(trials, best, weights, metric, mode, grid.experiment_path)


def _storage(storage: str | os.PathLike | None) -> str | None:
    """Where Tune keeps the experiment: a URI (s3://, gs://) as it is, a local path made
    absolute (Tune refuses a relative one)."""
    if storage is None or "://" in os.fspath(storage):
        return None if storage is None else os.fspath(storage)
    return os.path.abspath(storage)


@contextlib.contextmanager
def _environment(defaults: dict[str, str]):
    """Environment variables set for a while, where the user has not set them."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _every_trial_failed(grid, trials: list[TrialResult]):
    """Raise the error of the first trial (by Tune's order) when no trial finished: a
    KilnError keeps its code (K0836 for a learning rate that makes the loss diverge), told
    which trial it was and how many others failed."""
    first = next((r for r in grid if r.error is not None), None)
    if first is None:
        raise RuntimeError("no trial reported the metric, and none failed")
    trial = next(t for t in trials if t.error == _reason(first.error))
    setting = ", ".join(f"{k}={_cell(v)}" for k, v in trial.config.items())
    where = f"every trial failed ({len(trials)}); the first, {trial.id} ({setting})"
    cause = _kiln_cause(first.error)
    if cause is None:  # not kiln's error (a worker lost, a bug): Ray's own says more
        raise RuntimeError(f"{where}: {trial.error}") from first.error
    raise KilnError(cause.code, f"{where}: {cause.message}", hint=cause.hint) from None


def _check_options(search: str, scheduler: str | None, metric: str, mode: str, epochs: int,
                   num_samples: int | None, max_concurrent: int | None) -> None:
    """K0960 for a search, scheduler, metric, mode or count that cannot be."""
    if search not in SEARCHES:
        raise _refuse(f"unknown search {search!r}", hint=f"searches: {', '.join(SEARCHES)}")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise _refuse(f"unknown scheduler {scheduler!r}",
                      hint="\"asha\" stops bad trials early; None runs every trial to the end")
    if mode not in ("max", "min"):
        raise _refuse(f"mode must be \"max\" or \"min\", not {mode!r}")
    if metric not in METRICS:
        raise _refuse(f"unknown metric {metric!r}", hint=f"metrics: {', '.join(METRICS)}")
    if search == "grid" and num_samples not in (None, 1):
        raise _refuse("a grid search runs each combination once: num_samples is for random "
                      "and Optuna search")
    for name, n in (("epochs", epochs), ("num_samples", num_samples),
                    ("max_concurrent", max_concurrent)):
        if n is not None and not _positive_int(n):
            raise _refuse(f"{name} must be an int >= 1, not {n!r}")


def _search_algorithm(search: str, seed: int):
    """Tune's search algorithm: its variant generator (seeded) for grid and random search,
    Optuna's TPE sampler (seeded) for "optuna"."""
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def _scheduler(scheduler: str | None, epochs: int):
    """ASHA over epochs: a trial runs at least one epoch, and a rung keeps the best half."""
    if scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                         reduction_factor=2)


def _best_weights(result) -> dict[str, np.ndarray]:
    """The weights in the last checkpoint of the best trial."""
    from kiln.runtime.weights import load_weights

    with result.checkpoint.as_directory() as where:
        return dict(load_weights(Path(where, WEIGHTS_FILE)))
