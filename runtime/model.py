"""What every compiled model offers: signature, parameters, weights I/O, checked calls."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compiler.builds import Builds, Weights
from ..compiler.errors import KilnError
from ..compiler.interface import ParamInfo, Port
from ..compiler.sizes import SizeCheck
from ..compiler.types import FLOAT_DTYPES, NUMPY_DTYPES, TensorType
from .signature import Signature
from .weights import apply_weights, save_weights

if TYPE_CHECKING:  # the compiler's side: a model loaded from a library has none of it
    from ..compiler.driver import Compilation
    from ..compiler.elaborate import ElaboratedModel
    from ..compiler.ir import Graph


@dataclasses.dataclass
class State:
    """One set of weights as a running model uses them: the compiler's `Weights` (the values,
    the graphs optimized with them) and what the backend built from them (compiled variants,
    sessions), by optional inputs. Calls take the model's current state and use it from
    start to end; `load_weights` publishes a new one whole instead of editing it, so a call
    in flight never sees half of a change, and the old one (with its code) lives as long as a
    call uses it. Tables only grow, under the compilation's lock (driver.Builds)."""

    weights: Weights
    built: dict = dataclasses.field(default_factory=dict)  # the backend's, by optional inputs
    # builds with a timer around each kernel (`kiln profile`), by optional inputs: made on
    # demand, never for calls, and not carried over to new weights
    profiled: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.weights.params


class CompiledModel:
    """A model ready to run: call it with numpy arrays (positional or by input name)."""

    target = "abstract"

    def __init__(self, compilation: Compilation | None, params: dict[str, np.ndarray],
                 interface: Interface | None = None):
        """`compilation`: what the model is compiled from; a library built ahead of time has
        none, and gives its `interface` itself (from its metadata)."""
        self.compilation = compilation
        self.model = compilation.model if compilation else None  # the elaborated model
        if interface is None:
            interface = Interface.of(self.model)
        self._signature = interface.signature
        self.param_info = interface.param_info
        self.aliases = interface.aliases
        self.name = self._signature.name
        self.opt_level = compilation.opt_level if compilation else 1
        # serialises building (a variant, a graph, a session) and swapping weights; shared
        # with the compilation, whose builds nest in the backend's
        self._builds = compilation.builds if compilation else Builds()
        self._lock = self._builds.lock
        self._state = State(Weights.of(params))
        names = [p.name for p in self._signature.outputs]
        self._results_type = (
            collections.namedtuple(f"{self.name}Outputs", names, rename=True)
            if self._signature.named_outputs else None
        )
        # the size checks of each variant's graph (compiler/sizes.SizeCheck)
        self._size_checks: dict[Hashable, tuple[object, SizeCheck]] = {}

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """Every parameter and buffer by path, read-only (load_weights changes them)."""
        return MappingProxyType(self._state.params)

    @property
    def pipeline(self) -> str:
        """The optimizer's pipeline for this target (compiler/pipelines.py: PIPELINES)."""
        return self.compilation.pipeline if self.compilation else "native"

    @property
    def pass_stats(self) -> list:
        """What the optimizer did to the model (compiler/pipelines.py: optimize)."""
        return self.compilation.pass_stats if self.compilation else []

    @property
    def pipeline_stats(self) -> dict[str, list]:
        """The same for each pipeline that has made this model's graph ("native", "onnx")."""
        return self.compilation.pipeline_stats if self.compilation else {}

    # ------------------------------------------------------------------ graphs
    def lowered(self, present: frozenset[str] | None = None,
                pipeline: str | None = None) -> ElaboratedModel:
        """The model for this set of optional inputs, optimized with the current weights by
        `pipeline` (default: this target's; "onnx" keeps every parameter an initializer) -
        the graph a backend compiles."""
        return self._compiled().lowered(self._state.weights, present, pipeline)

    def _compiled(self) -> Compilation:
        """The compilation; a library built ahead of time has no graph (K0602)."""
        if self.compilation is None:
            raise KilnError("K0602", f"{self.name} was loaded from a library built ahead of "
                            "time: it has no graph to optimize or export",
                            hint="compile it from its source: kiln.compile(FILE)")
        return self.compilation

    # ------------------------------------------------------------------ signature
    @property
    def inputs(self) -> list[Port]:
        return list(self._signature.inputs)

    @property
    def outputs(self) -> list[Port]:
        return list(self._signature.outputs)

    @property
    def updates(self) -> dict[str, int]:
        """Training mode's buffer updates: {buffer path: index of the output holding its new
        value} (compiler/elaborate/training.py); empty outside training mode."""
        return dict(self.model.updates) if self.model is not None else {}

    def signature(self) -> str:
        """The model's signature as written: `MLP(x: f32[B, 784]) -> f32[B, 10]`."""
        return str(self._signature)

    def __repr__(self) -> str:
        return f"<kiln {self.target} model {self.signature()}>"

    # ------------------------------------------------------------------ weights
    def state_dict(self) -> dict[str, np.ndarray]:
        """Persistent parameters and buffers by dotted path; a tied tensor under both names.

        The arrays are read-only views of what the model runs with: to change weights, edit
        copies and load them (`load_weights`), which every target then uses alike."""
        out = {p: a for p, a in self.params.items() if self.param_info[p].persistent}
        for alias, canonical in self.aliases.items():
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
        params = self.with_weights(path_or_dict, strict)
        with self._lock:
            self._state = self._rebound(self._state, params)  # raises before any change

    def with_weights(self, path_or_dict, strict: bool = True) -> dict[str, np.ndarray]:
        """The parameters with a weights file (or dict) applied; self is not changed."""
        return apply_weights(self.params, self.param_info, self.aliases, path_or_dict, strict)

    def export_onnx(self, path, gradients: bool = False) -> None:
        """Write this model (with its current weights) as an ONNX file, every parameter an
        initializer named by its dotted path. `gradients`: its vector-Jacobian product
        instead (what `vjp` runs): the inputs, then a `cotangent:<output>` input per float
        output; the outputs, then a `grad:<path>` output per trainable parameter and a
        `grad:<input>` output per float input."""
        self._compiled().write_onnx(self._state.weights, path, gradients)

    def _rebound(self, old: State, params: dict[str, np.ndarray]) -> State:
        """The state for new weights (called under the lock; raising changes nothing). By
        default everything is made again from the new values when first needed."""
        return State(Weights.of(params))

    # ------------------------------------------------------------------ calls
    def bind_inputs(
        self, args: tuple, kwargs: dict
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Check every input against the signature; returns arrays by name and symbol sizes."""
        return self._signature.bind(args, kwargs)

    def __call__(self, /, *args, **kwargs):
        arrays, dims = self._signature.bind(args, kwargs)
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

    def vjp(self, /, *args, cotangents: list | tuple | None = None, **kwargs
            ) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Reverse mode: (outputs, grads, input_grads) of a call with these inputs.

        `cotangents` has one array per output, of the output's dtype and shape (None: zero;
        an integer or bool output takes None); it may be left out when every float output is
        0-d (a loss: its cotangent is 1). `grads` maps every trainable parameter's path (as
        `params` names it) to the gradient of sum(outputs * cotangents) with respect to it,
        `input_grads` every floating-point input's name to its gradient; outputs are what a
        call returns. The gradient graph is compiled as the model is (once per set of
        weights and optional inputs), with the same optimizer pipeline and backend."""
        arrays, dims = self._signature.bind(args, kwargs)
        present = self._present(arrays)
        state = self._state  # one set of weights for the whole call
        gradient = self._compiled().gradient(state.weights, present)
        layout = gradient.layout
        if cotangents is None:
            cotangents = self._loss_cotangents(layout.cotangents)
        cts = self._signature.bind_cotangents(cotangents, layout.cotangents, dims)
        feed = {**arrays, **dict(zip([n for n in layout.cotangents if n], cts, strict=True))}
        results = self.run_gradient(state, present, feed, dims)
        found = {p: results[layout.param_output(p)] for p in layout.params}
        # a parameter the forward never reads has no node in the graph: its gradient is zero
        grads = {path: found[path] if path in found
                 else np.zeros(info.shape, NUMPY_DTYPES[info.dtype])
                 for path, info in self.param_info.items() if path in found or (
                     info.kind == "param" and info.dtype in FLOAT_DTYPES)}
        input_grads = {n: results[layout.input_output(n)] for n in layout.inputs}
        return self.pack_results(results[:layout.outputs]), grads, input_grads

    def _loss_cotangents(self, names: tuple[str | None, ...]) -> list:
        """The cotangents of outputs that are all 0-d where they are float: ones (d loss)."""
        outs = self._signature.outputs
        if any(n is not None and p.type.rank for p, n in zip(outs, names, strict=True)):
            raise KilnError("K0501", f"vjp needs cotangents: {self.name} has an output that "
                            "is not a 0-d loss", hint="vjp(x, cotangents=[dy, ...]), one "
                            "array per output, of its shape")
        return [None if n is None else np.ones((), p.type.np_dtype)
                for p, n in zip(outs, names, strict=True)]

    def _present(self, arrays: dict[str, np.ndarray]) -> frozenset[str]:
        """The optional inputs a call gives."""
        return frozenset(p.name for p in self.inputs if p.optional and p.name in arrays)

    def run_gradient(self, state: State, present: frozenset[str],
                     arrays: dict[str, np.ndarray], dims: dict[str, int]) -> list[np.ndarray]:
        """Run the gradient model (driver.GradientModel) for the optional inputs `present`
        with `state`'s weights: its inputs by name (cotangents included), all outputs."""
        raise KilnError("K0602", f"vjp is not available on the {self.target} target",
                        hint='compile with target="native" or target="reference"')

    def check_sizes(self, present: Hashable, graph: Graph | None, dims: dict[str, int],
                    more: list[TensorType] = ()) -> None:
        """Refuse (K0505) sizes that make a tensor of `graph` (of the variant `present` a
        backend runs: the set of optional inputs given, or a key of its own for a gradient
        model; None: a library's, which has only `more`) negative
        or too large (compiler/sizes.SizeCheck), before the backend is entered; `more`: types
        the backend keeps beside the graph."""
        cached = self._size_checks.get(present)
        if cached is None or cached[0] is not graph:
            check = (SizeCheck.of(graph, more) if graph is not None
                     else SizeCheck([(t, None) for t in more]))
            cached = self._size_checks[present] = (graph, check)
        cached[1].check(dims)


@dataclasses.dataclass(frozen=True)
class Interface:
    """What a running model knows of itself besides its code: its signature, its parameters
    by path (ParamInfo) and their tied aliases; a compiled model's from its elaborated
    model, a library's from its metadata."""

    signature: Signature
    param_info: dict[str, ParamInfo]
    aliases: dict[str, str]

    @staticmethod
    def of(model: ElaboratedModel) -> Interface:
        """The interface of a compiled model."""
        return Interface(Signature.of(model), model.params, model.aliases)
