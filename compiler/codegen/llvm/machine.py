"""LLVM IR to optimised object code for one CPU, through the on-disk compile cache."""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.binding as llvm
from llvmlite import ir

from ... import progress
from ...dims import assuming
from ...version import __version__
from . import cache, graphcache
from . import target as targets
from .module import ModuleLayout, build_module, ir_text


def compile_object(model, target: targets.Target, with_plan: bool = False,
                   stamp: Callable[[ModuleLayout], dict[str, bytes]] | None = None,
                   profile: bool = False):
    """LLVM IR -> optimised object code for `target`, through the on-disk compile cache;
    returns (object bytes, layout, target machine). `model` is an ElaboratedModel whose graph
    the native pipeline has lowered. `with_plan` adds `kiln_plan`, the memory plan as a C
    function, for libraries used without kiln; `stamp(layout)` gives read-only data symbols
    to add (name -> bytes), such as a library's metadata digest; `profile` times each kernel
    (module.py: kiln_profile)."""
    machine = target.machine()
    # by the graph first: a warm compile then builds no LLVM IR (graphcache.py); a library's
    # stamp depends on the layout, so a library always goes through the IR
    by_graph = None if stamp else graphcache.key(
        model, target, {"with_plan": with_plan, "profile": profile})
    hit = graphcache.load(by_graph, model) if by_graph else None
    if hit is not None:
        return hit[0], hit[1], machine
    with (progress.step(f"generating native code ({len(model.graph)} nodes)"),
          assuming(model.graph.size_facts())):  # kernels compare shapes as the checker did
        module, layout = build_module(model, llvm.get_process_triple(),
                                      str(machine.target_data), with_plan=with_plan,
                                      vector_width=target.vector_width, profile=profile)
        for name, data in (stamp(layout) if stamp else {}).items():
            symbol = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(8), len(data)), name)
            symbol.initializer = ir.Constant(symbol.type.pointee, bytearray(data))
            symbol.global_constant = True
        text = ir_text(module, target.vector_width)
    name = cache.key(__version__, target.cpu, target.features, text)
    obj = cache.load(name)
    if obj is None:
        with progress.step(f"optimising and compiling {len(module.functions)} functions "
                           f"with LLVM for {target.cpu}"):
            obj = machine_code(text, machine)
        cache.store(name, obj)
    if by_graph:
        graphcache.store(by_graph, model, layout, obj)
    return obj, layout, machine


class LoadedObject:
    """Object code linked into this process by LLVM's ORC JIT with JITLink, whose in-process
    memory manager maps all of an object's sections in one block, so a 32-bit PC-relative
    reference always reaches (MCJIT's default manager mapped each section on its own: in a
    crowded address space, a Ray worker's, code and constants landed over 2 GiB apart), and
    which sizes that block by what it links. llvmlite's preallocating manager for MCJIT
    budgets less than RuntimeDyld then asks for when an object's sections end just below a
    page boundary (its per-section alignment slack, and the GOT entries of the stubs of calls
    out of the object), and aborts the process: a small ResNet's profiled train step did.
    `symbols`: the names whose addresses the caller needs (`address`); the code stays loaded
    while this object lives."""

    def __init__(self, code: bytes, symbols: list[str]):
        self._jit = llvm.create_lljit_compiler(use_jit_link=True)
        builder = llvm.JITLibraryBuilder().add_object_img(code).add_current_process()
        for name in symbols:
            builder.export_symbol(name)
        self._tracker = builder.link(self._jit, "kiln")

    def address(self, name: str) -> int:
        """The address of `symbols` entry `name`."""
        return self._tracker[name]

    def __del__(self):
        # the library before its JIT (the tracker needs the JIT's session to unload)
        self.__dict__.pop("_tracker", None)
        self.__dict__.pop("_jit", None)


def machine_code(text: str, machine) -> bytes:
    """Optimised object code of LLVM IR text."""
    parsed = llvm.parse_assembly(text)
    parsed.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(parsed, builder)
    return machine.emit_object(parsed)
