"""Helpers shared by the op families: attribute parsing, dtype checks, symbolic broadcasting,
conv/pool window arithmetic, and the checks of NC(L)/NCHW operands. The pieces ONNX emitters
are built from are in _emit.py, the factories of whole families of records in _factories.py.

Every check raises OpError with the stable codes: K0301 shape, K0302 dtype, K0303 attribute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..dims import Dim, DimError
from ..types import (
    DTYPES,
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    TensorType,
    dtype_of_numpy,
    is_bfloat16,
    largest_number,
    shape_str,
)
from .registry import Arg, OpError

ALL_DTYPES = frozenset(NUMPY_DTYPES)
NUMERIC = ALL_DTYPES - {"bool"}
FLOATS = frozenset(FLOAT_DTYPES)
INTS = frozenset(INT_DTYPES)
BOOL = frozenset({"bool"})
_KIND_WORDS = {FLOATS: "a float", NUMERIC: "a numeric", INTS: "an integer", BOOL: "a bool"}


# signatures -------------------------------------------------------------------------------
def tensors(*names: str) -> tuple[Arg, ...]:
    """Required tensor arguments, in order."""
    return tuple(Arg(n, "tensor") for n in names)


def optional(*names: str) -> tuple[Arg, ...]:
    """Optional tensor arguments (absent is None)."""
    return tuple(Arg(n, "tensor?", None) for n in names)


def attrs(*pairs: tuple[str, Any] | str) -> tuple[Arg, ...]:
    """Attribute arguments: a bare name is required, a (name, default) pair is optional."""
    return tuple(
        Arg(p, "attr") if isinstance(p, str) else Arg(p[0], "attr", p[1]) for p in pairs
    )


# attribute values -------------------------------------------------------------------------
def attr_error(name: str, message: str) -> OpError:
    return OpError(message, arg=name, code="K0303")


# An integer attribute (a stride, an offset, a bound) is code's int64 constant: past this,
# it would not fit, or the arithmetic on it (a stride times an index) would wrap.
INT_ATTR_LIMIT = 2**62


def to_int(value: Any, name: str) -> int:
    """A compile-time integer (an int or a constant Dim)."""
    if isinstance(value, Dim) and value.is_const:
        value = value.value
    if isinstance(value, int) and not isinstance(value, bool):
        return _within_limit(value, name)
    raise attr_error(name, f"{name} must be an integer, got {value!r}")


def to_dim(value: Any, name: str) -> Dim:
    """A size (an int or a Dim, possibly symbolic) used as a number: an offset, a bound."""
    return _within_limit(_size(value, name), name)


def _size(value: Any, name: str) -> Dim:
    if isinstance(value, (int, Dim)) and not isinstance(value, bool):
        return Dim.of(value)
    raise attr_error(name, f"{name} must be a size, got {value!r}")


def _within_limit(value, name: str):
    if largest_number(Dim.of(value)) >= INT_ATTR_LIMIT:
        raise attr_error(name, f"{name} {value} is too large: an integer attribute must be "
                         "below 2**62")
    return value


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def to_dims(value: Any, name: str) -> tuple[Dim, ...]:
    """A shape attribute: a list of ints/Dims (a single size means a 1-element list). Its
    sizes are not limited here: the tensor made with them is (types.check_size, K0304)."""
    items = value if is_list(value) else [value]
    return tuple(_size(v, name) for v in items)


def int_list(value: Any, name: str) -> tuple[int, ...]:
    """An int or a list of ints, as a tuple."""
    return tuple(to_int(v, name) for v in (value if is_list(value) else [value]))


def spatial(value: Any, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """A per-spatial-axis parameter (stride, padding...): one int for all axes, or n ints."""
    values = int_list(value, name)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise attr_error(name, f"{name} needs 1 or {n} values, got {len(values)}")
    if any(v < minimum for v in values):
        raise attr_error(name, f"{name} must be at least {minimum}, got {list(values)}")
    return values


def flag(value: Any, name: str) -> bool:
    """A bool attribute (an int is no bool here: `training = 1` is a mistake)."""
    if not isinstance(value, bool):
        raise attr_error(name, f"{name} must be true or false, got {value!r}")
    return value


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        listed = ", ".join(map(repr, options))
        raise attr_error(name, f"{name} must be one of {listed}, got {value!r}")
    return value


def dtype_attr(value: Any, name: str = "dtype") -> str:
    return choice(value, name, DTYPES)  # the element types users may name


def number(value: Any, name: str) -> float:
    if isinstance(value, Dim) and value.is_const:
        return value.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise attr_error(name, f"{name} must be a number, got {value!r}")


def resolve(env, value: Any) -> Any:
    """An attribute with its Dims evaluated to ints (runtime bindings come from `env`)."""
    if isinstance(value, Dim):
        return env.eval_dim(value)
    if is_list(value):
        return type(value)(resolve(env, v) for v in value)
    return value


# axes -------------------------------------------------------------------------------------
def normalize_axis(axis: Any, rank: int, name: str = "axis") -> int:
    """An axis in [-rank, rank) as a non-negative index."""
    a = to_int(axis, name)
    if not -rank <= a < rank:
        raise attr_error(name, f"{name} {a} is out of range for rank {rank}")
    return a % rank


def normalize_axes(axis: Any, rank: int, name: str = "axis") -> tuple[int, ...]:
    """None (every axis), an int or a list of ints, as sorted distinct non-negative axes."""
    if axis is None:
        return tuple(range(rank))
    axes = [normalize_axis(a, rank, name) for a in (axis if is_list(axis) else [axis])]
    if len(set(axes)) != len(axes):
        raise attr_error(name, f"{name} repeats an axis: {list(axis)}")
    return tuple(sorted(axes))


# dtypes -----------------------------------------------------------------------------------
def check_dtype(t: TensorType, allowed: frozenset[str], arg: str) -> None:
    if t.dtype not in allowed:
        word = _KIND_WORDS.get(allowed, "a " + "/".join(sorted(allowed)))
        raise OpError(f"{arg} must be {word} tensor, got {t}", arg=arg, code="K0302")


def check_same_dtype(types: list[TensorType], names: list[str]) -> str:
    """The common dtype of `types` (the elaborator has promoted them; check it did)."""
    first = types[0]
    for t, name in zip(types[1:], names[1:], strict=False):
        if t.dtype != first.dtype:
            raise OpError(f"operand dtypes differ: {first} and {t}", arg=name, code="K0302")
    return first.dtype


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """Half floats are computed in f32 and cast back."""
    if dtype == NUMPY_DTYPES["f16"] or is_bfloat16(dtype):
        return NUMPY_DTYPES["f32"]
    return dtype


def upcast(x: np.ndarray) -> np.ndarray:
    return x.astype(compute_dtype(x.dtype), copy=False)


def as_dtype(x: Any, dtype: str) -> np.ndarray:
    """`x` as an array of exactly the kiln dtype `dtype` (0-d results stay arrays)."""
    return np.asarray(x).astype(NUMPY_DTYPES[dtype], copy=False)


def dtype_name(x: np.ndarray) -> str:
    name = dtype_of_numpy(x.dtype)
    if name is None:
        raise OpError(f"unsupported array dtype {x.dtype}", code="K0302")
    return name


# shapes -----------------------------------------------------------------------------------
def prod(dims: Iterable[Dim | int]) -> Dim:
    total = Dim.of(1)
    for d in dims:
        total = total * Dim.of(d)
    return total


def try_broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """numpy broadcasting over Dims: sizes agree when equal or one is the constant 1."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        size = Dim.of(1)
        for s in shapes:
            d = s[i - rank + len(s)] if i - rank + len(s) >= 0 else Dim.of(1)
            if d == size or d == 1:
                continue
            if size != 1:
                return None
            size = d
        out.append(size)
    return tuple(out)


def broadcast_shapes(*shapes: tuple[Dim, ...], args: tuple[str, ...] = ()) -> tuple[Dim, ...]:
    out = try_broadcast(*shapes)
    if out is None:
        text = " with ".join(shape_str(s) for s in shapes)
        raise OpError(f"cannot broadcast {text}", arg=args[-1] if args else None)
    return out


def check_shape(t: TensorType, expected: tuple[Dim, ...], arg: str, what: str) -> None:
    if t.shape != tuple(expected):
        raise OpError(f"{arg} must have shape {shape_str(expected)} ({what}), got "
                      f"{shape_str(t.shape)}", arg=arg)


def check_rank(t: TensorType, ranks: Iterable[int], arg: str, what: str) -> None:
    ranks = tuple(ranks)
    if t.rank not in ranks:
        raise OpError(f"{arg} must be {what}, got {shape_str(t.shape)}", arg=arg)


def divides(n: Dim, d: int) -> bool:
    """Whether `d` provably divides `n`."""
    try:
        return (n % d) == 0
    except DimError:
        return False


def exact_div(n: Dim, d: Dim | int) -> Dim | None:
    """n / d when it is provably exact, else None."""
    try:
        q = n // d
    except DimError:
        return None
    return q if q * d == n else None


# conv / pool windows ----------------------------------------------------------------------
def window_count(size: Dim, kernel: Dim | int, stride: int, pad_lo: Dim | int, pad_hi: Dim | int,
                 dilation: int, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window: (size + pads - d*(k-1) - 1) // s + 1 (PyTorch)."""
    span = size + pad_lo + pad_hi - dilation * (Dim.of(kernel) - 1) - 1
    floor_out = span // stride + 1
    if not ceil_mode:
        return floor_out
    # PyTorch rounds up, then drops the last window if it starts in the right padding:
    # out = min(ceil(span / s), (size + pad_lo - 1) // s) + 1. With m = size + pad_lo - 1 and
    # span = m + c, c = pad_hi - d*(k-1): the second wins exactly when c >= 1 - s.
    c = Dim.of(pad_hi) - dilation * (Dim.of(kernel) - 1)
    if not c.is_const:
        raise OpError(f"ceil_mode needs a constant kernel size, got {kernel}")
    if c.value >= 1 - stride:
        return (size + pad_lo - 1) // stride + 1
    return (span + stride - 1) // stride + 1


def transposed_count(size: Dim, kernel: Dim, stride: int, pad: int, dilation: int,
                     output_padding: int) -> Dim:
    """Output length of a transposed convolution (PyTorch ConvTranspose)."""
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1


def check_positive(sizes: Iterable[Dim], x: TensorType, what: str) -> None:
    for d in sizes:
        if d.is_const and d.value < 1:
            raise OpError(f"{what} is empty for input {shape_str(x.shape)}", arg="x")


def pad_or_crop(x: np.ndarray, widths: list[tuple[int, int]], **kwargs) -> np.ndarray:
    """np.pad where negative widths crop instead."""
    crop = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(widths))
    x = x[crop]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    return np.pad(x, grow, **kwargs) if any(lo or hi for lo, hi in grow) else x


def windows(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
            dilation: tuple[int, ...], counts: tuple[int, ...]) -> np.ndarray:
    """A strided view [N, C, *out, *kernel] of the (already padded) spatial axes of x."""
    n = len(kernel)
    axes = tuple(range(x.ndim - n, x.ndim))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=False))
    view = np.lib.stride_tricks.sliding_window_view(x, span, axis=axes)
    picks = tuple(slice(0, c * s, s) for c, s in zip(counts, stride, strict=False))
    return view[(..., *picks, *(slice(None, None, d) for d in dilation))]


# erf --------------------------------------------------------------------------------------
# erf(x) = 2/sqrt(pi) * x * exp(-x^2) * sum_n (2x^2)^n / (2n+1)!!  (positive terms: no
# cancellation) for |x| < 3; above, erfc's continued fraction (A&S 7.1.14); erf = 1 beyond 6.
_SERIES = np.cumprod([1.0] + [1.0 / (2 * n + 1) for n in range(1, 64)])[::-1]


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorised, to about double precision."""
    x64 = np.asarray(x, dtype=np.float64)
    a = np.abs(x64)
    out = np.ones_like(a)
    small = a < 3
    s = a[small]
    y = 2 * s * s
    acc = np.zeros_like(s)
    for c in _SERIES:
        acc = acc * y + c
    out[small] = 2 / math.sqrt(math.pi) * s * np.exp(-s * s) * acc
    mid = (a >= 3) & (a < 6)
    m = a[mid]
    frac = m.copy()
    for k in range(60, 0, -1):
        frac = m + (k / 2) / frac
    out[mid] = 1 - np.exp(-m * m) / (math.sqrt(math.pi) * frac)
    out = np.where(np.isnan(x64), np.nan, out)
    return np.copysign(out, x64)


# NC(L)/NCHW operands ---------------------------------------------------------------------
def nn_native(family: str):
    """The native kernels of one family, codegen/llvm/<family>.py: bf16, conv,
    depthwise_grad, norm, pool, random, resize, spatial or winograd (imported when a lowering
    runs: they need llvmlite, the ops do not)."""
    from ..codegen.llvm import (
        bf16,
        conv,
        depthwise_grad,
        norm,
        pool,
        random,
        resize,
        spatial,
        winograd,
    )

    return {"bf16": bf16, "conv": conv, "depthwise_grad": depthwise_grad, "norm": norm,
            "pool": pool, "random": random, "resize": resize, "spatial": spatial,
            "winograd": winograd}[family]


def check_affine(x: TensorType, params: list[TensorType | None], names: list[str],
                 shape: tuple[Dim, ...], what: str) -> None:
    """Optional per-feature tensors (weight, bias, running stats) must match `shape` and x's
    dtype."""
    for t, name in zip(params, names, strict=False):
        if t is not None:
            check_shape(t, shape, name, what)
            check_same_dtype([x, t], ["x", name])


def channel_shape(x: np.ndarray) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel vector against x: [1, C, 1, ...]."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def check_channels_first(x: TensorType, minimum_rank: int) -> None:
    """x is a float [N, C, ...] tensor of at least `minimum_rank` axes."""
    check_dtype(x, FLOATS, "x")
    if x.rank < minimum_rank:
        raise OpError(f"x must have rank {minimum_rank} or more ([N, C, ...]), got "
                      f"{shape_str(x.shape)}", arg="x")
