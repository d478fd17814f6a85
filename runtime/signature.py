"""A model's run-time signature: what binding a call's arrays and checking its sizes needs.

The same for a model compiled here (`Signature.of` its elaborated model) and a library built
ahead of time (read from its metadata): inputs, outputs, the symbolic sizes, and the `where`
constraints the compiler could not prove, checked at call time.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compiler.dims import Dim, DimError
from ..compiler.errors import KilnError
from ..compiler.interface import COMPARISONS, Constraint, Port, default_output_names
from ..compiler.types import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    dtype_of_numpy,
    shape_str,
)

if TYPE_CHECKING:
    from ..compiler.elaborate import ElaboratedModel

# lossless conversions done for the caller; anything else is an error naming the input
_WIDENING = {("i32", "i64"), ("f16", "f32"), ("bf16", "f32")}


@dataclasses.dataclass(frozen=True)
class Signature:
    """A model's name, inputs, outputs, symbolic sizes (in the order native code takes them)
    and call-time constraints."""

    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    symbols: tuple[str, ...]
    constraints: tuple[Constraint, ...] = ()

    @staticmethod
    def of(model: ElaboratedModel) -> Signature:
        """The signature of an elaborated (or optimized) model."""
        return Signature(model.name, tuple(model.inputs), tuple(model.outputs),
                         tuple(model.symbols), tuple(model.graph.constraints))

    @property
    def named_outputs(self) -> bool:
        """Whether the outputs are named in the source (`-> (recon: f32[..], mu: ..)`)."""
        names = [p.name for p in self.outputs]
        return names != default_output_names(len(names))

    def __str__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        named = self.named_outputs  # as written: `-> (recon: f32[..], ..)`
        outs = ", ".join(str(p) if named else str(p.type) for p in self.outputs)
        if named or len(self.outputs) != 1:
            outs = f"({outs})"
        return f"{self.name}({ins}) -> {outs}"

    def bind(self, args: tuple, kwargs: dict) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Check every input of a call against the signature; returns arrays by name and
        symbol sizes."""
        ports = self.inputs
        names = [p.name for p in ports]
        if len(args) > len(ports):
            raise KilnError(
                "K0501",
                f"{self.name} takes {len(ports)} inputs ({', '.join(names)}), got {len(args)}",
            )
        given: dict[str, Any] = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise KilnError(
                    "K0501",
                    f"{self.name} has no input named {k!r}",
                    hint=f"its inputs: {', '.join(names)}",
                )
            if k in given:
                raise KilnError("K0501", f"input {k} given twice (by position and by name)")
            given[k] = v
        arrays: dict[str, np.ndarray] = {}
        for p in ports:
            if p.name not in given or given[p.name] is None:
                if p.optional:
                    continue
                raise KilnError("K0501", f"missing input {p.name}: {p.type}")
            arrays[p.name] = self._check_array(p, given[p.name])
        dims = self._bind_dims([p for p in ports if p.name in arrays], arrays)
        return arrays, dims

    def bind_cotangents(self, cotangents: Any, names: tuple[str | None, ...],
                        dims: dict[str, int]) -> list[np.ndarray]:
        """Check a vjp call's cotangents (one per output, None for an output that takes none
        or whose cotangent is zero) as inputs are checked, against each output's type at
        this call's sizes; returns one array per output that takes a cotangent (`names`: its
        cotangent input's name, None where it takes none), zeros where None was given."""
        outs = self.outputs
        if not isinstance(cotangents, (list, tuple)):
            raise KilnError("K0501", f"cotangents must be a list with one array per output of "
                            f"{self.name} ({len(outs)}), not {type(cotangents).__name__}")
        if len(cotangents) != len(outs):
            raise KilnError("K0501", f"{self.name} has {len(outs)} outputs "
                            f"({', '.join(p.name for p in outs)}), but {len(cotangents)} "
                            "cotangents were given", hint="give one per output (None: zero)")
        arrays = []
        for port, name, value in zip(outs, names, cotangents, strict=True):
            shape = [_ev(d, dims) for d in port.type.shape]
            if name is None:
                if value is not None:
                    raise KilnError("K0502", f"output {port.name} is {port.type.dtype}: it "
                                    "takes no cotangent", hint="pass None for it")
                continue
            what = Port(name, port.type, span=port.span)
            if value is None:
                arrays.append(np.zeros(shape, port.type.np_dtype))
                continue
            array = self._check_array(what, value)
            if list(array.shape) != shape:
                raise KilnError("K0503", f"input {name} must have the shape of output "
                                f"{port.name}, {shape_str(port.type.shape)} = {shape} at "
                                f"these sizes, but its shape is {list(array.shape)}")
            arrays.append(array)
        return arrays

    def _check_array(self, port: Port, value) -> np.ndarray:
        want = port.type.dtype
        if not isinstance(value, np.ndarray):
            if isinstance(value, (bool, int, float, list, tuple, np.generic)):
                try:
                    value = np.asarray(value)
                except ValueError:  # ragged nested lists
                    raise KilnError("K0503", f"input {port.name}: the lists are ragged") from None
                if _takes(value.dtype, want):  # plain numbers take the input's type
                    value = _convert_numbers(port, value, want)
            else:
                hint = ("convert it: x.detach().cpu().numpy() (a PyTorch tensor)"
                        if callable(getattr(value, "detach", None)) else
                        "convert it: np.asarray(x)" if hasattr(value, "__array__") else None)
                raise KilnError(
                    "K0502", f"input {port.name} must be a numpy array, not {type(value).__name__}",
                    hint=hint,
                )
        got = dtype_of_numpy(value.dtype)
        if got != want:
            if got is not None and (got, want) in _WIDENING:
                value = _copy(port, lambda: value.astype(NUMPY_DTYPES[want]))
            else:
                raise KilnError(
                    "K0502",
                    f"input {port.name} must be {want}, but the array is {value.dtype}",
                    hint=f"convert it: {port.name}.astype({_numpy_name(want)})",
                )
        if value.ndim != port.type.rank:
            raise KilnError(
                "K0503",
                f"input {port.name} must have {port.type.rank} axes "
                f"{shape_str(port.type.shape)}, but its shape is {list(value.shape)}",
            )
        return _copy(port, lambda: np.asarray(value, order="C"))

    def _bind_dims(self, ports: list[Port], arrays: dict) -> dict[str, int]:
        dims: dict[str, int] = {}
        where: dict[str, str] = {}
        later = []
        for p in ports:
            for axis, (d, n) in enumerate(zip(p.type.shape, arrays[p.name].shape, strict=False)):
                if d.is_const:
                    if d.value != n:
                        raise KilnError(
                            "K0503",
                            f"input {p.name} must have shape "
                            f"{shape_str(p.type.shape)}, but its shape is "
                            f"{list(arrays[p.name].shape)} (axis {axis})",
                        )
                elif d.symbol is not None:
                    sym = d.symbol
                    if sym in dims and dims[sym] != n:
                        raise KilnError(
                            "K0503",
                            f"size {sym} is {dims[sym]} in {where[sym]} but {n} in "
                            f"input {p.name} (axis {axis}), shape {list(arrays[p.name].shape)}",
                        )
                    dims[sym] = n
                    where[sym] = f"input {p.name}"
                else:
                    later.append((p, axis, d, n))
        for p, _axis, d, n in later:
            try:
                expect = d.evaluate(dims)
            except DimError:
                raise KilnError(
                    "K0503",
                    f"cannot work out the sizes of input {p.name} "
                    f"{shape_str(p.type.shape)} from the other inputs",
                ) from None
            if expect != n:
                raise KilnError(
                    "K0503",
                    f"input {p.name} must have shape "
                    f"{shape_str(p.type.shape)} = {[_ev(x, dims) for x in p.type.shape]}"
                    f", but its shape is {list(arrays[p.name].shape)}",
                )
        for c in self.constraints:
            lhs, rhs = Dim.of(c.lhs).evaluate(dims), Dim.of(c.rhs).evaluate(dims)
            if not COMPARISONS[c.op](lhs, rhs):
                sizes = sorted(Dim.of(c.lhs).symbols() | Dim.of(c.rhs).symbols())
                bound = ", ".join(f"{s} = {dims[s]}" for s in sizes)
                raise KilnError(
                    "K0504",
                    f"constraint {c.text} does not hold for these inputs "
                    f"({bound}: {lhs} {c.op} {rhs})",
                    c.span,
                )
        return dims


def _ev(d: Dim, dims) -> int | str:
    try:
        return d.evaluate(dims)
    except DimError:
        return str(d)


def _copy(port: Port, make):
    """`make()`, an input's conversion or C-ordered copy, with memory running out a KilnError
    (K0505) rather than a MemoryError: an array of a few bytes can be a view of billions of
    elements (stride 0), which only the copy makes real."""
    try:
        return make()
    except MemoryError:
        raise KilnError("K0505", f"out of memory copying input {port.name} into a C-ordered "
                        f"array of kiln's dtype {port.type.dtype}",
                        hint="pass a C-contiguous array of the input's dtype, or a smaller "
                        "one") from None


def _convert_numbers(port: Port, value: np.ndarray, want: str) -> np.ndarray:
    """Plain numbers as the input's dtype, refusing (K0502) one that does not fit it: an
    integer outside its range (which would wrap) or a finite number that would become inf."""
    target = NUMPY_DTYPES[want]
    with np.errstate(all="ignore"):
        converted = value.astype(target)
    if want in INT_DTYPES:
        info = np.iinfo(target)
        bad = (value < info.min) | (value > info.max)
    elif want in FLOAT_DTYPES:
        bad = np.isinf(converted) & np.isfinite(value)
    else:
        bad = np.zeros(value.shape, dtype=bool)
    if bad.any():
        raise KilnError("K0502", f"input {port.name}: the value {value[bad].flat[0]} does not fit "
                        f"{want}", hint=f"give values that fit {want}, or a numpy array of it")
    return converted


def _takes(dtype: np.dtype, want: str) -> bool:
    """Whether plain Python numbers of numpy kind `dtype` convert to `want` without surprise
    (ints to ints or floats, floats to floats, bools to bool)."""
    ints = "i8 u8 i16 u16 i32 u32 i64 f32 f16 bf16"
    kinds = {"f": "f32 f16 bf16 f64", "i": ints, "u": ints, "b": "bool"}
    return want in kinds.get(dtype.kind, "").split()


def _numpy_name(dtype: str) -> str:
    return "ml_dtypes.bfloat16" if dtype == "bf16" else f"np.{NUMPY_DTYPES[dtype].name}"
