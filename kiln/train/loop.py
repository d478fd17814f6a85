"""`kiln train`: the training loop around a Trainer — data, epochs, progress, logs.

Each epoch shuffles the training examples with a numpy Generator seeded by (seed, epoch) and
steps through them in batches of `--batch`; the last, smaller batch is kept (models take any
batch size B). Augmentations draw from the same Generator. After each epoch the validation
split is evaluated, a row of the metrics table printed, the JSON-lines log and the
checkpoint rewritten (atomically). `--early-stopping N` stops after N epochs without a lower
validation loss and keeps the weights of the best epoch.

A model of several inputs takes the examples as its first input; each other input is an
array of the .npz named after it: split, shuffled and batched with x when the model takes it
per example (its axis 0 is the first input's; `NAME_val` beside `x_val`), else given whole
to every step (a graph's `edge_index`); or noise the trainer draws (`--noise NAME`,
kiln/train/inputs.py). `--full-batch` steps on every training example at once, in order (a
graph's nodes); `--autoencode` makes the examples their own targets (a VAE).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.compiler.errors import KilnError
from kiln.compiler.files import write_atomically

from .data import AUGMENTATIONS, Dataset, augment, load_dataset, shape_examples
from .inputs import per_example
from .trainer import Trainer

COLUMNS = ("epoch", "train_loss", "val_loss", "accuracy", "precision", "recall", "f1", "lr")


def _progress(total: int, desc: str, quiet: bool):
    """A tqdm bar over `total` batches (on stderr), or None without tqdm or when quiet."""
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def _targets(trainer: Trainer, y: np.ndarray) -> np.ndarray:
    """Labels as the loss takes them: class indices (integer labels for a class-index loss
    or a loss of the user's own) as i64, anything else shaped and typed like the model's
    first output."""
    if trainer.loss.class_index or (trainer.loss.path is not None and y.dtype.kind in "iu"):
        rank = len(trainer.outputs[0].type.shape)
        if y.dtype.kind in "iub" or ((y.ndim == rank - 1 or (y.ndim == rank and y.shape[1] == 1))
                                      and np.isfinite(y).all() and (y == np.round(y)).all()):
            return y.astype(np.int64)  # labels saved as floats (0.0, 1.0, ...) or bools
        return y
    port = trainer.outputs[0]
    if y.ndim == 1 and len(port.type.shape) == 2:
        y = y[:, None]
    return shape_examples(y, port)


def _other_inputs(trainer: Trainer, data) -> tuple:
    """The arrays of the dataset for the model's data inputs after the first, by name: for
    each, (training examples, validation examples) of an input given per example, or (the
    array, None) of one given whole (K0846 for an input the dataset lacks, or an array that
    is no input)."""
    from kiln.compiler.types import NUMPY_DTYPES

    ports = trainer.data_inputs[1:]
    names = [p.name for p in ports]
    typed = {p.name: NUMPY_DTYPES[p.type.dtype] for p in ports}

    def arrays(name: str) -> tuple:
        if name in data.examples:
            return tuple(np.asarray(a, typed[name], order="C") for a in data.examples[name])
        return np.asarray(data.inputs[name], typed[name], order="C"), None

    return tuple(arrays(n) for n in _checked_names(trainer, data, names, ports))


def _checked_names(trainer: Trainer, data, names: list[str], ports: list) -> list[str]:
    """`names`, once every one is in the dataset (given whole or per example) and the
    dataset holds no other array (K0846)."""
    given = set(data.inputs) | set(data.examples)
    extra = sorted(given - set(names))
    if extra:
        raise KilnError("K0846", f"the dataset holds an array {extra[0]!r}, which is no input "
                        f"of {trainer.model_name} after its first",
                        hint=f"its inputs after the first: {', '.join(names) or 'none'}")
    for p in ports:
        if p.name not in given:
            raise KilnError("K0846", f"kiln train has nothing to feed input {p} of "
                            f"{trainer.model_name}", hint=f"give it in the .npz as an array "
                            f"named {p.name}, or draw it with --noise {p.name}")
    return names


def _row(values: dict[str, Any]) -> str:
    cells = []
    for col in COLUMNS:
        v = values.get(col)
        cells.append(f"{'-':>10}" if v is None else f"{v:>10d}" if isinstance(v, int)
                     else f"{v:>10.4g}")
    return " ".join(cells)


def shuffled_batches(n: int, batch: int, seed: int, epoch: int
                     ) -> tuple[np.random.Generator, list[np.ndarray]]:
    """An epoch's Generator (seeded by (seed, epoch); augmentations draw from it too) and
    the indices of its batches: a permutation of the n examples cut into batches of
    `batch`, the last one smaller."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    return rng, [order[start:start + batch] for start in range(0, n, batch)]


@dataclass
class Run:
    """A training run set up from `kiln train`'s options: its trainer, its examples shaped
    and typed for the model, the inputs given whole to every step, the batch size; and
    `--early-stopping`'s state: the best epoch's (validation loss, weights) so far and the
    epochs since (kiln/ray_train.py keeps them in its checkpoints)."""

    trainer: Trainer
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    others: tuple  # per input after the first: (training, validation examples), (whole, None)
    batch: int
    steps_per_epoch: int
    best: tuple[float, dict[str, np.ndarray]] | None = None
    stale: int = 0


def fit(opts, args: dict[str, Any]) -> int:
    """Run `kiln train` with the parsed options `opts` (kiln/cli.py) and the model's
    compile-time arguments `args`."""
    run = setup(opts, args)
    print(row_text({}, header=True))

    def record(row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        print(_row(row), flush=True)
        if opts.log:
            write_log(opts.log, history)
        if opts.checkpoint:
            run.trainer.save_checkpoint(opts.checkpoint, loop=loop_config(opts, run))

    history = train_epochs(run, opts, record)
    if opts.plot and history:
        plot_history(opts.plot, history)
    if opts.output:
        run.trainer.model.save_weights(opts.output)
        print(f"wrote {opts.output}")
    return 0


def check_train_outputs(opts) -> None:
    """Refuse, before any training, a path of `-o`, `--checkpoint`, `--log` or `--plot`
    that could not be written when the run ends: a directory, a folder that does not exist,
    a format kiln (or matplotlib) does not write, or one path given twice."""
    from kiln.runtime.weights import check_tensor_file

    from .checkpoint import check_name

    paths = {flag: path for flag, path in (("-o", opts.output), ("--checkpoint",
                                                                  opts.checkpoint),
                                           ("--log", opts.log), ("--plot", opts.plot)) if path}
    for flag, path in paths.items():
        if os.path.isdir(path):
            raise KilnError("K0830", f"{flag} {path} is a directory",
                            hint=f"name a file in it, e.g. {os.path.join(path, 'FILE')}")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise KilnError("K0830", f"{flag} {path}: there is no folder {folder} to write "
                            "it in")
    if "-o" in paths:
        check_tensor_file(paths["-o"], "weights")
    if "--checkpoint" in paths:
        check_name(paths["--checkpoint"])
    if "--plot" in paths:
        check_plot_format(paths["--plot"])
    absolute = [os.path.abspath(p) for p in paths.values()]
    twice = next((p for p in paths.values() if absolute.count(os.path.abspath(p)) > 1), None)
    if twice is not None:
        raise KilnError("K0830", f"{twice} is given to two options ("
                        f"{' and '.join(f for f, p in paths.items() if p == twice)}): the "
                        "second would overwrite the first")


def check_plot_format(path: str) -> None:
    """K0830 unless matplotlib is installed and writes images of `path`'s extension."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise KilnError("K0830", "--plot needs matplotlib", hint="pip install 'kiln[train]'"
                        ) from None
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else "png"
    if fmt not in formats:
        raise KilnError("K0830", f"--plot {path}: matplotlib writes no {fmt!r} images",
                        hint=f"formats: {', '.join(sorted(formats))}")


def setup(opts, args: dict[str, Any], data: Dataset | None = None,
          make_trainer: Callable[..., Trainer] = Trainer) -> Run:
    """The trainer (made by `make_trainer`, which takes Trainer's arguments) and the examples
    of `kiln train`'s options `opts`, resumed from `--resume` and compiled; `data`: the
    dataset when it is loaded already (else `--data` names it)."""
    from kiln.compiler.train.optim import by_name

    for name in opts.augment:
        if name not in AUGMENTATIONS:
            raise KilnError("K0830", f"unknown augmentation {name!r}",
                            hint=f"augmentations: {', '.join(AUGMENTATIONS)}")
    if opts.batch < 1 or opts.epochs < 0:
        raise KilnError("K0830", "--batch must be >= 1 and --epochs >= 0")
    if opts.early_stopping < 0:
        raise KilnError("K0830", f"--early-stopping must be >= 0, not {opts.early_stopping}")
    hyper: dict[str, Any] = {"lr": opts.lr}
    if opts.momentum is not None:
        hyper["momentum"] = opts.momentum
    if opts.weight_decay is not None:
        hyper["weight_decay"] = opts.weight_decay
    optimizer = by_name(opts.optimizer, **hyper)
    trainer = make_trainer(opts.file, loss=opts.loss, optimizer=optimizer, schedule=None,
                           clip_grad_norm=opts.clip_grad_norm, seed=opts.seed,
                           trainable=opts.trainable or None, model=opts.model,
                           args=args, weights=opts.weights,
                           target=opts.target, l1=opts.l1, l2=opts.l2, noise=opts.noise)
    if data is None:  # the model's per-example inputs are split and shuffled with x
        data = load_dataset(opts.data, opts.val_split, opts.seed,
                            per_example=sorted(per_example(trainer.data_inputs)))
    steps_per_epoch = 1 if opts.full_batch else -(-len(data.x) // opts.batch)
    trainer.schedule = schedule_of(opts, steps_per_epoch)  # it counts the steps per epoch
    port = trainer.inputs[0]
    images = [name for name in opts.augment if name in ("flip", "crop")]
    if images and len(port.type.shape) != 4:
        raise KilnError("K0830", f"--augment {images[0]} transforms images [N, C, H, W], but "
                        f"the model's input is {port}", hint="--augment noise takes any input")
    if opts.early_stopping and not len(data.x_val):
        raise KilnError("K0830", f"--early-stopping {opts.early_stopping} watches the "
                        "validation loss, but there are no validation examples",
                        hint="give x_val and y_val in the .npz, or a --val-split above 0")
    others = _other_inputs(trainer, data)
    x, x_val = shape_examples(data.x, port), shape_examples(data.x_val, port)
    if opts.autoencode:
        data.y, data.y_val = data.x, data.x_val
    y, y_val = _targets(trainer, data.y), _targets(trainer, data.y_val)
    batch = max(len(x), 1) if opts.full_batch else opts.batch
    run = Run(trainer, x, y, x_val, y_val, others, batch, steps_per_epoch)
    if opts.resume:  # the trainer's setup first: another model is the first thing to say
        trainer.load_checkpoint(opts.resume)
        check_resumed_loop(opts.resume, loop_config(opts, run))
    trainer.prepare(y[:1])  # compiled before the clock of the first epoch starts
    return run


def loop_config(opts, run: Run) -> dict[str, Any]:
    """What a checkpoint records of the loop, which a resumed run must repeat to go on where
    it stopped: the epoch is the step over the steps per epoch, each epoch's shuffle and
    augmentations are seeded by (seed, epoch) over the examples."""
    return {"batch": run.batch, "steps_per_epoch": run.steps_per_epoch,
            "examples": len(run.x), "seed": opts.seed, "full_batch": bool(opts.full_batch),
            "augment": list(opts.augment)}


def check_resumed_loop(path: str, mine: dict[str, Any]) -> None:
    """K0838 when the checkpoint `path` records a loop (kiln train's batch, examples, seed,
    ...) that differs from `mine`; a checkpoint of kiln.Trainer alone records none."""
    from .checkpoint import read_checkpoint

    _, meta = read_checkpoint(path)
    try:
        theirs = json.loads(meta.get("kiln_trainer", "{}")).get("loop")
    except (ValueError, AttributeError):
        return  # load_checkpoint says what is wrong with the header
    if not isinstance(theirs, dict):
        return
    for key, value in mine.items():
        if key in theirs and theirs[key] != value:
            flag = {"examples": "the training examples (--data, --val-split)",
                    "steps_per_epoch": "the steps per epoch (--batch, --full-batch, --data)"
                    }.get(key, "--" + key.replace("_", "-"))
            raise KilnError("K0838", f"checkpoint {path} was written by a kiln train run whose "
                            f"{key} was {theirs[key]!r}, this run's is {value!r}",
                            hint=f"resume with the same {flag}: the run goes on at the epoch "
                            "and shuffle where it stopped")


def schedule_of(opts, steps_per_epoch: int):
    """The learning-rate schedule `--schedule` asks for (None: constant), over `--epochs`
    epochs of `steps_per_epoch` steps: cosine after `--warmup` steps, or times `--gamma`
    every `--step-size` epochs."""
    from kiln.compiler.train.optim import cosine, step_decay

    total = max(1, opts.epochs * steps_per_epoch)
    if opts.schedule == "cosine":
        return cosine(total, min(opts.warmup, total - 1))
    if opts.schedule == "step":
        return step_decay(opts.step_size * steps_per_epoch, opts.gamma)
    return None


def train_epochs(run: Run, opts, record: Callable[[dict[str, Any], list], None]
                 ) -> list[dict[str, Any]]:
    """The epochs of `kiln train` (see the module's docstring); after each, `record(row,
    history)` with its row of metrics and every row so far. Returns the history; with
    `--early-stopping`, the trainer is left with the weights of the best epoch (counting
    from `run.best` and `run.stale`: a run going on from a checkpoint may give them)."""
    trainer, x, y = run.trainer, run.x, run.y
    history: list[dict[str, Any]] = []
    for epoch in range(trainer.step_count // run.steps_per_epoch, opts.epochs):
        if opts.early_stopping and run.stale >= opts.early_stopping:
            break  # it stopped before the checkpoint this run goes on from
        rng, parts = shuffled_batches(len(x), run.batch, opts.seed, epoch)
        if opts.full_batch:  # in order: whole inputs (a graph's edges) number the examples
            parts = [np.arange(len(x))]
        bar = _progress(run.steps_per_epoch, f"epoch {epoch + 1}/{opts.epochs}", opts.quiet)
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        for part in parts:
            xb = augment(x[part], opts.augment, rng) if opts.augment else x[part]
            loss = trainer.step((xb, *(a if v is None else a[part] for a, v in run.others)),
                                y[part])
            seen += len(part)
            total_loss += loss * len(part)
            if bar is not None:
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(step=trainer.step_count, loss=f"{loss:.4f}",
                                samples_s=f"{rate:.0f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
                               "lr": trainer.learning_rate(max(trainer.step_count, 1)),
                               "samples_per_s": seen / max(time.perf_counter() - started,
                                                           1e-9)}
        if len(run.x_val):
            metrics = trainer.evaluate((run.x_val, *(a if v is None else v
                                                     for a, v in run.others)), run.y_val)
            row.update({"val_loss": metrics.pop("loss"), **metrics})
        history.append(row)
        if opts.early_stopping and "val_loss" in row:
            if run.best is None or row["val_loss"] < run.best[0]:
                run.best = (row["val_loss"], {p: a.copy() for p, a in trainer.params.items()})
                run.stale = 0
            else:
                run.stale += 1
        record(row, history)
        if opts.early_stopping and run.stale >= opts.early_stopping:
            print(f"early stopping: no lower validation loss in {run.stale} epochs; "
                  f"keeping epoch {epoch + 1 - run.stale}'s weights")
            break
    if run.best is not None:
        trainer.set_params(run.best[1])
    return history


def write_log(path: str, history: list[dict[str, Any]]) -> None:
    """The metrics of every epoch so far as JSON lines, written atomically."""
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in history).encode(),
                     lambda why: KilnError("K0830", f"log {path}: {why}"))


def row_text(row: dict[str, Any], header: bool = False) -> str:
    """A row of the metrics table (or, with `header`, the table's header)."""
    return " ".join(f"{c:>10}" for c in COLUMNS) if header else _row(row)


def plot_history(path: str, history: list[dict[str, Any]]) -> None:
    """Loss curves (and validation accuracy) as an image, written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KilnError("K0830", "--plot needs matplotlib", hint="pip install 'kiln[train]'"
                        ) from None
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    if "val_loss" in history[-1]:
        ax.plot(epochs, [r.get("val_loss") for r in history], label="validation loss")
    if "accuracy" in history[-1]:
        ax.plot(epochs, [r.get("accuracy") for r in history], label="validation accuracy")
    ax.set_xlabel("epoch")
    ax.legend()
    buffer = io.BytesIO()
    fmt = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else "png"
    try:
        fig.savefig(buffer, format=fmt)
    except ValueError as e:
        raise KilnError("K0830", f"--plot {path}: {e}") from None
    finally:
        plt.close(fig)
    write_atomically(path, buffer.getvalue(),
                     lambda why: KilnError("K0830", f"plot {path}: {why}"))


__all__ = ["COLUMNS", "Run", "check_plot_format", "check_resumed_loop", "check_train_outputs",
           "fit", "loop_config", "plot_history",
           "row_text", "schedule_of", "setup", "shuffled_batches", "train_epochs", "write_log"]
