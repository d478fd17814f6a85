"""Object code into this process: `LoadedObject`."""

from __future__ import annotations

import llvmlite.binding as llvm


class LoadedObject:
    """Object code linked into this process by LLVM's ORC JIT with JITLink, whose in-process
    memory manager maps all of an object's sections in one block, so a 32-bit PC-relative
    reference always reaches (MCJIT's default manager mapped each section on its own: in a
    crowded address space, a Ray worker's, code and constants landed over 2 GiB apart), and
    which sizes that block by what it links. llvmlite's preallocating manager for MCJIT
    budgets less than RuntimeDyld then asks for when an object's sections end just below a
    page boundary (its per-section alignment slack, and the GOT entries of the stubs of calls
    out of the object), and aborts the process: a small ResNet's profiled train step did.
    `objects`: one object file, or the parts of one module (codegen/llvm/parts.py), linked
    together (one part's hidden symbols resolve in another's); `symbols`: the names whose
    addresses the caller needs (`address`); the code stays loaded while this object lives."""

    def __init__(self, objects: tuple[bytes, ...], symbols: list[str]):
        self._jit = llvm.create_lljit_compiler(use_jit_link=True)
        builder = llvm.JITLibraryBuilder()
        for code in objects:
            builder.add_object_img(code)
        builder.add_current_process()
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


__all__ = ["LoadedObject"]
