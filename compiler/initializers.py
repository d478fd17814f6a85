"""Deterministic parameter initializers with PyTorch's semantics (torch.nn.init).

`make_initializer(name, args, kwargs)` binds a call such as `init.kaiming_uniform(a = sqrt(5))`
to an `Initializer`; `Initializer.generate(shape, dtype, seed, path)` fills a tensor. Values are
a pure function of (seed, path, initializer, shape, dtype): the random stream is seeded from a
SHA-256 of (seed, path), never from Python's salted `hash()`. `generate_params(params, seed)`
gives a model's every parameter and buffer its initial value.

Every random initializer is built from one primitive, uniforms in (0, 1) taken straight from the
PCG64 bit stream, mapped through the normal quantile where a normal is needed (as PyTorch's
trunc_normal_ does). NumPy guarantees the bit stream across versions but not the output of
`Generator.normal` and friends, so weights do not change when NumPy is upgraded.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import KilnError
from .types import FLOAT_DTYPES, NUMPY_DTYPES

if TYPE_CHECKING:
    from .elaborate.values import ParamInfo


class InitError(Exception):
    """A bad initializer call; `arg` names the offending argument, or is None."""

    def __init__(self, message: str, arg: str | None = None):
        super().__init__(message)
        self.message = message
        self.arg = arg


# ---- fans and gains (torch.nn.init._calculate_fan_in_and_fan_out, calculate_gain) ----


def calculate_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape; the receptive field (dims 2..) counts."""
    if len(shape) < 2:
        raise InitError(
            "fan in and fan out can not be computed for a tensor with fewer than 2 dimensions "
            f"(this one has shape {list(shape)})"
        )
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def _leaky_relu_gain(slope: float | None) -> float:
    slope = 0.01 if slope is None else slope
    return math.sqrt(2.0 / (1 + slope**2))


_GAINS: dict[str, Callable[[float | None], float]] = {
    **{
        name: (lambda _: 1.0)
        for name in (
            "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "sigmoid",
        )
    },
    "tanh": lambda _: 5.0 / 3,
    "relu": lambda _: math.sqrt(2.0),
    "leaky_relu": _leaky_relu_gain,
    "selu": lambda _: 3.0 / 4,  # PyTorch's choice, for self-normalising networks
}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity; `param` is leaky_relu's negative slope."""
    if nonlinearity not in _GAINS:
        raise InitError(
            f"unsupported nonlinearity {nonlinearity!r}; known: {', '.join(_GAINS)}",
            "nonlinearity",
        )
    return _GAINS[nonlinearity](param)


# ---- the random primitive: uniforms in (0, 1), and the normal quantile ----


_CHUNK = 1 << 15  # elements per pass of the samplers' arithmetic: its temporaries stay cached


def _uniform01(bits: np.random.PCG64, shape: tuple[int, ...]) -> np.ndarray:
    """Uniforms in the open interval (0, 1), 53 random bits each."""
    raw = bits.random_raw(math.prod(shape))
    out = np.empty(raw.shape, np.float64)
    for at in range(0, raw.size, _CHUNK):  # ((raw >> 11) + 0.5) * 2**-53, each step exact
        part = out[at:at + _CHUNK]
        part[...] = raw[at:at + _CHUNK] >> np.uint64(11)
        part += 0.5
        part *= 2.0**-53
    return out.reshape(shape)


# Acklam's rational approximation of the standard normal quantile, relative error < 1.2e-9
# (far below float32 resolution): central region and lower tail; the upper tail by symmetry.
_CENTRAL_NUM = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
                1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_CENTRAL_DEN = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
                6.680131188771972e01, -1.328068155288572e01, 1.0)
_TAIL_NUM = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
             -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
_TAIL_DEN = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
             3.754408661907416e00, 1.0)
_TAIL_START = 0.02425


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """Φ⁻¹(p) elementwise for p in [0, 1] (±inf at the ends).

    The central formula for every element, in place, then the tail formula for the few
    (about 5 %) in the tails: the same arithmetic per element as evaluating both everywhere
    and choosing, at a third of the passes over a large array; a chunk at a time."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.reshape(-1)
    out = np.empty(flat.shape, np.float64)
    for at in range(0, flat.size, _CHUNK):
        out[at:at + _CHUNK] = _quantile(flat[at:at + _CHUNK])
    return out.reshape(p.shape)


def _quantile(p: np.ndarray) -> np.ndarray:
    q = p - 0.5
    r = q * q
    out = _horner(_CENTRAL_NUM, r)
    out *= q
    out /= _horner(_CENTRAL_DEN, r)
    tails = np.abs(q) > 0.5 - _TAIL_START
    if tails.any():
        pt = p[tails]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.sqrt(-2.0 * np.log(np.minimum(pt, 1.0 - pt)))
            tail = _horner(_TAIL_NUM, t) / _horner(_TAIL_DEN, t)
        tail = np.where(np.isfinite(t), tail, -np.inf)  # p is 0 or 1
        out[tails] = np.where(pt < 0.5, tail, -tail)
    return out


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """The polynomial with `coefficients` (highest power first) at x, as np.polyval computes
    it (the same roundings), in place on one new array."""
    y = np.zeros_like(x)
    for c in coefficients:
        y *= x
        y += c
    return y


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


# ---- sampling functions: (bits, shape, params) -> float64 array ----

Sampler = Callable[[np.random.PCG64, tuple[int, ...], dict], np.ndarray]


def _uniform(bits, shape, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * _uniform01(bits, shape)


def _normal(bits, shape, mean: float, std: float) -> np.ndarray:
    return mean + std * normal_quantile(_uniform01(bits, shape))


def _trunc_normal(bits, shape, p: dict) -> np.ndarray:
    # PyTorch's method: a uniform over [Φ(α), Φ(β)] mapped through Φ⁻¹. An interval above the
    # mean is sampled mirrored, so its tail probabilities keep full relative precision.
    mean, std, a, b = p["mean"], p["std"], p["a"], p["b"]
    alpha, beta = (a - mean) / std, (b - mean) / std
    sign = -1.0 if alpha > 0 else 1.0
    lo, hi = sorted((_normal_cdf(sign * alpha), _normal_cdf(sign * beta)))
    z = sign * normal_quantile(_uniform(bits, shape, lo, hi))
    return np.clip(mean + std * z, a, b)


def _kaiming_std(shape, p: dict) -> float:
    fan_in, fan_out = calculate_fans(shape)
    fan = fan_in if p["mode"] == "fan_in" else fan_out
    return calculate_gain(p["nonlinearity"], p["a"]) / math.sqrt(fan)


def _xavier_std(shape, p: dict) -> float:
    fan_in, fan_out = calculate_fans(shape)
    return p["gain"] * math.sqrt(2.0 / (fan_in + fan_out))


def _orthogonal(bits, shape, p: dict) -> np.ndarray:
    # torch.nn.init.orthogonal_: QR of a normal matrix, signs fixed by R's diagonal
    if len(shape) < 2:
        raise InitError(
            f"only tensors with 2 or more dimensions are supported (shape {list(shape)})"
        )
    rows = shape[0]
    cols = math.prod(shape) // rows
    flat = _normal(bits, (rows, cols), 0.0, 1.0)
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return p["gain"] * q.reshape(shape)


def _bound(std: float) -> float:
    return math.sqrt(3.0) * std  # U(-bound, bound) has this std


# ---- argument checks: each takes the user's value and returns it normalised, or raises ----


def _is_number(v) -> bool:  # numpy scalars count; bools do not
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def _finite(v) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _extended(v) -> float:  # trunc_normal's bounds may be infinite
    if not _is_number(v) or math.isnan(v):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _non_negative(v) -> float:
    if _finite(v) < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return float(v)


def _positive(v) -> float:
    if _finite(v) <= 0:
        raise ValueError(f"expected a number > 0, got {v!r}")
    return float(v)


def _fill_value(v) -> float | int | bool:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if not isinstance(v, numbers.Integral):
        return _finite(v)
    if not -(2**63) <= v < 2**63:
        raise ValueError(f"{v} does not fit in 64 bits")
    return int(v)  # exact, for integer tensors


def _mode(v) -> str:
    if v not in ("fan_in", "fan_out"):
        raise ValueError(f'mode must be "fan_in" or "fan_out", got {v!r}')
    return v


def _nonlinearity(v) -> str:
    if v not in _GAINS:
        raise ValueError(f"unknown nonlinearity {v!r}; known: {', '.join(_GAINS)}")
    return v


def _row_or_none(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"expected a row index >= 0 or none, got {v!r}")
    return int(v)


def _embedding(bits, shape, p: dict) -> np.ndarray:
    """N(0, 1) with row padding_idx zero, as nn.Embedding.reset_parameters (the other rows are
    init.normal()'s values)."""
    values = _normal(bits, shape, 0.0, 1.0)
    row = p["padding_idx"]
    if row is not None:
        if not shape or row >= shape[0]:
            raise InitError(f"padding_idx {row} is not a row of a tensor of shape {list(shape)}",
                            "padding_idx")
        values[row] = 0.0
    return values


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of an initializer: name, default (or required) and value check."""

    name: str
    default: object = _REQUIRED
    check: Callable[[object], object] = _finite

    def __str__(self) -> str:
        return self.name if self.default is _REQUIRED else f"{self.name} = {self.default!r}"


def _no_relation(params: dict) -> str | None:
    return None


@dataclass(frozen=True)
class InitializerSpec:
    """A row of the initializer table: the signature, how to sample, and a one-line doc."""

    name: str
    params: tuple[Param, ...]
    sample: Sampler
    doc: str
    random: bool = True
    # a check across parameters: bound params -> message about the last one, or None
    relation: Callable[[dict], str | None] = _no_relation

    def signature(self) -> str:
        return f"{self.name}({', '.join(str(p) for p in self.params)})"


def _a_below_b(params: dict) -> str | None:
    a, b = params["a"], params["b"]
    return None if a < b else f"needs a < b, got a = {a} and b = {b}"


def _symmetric(bits, shape, bound: float) -> np.ndarray:
    return _uniform(bits, shape, -bound, bound)


_KAIMING = (
    Param("a", 0.0),
    Param("mode", "fan_in", _mode),
    Param("nonlinearity", "leaky_relu", _nonlinearity),
)
_GAIN = (Param("gain", 1.0),)

_SPECS = (
    InitializerSpec("zeros", (), lambda bits, shape, p: np.zeros(shape), "all zeros", False),
    InitializerSpec("ones", (), lambda bits, shape, p: np.ones(shape), "all ones", False),
    InitializerSpec(
        "constant", (Param("val", check=_fill_value),),
        lambda bits, shape, p: np.full(shape, p["val"]), "every element `val`", False,
    ),
    InitializerSpec(
        "normal", (Param("mean", 0.0), Param("std", 1.0, _non_negative)),
        lambda bits, shape, p: _normal(bits, shape, p["mean"], p["std"]), "N(mean, std²)",
    ),
    InitializerSpec(
        "embedding", (Param("padding_idx", None, _row_or_none),), _embedding,
        "N(0, 1) with row padding_idx (none: no row) zero: nn.Embedding's",
    ),
    InitializerSpec(
        "trunc_normal",
        (Param("mean", 0.0), Param("std", 1.0, _positive), Param("a", -2.0, _extended),
         Param("b", 2.0, _extended)),
        _trunc_normal, "N(mean, std²) truncated to [a, b] (absolute bounds, as in PyTorch)",
        relation=_a_below_b,
    ),
    InitializerSpec(
        "uniform", (Param("a", 0.0), Param("b", 1.0)),
        lambda bits, shape, p: _uniform(bits, shape, p["a"], p["b"]), "U(a, b)",
        relation=_a_below_b,
    ),
    InitializerSpec(
        "xavier_uniform", _GAIN,
        lambda bits, shape, p: _symmetric(bits, shape, _bound(_xavier_std(shape, p))),
        "U(±gain·√(6 / (fan_in + fan_out))) (Glorot & Bengio)",
    ),
    InitializerSpec(
        "xavier_normal", _GAIN,
        lambda bits, shape, p: _normal(bits, shape, 0.0, _xavier_std(shape, p)),
        "N(0, gain²·2 / (fan_in + fan_out)) (Glorot & Bengio)",
    ),
    InitializerSpec(
        "kaiming_uniform", _KAIMING,
        lambda bits, shape, p: _symmetric(bits, shape, _bound(_kaiming_std(shape, p))),
        "U(±gain·√(3 / fan)) (He et al.); gain from nonlinearity and a",
    ),
    InitializerSpec(
        "kaiming_normal", _KAIMING,
        lambda bits, shape, p: _normal(bits, shape, 0.0, _kaiming_std(shape, p)),
        "N(0, gain² / fan) (He et al.); gain from nonlinearity and a",
    ),
    InitializerSpec("orthogonal", _GAIN, _orthogonal, "a (semi-)orthogonal matrix times gain"),
    InitializerSpec(
        "uniform_fan_in", (Param("fan", check=_positive),),
        lambda bits, shape, p: _symmetric(bits, shape, 1.0 / math.sqrt(p["fan"])),
        "U(±1/√fan): PyTorch's default for Linear, Conv and RNN parameters",
    ),
)

_ALIASES = {"glorot_uniform": "xavier_uniform"}
INITIALIZERS: dict[str, InitializerSpec] = {spec.name: spec for spec in _SPECS}
INITIALIZER_NAMES: tuple[str, ...] = (*INITIALIZERS, *_ALIASES)


def initializer_spec(name: str) -> InitializerSpec:
    """The table row for `name` (an alias gives its target's row); InitError if unknown."""
    spec = INITIALIZERS.get(_ALIASES.get(name, name))
    if spec is None:
        close = difflib.get_close_matches(name, INITIALIZER_NAMES, n=1)
        maybe = f"did you mean `{close[0]}`? " if close else ""
        raise InitError(
            f"unknown initializer `init.{name}`; {maybe}known: {', '.join(INITIALIZER_NAMES)}"
        )
    return spec


def _bind(spec: InitializerSpec, args: list, kwargs: dict) -> dict:
    """Python-style binding of a call's arguments to the spec's parameters, defaults filled."""
    names = [p.name for p in spec.params]
    if len(args) > len(names):
        raise InitError(
            f"init.{spec.name} takes at most {len(names)} argument(s), got {len(args)}; "
            f"signature: {spec.signature()}"
        )
    given = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise InitError(
                f"init.{spec.name} has no argument `{key}`; signature: {spec.signature()}", key
            )
        if key in given:
            raise InitError(f"init.{spec.name} got two values for `{key}`", key)
        given[key] = value
    values = {}
    for param in spec.params:
        if param.name not in given and param.default is _REQUIRED:
            raise InitError(f"init.{spec.name} needs argument `{param.name}`", param.name)
        try:
            values[param.name] = param.check(given.get(param.name, param.default))
        except ValueError as e:
            raise InitError(f"init.{spec.name}: argument `{param.name}`: {e}", param.name) from None
    problem = spec.relation(values)
    if problem:
        raise InitError(f"init.{spec.name} {problem}", spec.params[-1].name)
    return values


def make_initializer(name: str, args: list, kwargs: dict) -> Initializer:
    """Bind an `init.NAME(args, kwargs)` call; InitError for a bad name, argument or value."""
    spec = initializer_spec(name)
    return Initializer(spec.name, tuple(_bind(spec, list(args), dict(kwargs)).items()))


def _bit_stream(seed: int, path: str) -> np.random.PCG64:
    digest = hashlib.sha256(f"kiln-init\0{seed}\0{path}".encode()).digest()
    return np.random.PCG64(int.from_bytes(digest, "little"))


@dataclass(frozen=True)
class Initializer:
    """A bound initializer: a name from the table and its (name, value) arguments, all filled."""

    name: str
    params: tuple[tuple[str, object], ...]

    def __str__(self) -> str:
        return f"init.{self.name}({', '.join(f'{k} = {v!r}' for k, v in self.params)})"

    def generate(self, shape: tuple[int, ...], dtype: str, seed: int, path: str) -> np.ndarray:
        """The initial value of parameter `path` of this shape and kiln dtype under `seed`."""
        spec = INITIALIZERS[self.name]
        if dtype not in NUMPY_DTYPES:
            raise InitError(f"unknown dtype {dtype!r}")
        if spec.random and dtype not in FLOAT_DTYPES:
            raise InitError(
                f"init.{self.name} makes random floating-point values; `{path}` is {dtype}"
            )
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) == 0:  # as kaiming_uniform_ and friends: nothing to fill
            return np.zeros(shape, NUMPY_DTYPES[dtype])
        values = np.asarray(spec.sample(_bit_stream(seed, path), shape, dict(self.params)))
        with np.errstate(invalid="ignore", over="ignore"):
            cast = values.astype(NUMPY_DTYPES[dtype])
        if dtype not in FLOAT_DTYPES and not np.array_equal(cast, values):
            raise InitError(f"{self} does not give {dtype} values (for `{path}`)")
        return cast


def generate_params(params: Mapping[str, ParamInfo], seed: int) -> dict[str, np.ndarray]:
    """Initial values of every parameter and buffer (by path): a pure function of (seed,
    path). Each one's `init` is an InitializerValue (elaborate/values.py), or an array the
    elaborator computed, which is copied."""
    out = {}
    for path, info in params.items():
        if isinstance(info.init, np.ndarray):
            out[path] = np.array(info.init, copy=True)
            continue
        try:
            out[path] = info.init.initializer.generate(info.shape, info.dtype, seed, path)
        except InitError as err:
            raise KilnError(
                "K0202", f"cannot initialise {path}: {err.message}", info.span
            ) from None
        except MemoryError:
            raise KilnError(
                "K0304", f"cannot initialise {path}: {info.dtype}{list(info.shape)} is too "
                "large for this machine's memory", info.span,
                hint="use smaller sizes",
            ) from None
    return out
