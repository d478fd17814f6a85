"""The compiler driver: one model of a program, from elaboration to what a backend runs.

    compilation = Compilation.of(program, "MLP", {"hidden": 256}, target="native")
    weights = Weights.of(params)              # one set of parameter values
    compilation.lowered(weights)              # the graph optimized for the target
    compilation.native(weights)               # object code for the CPU, and its layout
    compilation.onnx(weights)                 # the ONNX proto, with its run-time checks
    compilation.gradient(weights)             # its vector-Jacobian product, optimized

Each product is made for exactly what it depends on, and once:
- the elaborated model: by the set of optional inputs given (`present`); the program, the
  model's name and its arguments are the compilation's own;
- the optimized graph: by the weights (passes fold parameter values), `present` and the
  pipeline ("native" for native code and the reference, "onnx"); the opt level is the
  compilation's; kept in the weights' table;
- the native object: by the optimized graph, the CPU and kiln's version, in the on-disk compile
  cache (codegen/llvm/cache.py), not in memory: a running model keeps the code it loaded;
- the ONNX proto: made on demand, not kept (it holds a copy of every weight); a running model
  keeps the session made from it;
- the gradient model (autodiff.grad of the elaborated graph: cotangents in, outputs and
  gradients out): elaborated by `present`, optimized as the model is, by the weights,
  `present` and the pipeline, and compiled as any graph (native: `native(..., gradient=True)`).

What is made from parameter values lives in a `Weights`: new values are a new Weights, and what
was made from the old ones goes with them. Tables fill under one reentrant lock (`Builds`),
which a running model shares for what it builds itself, so that however many threads ask,
each product is made once and builds may nest.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import autodiff, pipelines, progress
from .builds import Builds, Weights, read_only  # noqa: F401  (re-exported)
from .codegen.llvm import bf16
from .codegen.llvm import target as targets
from .codegen.llvm.machine import compile_object
from .codegen.llvm.module import ModuleLayout
from .elaborate import ElaboratedModel, Port, Program
from .errors import KilnError, Span
from .ir import Graph

# the optimizer's pipeline (pipelines.PIPELINES) for each target
PIPELINE_OF = {"native": "native", "reference": "native", "onnx": "onnx"}


@dataclasses.dataclass(frozen=True)
class GradientModel:
    """A model's vector-Jacobian product as a model of its own: inputs are the model's then
    one cotangent per float output, outputs the model's then the gradient of every trainable
    parameter and every float input (autodiff.GradLayout says which output is which)."""

    model: ElaboratedModel
    layout: autodiff.GradLayout

    @staticmethod
    def of(model: ElaboratedModel) -> GradientModel:
        """The gradient model of an elaborated (not yet optimized) model."""
        source = model.graph
        graph, layout = autodiff.grad(source, autodiff.differentiable_params(source),
                                      autodiff.differentiable_inputs(source))
        ins = list(model.inputs) + [
            Port(name, out.type, span=out.span)
            for name, out in zip(layout.cotangents, model.outputs, strict=True) if name]
        param_types = {source.node(n)["attrs"]["path"]: source.node(n)["types"][0]
                       for n in source.params()}
        input_types = {p.name: p.type for p in model.inputs}
        outs = list(model.outputs)
        outs += [Port(autodiff.GRADIENT_PREFIX + p, param_types[p]) for p in layout.params]
        outs += [Port(autodiff.GRADIENT_PREFIX + n, input_types[n]) for n in layout.inputs]
        return GradientModel(dataclasses.replace(model, graph=graph, inputs=ins, outputs=outs),
                             layout)


@dataclasses.dataclass
class NativeObject:
    """A model's object code for one CPU: the model it was built from (its graph optimized
    for native code), the code (one object file, or one per part compiled in parallel:
    codegen/llvm/parts.py), the layout its caller follows, and the target machine."""

    model: ElaboratedModel
    code: tuple[bytes, ...]
    layout: ModuleLayout
    machine: Any


@dataclasses.dataclass
class OnnxExport:
    """A model as ONNX: the model it was made from, the proto, and each run-time check as
    (extra output's name, message, span): a non-zero output is a K0505 after the call."""

    model: ElaboratedModel
    proto: Any
    checks: list[tuple[str, str, Span | None]]


class Compilation:
    """One model of a program compiled for a target at an opt level: its elaborated model
    (one per set of optional inputs), its optimized graphs, its native code and its ONNX
    proto, each made once for what it depends on (see the module's docstring)."""

    def __init__(self, model: ElaboratedModel,
                 variant: Callable[[frozenset[str]], ElaboratedModel] | None = None,
                 target: str = "native", cpu: targets.Target | None = None,
                 opt_level: int = 1, precision: str = "f32"):
        """`model`: the model elaborated with every optional input; `variant(present)`: the
        model elaborated with only the optional inputs in `present` (None: only `model`'s set
        can be compiled); `cpu`: native code's target (default: this machine's); `precision`:
        of matmul and convolution products in native code ("bf16": codegen/llvm/bf16.py)."""
        self.model = model
        self.target = target
        self.pipeline = PIPELINE_OF[target]
        self.cpu = (cpu or targets.host()) if target == "native" else cpu
        self.opt_level = opt_level
        bf16.check(precision, target)
        if precision == "bf16":  # now, not at the first call: no silent fallback
            bf16.require(self.cpu)
        self.precision = precision
        self.builds = Builds()
        self.pass_stats: list = []  # what the target's pipeline did to the model
        # the same for each pipeline that has made this model's graph ("native", "onnx"):
        # `kiln compile -o m.onnx` reports the ONNX pipeline, not the one the model runs
        self.pipeline_stats: dict[str, list] = {}
        self._variant = variant
        self._elaborated = {model.present: model}
        self._gradients: dict[frozenset[str], GradientModel] = {}

    @classmethod
    def of(cls, program: Program, model: str | None = None, args: dict[str, Any] | None = None,
           target: str = "native", cpu: targets.Target | None = None,
           opt_level: int = 1, training: bool = False,
           precision: str = "f32") -> Compilation:
        """The compilation of the model named `model` (default: the file's last) of `program`
        with compile-time arguments `args`, in training mode when `training`
        (elaborate/training.py); elaborates it with every optional input now."""
        with progress.step("elaborating the model"):
            elaborated = program.elaborate(model, args, training=training)

        def variant(present: frozenset[str]) -> ElaboratedModel:
            return program.elaborate(model, args, present, training)

        return cls(elaborated, variant, target, cpu, opt_level, precision)

    @classmethod
    def of_graph(cls, name: str, graph: Graph, params: dict[str, np.ndarray],
                 target: str = "native", cpu: targets.Target | None = None,
                 opt_level: int = 1, precision: str = "f32") -> Compilation:
        """The compilation of a graph built without source (an imported ONNX model, from
        compiler/onnx_import): its inputs and outputs are the model's signature, its `param`
        nodes its parameters, with initial values `params` by path."""
        return cls(ElaboratedModel.of_graph(name, graph, params), None, target, cpu, opt_level,
                   precision)

    def elaborated(self, present: frozenset[str] | None = None) -> ElaboratedModel:
        """The model elaborated with the optional inputs in `present` (default: the model's)."""
        present = self.model.present if present is None else present
        return self.builds.once(self._elaborated, present, lambda: self._elaborate(present))

    def _elaborate(self, present: frozenset[str]) -> ElaboratedModel:
        if self._variant is None:
            raise KilnError("K0501", "this model was built with every optional input given",
                            hint="pass every optional input")
        return self._variant(present)

    def lowered(self, weights: Weights, present: frozenset[str] | None = None,
                pipeline: str | None = None) -> ElaboratedModel:
        """The model for these optional inputs, optimized with `weights` by `pipeline`
        (default: the target's; "onnx" keeps every parameter an initializer): the graph a
        backend compiles. Made once per set of weights."""
        present = self.model.present if present is None else present
        pipeline = pipeline or self.pipeline
        return self.builds.once(weights.lowered, (present, pipeline),
                                lambda: self._optimized(weights, present, pipeline))

    def _optimized(self, weights: Weights, present: frozenset[str], pipeline: str
                   ) -> ElaboratedModel:
        model = self.elaborated(present)
        with progress.step(f"optimizing the graph ({len(model.graph)} nodes)"):
            graph, stats = pipelines.optimize(model, self.opt_level, params=weights.params,
                                              pipeline=pipeline)
        if present == self.model.present:
            self.pipeline_stats[pipeline] = stats
            if pipeline == self.pipeline:
                self.pass_stats = stats
        return dataclasses.replace(model, graph=graph)

    def gradient(self, weights: Weights, present: frozenset[str] | None = None,
                 pipeline: str | None = None) -> GradientModel:
        """The model's vector-Jacobian product (GradientModel) for these optional inputs,
        optimized with `weights` by `pipeline` (default: the target's), as `lowered` optimizes
        the model itself. Made once per set of weights."""
        present = self.model.present if present is None else present
        pipeline = pipeline or self.pipeline
        return self.builds.once(weights.gradients, (present, pipeline),
                                lambda: self._optimized_gradient(weights, present, pipeline))

    def _optimized_gradient(self, weights: Weights, present: frozenset[str], pipeline: str
                            ) -> GradientModel:
        plain = self.builds.once(self._gradients, present,
                                 lambda: GradientModel.of(self.elaborated(present)))
        with progress.step(f"optimizing the gradient graph ({len(plain.model.graph)} nodes)"):
            graph, _stats = pipelines.optimize(plain.model, self.opt_level,
                                               params=weights.params, pipeline=pipeline)
        return GradientModel(dataclasses.replace(plain.model, graph=graph), plain.layout)

    def native(self, weights: Weights, present: frozenset[str] | None = None,
               cpu: targets.Target | None = None, with_plan: bool = False,
               stamp: Callable[[ModuleLayout], dict[str, bytes]] | None = None,
               gradient: bool = False, profile: bool = False) -> NativeObject:
        """Object code of the native-optimized model (`gradient`: of its gradient model) for
        `cpu` (default: the compilation's), through the on-disk compile cache. `with_plan`
        adds `kiln_plan` (the memory plan as a C function, for a library); `stamp(layout)`
        gives read-only data symbols to add (name -> bytes); `profile` times each kernel
        (`kiln profile`)."""
        model = (self.gradient(weights, present, "native").model if gradient
                 else self.lowered(weights, present, "native"))
        cpu = cpu or self.cpu or targets.host()
        if self.precision == "bf16":  # a library's CPU (--cpu) may differ from this one
            bf16.require(cpu)
        code, layout, machine = compile_object(model, cpu, with_plan, stamp, profile,
                                               self.precision)
        return NativeObject(model, code, layout, machine)

    def onnx(self, weights: Weights, present: frozenset[str] | None = None,
             checked: bool = True, gradient: bool = False) -> OnnxExport:
        """The ONNX-optimized model (`gradient`: its gradient model) as ONNX, every parameter
        an initializer named by its path; `checked`: with its run-time checks (indices in
        range) as extra outputs, for running it (codegen/onnx.export_checked), else the plain
        model, for a file."""
        from .codegen import onnx as onnx_codegen

        model = (self.gradient(weights, present, "onnx").model if gradient
                 else self.lowered(weights, present, "onnx"))
        if not checked:
            return OnnxExport(model, onnx_codegen.export(model, weights.params), [])
        with progress.step(f"exporting to ONNX ({len(model.graph)} nodes)"):
            proto, failures = onnx_codegen.export_checked(model, weights.params)
        checks = [(onnx_codegen.FAILURE_OUTPUT.format(k), message, span)
                  for k, (message, span) in enumerate(failures)]
        return OnnxExport(model, proto, checks)

    def write_onnx(self, weights: Weights, path: str | os.PathLike,
                   gradients: bool = False) -> None:
        """Write the model with `weights` (`gradients`: its gradient model) as an ONNX file
        (codegen/onnx.save: external data past 2 GB, staged and renamed into place)."""
        from .codegen import onnx as onnx_codegen

        onnx_codegen.save(self.onnx(weights, checked=False, gradient=gradients).proto, path)
