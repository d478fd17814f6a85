"""The native target: the model compiled by LLVM for this CPU and run in one native call."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np

from ..compiler.codegen.llvm import target as targets
from ..compiler.codegen.llvm.module import build_module, ir_text, plan_memory
from ..compiler.dims import Dim
from ..compiler.elaborate import ElaboratedModel
from ..compiler.errors import KilnError
from . import cache
from .model import CompiledModel
from .version import __version__

_ENTRY = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 6))


def compile_object(model: ElaboratedModel, target: targets.Target, with_plan: bool = False):
    """LLVM IR -> optimised object code for `target`, through the on-disk compile cache;
    returns (object bytes, layout, target machine). `with_plan` adds `kiln_plan`, the memory
    plan as a C function, for libraries used without kiln."""
    machine = target.machine()
    module, layout = build_module(model, llvm.get_process_triple(), str(machine.target_data),
                                  with_plan=with_plan)
    text = ir_text(module, target.vector_width)
    name = cache.key(__version__, target.cpu, target.features, text)
    obj = cache.load(name)
    if obj is None:
        parsed = llvm.parse_assembly(text)
        parsed.verify()
        options = llvm.create_pipeline_tuning_options(speed_level=3)
        options.loop_vectorization = True
        options.slp_vectorization = True
        builder = llvm.create_pass_builder(machine, options)
        builder.getModulePassManager().run(parsed, builder)
        obj = machine.emit_object(parsed)
        cache.store(name, obj)
    return obj, layout, machine


class NativeModel(CompiledModel):
    """A model compiled to machine code for this CPU; calls from several threads are safe."""

    target = "native"

    def __init__(self, model: ElaboratedModel, params: dict[str, np.ndarray],
                 variant: Callable[[frozenset[str]], ElaboratedModel] | None = None,
                 cpu: targets.Target | None = None):
        super().__init__(model, params)
        self.cpu = cpu or targets.host()
        self._variant = variant
        self._compiled = {model.present: self._build(model)}
        self._local = threading.local()
        self._plans: dict[tuple, tuple[np.ndarray, int]] = {}

    @classmethod
    def from_library(cls, model: ElaboratedModel, params: dict, layout, library, entry,
                     cpu: targets.Target) -> NativeModel:
        """A model whose code comes from a shared library built ahead of time."""
        self = cls.__new__(cls)
        CompiledModel.__init__(self, model, params)
        self.cpu = cpu
        self._variant = None
        self._local = threading.local()
        self._plans = {}
        self._compiled = {model.present: (model, layout, library, entry,
                                          self._param_pointers(layout))}
        return self

    @staticmethod
    def signature_of(model: ElaboratedModel) -> str:
        return CompiledModel(model, {}).signature()

    def _build(self, model: ElaboratedModel):
        obj, layout, machine = compile_object(model, self.cpu)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
        entry = _ENTRY(engine.get_function_address("run"))
        return model, layout, engine, entry, self._param_pointers(layout)

    def _param_pointers(self, layout):
        arrays = [layout.constants[name] if name in layout.constants else self.params[name]
                  for name in layout.params]
        arrays = [np.ascontiguousarray(a) if a.ndim else np.array(a, order="C") for a in arrays]
        pointers = (ctypes.c_void_p * max(1, len(arrays)))(
            *[a.__array_interface__["data"][0] for a in arrays]
        )
        return pointers, arrays  # the arrays are kept alive with their pointers

    def _weights_changed(self) -> None:
        self._compiled = {
            key: (*entry[:4], self._param_pointers(entry[1]))
            for key, entry in self._compiled.items()
        }

    def run(self, arrays, dims):
        present = frozenset(p.name for p in self.inputs if p.optional and p.name in arrays)
        if present not in self._compiled:
            if self._variant is None:
                raise KilnError("K0501", "this library was built with every optional input given",
                                hint="pass every optional input")
            self._compiled[present] = self._build(self._variant(present))
        model, layout, _engine, entry, (params, _keep) = self._compiled[present]
        key = (present, tuple(dims.get(s, 0) for s in layout.symbols))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_memory(layout, dims)
        offsets, size = plan
        workspace = self._workspace(size)
        ins = [arrays[p.name] for p in model.inputs]
        outs = [np.empty(tuple(Dim.of(d).evaluate(dims) for d in p.type.shape), p.type.np_dtype)
                for p in model.outputs]
        dims_array = np.array([dims[s] for s in layout.symbols] or [0], dtype=np.int64)
        in_ptrs = (ctypes.c_void_p * max(1, len(ins)))(
            *[a.__array_interface__["data"][0] for a in ins])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(
            *[a.__array_interface__["data"][0] for a in outs])
        entry(ctypes.addressof(in_ptrs), ctypes.addressof(out_ptrs), ctypes.addressof(params),
              workspace.__array_interface__["data"][0], dims_array.__array_interface__["data"][0],
              offsets.__array_interface__["data"][0])
        return outs

    def _workspace(self, size: int) -> np.ndarray:
        """One arena per thread, grown as needed: calls from several threads never share it."""
        buf = getattr(self._local, "workspace", None)
        if buf is None or buf.size < size:
            buf = self._local.workspace = np.empty(max(size, 64), dtype=np.uint8)
        return buf
