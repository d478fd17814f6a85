"""kiln.Trainer: a model, a loss and an optimizer, stepped one native call at a time.

    trainer = kiln.Trainer("lenet.kiln", loss="cross_entropy",
                           optimizer=kiln.optim.AdamW(lr=1e-3), seed=0)
    loss = trainer.step(x, y)              # forward, backward and update: one native call
    trainer.evaluate(x_val, y_val)         # {"loss", "accuracy", "precision", "recall", "f1"}
    trainer.save_checkpoint("ckpt.safetensors")
    trainer.model(x)                       # the inference model, with the trained weights

The trainer holds the weights, the optimizer's state and the step counter as numpy arrays;
the train step (compiler/train/step.py) takes them as inputs and returns their new values,
which replace the old ones only when the step succeeds (a non-finite loss changes nothing).
The step and evaluation graphs are built on the first call, when the target's dtype and
shape are known: a later call with another target dtype or rank is refused as any input is.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.dims import Dim, known_value
from kiln.compiler.driver import Compilation
from kiln.compiler.errors import KilnError, KilnWarning
from kiln.compiler.train.optim import (
    Adam,
    Optimizer,
    by_name,
    initial_state,
    optimizer_from_config,
    schedule_config,
)
from kiln.compiler.train.step import (
    GRADSUM,
    PARAM,
    build_train_step,
    select_trainable,
    state_name,
)
from kiln.compiler.types import NUMPY_DTYPES, dtype_of_numpy

from .checkpoint import read_checkpoint, write_checkpoint
from .inputs import draw_noise, noise_inputs, per_example
from .metrics import classification_metrics
from .program import (
    PREFIX,
    TRAIN_MODEL,
    LossSpec,
    loss_on_activation,
    strip_prefix,
    target_name,
    training_program,
)

RNG_KEY = "rng_key"  # the step's random key input, [seed, step] (elaborate/training.py)
UPDATED = "updated:"
IGNORE_INDEX = -100  # std.losses' ignore_index: a target no loss or metric counts


def step_feeds(step, feeds: dict[str, Any], params: dict, state: dict, lr: float, t: int,
               key: list[int]) -> dict[str, Any]:
    """`feeds` (the batch) with the rest of what the compiled train step `step` (runner,
    StepLayout, output names) takes: the learning rate, the step number `t`, the random key
    where the step draws (dropout), every parameter and the trainable ones' optimizer state."""
    runner, layout, _ = step
    feeds["lr"] = np.float64(lr)
    feeds["step"] = np.float64(t)
    if any(p.name == RNG_KEY for p in runner.inputs):
        feeds[RNG_KEY] = np.array(key, np.int64)
    feeds.update({PARAM + p: params[p] for p in layout.params})
    feeds.update({state_name(p, s): state[(p, s)] for p in layout.trainable
                  for s in layout.slots})
    return feeds


def run_step(step, feeds: dict[str, Any], params: dict, state: dict, subject: str,
             at: str) -> float:
    """Run the compiled train step `step` on `feeds`; its new weights, optimizer state and
    buffers replace those in `params` and `state` only when the loss and the buffers are
    finite. Otherwise K0836 (`subject` is {loss}, `at`: ...), naming the first parameter
    whose gradient is not finite, or K0848 naming the buffer, and nothing changes."""
    runner, layout, out_names = step
    arrays, dims = runner.bind_inputs((), feeds)
    results = dict(zip(out_names, runner.run(arrays, dims)))
    return accept_step(layout, results, params, state, subject, at)


def accept_step(layout, results: dict[str, Any], params: dict, state: dict, subject: str,
                at: str) -> float:
    """The loss of a train step's `results` (by output name, as `layout` names them), whose
    new values then replace those in `params` and `state`: run_step's second half
    (kiln/train/distributed.py gathers the results of two graphs and an allreduce)."""
    loss = float(results["loss"])
    if not math.isfinite(loss):
        bad = next((p for p in layout.trainable if not np.isfinite(results[GRADSUM + p])),
                   None)
        where = (f"the first non-finite gradient is of parameter {bad}" if bad else
                 "every gradient is finite")
        raise KilnError("K0836", f"{subject} is {loss} {at}: {where}",
                        hint="lower the learning rate, clip gradients (clip_grad_norm=) or "
                        "check the data for NaN/Inf")
    for p in layout.buffers:  # a NaN kept here would poison every later evaluation
        if not np.isfinite(results[UPDATED + p]).all():
            raise KilnError("K0848", f"the buffer {p} is not finite {at}: the step is refused",
                            hint="BatchNorm in training mode needs two examples or more per "
                            "batch (an epoch's last batch may be of one: choose --batch so "
                            "it is not); else check the data for NaN/Inf")
    for p in layout.trainable:
        params[p] = results[PARAM + p]
        for s in layout.slots:
            state[(p, s)] = results[state_name(p, s)]
    for p in layout.buffers:
        params[p] = results[UPDATED + p]
    return loss


class Trainer:
    """Trains one model of a kiln file (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike, loss: str = "cross_entropy",
                 optimizer: Optimizer | None = None,
                 schedule: Callable[[int], float] | None = None,
                 clip_grad_norm: float | None = None, seed: int = 0,
                 trainable: Sequence[str] | str | None = None, *, model: str | None = None,
                 args: dict[str, Any] | None = None,
                 weights: str | os.PathLike | dict | None = None, target: str = "native",
                 l1: float = 0.0, l2: float = 0.0, penalized: Sequence[str] | None = None,
                 threads: int | None = None, opt_level: int = 1,
                 noise: Sequence[str] = ()):
        """path: the model file; model, args: which model and its compile-time arguments;
        loss: a std.losses name (cross_entropy, mse_loss, ...) or FILE.kiln:NAME; optimizer:
        kiln.optim.SGD/Adam/AdamW/RMSprop (default Adam()); schedule: step -> factor of the
        learning rate (kiln.optim.cosine, step_decay); clip_grad_norm: the gradients' global
        2-norm limit; seed: initial weights and dropout's key; trainable: glob patterns of
        the parameter paths to train (default all; the rest stay frozen); weights: initial
        weights to load; target: "native" or "reference"; l1, l2: penalties on the
        parameters matching `penalized` (default every trainable one); noise: model inputs
        the trainer draws from N(0, 1) for every batch (a VAE's eps), seeded (inputs.py)."""
        from kiln.api import load, prepare

        if target not in ("native", "reference"):
            raise KilnError("K0602", f"a trainer runs on the native or reference target, not "
                            f"{target!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.loss = LossSpec.parse(loss)
        if isinstance(optimizer, str):  # as Keras's compile(optimizer="adam") and the CLI
            optimizer = by_name(optimizer)
        self.optimizer = Adam() if optimizer is None else optimizer
        if not isinstance(self.optimizer, Optimizer):
            what = (f"the class {optimizer.__module__}.{optimizer.__name__}"
                    if isinstance(optimizer, type) else type(optimizer).__name__)
            raise KilnError("K0831", f"optimizer must be a kiln.optim optimizer, not {what}",
                            hint="an instance of kiln.optim's, with torch.optim's arguments: "
                            "kiln.optim.Adam(lr=1e-3), or a name: 'adamw'")
        self.optimizer.check()
        if clip_grad_norm is not None and not (isinstance(clip_grad_norm, int | float)
                                               and clip_grad_norm > 0):
            raise KilnError("K0831", f"clip_grad_norm must be a positive number, not "
                            f"{clip_grad_norm!r}")
        for name, value in (("l1", l1), ("l2", l2)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise KilnError("K0831", f"{name} must be a finite number >= 0, not {value!r}")
        self.schedule = schedule
        self.clip_grad_norm = clip_grad_norm
        self.seed = seed
        self.target = target
        self.threads = threads
        self.opt_level = opt_level
        self.l1, self.l2 = float(l1), float(l2)
        self.penalized = [penalized] if isinstance(penalized, str) else penalized
        self.args = dict(args or {})
        program = load(Path(self.path))
        self._compilation, params = prepare(program, model, target, seed, weights, self.args,
                                            opt_level=opt_level)
        self.model_name = self._compilation.model.name if model is None else model
        mistake = loss_on_activation(self.loss, self._compilation.model)
        if mistake is not None:
            warnings.warn(mistake, KilnWarning, stacklevel=2)
        self.noise = noise_inputs(self.inputs, noise)
        self.info = self._compilation.model.params
        self.params = {p: np.array(a) for p, a in params.items()}
        floats = [p for p, i in self.info.items() if i.kind == "param"
                  and i.dtype in ("f32", "f64", "f16", "bf16")]
        patterns = [trainable] if isinstance(trainable, str) else trainable
        self.trainable = select_trainable(floats, None if patterns is None else list(patterns))
        self.state = {(p, s): np.zeros_like(self.params[p])
                      for p in self.trainable for s, _ in
                      initial_state(self.optimizer, self.params[p]).items()}
        self.step_count = 0
        self._step = None  # the compiled train step, its output names
        self._eval = None  # the compiled evaluation model
        self._inference = None  # the user's model with the trained weights, when asked
        self._version = 0  # bumped by every change of the weights

    # ------------------------------------------------------------------ building
    @property
    def inputs(self) -> list:
        """The model's input Ports."""
        return list(self._compilation.model.inputs)

    @property
    def outputs(self) -> list:
        """The model's output Ports."""
        return list(self._compilation.model.outputs)

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace some parameters' values (same shapes and dtypes: K0838 otherwise)."""
        for path, value in params.items():
            old = self.params.get(path)
            if old is None or np.shape(value) != old.shape:
                raise KilnError("K0838", f"set_params: {path} is not a parameter of shape "
                                f"{None if old is None else list(old.shape)}")
        self.params.update({p: np.array(v, dtype=self.params[p].dtype) for p, v in
                            params.items()})
        self._version += 1

    def _target(self, y: Any) -> np.ndarray:
        """The target as the step takes it; refuses (K0834, K0835) labels that do not fit.
        Class indices become i64; the target of another std.losses loss takes the dtype of
        the model's first output and, [N] for an output [N, 1], its shape (as PyTorch
        refuses, or warns of, the [N, N] broadcast); a loss of one's own gets integers as
        they are (other than i32/i64: i64) and floats kiln has no type for as f32."""
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise KilnError("K0834", f"input target has dtype {y.dtype}, which kiln has not",
                            hint="a target is an array of numbers")
        if self.loss.class_index and not (self.loss.probabilities and y.dtype.kind == "f"
                                          and y.ndim > 1):
            return self._class_indices(y)
        out = self.outputs[0].type
        if self.loss.path is not None:  # a loss of one's own: its types are its own
            if dtype_of_numpy(y.dtype) in (None, "f64"):
                y = y.astype(np.int64 if y.dtype.kind in "iu" else np.float32)
            return y
        want = [known_value(Dim.of(d)) for d in out.shape[1:]]
        if y.ndim == 1 and want == [1]:
            y = y[:, None]
        if y.ndim != len(out.shape) or any(w is not None and w != g
                                           for w, g in zip(want, y.shape[1:])):
            raise KilnError("K0834", f"input target is {list(y.shape)} but {self.loss.name} "
                            f"compares it with the model's first output {out} elementwise",
                            hint="give a target of the output's shape (for cross_entropy, "
                            "class indices are integers: y.astype(np.int64))")
        return y.astype(NUMPY_DTYPES[out.dtype], copy=False)

    def _class_indices(self, y: np.ndarray) -> np.ndarray:
        """Labels of a class-index loss as i64, each in 0..C-1 or the ignore_index (K0834,
        K0835 otherwise)."""
        if y.dtype.kind not in "iu":
            raise KilnError("K0834", f"input target must hold class indices (integers) "
                            f"for {self.loss.name}, but the array is {y.dtype}"
                            + (f" of shape {list(y.shape)}" if self.loss.probabilities
                               else ""),
                            hint="convert it: y.astype(np.int64)" + (
                                " (a float target of cross_entropy holds class "
                                "probabilities, [N, C] like the scores)"
                                if self.loss.probabilities else ""))
        rank = len(self.outputs[0].type.shape)
        if y.ndim == rank and rank >= 2 and y.shape[1] == 1:
            y = y[:, 0]  # [N, 1] (Keras's sparse labels), [N, 1, H, W] (a mask): axis 1 is 1
        if y.ndim != rank - 1:
            raise KilnError("K0834", f"input target is {list(y.shape)}, but class indices of "
                            f"{self.loss.name} have one axis fewer than the model's first "
                            f"output {self.outputs[0].type} (the classes are its axis 1)")
        classes = self._classes()
        if y.size and classes is not None:
            bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= classes))
            if bad.any():
                raise KilnError("K0835", f"input target holds class index "
                                f"{int(y[bad].flat[0])}, outside 0..{classes - 1} (the "
                                f"model has {classes} classes)",
                                hint=None if classes > 1 else f"{self.loss.name} takes "
                                "one score per class: a model of one output column wants "
                                "a regression or binary loss (mse, bce_with_logits)")
        return y.astype(np.int64)

    def _classes(self) -> int | None:
        """The number of classes: axis 1 of the model's first output, when fixed."""
        shape = self.outputs[0].type.shape
        return known_value(Dim.of(shape[1])) if len(shape) > 1 else None

    def prepare(self, y: Any) -> None:
        """Compile the train step and the evaluation model for targets like `y` now (else
        the first step or evaluation does)."""
        if self._step is None:
            self._build(self._target(y))

    def _batch(self) -> str:
        """The name (or size) of the batch axis: axis 0 of the model's first input."""
        first = self.inputs[0].type.shape
        return str(first[0]) if first else "B"

    def target_type(self, y: np.ndarray | None = None) -> str:
        """The type of the target input, as kiln writes it: that of `y` with the batch axis
        of the model's inputs; without `y`, class indices i64[batch] for a class-index loss,
        else the type of the model's first output."""
        if y is not None:
            dims = [self._batch()] + [str(d) for d in y.shape[1:]]
            out = self.outputs[0].type.shape
            if not self.loss.class_index and len(out) == y.ndim:
                # a size the model computes from its inputs' (an upsampler's 3*H) is the
                # target's too: a concrete 96 could not be proved equal to it (K0301), and a
                # target of another size is then refused at the call (K0503)
                dims[1:] = [str(o) if not o.is_const else d for o, d in zip(out[1:], dims[1:],
                                                                             strict=True)]
            return f"{dtype_of_numpy(y.dtype)}[{', '.join(dims)}]"
        if self.loss.class_index:
            return f"i64[{self._batch()}]"
        return str(self.outputs[0].type)

    def _program(self, target_type: str):
        return training_program(self.path, self.model_name, self.args, self.inputs,
                                [p.name for p in self._compilation.model.outputs],
                                target_type, self.loss)

    def step_parts(self, target_type: str | None = None):
        """(the ids of the forward nodes, the train step as a model (compiler/train/step.py),
        its StepLayout), for targets of `target_type` (default: `target_type()`'s). The
        step graph shares the forward nodes' ids (compiler/autodiff.py)."""
        program = self._program(target_type or self.target_type())
        train = program.elaborate(TRAIN_MODEL, {}, training=True)
        return (set(train.graph.g.nodes), *self._step_of(train))

    def _step_of(self, train):
        """The train step of `train`, the training program elaborated in training mode."""
        return build_train_step(train, self.optimizer, PREFIX, self.trainable,
                                self.clip_grad_norm, self.l1, self.l2, self.penalized)

    def _build(self, y: np.ndarray) -> None:
        """Compile the train step and the evaluation model for targets like `y`."""
        program = self._program(self.target_type(y))
        step = self._compile_step(program.elaborate(TRAIN_MODEL, {}, training=True))
        evaluation = program.elaborate(TRAIN_MODEL, {}, training=False)
        self._eval_info = strip_prefix(evaluation)
        self._eval = self._runner(Compilation(evaluation, None, self.target, None,
                                              self.opt_level), self._prefixed())
        self._eval_version = self._version
        self._step = step

    def _compile_step(self, train) -> tuple:
        """The compiled train step of the elaborated training model `train`: (runner, layout,
        output names). kiln/train/distributed.py compiles it as two halves instead."""
        step_model, layout = self._step_of(train)
        return (self._compile(step_model), layout, [p.name for p in step_model.outputs])

    def _compile(self, model) -> Any:
        """A runner of a train-step model (its weights are inputs)."""
        return self._runner(Compilation(model, None, self.target, None, self.opt_level), {})

    def _runner(self, compilation: Compilation, params: dict):
        if self.target == "native":
            from kiln.runtime.native import NativeModel

            return NativeModel(compilation, params, threads=self.threads)
        from kiln.runtime.reference import ReferenceModel

        return ReferenceModel(compilation, params)

    def _prefixed(self) -> dict[str, np.ndarray]:
        return {PREFIX + p: a for p, a in self.params.items()}

    @property
    def data_inputs(self) -> list:
        """The model's input Ports that step and evaluate take (those not drawn as noise)."""
        return [p for p in self.inputs if p.name not in self.noise]

    # ------------------------------------------------------------------ steps
    def _data_feeds(self, x: Any) -> dict[str, Any]:
        """The data inputs of a batch by name (x: an array, or a tuple of them; a list is
        the inputs only for a model of several, else the one input's values)."""
        names = [p.name for p in self.data_inputs]
        xs = (x,) if isinstance(x, list) and len(names) == 1 else _as_tuple(x)
        if len(xs) != len(names):
            raise KilnError("K0501", f"{self.model_name} takes {len(names)} inputs "
                            f"({', '.join(names)}), got {len(xs)}")
        return dict(zip(names, xs))

    def _with_noise(self, feeds: dict[str, Any], key: list[int]) -> dict[str, Any]:
        """`feeds` and the noise inputs, drawn from the generator seeded by `key`, for as many
        examples as the first input has."""
        rows = len(np.asarray(feeds[self.data_inputs[0].name]))
        return {**feeds, **draw_noise(self.noise, rows, key)}

    def _checked(self, x: Any, y: Any) -> tuple[dict[str, Any], np.ndarray]:
        """A batch's data inputs by name and its target, checked; the step and the
        evaluation model are compiled first if they are not yet."""
        feeds = self._data_feeds(x)
        target = self._target(y)
        if self._step is None:
            self._build(target)
        return feeds, target

    def learning_rate(self, step: int) -> float:
        """The learning rate of step `step` (from 1): the optimizer's, times the schedule's."""
        factor = 1.0 if self.schedule is None else float(self.schedule(step))
        return self.optimizer.lr * factor

    def step(self, x: Any, y: Any) -> float:
        """One training step on the batch (x, y) (x: an array, or a tuple for a model with
        several inputs); returns the batch's loss. A non-finite loss raises K0836, naming
        the step and the first parameter whose gradient is not finite, and changes nothing."""
        t = self.step_count + 1
        feeds = self._step_feeds(x, y, t)
        loss = run_step(self._step, feeds, self.params, self.state, "the loss", f"at step {t}")
        self.step_count = t
        self._version += 1
        return loss

    def _step_feeds(self, x: Any, y: Any, t: int) -> dict[str, Any]:
        """The train step's inputs for step `t` on the batch (x, y) (compiling the step on
        the first call)."""
        feeds, target = self._checked(x, y)
        feeds = self._with_noise(feeds, [self.seed, t])
        feeds[target_name(list(feeds))] = target
        return step_feeds(self._step, feeds, self.params, self.state, self.learning_rate(t), t,
                          [self.seed, t])

    def profile(self, x: Any, y: Any, repeat: int = 10):
        """Time each kernel of the next train step on the batch (x, y) (native target): a
        runtime/profile.py Profile, as `model.profile` gives. Changes nothing: the step's
        results are dropped."""
        if self.target != "native":
            raise KilnError("K0602", "profiling times native kernels: the trainer runs on the "
                            f"{self.target} target", hint="kiln.Trainer(..., target='native')")
        feeds = self._step_feeds(x, y, self.step_count + 1)
        return self._step[0].profile(repeat=repeat, **feeds)

    def evaluate(self, x: Any, y: Any, batch: int = 256) -> dict[str, float]:
        """The loss (the mean over batches of `batch` examples, weighted by their sizes) in
        inference mode and, for a class-index loss, accuracy and macro precision, recall and
        F1 of the argmax of the model's first output (over the targets other than
        std.losses' ignore_index, -100); for a binary cross entropy of one output column and
        0/1 targets, the same of the output above 0.5 (0 for logits). A model with an input
        that is not per example (a graph's edge_index: its axis 0 is not the first input's)
        is evaluated in one batch, and noise inputs are drawn the same at every evaluation."""
        if isinstance(batch, bool) or not (isinstance(batch, int | np.integer) and batch >= 1):
            raise KilnError("K0831", f"evaluate: batch must be an integer >= 1, not {batch!r}")
        feeds, target = self._checked(x, y)
        if not len(target):
            raise KilnError("K0830", "evaluate: input target holds no examples: there is "
                            "nothing to evaluate")
        if self._eval_version != self._version:
            self._eval.load_weights(self._persistent(self._prefixed(), PREFIX))
            self._eval_version = self._version
        n = len(target)
        batched = per_example(self.data_inputs)
        if len(batched) < len(self.data_inputs):
            batch = max(n, 1)
        total, predictions = 0.0, []
        threshold = self._binary_threshold(target)
        for start in range(0, n, batch):
            part = self._with_noise({k: np.asarray(v)[start:start + batch] if k in batched
                                     else v for k, v in feeds.items()},
                                    [self.seed, 0, start])  # step 0: no train step draws it
            part[target_name(list(part))] = target[start:start + batch]
            outs = self._eval(**part)
            total += float(outs[0]) * len(target[start:start + batch])
            if self.loss.class_index:
                predictions.append(np.argmax(outs[1], axis=1))
            elif threshold is not None:
                predictions.append(np.reshape(outs[1], -1) > threshold)
        metrics = {"loss": total / n}
        if threshold is not None:
            metrics.update(classification_metrics(np.reshape(target, -1).astype(np.int64),
                                                  np.concatenate(predictions).astype(np.int64)))
        if self.loss.class_index:
            # class probabilities (a float target, for cross_entropy): their argmax is the class
            labels = np.argmax(target, axis=1) if target.dtype.kind == "f" else target
            scored = labels != IGNORE_INDEX
            metrics.update(classification_metrics(labels[scored],
                                                  np.concatenate(predictions)[scored]))
        return metrics

    def _binary_threshold(self, target: np.ndarray) -> float | None:
        """Where a binary cross entropy's output of one column, [N] or [N, 1], predicts
        class 1 (0.5 for probabilities, 0 for logits) when `target` holds 0s and 1s; else
        None (no classification metrics)."""
        thresholds = {"binary_cross_entropy": 0.5, "binary_cross_entropy_with_logits": 0.0}
        shape = self.outputs[0].type.shape
        if self.loss.path is not None or self.loss.name not in thresholds or not (
                len(shape) == 1 or (len(shape) == 2 and known_value(Dim.of(shape[1])) == 1)):
            return None
        return thresholds[self.loss.name] if np.isin(target, (0, 1)).all() else None

    # ------------------------------------------------------------------ the trained model
    def _persistent(self, params: dict[str, np.ndarray], prefix: str = "") -> dict:
        return {k: a for k, a in params.items()
                if self.info[k[len(prefix):]].persistent}

    @property
    def model(self):
        """The inference model (training = false) with the current trained weights."""
        if self._inference is None:
            self._inference = self._runner(self._compilation, self.params)
            self._inference_version = self._version
        elif self._inference_version != self._version:
            self._inference.load_weights(self._persistent(self.params))
            self._inference_version = self._version
        return self._inference

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights by path (persistent parameters and buffers)."""
        return self._persistent(self.params)

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """What a checkpoint must match to resume: the model, the loss, the optimizer and
        its learning-rate schedule, the inputs the trainer draws."""
        return {"model": self.model_name, "args": self.args, "loss": str(self.loss),
                "optimizer": self.optimizer.config(), "trainable": self.trainable,
                "clip_grad_norm": self.clip_grad_norm, "l1": self.l1, "l2": self.l2,
                "schedule": schedule_config(self.schedule), "noise": sorted(self.noise)}

    def save_checkpoint(self, path: str | os.PathLike, loop: dict | None = None) -> None:
        """Write weights, optimizer state (`optimizer.<path>.<slot>`), the step, the random
        key's counter and the config to a .safetensors file, atomically (a temporary file
        renamed into place, never written through a symlink). `loop`: what the loop around
        the trainer records beside (kiln train's batch and shuffle: kiln/train/loop.py)."""
        tensors = dict(self.state_dict())
        tensors.update({state_name(p, s): a for (p, s), a in self.state.items()})
        meta = {"config": self.config(), "step": self.step_count,
                "rng_counter": self.step_count, "seed": self.seed}
        if loop is not None:
            meta["loop"] = loop
        write_checkpoint(path, tensors, {"kiln_trainer": json.dumps(meta, default=str)})

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint of this same setup: all or nothing; one that does not
        fit (another model, optimizer or shape) is refused (K0838), naming what differs."""
        tensors, meta = read_checkpoint(path)
        raw = meta.get("kiln_trainer")
        try:
            header = json.loads(raw) if raw is not None else None
            mine = json.loads(json.dumps(self.config(), default=str))
            theirs = header["config"]
            step = header["step"]
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise KilnError("K0838", f"checkpoint {os.fspath(path)}: not a kiln trainer "
                            "checkpoint (no valid kiln_trainer header)") from None
        difference = _first_difference(mine, theirs)
        if difference is not None:
            key, ours, its = difference
            raise KilnError("K0838", f"checkpoint {os.fspath(path)} does not fit this trainer: "
                            f"its {key} is {its!r}, this trainer's {ours!r}")
        optimizer_from_config(theirs["optimizer"])  # a header naming no optimizer: refused
        want = {**{p: a for p, a in self.state_dict().items()},
                **{state_name(p, s): a for (p, s), a in self.state.items()}}
        new: dict[str, np.ndarray] = {}
        for key, old in want.items():
            got = tensors.get(key)
            if got is None:
                raise KilnError("K0838", f"checkpoint {os.fspath(path)} lacks {key}")
            if got.shape != old.shape or got.dtype != old.dtype:
                raise KilnError("K0838", f"checkpoint {os.fspath(path)}: {key} is "
                                f"{got.dtype}{list(got.shape)}, this trainer's "
                                f"{old.dtype}{list(old.shape)}")
            new[key] = np.array(got)
        extra = sorted(set(tensors) - set(want))
        if extra:
            raise KilnError("K0838", f"checkpoint {os.fspath(path)} holds {extra[0]}, which "
                            "this trainer does not have")
        for key, array in new.items():
            if key in self.params:
                self.params[key] = array
        for (p, s) in self.state:
            self.state[(p, s)] = new[state_name(p, s)]
        self.step_count = step
        self._version += 1


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, tuple | list) else (x,)


class _Unset:
    """A key one of two configs lacks (an argument left at its default): shown so."""

    def __repr__(self) -> str:
        return "not given"


_UNSET = _Unset()


def _first_difference(mine: Any, theirs: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted key, mine, theirs) where two JSON values differ (_UNSET where one
    lacks the key), else None."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in list(mine) + [k for k in theirs if k not in mine]:
            found = _first_difference(mine.get(k, _UNSET), theirs.get(k, _UNSET),
                                      f"{key}.{k}" if key else k)
            if found is not None:
                return found
        return None
    return None if mine == theirs else (key, mine, theirs)


__all__ = ["Trainer"]
