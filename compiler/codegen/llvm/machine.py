"""LLVM IR to optimised object code for one CPU, through the on-disk compile cache."""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.binding as llvm
from llvmlite import ir

from ... import progress
from ...dims import assuming
from ...version import __version__
from . import bf16, cache, graphcache, parts
from . import target as targets
from .module import ModuleLayout, build_module, ir_text, prefer_vector_width
from .parts import machine_code  # noqa: F401  (re-exported)


def compile_object(model, target: targets.Target, with_plan: bool = False,
                   stamp: Callable[[ModuleLayout], dict[str, bytes]] | None = None,
                   profile: bool = False, precision: str = "f32"):
    """LLVM IR -> optimised object code for `target`, through the on-disk compile cache;
    returns (object files, layout, target machine): one object, or one per part of a large
    module compiled in parallel (parts.py). `model` is an ElaboratedModel whose graph
    the native pipeline has lowered. `with_plan` adds `kiln_plan`, the memory plan as a C
    function, for libraries used without kiln; `stamp(layout)` gives read-only data symbols
    to add (name -> bytes), such as a library's metadata digest; `profile` times each kernel
    (module.py: kiln_profile); `precision`: the GEMM's, "f32" or "bf16" (bf16.py), part of
    both cache keys when not f32 (whose keys stay as they were; the IR's text differs too)."""
    # (precision is spelled only when not f32: entries cached before it existed stay valid;
    # "amx": the bf16 GEMM on AMX tiles, bf16.amx)
    amx = precision == "bf16" and bf16.amx(target)
    reduced = () if precision == "f32" else (precision, *(("amx",) if amx else ()))
    machine = target.machine()
    # by the graph first: a warm compile then builds no LLVM IR (graphcache.py); a library's
    # stamp depends on the layout, so a library always goes through the IR
    options = {"with_plan": with_plan, "profile": profile}
    if reduced:
        options["precision"] = "+".join(reduced)
    by_graph = None if stamp else graphcache.key(model, target, options)
    hit = graphcache.load(by_graph, model) if by_graph else None
    if hit is not None:
        return hit[0], hit[1], machine
    with (progress.step(f"generating native code ({len(model.graph)} nodes)"),
          assuming(model.graph.size_facts())):  # kernels compare shapes as the checker did
        module, layout = build_module(model, llvm.get_process_triple(),
                                      str(machine.target_data), with_plan=with_plan,
                                      vector_width=target.vector_width, profile=profile,
                                      precision=precision, amx=amx)
        for name, data in (stamp(layout) if stamp else {}).items():
            symbol = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(8), len(data)), name)
            symbol.initializer = ir.Constant(symbol.type.pointee, bytearray(data))
            symbol.global_constant = True
        bodies = parts.bodies_of(module)  # printed once, for the key and for the parts
        text = ir_text(module, target.vector_width, bodies)
    name = cache.key(__version__, target.cpu, target.features, *reduced, text)
    objects = cache.load_objects(name)
    if objects is None:
        count = parts.part_count()
        texts = parts.split(module, count, bodies) if count > 1 else []
        texts = ([prefer_vector_width(part, target.vector_width) for part in texts]
                 if len(texts) > 1 else [text])  # (one part: the module's own text)
        how = f" in {len(texts)} processes" if len(texts) > 1 else ""
        with progress.step(f"optimising and compiling {len(module.functions)} functions "
                           f"with LLVM for {target.cpu}{how}"):
            objects = parts.compile_parts(texts, target, machine)
        cache.store_objects(name, objects)
    if by_graph:
        graphcache.store(by_graph, model, layout, objects)
    return objects, layout, machine
