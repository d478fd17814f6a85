"""kiln.GANTrainer: a generator and a discriminator trained in alternation over one weight store.

    gan = kiln.GANTrainer("examples/gan_8gaussians.kiln", generator="Generator",
                          discriminator="Discriminator", loss="bce_with_logits",
                          optimizer_g=kiln.optim.Adam(lr=1e-3, betas=(0.5, 0.999)),
                          optimizer_d=kiln.optim.Adam(lr=1e-3, betas=(0.5, 0.999)), seed=0)
    d_loss, g_loss = gan.step(real)     # a D step, then a G step on the same noise
    gan.d_step(real); gan.g_step(64)    # or each step alone (several D steps per G step)
    gan.generator(z)                    # the inference models, with the trained weights

Both steps are train steps of compiler/train/step.py, each one native call, generated from one
small kiln program (gan_source) holding the two networks as members `generator` and
`discriminator`, so both steps read the same weights by the same paths (`generator.<path>`,
`discriminator.<path>`):

- the D step computes `d_loss(D(real), D(G(z)))` and updates only D's parameters: G's are
  inputs it does not differentiate, so G(z) is a constant of the step (PyTorch's
  `fake.detach()`);
- the G step computes `g_loss(D(G(z)))` and updates only G's, the gradient flowing back
  through D.

Each has its own optimizer, state and step counter (Adam's bias correction counts that net's
updates). Running statistics follow the PyTorch DCGAN tutorial's single `fake = netG(z)` per
iteration: the D step updates D's (on real, then on fake) but not G's, whose forward the G step
repeats on the same noise and whose update it keeps; the G step updates G's and D's. Noise is
N(0, 1) in the generator's input shape, drawn by numpy's Generator seeded with (seed, draw
count): reproducible, and resumed exactly from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.dims import Dim, known_value
from kiln.compiler.driver import Compilation
from kiln.compiler.elaborate import Port, load_program
from kiln.compiler.errors import KilnError, KilnWarning
from kiln.compiler.initializers import generate_params
from kiln.compiler.train.optim import (
    Adam,
    Optimizer,
    Schedule,
    initial_state,
    optimizer_from_config,
    schedule_config,
)
from kiln.compiler.train.step import build_train_step, state_name
from kiln.compiler.types import NUMPY_DTYPES

from .checkpoint import read_checkpoint, write_checkpoint
from .program import literal, output_made_by
from .trainer import _first_difference, run_step, step_feeds

GENERATOR, DISCRIMINATOR = "generator", "discriminator"  # the members of the generated program
D_MODEL, G_MODEL = "KilnGanD", "KilnGanG"
GAN_LOSSES = ("bce", "bce_with_logits", "hinge")  # std.gan's d_loss_<name> / g_loss_<name>
NOISE_STREAM, SAMPLE_STREAM = 0, 1  # numpy seeds (seed, stream, count): training vs sample()
HEADER = "kiln_gan"
FLOATS = ("f32", "f64", "f16", "bf16")  # the parameters a step trains (as kiln.Trainer's)


@dataclasses.dataclass
class Phase:
    """One of the two alternating steps: which net it trains, its optimizer and state."""

    net: str  # GENERATOR or DISCRIMINATOR: the member whose parameters the step updates
    model: str  # the generated model whose output is its loss
    optimizer: Optimizer
    index: int  # 0 for D, 1 for G: keeps the two steps' dropout keys apart
    schedule: Schedule | None = None  # its step (from 1) -> factor of the optimizer's lr
    state: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict)
    steps: int = 0
    compiled: tuple | None = None  # (runner, layout, output names), built on first use


def stdlib_path(name: str) -> str:
    """The file of a standard-library module `std.<name>`."""
    return str(resources.files("kiln.stdlib").joinpath(f"{name}.kiln"))


def batch_type(port: Port, role: str) -> str:
    """`port`'s type as kiln writes it, its first axis the batch `B`; K0840 unless every
    other axis is a number (the noise and the samples have one shape per batch size)."""
    shape = port.type.shape
    if not shape:
        raise KilnError("K0840", f"the {role}'s input {port} has no batch axis")
    rest = [known_value(Dim.of(d)) for d in shape[1:]]
    if any(d is None for d in rest):
        raise KilnError("K0840", f"the {role}'s input {port} has a symbolic size after the batch "
                        "axis", hint="give the model's compile-time arguments (args_g=, args_d=)")
    return f"{port.type.dtype}[{', '.join(['B'] + [str(d) for d in rest])}]"


def gan_source(path: str, generator: str, g_args: dict[str, Any], discriminator: str,
               d_args: dict[str, Any], z_type: str, real_type: str, loss: str) -> str:
    """The generated program of both steps (see the module's docstring)."""
    def call(name: str, args: dict[str, Any]) -> str:
        return f"user_model.{name}({', '.join(f'{k} = {literal(v)}' for k, v in args.items())})"

    members = [f"  {GENERATOR} = {call(generator, g_args)}",
               f"  {DISCRIMINATOR} = {call(discriminator, d_args)}"]
    return "\n".join([
        f"import {json.dumps(path)} as user_model", "import std.gan", "",
        f"model {D_MODEL} {{", *members,
        f"  forward(z: {z_type}, real: {real_type}) {{",
        f"    d_real = {DISCRIMINATOR}(real)",
        f"    d_fake = {DISCRIMINATOR}({GENERATOR}(z))",
        f"    return gan.d_loss_{loss}(d_real, d_fake)", "  }", "}", "",
        f"model {G_MODEL} {{", *members,
        f"  forward(z: {z_type}) {{",
        f"    return gan.g_loss_{loss}({DISCRIMINATOR}({GENERATOR}(z)))", "  }", "}", ""])


def ring_of_gaussians(n: int, rng: np.random.Generator, modes: int = 8, radius: float = 2.0,
                      std: float = 0.02) -> np.ndarray:
    """`n` points [n, 2] (float32) of the mixture of `modes` Gaussians of deviation `std`
    centred evenly on a circle of `radius` (the 8-Gaussians benchmark of Metz et al., 2017)."""
    centres = ring_centres(modes, radius)
    points = centres[rng.integers(0, modes, n)] + std * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def ring_centres(modes: int = 8, radius: float = 2.0) -> np.ndarray:
    """The centres [modes, 2] of ring_of_gaussians' mixture."""
    angles = 2 * np.pi * np.arange(modes) / modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def modes_covered(samples: np.ndarray, modes: int = 8, radius: float = 2.0,
                  std: float = 0.02, share: float = 0.01) -> int:
    """How many of the mixture's modes the samples [n, 2] cover: a mode is covered when at
    least `share` of the samples lie within 3 `std` of its centre."""
    distances = np.linalg.norm(samples[:, None, :] - ring_centres(modes, radius)[None], axis=2)
    near = (distances <= 3 * std).sum(axis=0)
    return int((near >= share * len(samples)).sum())


class GANTrainer:
    """Trains a generator and a discriminator of one kiln file in alternation (see the
    module's docstring)."""

    def __init__(self, path: str | os.PathLike, generator: str = "Generator",
                 discriminator: str = "Discriminator", optimizer_g: Optimizer | None = None,
                 optimizer_d: Optimizer | None = None, loss: str = "bce", seed: int = 0, *,
                 args_g: dict[str, Any] | None = None, args_d: dict[str, Any] | None = None,
                 clip_grad_norm: float | None = None, target: str = "native",
                 threads: int | None = None, opt_level: int = 1,
                 schedule_g: Schedule | None = None, schedule_d: Schedule | None = None):
        """path: the kiln file of both models (`std.gan` for the standard library's DCGAN);
        generator, discriminator: their names there; args_g, args_d: their compile-time
        arguments; optimizer_g, optimizer_d: kiln.optim optimizers (default Adam(lr=2e-4,
        betas=(0.5, 0.999)), the DCGAN paper's); loss: "bce" (D outputs probabilities),
        "bce_with_logits" or "hinge" (D outputs scores): std.gan's d_loss_<loss> and
        g_loss_<loss>; seed: the initial weights and the noise; clip_grad_norm: each step's
        global gradient-norm limit; target: "native" or "reference"; schedule_g,
        schedule_d: learning-rate schedules as kiln.Trainer's (kiln.optim.cosine,
        step_decay: step -> factor of the optimizer's lr), each over its net's own steps."""
        if target not in ("native", "reference"):
            raise KilnError("K0602", f"a trainer runs on the native or reference target, not "
                            f"{target!r}")
        if loss not in GAN_LOSSES:
            raise KilnError("K0841", f"unknown GAN loss {loss!r}",
                            hint=f"GAN losses: {', '.join(GAN_LOSSES)} (std.gan's "
                            "d_loss_<name>, g_loss_<name>)")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise KilnError("K0602", f"seed must be a non-negative int, not {seed!r}")
        if clip_grad_norm is not None and not (isinstance(clip_grad_norm, int | float)
                                               and clip_grad_norm > 0):
            raise KilnError("K0831", f"clip_grad_norm must be a positive number, not "
                            f"{clip_grad_norm!r}")
        phases = []
        for net, model, optimizer, index, schedule in (
                (DISCRIMINATOR, D_MODEL, optimizer_d, 0, schedule_d),
                (GENERATOR, G_MODEL, optimizer_g, 1, schedule_g)):
            if schedule is not None and not callable(schedule):
                raise KilnError("K0831", f"schedule_{net[0]} must be a schedule (step -> "
                                f"factor), not {type(schedule).__name__}")
            optimizer = Adam(lr=2e-4, betas=(0.5, 0.999)) if optimizer is None else optimizer
            if not isinstance(optimizer, Optimizer):
                raise KilnError("K0831", f"optimizer_{net[0]} must be a kiln.optim optimizer, "
                                f"not {type(optimizer).__name__}")
            optimizer.check()
            phases.append(Phase(net, model, optimizer, index, schedule))
        self.d_phase, self.g_phase = phases
        self.path = stdlib_path("gan") if os.fspath(path) == "std.gan" else \
            os.path.abspath(os.fspath(path))
        self.names = {GENERATOR: generator, DISCRIMINATOR: discriminator}
        self.args = {GENERATOR: dict(args_g or {}), DISCRIMINATOR: dict(args_d or {})}
        self.loss, self.seed, self.clip_grad_norm = loss, seed, clip_grad_norm
        self.target, self.threads, self.opt_level = target, threads, opt_level
        user = load_program(Path(self.path))
        self._nets = {net: Compilation.of(user, self.names[net], self.args[net], target, None,
                                          opt_level) for net in (GENERATOR, DISCRIMINATOR)}
        where = output_made_by(self._nets[DISCRIMINATOR].model, "sigmoid")
        if loss != "bce" and where is not None:
            warnings.warn(f"GAN loss {loss} takes the discriminator's scores, but "
                          f"{discriminator}'s output is {where}; use loss='bce' (on "
                          "probabilities), or return the scores before the sigmoid",
                          KilnWarning, stacklevel=2)
        z_port, fake_type = self._signature()
        self.z_type = z_port.type
        source = gan_source(self.path, generator, self.args[GENERATOR], discriminator,
                            self.args[DISCRIMINATOR], batch_type(z_port, "generator"),
                            fake_type, loss)
        self._program = load_program(source, filename=os.path.join(
            os.path.dirname(self.path), f"<GAN training {Path(self.path).name}>"))
        # the weights of the generated program, drawn from (seed, "generator.<path>", ...)
        self.info = self._program.elaborate(D_MODEL, {}).params
        self.params = generate_params(self.info, seed)
        for phase in phases:
            floats = [p for p, i in self.info.items() if i.kind == "param"
                      and p.startswith(phase.net + ".") and i.dtype in FLOATS]
            phase.state = {(p, s): np.zeros_like(self.params[p]) for p in floats
                           for s in initial_state(phase.optimizer, self.params[p])}
        self.noise_draws = 0
        self._models: dict[str, tuple[Any, int]] = {}  # inference models, weights' version
        self._version = 0

    # ------------------------------------------------------------------ building
    def _signature(self) -> tuple[Port, str]:
        """The generator's input port and the type of a batch of samples (B first); K0840
        unless G takes one input and returns one output of the type D takes as its one input."""
        ports = {net: (c.model.inputs, c.model.outputs) for net, c in self._nets.items()}
        for net, (ins, outs) in ports.items():
            if len(ins) != 1 or len(outs) != 1:
                raise KilnError("K0840", f"the {net} {self.names[net]} takes {len(ins)} inputs "
                                f"and returns {len(outs)} outputs; a GAN's take one and return "
                                "one")
        (z,), (fake,) = ports[GENERATOR]
        (real,), _ = ports[DISCRIMINATOR]
        fake_type = batch_type(Port(fake.name, fake.type), "generator's output")
        real_type = batch_type(real, "discriminator")
        if fake_type != real_type:
            raise KilnError("K0840", f"the generator returns {fake_type} but the discriminator "
                            f"takes {real_type}",
                            hint="the discriminator judges the generator's samples: the "
                            "shapes after the batch axis and the dtypes must agree")
        return z, real_type

    def _compiled(self, phase: Phase) -> tuple:
        """The phase's train step, compiled on first use."""
        if phase.compiled is None:
            model = self._program.elaborate(phase.model, {}, training=True)
            if phase is self.d_phase:  # G's running statistics: the G step's to update
                model = dataclasses.replace(model, updates={
                    p: i for p, i in model.updates.items() if not p.startswith(GENERATOR + ".")})
            step_model, layout = build_train_step(model, phase.optimizer, "", [phase.net + ".*"],
                                                  self.clip_grad_norm)
            compilation = Compilation(step_model, None, self.target, None, self.opt_level)
            phase.compiled = (self._runner(compilation, {}), layout,
                              [p.name for p in step_model.outputs])
        return phase.compiled

    def _runner(self, compilation: Compilation, params: dict):
        if self.target == "native":
            from kiln.runtime.native import NativeModel

            return NativeModel(compilation, params, threads=self.threads)
        from kiln.runtime.reference import ReferenceModel

        return ReferenceModel(compilation, params)

    # ------------------------------------------------------------------ noise
    def _noise(self, n: int, seed: int, stream: int, count: int) -> np.ndarray:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise KilnError("K0602", f"a batch of noise takes a positive int, not {n!r}")
        shape = (n,) + tuple(int(known_value(Dim.of(d))) for d in self.z_type.shape[1:])
        rng = np.random.default_rng([seed, stream, count])
        return rng.standard_normal(shape).astype(NUMPY_DTYPES[self.z_type.dtype])

    def noise(self, n: int) -> np.ndarray:
        """The next batch of `n` training noise vectors (advances the noise counter, which
        checkpoints save)."""
        z = self._noise(n, self.seed, NOISE_STREAM, self.noise_draws)
        self.noise_draws += 1
        return z

    def _z(self, z: Any, n: int | None = None) -> tuple[np.ndarray, bool]:
        """The noise a step runs on: `z` (an array), or the next batch of `z` (a batch size)
        or `n` (z None) noise vectors; and whether it is the next batch, which the step takes
        (advancing the counter) only when it succeeds."""
        if z is None or isinstance(z, int) and not isinstance(z, bool):
            return self._noise(n if z is None else z, self.seed, NOISE_STREAM,
                               self.noise_draws), True
        return np.asarray(z), False

    # ------------------------------------------------------------------ steps
    def d_step(self, real: Any, z: Any = None) -> float:
        """One discriminator step on the batch `real` and noise `z` (an array, or a batch
        size; default: the next batch of noise, as many as `real`); updates D only, returns
        D's loss."""
        real = np.asarray(real)
        z, fresh = self._z(z, len(real) if real.ndim else 1)  # 0-d: refused by the step
        loss = self._run(self.d_phase, {"z": z, "real": real})
        self.noise_draws += fresh
        return loss

    def g_step(self, z: Any) -> float:
        """One generator step on noise `z` (an array, or a batch size: the next batch of
        noise); updates G only, through D; returns G's loss."""
        z, fresh = self._z(z)
        loss = self._run(self.g_phase, {"z": z})
        self.noise_draws += fresh
        return loss

    def step(self, real: Any) -> tuple[float, float]:
        """A D step on `real`, then a G step, both on the next batch of noise (as the DCGAN
        tutorial uses one `fake` for both); returns (D's loss, G's loss). A failing D step
        changes nothing; a failing G step leaves the D step done."""
        real = np.asarray(real)
        z, _ = self._z(None, len(real) if real.ndim else 1)
        d_loss = self.d_step(real, z)
        self.noise_draws += 1
        return d_loss, self.g_step(z)

    def _run(self, phase: Phase, feeds: dict[str, Any]) -> float:
        """Run one step of `phase`; its results replace the weights and state only when the
        loss is finite (K0836 otherwise, changing nothing)."""
        t = phase.steps + 1
        step = self._compiled(phase)
        feeds = step_feeds(step, feeds, self.params, phase.state, self.learning_rate(phase, t),
                           t, [self.seed, 2 * t + phase.index])
        loss = run_step(step, feeds, self.params, phase.state, f"the {phase.net}'s loss",
                        f"at its step {t}")
        phase.steps = t
        self._version += 1
        return loss

    @staticmethod
    def learning_rate(phase: Phase, step: int) -> float:
        """The learning rate of `phase`'s step `step` (from 1): its optimizer's, times its
        schedule's factor."""
        factor = 1.0 if phase.schedule is None else float(phase.schedule(step))
        return phase.optimizer.lr * factor

    # ------------------------------------------------------------------ the trained models
    def net_params(self, net: str) -> dict[str, np.ndarray]:
        """One network's persistent weights by its own paths (as kiln.compile names them)."""
        prefix = net + "."
        return {p[len(prefix):]: a for p, a in self.params.items()
                if p.startswith(prefix) and self.info[p].persistent}

    def _model(self, net: str):
        model, version = self._models.get(net, (None, -1))
        if model is None:
            model = self._runner(self._nets[net], self.net_params(net))
        elif version != self._version:
            model.load_weights(self.net_params(net))
        self._models[net] = (model, self._version)
        return model

    @property
    def generator(self):
        """The generator as an inference model (training = false), with the current weights."""
        return self._model(GENERATOR)

    @property
    def discriminator(self):
        """The discriminator as an inference model, with the current weights."""
        return self._model(DISCRIMINATOR)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` samples of the generator in inference mode, on noise seeded by `seed` alone
        (the training noise is left where it is)."""
        return np.asarray(self.generator(self._noise(n, seed, SAMPLE_STREAM, 0)))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Both networks' weights: `generator.<path>` and `discriminator.<path>`."""
        return {p: a for p, a in self.params.items() if self.info[p].persistent}

    # ------------------------------------------------------------------ checkpoints
    def config(self) -> dict[str, Any]:
        """What a checkpoint must match to resume: the models, the loss, the optimizers and
        their schedules (named only where there is one: a checkpoint of a run without is
        the same as before schedules were taken)."""
        config = {"path": self.path, "models": self.names, "args": self.args,
                  "loss": self.loss, "optimizer_d": self.d_phase.optimizer.config(),
                  "optimizer_g": self.g_phase.optimizer.config(),
                  "clip_grad_norm": self.clip_grad_norm}
        for phase in (self.d_phase, self.g_phase):
            if phase.schedule is not None:
                config[f"schedule_{phase.net[0]}"] = schedule_config(phase.schedule)
        return config

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = dict(self.state_dict())
        for phase in (self.d_phase, self.g_phase):
            tensors.update({state_name(p, s): a for (p, s), a in phase.state.items()})
        return tensors

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write both networks' weights, both optimizers' state (`optimizer.<path>.<slot>`),
        both step counters, the noise counter and the config, atomically."""
        meta = {"config": self.config(), "d_steps": self.d_phase.steps,
                "g_steps": self.g_phase.steps, "noise_draws": self.noise_draws,
                "seed": self.seed}
        write_checkpoint(path, self._tensors(), {HEADER: json.dumps(meta, default=str)})

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint of this same setup, all or nothing (K0838 otherwise,
        naming what differs)."""
        tensors, meta = read_checkpoint(path)
        counters = ("d_steps", "g_steps", "noise_draws")
        try:
            header = json.loads(meta[HEADER])
            theirs = header["config"]
            if not all(isinstance(header[k], int) and not isinstance(header[k], bool)
                       and header[k] >= 0 for k in counters):
                raise TypeError
        except (KeyError, ValueError, TypeError):
            raise KilnError("K0838", f"checkpoint {os.fspath(path)}: not a kiln GAN trainer "
                            f"checkpoint (no valid {HEADER} header)") from None
        difference = _first_difference(json.loads(json.dumps(self.config(), default=str)),
                                       theirs)
        if difference is not None:
            key, ours, its = difference
            raise KilnError("K0838", f"checkpoint {os.fspath(path)} does not fit this trainer: "
                            f"its {key} is {its!r}, this trainer's {ours!r}")
        for name in ("optimizer_d", "optimizer_g"):
            optimizer_from_config(theirs[name])
        want = self._tensors()
        for key, old in want.items():
            got = tensors.get(key)
            if got is None or got.shape != old.shape or got.dtype != old.dtype:
                raise KilnError("K0838", f"checkpoint {os.fspath(path)}: {key} is "
                                f"{'missing' if got is None else f'{got.dtype}{list(got.shape)}'}"
                                f", this trainer's {old.dtype}{list(old.shape)}")
        extra = sorted(set(tensors) - set(want))
        if extra:
            raise KilnError("K0838", f"checkpoint {os.fspath(path)} holds {extra[0]}, which "
                            "this trainer does not have")
        for key in self.state_dict():
            self.params[key] = np.array(tensors[key])
        for phase in (self.d_phase, self.g_phase):
            phase.state = {(p, s): np.array(tensors[state_name(p, s)]) for p, s in phase.state}
        self.d_phase.steps, self.g_phase.steps = header["d_steps"], header["g_steps"]
        self.noise_draws = header["noise_draws"]
        self._version += 1


__all__ = ["GAN_LOSSES", "GANTrainer", "gan_source", "modes_covered", "ring_centres",
           "ring_of_gaussians"]
