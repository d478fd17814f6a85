"""Helpers shared by the op families: attribute parsing, dtype checks, symbolic broadcasting,
conv/pool window arithmetic, the pieces ONNX emitters are built from, and the factories that
build whole families of records.

Every check raises OpError with the stable codes: K0301 shape, K0302 dtype, K0303 attribute.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..dims import Dim, DimError
from ..types import (
    DTYPES,
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    TensorType,
    largest_number,
    shape_str,
)
from .registry import Arg, OpError, OpRecord, Prop

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


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        listed = ", ".join(map(repr, options))
        raise attr_error(name, f"{name} must be one of {listed}, got {value!r}")
    return value


def dtype_attr(value: Any, name: str = "dtype") -> str:
    return choice(value, name, DTYPES)  # the element types users may name (no f64)


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
    if dtype in (NUMPY_DTYPES["f16"], NUMPY_DTYPES["bf16"]):
        return NUMPY_DTYPES["f32"]
    return dtype


def upcast(x: np.ndarray) -> np.ndarray:
    return x.astype(compute_dtype(x.dtype), copy=False)


def as_dtype(x: Any, dtype: str) -> np.ndarray:
    """`x` as an array of exactly the kiln dtype `dtype` (0-d results stay arrays)."""
    return np.asarray(x).astype(NUMPY_DTYPES[dtype], copy=False)


def dtype_name(x: np.ndarray) -> str:
    for name, dt in NUMPY_DTYPES.items():
        if dt == x.dtype:
            return name
    raise OpError(f"unsupported array dtype {x.dtype}", code="K0302")


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


# ONNX emitters -----------------------------------------------------------------------------
# A record's onnx(b, n) appends the ONNX nodes computing n.outputs from n.inputs
# (compiler/codegen/onnx.py: OnnxBuilder b, OnnxNode n); the family modules build theirs from
# the pieces below.
Emitter = Callable[[Any, Any], None]

# The references compute half floats in f32 and round once, and so do the emitted graphs: f16
# would round at every step of a formula or an accumulation, and onnxruntime's CPU kernels lack
# bf16 for nearly every op. Both widen to f32 exactly.
HALF_UP = {"f16": "f32", "bf16": "f32"}
BF16_UP = {"bf16": "f32"}  # data movement: exact in f16, but Expand, Pad... have no bf16 kernel


def onnx_dtype(dtype: str) -> int:
    """The TensorProto element type of a kiln dtype (Cast's `to`)."""
    from onnx.helper import np_dtype_to_tensor_dtype  # onnx is loaded only when emitting

    return int(np_dtype_to_tensor_dtype(NUMPY_DTYPES[dtype]))


def trimmed(inputs: Iterable[str | None]) -> list[str | None]:
    """Inputs without trailing absent ones: onnxruntime 1.32's optimizer crashes on some ops
    (LayerNormalization) given an explicit empty name for a trailing optional input."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def one(b, op_type: str, *inputs: str | None, **attrs: Any) -> str:
    """Append a one-output ONNX node; returns its fresh output name."""
    return b.node(op_type, list(inputs), 1, **attrs)[0]


def cast(b, x: str, dtype: str, out: str | None = None) -> str:
    """x converted to the kiln dtype `dtype` (written to `out` when given)."""
    return b.node("Cast", [x], [out] if out else 1, to=onnx_dtype(dtype))[0]


def widened(emit: Emitter, table: dict[str, str] = HALF_UP,
            inputs: tuple[int, ...] | None = None) -> Emitter:
    """`emit` run in wider dtypes: inputs (all, or those at positions `inputs`) whose dtype
    `table` maps are cast up; outputs of such dtypes are computed wide and cast back."""

    def lowered(b, n) -> None:
        ins, in_types = list(n.inputs), list(n.in_types)
        for i in range(len(ins)) if inputs is None else inputs:
            if ins[i] is not None and in_types[i].dtype in table:
                wide = table[in_types[i].dtype]
                ins[i], in_types[i] = cast(b, ins[i], wide), in_types[i].with_dtype(wide)
        outs = [b.fresh("wide") if t.dtype in table else o
                for o, t in zip(n.outputs, n.out_types, strict=True)]
        out_types = [t.with_dtype(table.get(t.dtype, t.dtype)) for t in n.out_types]
        emit(b, dataclasses.replace(n, inputs=ins, in_types=in_types, outputs=outs,
                                    out_types=out_types))
        for wide, out, t in zip(outs, n.outputs, n.out_types, strict=True):
            if wide != out:
                cast(b, wide, t.dtype, out)

    return lowered


def onnx_op(op_type: str, table: dict[str, str] = HALF_UP, **attrs: Any) -> Emitter:
    """An op that is one ONNX op; each attr is a value or a function of the kiln attributes."""

    def emit(b, n) -> None:
        values = {k: v(n.attrs) if callable(v) else v for k, v in attrs.items()}
        b.node(op_type, n.inputs, n.outputs, **values)

    return widened(emit, table)


def attr_number(name: str) -> Callable[[dict], float]:
    """An ONNX float attribute read from the kiln attribute `name`."""
    return lambda a: float(number(a[name], name))


def by_kind(default: Emitter | None = None, **kinds: Emitter) -> Emitter:
    """The emitter for the kind of the first input's dtype (float=, int=, bool=), else default."""

    def emit(b, n) -> None:
        dtype = n.in_types[0].dtype
        kind = "float" if dtype in FLOATS else "int" if dtype in INTS else "bool"
        (kinds.get(kind) or default)(b, n)

    return emit


def identity(b, n) -> None:
    """The emitter of an op whose result is its first input."""
    b.node("Identity", n.inputs[:1], n.outputs)


def chain(b, x: str, steps: Iterable[tuple[str, list[str]]], outputs: list[str]) -> None:
    """Apply steps (op_type, further inputs) to x in turn; the last writes `outputs` (an
    Identity when there are no steps)."""
    steps = list(steps)
    if not steps:
        b.node("Identity", [x], outputs)
    for i, (op_type, more) in enumerate(steps):
        (x,) = b.node(op_type, [x, *more], outputs if i == len(steps) - 1 else 1)


# b.const, b.dim and b.shape are the builder's; the three below stand in for them where a 0-d
# value is needed: b.const writes a 0-d array as a 1-element 1-D initializer (through
# np.ascontiguousarray), so constant sizes from b.dim, and b.shape mixing constant and symbolic
# sizes (a Concat of [1]- and [1, 1]-shaped parts), come out the wrong rank.
def full_of(b, dims: Iterable[Dim | int], value: Any, dtype: str) -> str:
    """A tensor of shape `dims` (symbolic where needed) filled with `value`."""
    return one(b, "Expand", b.const(value, dtype), b.shape(dims))


def onnx_pads(b, pairs: Iterable[tuple[Dim | int, Dim | int]]) -> list[int]:
    """ONNX's pads [x1_begin, x2_begin, ..., x1_end, x2_end] from (begin, end) pairs."""
    pairs = [(Dim.of(lo), Dim.of(hi)) for lo, hi in pairs]
    flat = [lo for lo, _ in pairs] + [hi for _, hi in pairs]
    if not all(p.is_const for p in flat):
        raise b.unsupported("padding that depends on a symbolic size (ONNX pads are attributes)")
    return [p.value for p in flat]


# factories --------------------------------------------------------------------------------
OutDtype = None | str | Callable[[str, dict], str]


def _out_dtype(rule: OutDtype, dtype: str, attrs_: dict) -> str:
    if rule is None:
        return dtype
    return rule if isinstance(rule, str) else rule(dtype, attrs_)


def _no_check(attrs_: dict) -> None:
    return None


def elementwise(name: str, fn: Callable, doc: str, *, arity: int = 1,
                dtypes: frozenset[str] = FLOATS, out_dtype: OutDtype = None,
                extra: tuple[tuple[str, Any], ...] = (), check: Callable = _no_check,
                promote: bool = False, props: frozenset[Prop] = frozenset(),
                onnx: Emitter | None = None, llvm: Callable | None = None) -> OpRecord:
    """An op applied element by element: fn(*inputs, **attrs) over broadcast inputs.

    Half-float inputs are computed in f32 and the result cast to the output dtype. `llvm`, when
    given, is the op on one element in LLVM IR: llvm(kernel_builder, attrs, *values) -> value.
    """
    names = ("x",) if arity == 1 else ("a", "b")

    def infer(types, attrs_):
        check(attrs_)
        for k, default in extra:  # numeric attributes (alpha, beta, ...) must be numbers
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                number(attrs_[k], k)
        for t, n in zip(types, names, strict=False):
            check_dtype(t, dtypes, n)
        dtype = check_same_dtype(types, list(names))
        shape = broadcast_shapes(*(t.shape for t in types), args=names)
        return [TensorType(_out_dtype(out_dtype, dtype, attrs_), shape)]

    def reference(env, inputs, attrs_):
        kw = {k: resolve(env, attrs_[k]) for k, _ in extra}
        out = _out_dtype(out_dtype, dtype_name(inputs[0]), attrs_)
        with np.errstate(all="ignore"):
            return [as_dtype(fn(*(upcast(x) for x in inputs), **kw), out)]

    def lower(kb, n):
        kb.elementwise(n, lambda kb_, *values: llvm(kb_, n.attrs, *values))

    return OpRecord(name, tensors(*names) + attrs(*extra), infer, reference, doc,
                    promote=promote, props=props | {Prop.ELEMENTWISE}, onnx=onnx,
                    llvm=lower if llvm is not None else None, scalar=llvm)


def unary(name: str, fn: Callable, doc: str, **kw) -> OpRecord:
    """An elementwise op of one tensor `x` (float-only unless `dtypes` says otherwise)."""
    return elementwise(name, fn, doc, arity=1, **kw)


def binary(name: str, fn: Callable, doc: str, *, dtypes: frozenset[str] = NUMERIC,
           out_dtype: OutDtype = None, onnx: Emitter | None = None,
           llvm: Callable | None = None) -> OpRecord:
    """A broadcasting elementwise op of `a` and `b`, whose dtypes the elaborator promotes."""
    return elementwise(name, fn, doc, arity=2, dtypes=dtypes, out_dtype=out_dtype, promote=True,
                       onnx=onnx, llvm=llvm)


def reduction(name: str, fn: Callable, doc: str, *, dtypes: frozenset[str] = NUMERIC,
              out_dtype: OutDtype = None, single_axis: bool = False,
              onnx: Emitter | None = None, llvm: Callable | None = None,
              props: frozenset[Prop] = frozenset()) -> OpRecord:
    """A reduction fn(x, axis=, keepdims=) over `axis` (None = all, an int, or a list).
    `llvm(kernel_builder, node, axes)` gets the reduced axes normalised (sorted, distinct)."""

    def axes_of(rank, axis):
        if single_axis and is_list(axis):
            raise attr_error("axis", f"axis must be one axis or None, got {list(axis)}")
        return normalize_axes(axis, rank)

    def infer(types, attrs_):
        (x,) = types
        check_dtype(x, dtypes, "x")
        axes = axes_of(x.rank, attrs_["axis"])
        keep = bool(attrs_["keepdims"])
        shape = [Dim.of(1) if i in axes else d for i, d in enumerate(x.shape)
                 if keep or i not in axes]
        return [TensorType(_out_dtype(out_dtype, x.dtype, attrs_), tuple(shape))]

    def reference(env, inputs, attrs_):
        (x,) = inputs
        axes = axes_of(x.ndim, attrs_["axis"])
        if single_axis and attrs_["axis"] is not None:
            axes = axes[0]
        elif single_axis:
            axes = None
        out = fn(upcast(x), axis=axes, keepdims=bool(attrs_["keepdims"]))
        return [as_dtype(out, _out_dtype(out_dtype, dtype_name(x), attrs_))]

    def lower(kb, n):
        llvm(kb, n, axes_of(n.in_types[0].rank, n.attrs["axis"]))

    args = tensors("x") + attrs(("axis", None), ("keepdims", False))
    return OpRecord(name, args, infer, reference, doc, onnx=onnx,
                    llvm=lower if llvm is not None else None, props=props)


def along_axis(name: str, fn: Callable, doc: str, onnx: Emitter | None = None,
               llvm: Callable | None = None) -> OpRecord:
    """A float op fn(x, axis) normalising along one axis; the shape is unchanged."""

    def infer(types, attrs_):
        (x,) = types
        check_dtype(x, FLOATS, "x")
        normalize_axis(attrs_["axis"], max(x.rank, 1))
        return [x]

    def reference(env, inputs, attrs_):
        (x,) = inputs
        with np.errstate(all="ignore"):
            out = fn(upcast(x), normalize_axis(attrs_["axis"], max(x.ndim, 1)) if x.ndim else None)
        return [out.astype(x.dtype)]

    def lower(kb, n):  # llvm(kb, node, axis) with the axis normalised
        llvm(kb, n, normalize_axis(n.attrs["axis"], max(n.in_types[0].rank, 1)))

    return OpRecord(name, tensors("x") + attrs(("axis", -1)), infer, reference, doc, onnx=onnx,
                    llvm=lower if llvm is not None else None)


def concrete_types(inputs: list[np.ndarray | None]) -> list[TensorType | None]:
    """The types of runtime arrays (for re-deriving an output dtype in a reference)."""
    return [None if x is None else TensorType(dtype_name(x), x.shape) for x in inputs]


def simple(name: str, doc: str, args: tuple[Arg, ...], infer_one: Callable,
           compute: Callable, **kw) -> OpRecord:
    """A one-output op: infer_one(types, attrs) -> TensorType; compute(inputs, attrs) -> array.

    The reference re-derives the output dtype from the runtime arrays' types; compute sees the
    attributes with their Dims evaluated, and its result is cast to that dtype.
    """

    def infer(types, a):
        return [infer_one(types, a)]

    def reference(env, inputs, a):
        bound = {k: resolve(env, v) for k, v in a.items()}
        dtype = infer_one(concrete_types(inputs), bound).dtype
        return [as_dtype(compute(inputs, bound), dtype)]

    return OpRecord(name, args, infer, reference, doc, **kw)


def movement(name: str, doc: str, extra: tuple[Arg, ...], shape_rule: Callable,
             compute: Callable, onnx: Emitter | None = None, llvm: Callable | None = None,
             props: frozenset[Prop] = frozenset(), **kw) -> OpRecord:
    """An op of one tensor x that moves data: shape_rule(shape, attrs); compute(x, attrs).
    `props` are its properties besides Prop.MOVEMENT; `kw` go to the record."""

    def infer_one(types, a):
        (x,) = types
        return TensorType(x.dtype, tuple(shape_rule(x.shape, a)))

    return simple(name, doc, tensors("x") + extra, infer_one,
                  lambda inputs, a: compute(inputs[0], a), props=props | {Prop.MOVEMENT},
                  onnx=onnx, llvm=llvm, **kw)
