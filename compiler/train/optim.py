"""Optimizers, schedules and gradient clipping, with PyTorch's equations in PyTorch's order.

Each optimizer's update is written once, against a small arithmetic kit, and runs two ways:

    NUMPY.update(...)                  # the reference: numpy arrays in, numpy arrays out
    GraphKit(gb).update(...)           # graph IR built with the typed graph builder, so the
                                       # update runs inside the native train step

A kit gives the update its scalars and the few functions operators do not cover (sqrt,
maximum, where, cast). Scalars that depend on the step (bias corrections, a scheduled
learning rate) are float64, as PyTorch computes them in Python floats, and are cast to the
parameter's dtype where PyTorch passes them to a tensor op (`alpha=`, `value=`): so f64
trajectories match torch.optim to rounding and f32 ones to f32 rounding.

State is per parameter, named by slot (`momentum_buffer`, `exp_avg`, ...: PyTorch's names),
zeros at the start; the step counter `step` counts updates from 1 (PyTorch's `state["step"]`
after its increment).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import KilnError
from ..types import NUMPY_DTYPES

# ------------------------------------------------------------------ kits


class NumpyKit:
    """The reference kit: numpy arrays, float64 scalars."""

    def scalar(self, value: float) -> np.float64:
        return np.float64(value)

    def to(self, x: Any, like: Any) -> Any:
        """`x` in the dtype of the tensor `like` (a scalar passed to a tensor op)."""
        return np.asarray(x).astype(like.dtype)

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x)

    def maximum(self, a: Any, b: Any) -> Any:
        return np.maximum(a, b)

    def minimum(self, a: Any, b: Any) -> Any:
        return np.minimum(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b).astype(np.result_type(a, b))

    def equal(self, a: Any, b: float) -> Any:
        return np.equal(a, b)

    def sum_squares(self, x: Any) -> Any:
        return np.sum(x * x, dtype=x.dtype)

    def sum(self, x: Any) -> Any:
        return np.sum(x, dtype=x.dtype)

    def abs(self, x: Any) -> Any:
        return np.abs(x)

    def pow(self, base: float, exponent: Any) -> Any:
        """base ** exponent for a float64 scalar exponent."""
        return np.power(np.float64(base), exponent)

    def stack_sum(self, xs: list) -> Any:
        return np.sum(np.stack(xs))


NUMPY = NumpyKit()


class Sym:
    """A graph Value with arithmetic operators: `a + b` adds an `add` node. A Python number
    operand becomes a 0-d constant of the Value's dtype (PyTorch's scalar-to-tensor rule)."""

    __slots__ = ("kit", "value")

    def __init__(self, kit: GraphKit, value: Any):
        self.kit = kit
        self.value = value

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    def _lift(self, other: Any) -> Sym:
        return other if isinstance(other, Sym) else self.kit.const(other, self.dtype)

    def _op(self, name: str, a: Any, b: Any) -> Sym:
        return Sym(self.kit, self.kit.gb.op(name, self._lift(a).value, self._lift(b).value))

    def __add__(self, o: Any) -> Sym:
        return self._op("add", self, o)

    def __radd__(self, o: Any) -> Sym:
        return self._op("add", o, self)

    def __sub__(self, o: Any) -> Sym:
        return self._op("sub", self, o)

    def __rsub__(self, o: Any) -> Sym:
        return self._op("sub", o, self)

    def __mul__(self, o: Any) -> Sym:
        return self._op("mul", self, o)

    def __rmul__(self, o: Any) -> Sym:
        return self._op("mul", o, self)

    def __truediv__(self, o: Any) -> Sym:
        return self._op("div", self, o)

    def __rtruediv__(self, o: Any) -> Sym:
        return self._op("div", o, self)

    def __neg__(self) -> Sym:
        return Sym(self.kit, self.kit.gb.neg(self.value))


class GraphKit:
    """The graph kit: Syms over Values of the graph `gb` builds into."""

    def __init__(self, gb: Any):
        self.gb = gb

    def wrap(self, value: Any) -> Sym:
        return Sym(self, value)

    def const(self, value: float, dtype: str) -> Sym:
        return Sym(self, self.gb.constant(np.asarray(value, NUMPY_DTYPES[dtype])))

    def scalar(self, value: float) -> Sym:
        return self.const(value, "f64")

    def to(self, x: Sym, like: Sym) -> Sym:
        if x.dtype == like.dtype:
            return x
        return Sym(self, self.gb.cast(x.value, like.dtype))

    def sqrt(self, x: Sym) -> Sym:
        return Sym(self, self.gb.op("sqrt", x.value))

    def maximum(self, a: Sym, b: Sym) -> Sym:
        return Sym(self, self.gb.op("maximum", a.value, b.value))

    def minimum(self, a: Sym, b: Any) -> Sym:
        return Sym(self, self.gb.op("minimum", a.value, a._lift(b).value))

    def where(self, cond: Sym, a: Sym, b: Sym) -> Sym:
        return Sym(self, self.gb.op("where", cond.value, a.value, b.value))

    def equal(self, a: Sym, b: float) -> Sym:
        return Sym(self, self.gb.op("equal", a.value, a._lift(b).value))

    def sum_squares(self, x: Sym) -> Sym:
        return self.sum(x * x)

    def sum(self, x: Sym) -> Sym:
        return Sym(self, self.gb.op("sum", x.value))

    def abs(self, x: Sym) -> Sym:
        return Sym(self, self.gb.op("abs", x.value))

    def pow(self, base: float, exponent: Sym) -> Sym:
        return Sym(self, self.gb.op("pow", self.const(base, exponent.dtype).value,
                                    exponent.value))

    def stack_sum(self, xs: list[Sym]) -> Sym:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total


# ------------------------------------------------------------------ optimizers


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer: its hyperparameters, its state slots per parameter and its update."""

    lr: float = 1e-3

    name = "optimizer"

    def slots(self) -> tuple[str, ...]:
        """The names of the state this optimizer keeps per parameter (PyTorch's)."""
        return ()

    def update(self, k: Any, p: Any, g: Any, state: dict[str, Any], lr: Any, step: Any
               ) -> tuple[Any, dict[str, Any]]:
        """One parameter's update: (new parameter, new state by slot). `lr` and `step` are
        float64 scalars of the kit `k` (the scheduled learning rate, the step counted from 1)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The optimizer as JSON (a checkpoint's header names it by this)."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def check(self) -> None:
        """Refuse hyperparameters PyTorch refuses (K0831)."""
        if not self.lr >= 0:
            raise KilnError("K0831", f"{self.name}: learning rate must be >= 0, not {self.lr}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, float | int) and not isinstance(v, bool) and \
                        not math.isfinite(v):
                    raise KilnError("K0831", f"{self.name}: {field.name} must be finite, "
                                    f"not {v}")


def _decayed(k: Any, p: Any, g: Any, weight_decay: float) -> Any:
    # grad.add(param, alpha=weight_decay)
    return g + p * weight_decay if weight_decay else g


def _lerp(a: Any, b: Any, weight: float) -> Any:
    # torch.lerp(a, b, w): a + w (b - a) for w < 0.5, else b - (b - a)(1 - w)
    return a + (b - a) * weight if weight < 0.5 else b - (b - a) * (1 - weight)


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """torch.optim.SGD: momentum (the buffer starts as the first gradient), dampening,
    Nesterov momentum, L2 weight decay added to the gradient."""

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    name = "sgd"

    def check(self) -> None:
        super().check()
        if self.momentum < 0 or self.weight_decay < 0:
            raise KilnError("K0831", "sgd: momentum and weight_decay must be >= 0")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise KilnError("K0831", "sgd: Nesterov momentum requires a momentum and zero "
                            "dampening")

    def slots(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def update(self, k, p, g, state, lr, step):
        g = _decayed(k, p, g, self.weight_decay)
        new_state = {}
        if self.momentum:
            buf = state["momentum_buffer"]
            buf = k.where(k.equal(step, 1.0), g,
                          buf * self.momentum + g * (1 - self.dampening))
            new_state["momentum_buffer"] = buf
            g = g + buf * self.momentum if self.nesterov else buf
        return p + g * k.to(-lr, p), new_state


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected moments, L2 weight decay added to the gradient,
    AMSGrad's running maximum of the second moment."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    name = "adam"
    decoupled = False  # AdamW: the decay scales the parameter instead of adding to the gradient

    def check(self) -> None:
        super().check()
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise KilnError("K0831", f"{self.name}: betas must be two numbers in [0, 1), "
                            f"not {self.betas}")
        if self.eps < 0 or self.weight_decay < 0:
            raise KilnError("K0831", f"{self.name}: eps and weight_decay must be >= 0")

    def slots(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def update(self, k, p, g, state, lr, step):
        beta1, beta2 = self.betas
        if self.decoupled:
            if self.weight_decay:
                p = p * k.to(1 - lr * self.weight_decay, p)
        else:
            g = _decayed(k, p, g, self.weight_decay)
        exp_avg = _lerp(state["exp_avg"], g, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + g * g * (1 - beta2)
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        bias_correction1 = 1 - k.pow(beta1, step)
        bias_correction2_sqrt = k.sqrt(1 - k.pow(beta2, step))
        step_size = lr / bias_correction1
        second = exp_avg_sq
        if self.amsgrad:
            second = new_state["max_exp_avg_sq"] = k.maximum(state["max_exp_avg_sq"],
                                                             exp_avg_sq)
        denom = k.sqrt(second) / k.to(bias_correction2_sqrt, p) + self.eps
        return p + exp_avg / denom * k.to(-step_size, p), new_state


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    weight_decay: float = 1e-2

    name = "adamw"
    decoupled = True


@dataclasses.dataclass(frozen=True)
class RMSprop(Optimizer):
    """torch.optim.RMSprop: a running average of squared gradients (centered: less the
    squared running average of gradients), optional momentum."""

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    name = "rmsprop"

    def check(self) -> None:
        super().check()
        if not 0 <= self.alpha <= 1 or self.eps < 0 or self.momentum < 0 \
                or self.weight_decay < 0:
            raise KilnError("K0831", "rmsprop: alpha must be in [0, 1]; eps, momentum and "
                            "weight_decay >= 0")

    def slots(self) -> tuple[str, ...]:
        return (("square_avg",) + (("momentum_buffer",) if self.momentum else ())
                + (("grad_avg",) if self.centered else ()))

    def update(self, k, p, g, state, lr, step):
        g = _decayed(k, p, g, self.weight_decay)
        square_avg = state["square_avg"] * self.alpha + g * g * (1 - self.alpha)
        new_state = {"square_avg": square_avg}
        if self.centered:
            grad_avg = new_state["grad_avg"] = _lerp(state["grad_avg"], g, 1 - self.alpha)
            avg = k.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = k.sqrt(square_avg)
        avg = avg + self.eps
        if self.momentum:
            buf = new_state["momentum_buffer"] = state["momentum_buffer"] * self.momentum \
                + g / avg
            return p + buf * k.to(-lr, p), new_state
        return p + g / avg * k.to(-lr, p), new_state


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop)}


def by_name(name: str, **hyperparameters: Any) -> Optimizer:
    """The optimizer called `name` (sgd, adam, adamw, rmsprop) with these hyperparameters,
    checked (K0832 for an unknown name or argument, K0831 for a bad value)."""
    # torch.optim's class names (AdamW, RMSprop) name them too
    name = name.lower() if isinstance(name, str) else name
    optimizer = optimizer_from_config({"name": name, **hyperparameters})
    optimizer.check()
    return optimizer


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """The optimizer a checkpoint's header describes (Optimizer.config)."""
    fields = dict(config)
    cls = OPTIMIZERS.get(fields.pop("name", None))
    if cls is None:
        raise KilnError("K0832", f"unknown optimizer {config.get('name')!r}",
                        hint=f"optimizers: {', '.join(OPTIMIZERS)}")
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise KilnError("K0832", f"{cls.name} takes no argument {unknown[0]!r}",
                        hint=f"its arguments: {', '.join(sorted(names))}")
    return cls(**fields)


# ------------------------------------------------------------------ whole steps


def clip_by_global_norm(k: Any, grads: list, max_norm: float) -> list:
    """torch.nn.utils.clip_grad_norm_: every gradient times min(1, max_norm / (the global
    2-norm + 1e-6)); always multiplied, as PyTorch does."""
    norms = [k.sqrt(k.sum_squares(g)) for g in grads]
    total = k.sqrt(k.stack_sum([n * n for n in norms]))
    coef = k.minimum(max_norm / (total + 1e-6), 1.0)
    return [g * coef for g in grads]


def apply_updates(optimizer: Optimizer, k: Any, params: list, grads: list,
                  states: list[dict[str, Any]], lr: Any, step: Any,
                  clip_grad_norm: float | None = None) -> tuple[list, list[dict[str, Any]]]:
    """Every parameter's update, after clipping the gradients by their global norm."""
    if clip_grad_norm is not None:
        grads = clip_by_global_norm(k, grads, clip_grad_norm)
    new_params, new_states = [], []
    for p, g, s in zip(params, grads, states, strict=True):
        new_p, new_s = optimizer.update(k, p, g, s, lr, step)
        new_params.append(new_p)
        new_states.append(new_s)
    return new_params, new_states


def initial_state(optimizer: Optimizer, param: np.ndarray) -> dict[str, np.ndarray]:
    """A parameter's optimizer state before the first step: zeros in every slot."""
    return {slot: np.zeros_like(param) for slot in optimizer.slots()}


def numpy_step(optimizer: Optimizer, params: dict[str, np.ndarray],
               grads: dict[str, np.ndarray], state: dict[str, dict[str, np.ndarray]],
               step: int, lr: float | None = None, clip_grad_norm: float | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """The reference update of every parameter (by path) at step `step` (from 1)."""
    paths = list(params)
    lr = optimizer.lr if lr is None else lr
    new_params, new_states = apply_updates(
        optimizer, NUMPY, [params[p] for p in paths], [grads[p] for p in paths],
        [state[p] for p in paths], np.float64(lr), np.float64(step), clip_grad_norm)
    return dict(zip(paths, new_params)), dict(zip(paths, new_states))


# ------------------------------------------------------------------ schedules

Schedule = Callable[[int], float]  # step (from 1) -> multiplier of the base learning rate


@dataclasses.dataclass(frozen=True)
class Constant:
    """The base learning rate at every step."""

    def __call__(self, step: int) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        """What a checkpoint records of it (Trainer.config)."""
        return {"name": "constant"}


@dataclasses.dataclass(frozen=True)
class StepDecay:
    """torch StepLR: gamma ** ((step - 1) // step_size) — decays every `step_size` steps."""

    step_size: int
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        return self.gamma ** ((step - 1) // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"name": "step", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Cosine:
    """Linear warm-up over `warmup` steps (step/warmup: 1 at step `warmup`), then a cosine
    from 1 towards `min_factor` over the `total - warmup` steps left, timed as PyTorch's
    CosineAnnealingLR(T_max=total - warmup) times them: the first step after the warm-up
    takes the factor 1 and step `total` the last one above `min_factor`, which the steps
    after it keep (PyTorch's would climb back up)."""

    total: int
    warmup: int = 0
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        if step <= self.warmup:
            return step / self.warmup
        progress = min(1.0, (step - self.warmup - 1) / (self.total - self.warmup))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def config(self) -> dict[str, Any]:
        return {"name": "cosine", **dataclasses.asdict(self)}


def constant() -> Schedule:
    """The base learning rate at every step."""
    return Constant()


def step_decay(step_size: int, gamma: float = 0.1) -> Schedule:
    """torch StepLR: gamma ** ((step - 1) // step_size) — decays every `step_size` steps."""
    if step_size < 1:
        raise KilnError("K0831", f"step schedule: step_size must be >= 1, not {step_size}")
    return StepDecay(step_size, gamma)


def cosine(total: int, warmup: int = 0, min_factor: float = 0.0) -> Schedule:
    """Linear warm-up over `warmup` steps (step/warmup), then PyTorch's CosineAnnealingLR
    over the `total - warmup` steps left (see Cosine), from 1 towards `min_factor`."""
    if total < 1 or warmup < 0 or warmup >= total:
        raise KilnError("K0831", f"cosine schedule: need 0 <= warmup < total, not "
                        f"warmup={warmup}, total={total}")
    return Cosine(total, warmup, min_factor)


def schedule_config(schedule: Schedule | None) -> dict[str, Any]:
    """What a checkpoint records of a learning-rate schedule: a kiln.optim schedule's
    parameters; of another callable only that it is one (it cannot be compared)."""
    if schedule is None:
        return Constant().config()
    config = getattr(schedule, "config", None)
    return config() if callable(config) else {"name": "custom"}


__all__ = ["NUMPY", "SGD", "Adam", "AdamW", "GraphKit", "Optimizer", "RMSprop", "Schedule",
           "apply_updates", "by_name", "clip_by_global_norm", "constant", "cosine", "initial_state",
           "schedule_config",
           "numpy_step", "optimizer_from_config", "step_decay"]
