"""What every compiled model offers: signature, parameters, weights I/O, checked calls."""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..compiler.dims import Dim, DimError
from ..compiler.elaborate import ElaboratedModel, Port, default_output_names
from ..compiler.errors import KilnError
from ..compiler.ir import COMPARISONS
from ..compiler.passes.memory import SizeCheck
from ..compiler.types import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    TensorType,
    dtype_of_numpy,
    shape_str,
)
from .weights import load_weights, match_weights, save_weights

# lossless conversions done for the caller; anything else is an error naming the input
_WIDENING = {("i32", "i64"), ("f16", "f32"), ("bf16", "f32")}


@dataclasses.dataclass
class Weights:
    """One set of parameter values and everything a backend made from them (optimized graphs,
    compiled variants, sessions). Calls take the model's current one and use it from start to
    end; `load_weights` publishes a new one whole instead of editing it, so a call in flight
    never sees half of a change, and the old one (with its code) lives as long as a call uses
    it. Tables only grow, under the model's lock (`CompiledModel.once`)."""

    params: dict[str, np.ndarray]
    # optimized graphs by (optional inputs, pipeline)
    lowered: dict[tuple, ElaboratedModel] = dataclasses.field(default_factory=dict)
    built: dict = dataclasses.field(default_factory=dict)  # the backend's, by optional inputs


def read_only(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as read-only views: what a model runs with cannot be edited in place."""
    def frozen(a: np.ndarray) -> np.ndarray:
        view = np.asarray(a).view()
        view.flags.writeable = False
        return view

    return {path: frozen(a) for path, a in params.items()}


class CompiledModel:
    """A model ready to run: call it with numpy arrays (positional or by input name)."""

    target = "abstract"
    pipeline = "native"  # the optimizer's pipeline for this target (compiler/pipelines.py)

    def __init__(self, model: ElaboratedModel, params: dict[str, np.ndarray],
                 variant: Callable[[frozenset[str]], ElaboratedModel] | None = None,
                 opt_level: int = 1):
        self.model = model
        self.name = model.name
        self.opt_level = opt_level
        self.pass_stats: list = []  # what the optimizer did to the model (kiln.compiler.passes)
        # the same for each pipeline that has made this model's graph ("native", "onnx"):
        # `kiln compile -o m.onnx` reports the ONNX pipeline, not the one the model runs
        self.pipeline_stats: dict[str, list] = {}
        self._variant = variant
        self._elaborated = {model.present: model}
        # serialises building (a variant, a graph, a session) and swapping weights; calls
        # never take it once what they need is built. Reentrant: builds nest.
        self._lock = threading.RLock()
        self._state = Weights(read_only(params))
        names = [p.name for p in model.outputs]
        self._results_type = (
            collections.namedtuple(f"{model.name}Outputs", names, rename=True)
            if names != default_output_names(len(names)) else None
        )
        # the size checks of each variant's graph (passes/memory.SizeCheck)
        self._size_checks: dict[frozenset[str], tuple[object, SizeCheck]] = {}

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """Every parameter and buffer by path, read-only (load_weights changes them)."""
        return MappingProxyType(self._state.params)

    def once(self, table: dict, key, make: Callable[[], Any]):
        """table[key], made by `make()` the first time: one build however many threads ask."""
        value = table.get(key)
        if value is None:
            with self._lock:
                value = table.get(key)
                if value is None:
                    value = table[key] = make()
        return value

    # ------------------------------------------------------------------ graphs
    def lowered(self, present: frozenset[str] | None = None,
                pipeline: str | None = None) -> ElaboratedModel:
        """The model for this set of optional inputs, optimized with the current weights by
        `pipeline` (default: this target's; "onnx" keeps every parameter an initializer) -
        the graph a backend compiles."""
        return self.lower(self._state, present, pipeline)

    def lower(self, state: Weights, present: frozenset[str] | None = None,
              pipeline: str | None = None) -> ElaboratedModel:
        """The model for this set of optional inputs optimized by `pipeline` with the weights
        of `state`, made once per state (new weights are a new state)."""
        present = self.model.present if present is None else present
        pipeline = pipeline or self.pipeline
        return self.once(state.lowered, (present, pipeline),
                         lambda: self._optimized(state, present, pipeline))

    def _optimized(self, state: Weights, present: frozenset[str], pipeline: str
                   ) -> ElaboratedModel:
        model = self.once(self._elaborated, present, lambda: self._elaborate(present))
        from ..compiler import progress
        from ..compiler.pipelines import optimize

        with progress.step(f"optimizing the graph ({len(model.graph)} nodes)"):
            graph, stats = optimize(model, self.opt_level, params=state.params,
                                    pipeline=pipeline)
        if present == self.model.present:
            self.pipeline_stats[pipeline] = stats
            if pipeline == self.pipeline:
                self.pass_stats = stats
        return dataclasses.replace(model, graph=graph)

    def _elaborate(self, present: frozenset[str]) -> ElaboratedModel:
        if self._variant is None:
            raise KilnError("K0501", "this model was built with every optional input given",
                            hint="pass every optional input")
        return self._variant(present)

    # ------------------------------------------------------------------ signature
    @property
    def inputs(self) -> list[Port]:
        return list(self.model.inputs)

    @property
    def outputs(self) -> list[Port]:
        return list(self.model.outputs)

    def signature(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        named = self._results_type is not None  # as written: `-> (recon: f32[..], ..)`
        outs = ", ".join(str(p) if named else str(p.type) for p in self.outputs)
        if named or len(self.outputs) != 1:
            outs = f"({outs})"
        return f"{self.name}({ins}) -> {outs}"

    def __repr__(self) -> str:
        return f"<kiln {self.target} model {self.signature()}>"

    # ------------------------------------------------------------------ weights
    def state_dict(self) -> dict[str, np.ndarray]:
        """Persistent parameters and buffers by dotted path; a tied tensor under both names.

        The arrays are read-only views of what the model runs with: to change weights, edit
        copies and load them (`load_weights`), which every target then uses alike."""
        out = {p: a for p, a in self.params.items() if self.model.params[p].persistent}
        for alias, canonical in self.model.aliases.items():
            if canonical in out:
                out[alias] = out[canonical]
        return out

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights to .safetensors (preferred) or .npz, atomically."""
        save_weights(path, self.state_dict())

    def load_weights(self, path_or_dict, strict: bool = True) -> None:
        """Load weights by dotted path; every missing, unexpected or mis-shaped key is reported.

        All or nothing: unless the whole file matches and the model can take it, nothing
        changes. Safe while other threads call the model: a call runs with the old weights or
        the new ones, never a mix. New weights need no new machine code (weights are data:
        arrays derived from them, such as weight.T or a folded BatchNorm, are remade); only a
        native model with weights folded past remaking (a BatchNorm whose statistics are
        constants, not parameters) optimizes its graph again, its code from the compile cache.
        """
        params = read_only(self.with_weights(path_or_dict, strict))
        with self._lock:
            self._state = self._rebound(self._state, params)  # raises before any change

    def with_weights(self, path_or_dict, strict: bool = True) -> dict[str, np.ndarray]:
        """The parameters with a weights file (or dict) applied; self is not changed."""
        expected = {
            p: (info.shape, info.dtype) for p, info in self.model.params.items() if info.persistent
        }
        # the shape each key should have, so that a file's other arrays are never inflated
        shapes = {key: expected[p][0] for key, p in
                  [*((p, p) for p in expected), *self.model.aliases.items()] if p in expected}
        found = (load_weights(path_or_dict, shapes) if not isinstance(path_or_dict, dict)
                 else path_or_dict)
        source = os.fspath(path_or_dict) if not isinstance(path_or_dict, dict) else "weights"
        matched = match_weights(expected, found, self.model.aliases, strict, source)
        params = dict(self.params)
        for path, array in matched.items():
            params[path] = array  # match_weights' own copy: the caller's array stays theirs
        return params

    def export_onnx(self, path) -> None:
        """Write this model (with its current weights) as an ONNX file, every parameter an
        initializer named by its dotted path."""
        from ..compiler.codegen import onnx as onnx_codegen

        state = self._state
        proto = onnx_codegen.export(self.lower(state, pipeline="onnx"), state.params)
        onnx_codegen.save(proto, path)

    def _rebound(self, old: Weights, params: dict[str, np.ndarray]) -> Weights:
        """The state for new weights (called under the lock; raising changes nothing). By
        default everything is made again from the new values when first needed."""
        return Weights(params)

    # ------------------------------------------------------------------ calls
    def bind_inputs(
        self, args: tuple, kwargs: dict
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Check every input against the signature; returns arrays by name and symbol sizes."""
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
                raise KilnError(
                    "K0502", f"input {port.name} must be a numpy array, not {type(value).__name__}"
                )
        got = dtype_of_numpy(value.dtype)
        if got != want:
            if got is not None and (got, want) in _WIDENING:
                value = value.astype(NUMPY_DTYPES[want])
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
        return np.asarray(value, order="C")

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
        for c in self.model.graph.constraints:
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

    def __call__(self, *args, **kwargs):
        arrays, dims = self.bind_inputs(args, kwargs)
        return self.pack_results(self.run(arrays, dims))

    def pack_results(self, results: list[np.ndarray]):
        """What a call returns: the one result, or a tuple of them in signature order; a
        namedtuple when the signature names its outputs (`-> (recon: .., mu: ..)`)."""
        if len(results) == 1:
            return results[0]
        if self._results_type is None:
            return tuple(results)
        return self._results_type(*results)

    def run(self, arrays: dict[str, np.ndarray], dims: dict[str, int]) -> list[np.ndarray]:
        raise NotImplementedError

    def check_sizes(self, model: ElaboratedModel, dims: dict[str, int],
                    more: list[TensorType] = ()) -> None:
        """Refuse (K0505) sizes that make a tensor of `model` (the variant a backend runs)
        negative or too large (passes/memory.SizeCheck), before the backend is entered;
        `more`: types the backend keeps beside the graph."""
        cached = self._size_checks.get(model.present)
        if cached is None or cached[0] is not model.graph:
            cached = self._size_checks[model.present] = (model.graph,
                                                         SizeCheck.of(model.graph, more))
        cached[1].check(dims)


def _ev(d: Dim, dims) -> int | str:
    try:
        return d.evaluate(dims)
    except DimError:
        return str(d)


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
    kinds = {"f": "f32 f16 bf16", "i": "i32 i64 f32 f16 bf16", "u": "i32 i64 f32 f16 bf16",
             "b": "bool"}
    return want in kinds.get(dtype.kind, "").split()


def _numpy_name(dtype: str) -> str:
    return "ml_dtypes.bfloat16" if dtype == "bf16" else f"np.{NUMPY_DTYPES[dtype].name}"
