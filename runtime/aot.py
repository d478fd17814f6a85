"""Ahead-of-time native libraries: `kiln compile --target native -o model.so`.

Beside `model.so` go `model.safetensors` (parameters, buffers and constants, by name, each
array once: the arrays derived from parameters, such as a weight packed for the GEMM, are made
again when the library is loaded, or stored too for C callers with `c_arrays`),
`model.kiln.json` (the signature, the memory layout and the CPU features the code was built
for) and `model.h` (the C entry point). `load_compiled("model.so")` runs it without
recompiling, after checking that this CPU has every feature the library was built for.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from ..compiler.codegen.llvm import target as targets
from ..compiler.codegen.llvm.calling import ModuleLayout
from ..compiler.codegen.llvm.derived import remakeable, resolve
from ..compiler.dims import Dim, parse_size
from ..compiler.errors import KilnError
from ..compiler.files import open_regular, read_bounded, staged_writes
from ..compiler.interface import Constraint, ParamInfo, Port
from ..compiler.types import MAX_TENSOR_BYTES, TensorType, bytes_text, dtype_of_numpy
from ..compiler.version import __version__
from .model import Interface
from .native import LoadedCode, NativeModel
from .signature import Signature
from .weights import load_weights, save_weights

if TYPE_CHECKING:  # the compiler's side: loading a library needs none of it
    from ..compiler.builds import Weights
    from ..compiler.driver import Compilation
    from ..compiler.elaborate import ElaboratedModel

DIGEST_SYMBOL = "kiln_metadata_sha256"  # SHA-256 of the .kiln.json (metadata_digest)
HEADER = """\
/* {name}: compiled by kiln {version} for {cpu}. Generated; do not edit.
 *
 * All pointers are to C-contiguous arrays. inputs/outputs follow the signature below;
 * params follow "params" in {stem}.kiln.json (load them from {stem}.safetensors by those
 * names: {derived_note});
 * dims holds the size of each symbol in "symbols" order: {symbols}.
 * workspace must hold kiln_plan(dims, offsets) bytes (64-byte aligned); offsets has
 * {slots} entries and is filled by kiln_plan. kiln_plan returns -1 when these sizes are out of
 * range for the model: a size is negative, a tensor would span {limit} bytes or more, or a
 * size overflows int64; run must not be called with such sizes.
 *
 * Signature: {signature}
 */
#include <stdint.h>

int64_t kiln_plan(const int64_t *dims, int64_t *offsets);
/* SHA-256 of the metadata in {stem}.kiln.json, canonically serialised (kiln checks it) */
extern const uint8_t kiln_metadata_sha256[32];
void kiln_set_threads(int64_t threads);  /* parallelism of the kernels that split (default 1) */
/* worker threads start on the first parallel call and sleep between calls; kiln_shutdown
   stops and joins them (call it before dlclose; a later call starts them again) */
void kiln_shutdown(void);
/* status[0] is 0 after a call, or k > 0: an input value was out of range; the message is
   "failures"[k - 1] in {stem}.kiln.json */
void run(void **inputs, void **outputs, void **params, void *workspace,
         const int64_t *dims, const int64_t *offsets, int64_t *status);
"""


def library_files(path: str | os.PathLike) -> list[Path]:
    """The files `write_library(path)` writes: the library, then its companions beside it
    (weights, metadata, C header). K0602 when `path` is one of its own companions' names
    (`-o lin.h` would write the library where its header goes) or a directory."""
    path = Path(path)
    stem = path.with_suffix("")
    companions = [Path(f"{stem}.safetensors"), Path(f"{stem}.kiln.json"), Path(f"{stem}.h")]
    if path in companions:
        raise KilnError("K0602", f"cannot write a native library to {path}: the library's "
                        f"{path.suffix} companion has that name", hint=f"name it {stem}.so")
    if path.is_dir():
        raise KilnError("K0602", f"cannot write a native library to {path}: it is a directory",
                        hint=f"name the library's file: {path / 'model.so'}")
    return [path, *companions]


def write_library(compilation: Compilation, weights: Weights, path: str | os.PathLike,
                  present: frozenset[str] | None = None,
                  cpu: targets.Target | None = None, c_arrays: bool = False) -> list[Path]:
    """Build `path` (a shared library of the compilation's model with `weights`, for `cpu`,
    by default the compilation's) and its companions; returns the files written. A model
    with optional inputs is built as the variant `present` says (default: every optional
    input): those inputs are required by the library, the others are not inputs of it (one
    library per set).

    The .safetensors holds each parameter, buffer and constant once; the arrays the code reads
    that are derived from them by name (a weight transposed, packed for the GEMM, or with a
    BatchNorm folded in: compiler/derived.py) are made again by `load_compiled`, unless
    `c_arrays` asks for them in the file too, for a C caller that reads every array of
    "params" from it.

    All four files are staged and renamed into place together: a failure (a full disk)
    leaves a previous build as it was, and nothing is written through a symlink."""
    files = library_files(path)
    path, stem = files[0], files[0].with_suffix("")
    cc = c_compiler()
    if cc is None:
        raise KilnError(
            "K0703", "linking a shared library needs a C compiler driver (cc), which is not on "
            "PATH", hint='install gcc or clang, or use kiln.compile(..., target = "native") '
            "(the JIT needs no system compiler)",
        )
    cpu = cpu or compilation.cpu
    model = compilation.lowered(weights, present, "native")
    made: dict = {}

    def stamp(layout: ModuleLayout) -> dict[str, bytes]:
        """The library's arrays and metadata, whose digest the library carries (load_compiled
        checks the files beside it against it)."""
        folded = sum(st.changes.get("folded", 0) for st in compilation.pass_stats
                     if st.name == "fold_batch_norm")
        made["weights"], remade = _library_arrays(weights.params, layout, c_arrays)
        arrays = made["weights"]
        made["meta"] = meta = {
            **_metadata(model, layout, cpu), "weights_folded": bool(folded),
            "folded": sorted(layout.folded),  # constants made from weights: no new weights
            "arrays": _types(arrays),
            "derived": _types(remade),  # made again by load_compiled, checked against these
        }
        return {DIGEST_SYMBOL: metadata_digest(meta)}

    native = compilation.native(weights, present, cpu, with_plan=True, stamp=stamp)
    layout = native.layout
    header = HEADER.format(
        name=model.name, version=__version__, cpu=cpu.cpu, stem=stem.name,
        symbols=", ".join(layout.symbols) or "none", slots=len(layout.slots),
        signature=library_signature(model), limit=bytes_text(MAX_TENSOR_BYTES),
        derived_note="it holds every one of them" if c_arrays or not made["meta"]["derived"]
        else 'those listed under "derived" are not in it: they are made from the parameters '
        "by kiln's loader, or written into it by kiln compile --c-arrays",
    )

    def refuse(why: str) -> KilnError:
        return KilnError("K0403", f"{path} and its companions: {why}")

    with tempfile.TemporaryDirectory() as tmp, staged_writes(refuse) as staging:
        # -Bsymbolic: the parts' symbols named across objects (compiler/codegen/llvm/parts.py)
        # bind inside the library, never to another library's of the same name
        proc = subprocess.run([cc, "-shared", "-Wl,-Bsymbolic", "-o", staging.path(path),
                               *object_files(Path(tmp), native.code), "-lm", "-lpthread"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            why = proc.stderr.strip()[:500] or f"{cc} exited with status {proc.returncode}"
            raise KilnError("K0703", f"linking {path.name} failed: {why}")
        save_weights(files[1], made["weights"], staging)
        staging.write(files[2], json.dumps(made["meta"], indent=1).encode())
        staging.write(files[3], header.encode())
    return files


def object_files(directory: Path, objects: tuple[bytes, ...]) -> list[str]:
    """The paths of a model's object files (one, or one per part compiled in parallel:
    codegen/llvm/parts.py), written into `directory` for the linker."""
    paths = []
    for i, code in enumerate(objects):
        paths.append(str(directory / f"model{i}.o"))
        Path(paths[-1]).write_bytes(code)
    return paths


def _library_arrays(params: dict, layout: ModuleLayout, c_arrays: bool
                    ) -> tuple[dict, dict]:
    """(the arrays a library's .safetensors holds, the derived arrays it leaves out), by name.

    It holds every parameter, buffer and constant; of the arrays the code reads that are derived
    from those (compiler/derived.py names say how), only the ones no name remakes, or all of
    them with `c_arrays` (a C caller reads every array of "params" from the file)."""
    sources = {**params, **layout.constants}
    stored, remade = dict(sources), {}
    for name in layout.params:
        if name in sources:
            continue
        array = resolve(name, sources.__getitem__)
        if c_arrays or not remakeable(name, sources.__contains__):
            stored[name] = array
        else:
            remade[name] = array
    return stored, remade


def _types(arrays: dict) -> dict:
    """{name: {"dtype", "shape"}} of arrays, as a library's metadata lists them."""
    return {name: {"dtype": dtype_of_numpy(a.dtype), "shape": list(a.shape)}
            for name, a in arrays.items()}


def metadata_digest(meta: dict) -> bytes:
    """SHA-256 of a library's metadata, canonically serialised (the JSON read back gives the
    same digest as the dict it was written from)."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def _library_inputs(model: ElaboratedModel) -> list[Port]:
    """The inputs of a library built from `model`: its present optional inputs as plain
    (required) inputs; the absent ones are not inputs of it."""
    return [dataclasses.replace(p, optional=False) for p in model.inputs
            if not p.optional or p.name in model.present]


def library_signature(model: ElaboratedModel) -> Signature:
    """The signature of a library built from `model` (`_library_inputs`)."""
    return dataclasses.replace(Signature.of(model), inputs=tuple(_library_inputs(model)))


def _type(t: TensorType) -> dict:
    return {"dtype": t.dtype, "shape": [str(d) for d in t.shape]}


def _metadata(model: ElaboratedModel, layout: ModuleLayout, cpu: targets.Target) -> dict:
    return {
        "kiln": __version__, "name": model.name, "cpu": cpu.cpu, "features": cpu.features,
        "inputs": [{"name": p.name, **_type(p.type)} for p in _library_inputs(model)],
        "outputs": [{"name": p.name, **_type(p.type)} for p in model.outputs],
        "symbols": layout.symbols, "params": layout.params,
        "slots": [{**_type(t), "born": born, "dies": dies} for t, born, dies in layout.slots],
        "param_info": {path: {"kind": i.kind, "dtype": i.dtype, "shape": list(i.shape),
                              "persistent": i.persistent} for path, i in model.params.items()},
        "aliases": model.aliases,
        "constraints": [{"op": c.op, "lhs": str(c.lhs), "rhs": str(c.rhs), "text": c.text}
                        for c in model.graph.constraints],
        # where, and the chain of block uses that led there (errors.Span.uses)
        "failures": [[message, "; ".join((str(span), *span.uses)) if span else None]
                     for message, span in layout.failures],
    }


def parse_dim(text: str) -> Dim:
    """A size as printed by Dim (`2*B + 1`, `(H + 1)//2`), read back (dims.parse_size: no
    parser needed). ValueError for anything else."""
    return parse_size(text)


def _tensor(entry: dict) -> TensorType:
    return TensorType(entry["dtype"], tuple(parse_dim(d) for d in entry["shape"]))


_LOADED: weakref.WeakValueDictionary[int, LoadedCode] = weakref.WeakValueDictionary()
META_LIMIT = 64 << 20  # bytes of .kiln.json read at most (a real one is far smaller)


def _refuse(stem: Path, what: str) -> KilnError:
    return KilnError("K0403", f"{stem.name}.kiln.json and {stem.name}.safetensors must be the "
                     f"ones written with {stem.name}.so: {what}",
                     hint="rebuild the library: kiln compile FILE --target native -o model.so")


def _read_metadata(stem: Path) -> dict:
    where = Path(f"{stem}.kiln.json")

    def refuse(why: str) -> KilnError:
        return KilnError("K0403", f"cannot read {where.name} beside {stem.name}.so: {why}")

    try:  # a regular file only (never a FIFO that would block, or /dev/zero), bounded
        meta = json.loads(read_bounded(where, META_LIMIT, refuse))
    except RecursionError:  # nesting deeper than Python's stack
        raise refuse("nested too deeply") from None
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if not isinstance(meta, dict):
        raise _refuse(stem, f"{where.name} is not a kiln library's metadata")
    return meta


def _check_arrays(stem: Path, wanted: dict, stored: dict) -> None:
    """Every array the library reads is in the .safetensors (or, for those listed under
    "derived", made again from it) with the dtype and shape it was built for: the code reads
    exactly that many bytes of each."""
    for name, want in wanted.items():
        if name not in stored:
            raise _refuse(stem, f"the array `{name}` is missing")
        got = stored[name]
        if dtype_of_numpy(got.dtype) != want["dtype"] or list(got.shape) != want["shape"]:
            raise _refuse(stem, f"the array `{name}` is {dtype_of_numpy(got.dtype) or got.dtype}"
                          f"{list(got.shape)}, but the library was built for "
                          f"{want['dtype']}{want['shape']}")


def check_elf_size(file, path: Path) -> None:
    """A 64-bit little-endian ELF file must hold every segment and table its header lists:
    dlopen maps a truncated one and the process dies of SIGBUS touching the missing pages.
    (Anything else is left to dlopen, which refuses what it cannot read.)"""
    size = os.fstat(file.fileno()).st_size
    header = file.read(64)
    if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
        return
    phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
    ends = [phoff + phentsize * phnum, shoff + shentsize * shnum if shnum else 0]
    if ends[0] <= size and phentsize >= 0x28:
        file.seek(phoff)
        table = file.read(phentsize * phnum)
        for i in range(phnum):
            offset, = struct.unpack_from("<Q", table, i * phentsize + 0x08)
            filesz, = struct.unpack_from("<Q", table, i * phentsize + 0x20)
            ends.append(offset + filesz)
    if max(ends) > size:
        raise KilnError("K0403", f"cannot load {path}: it is truncated ({size} bytes; its "
                        f"header lists {max(ends)})",
                        hint="rebuild the library: kiln compile FILE --target native -o "
                        "model.so")


def load_compiled(path: str | os.PathLike) -> NativeModel:
    """A library written by `kiln compile --target native`, ready to call. The files beside
    it must be the ones written with it: the library carries a digest of its metadata (which
    lists every array's dtype and shape), and anything else is refused (K0403)."""
    path = Path(path)
    stem = path.with_suffix("")
    meta = _read_metadata(stem)
    try:
        built = targets.Target(meta["cpu"], meta["features"])
        missing = built.missing_on(targets.host())
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _refuse(stem, "its CPU and features are unreadable") from None
    if missing:
        raise KilnError(
            "K0704", f"{path.name} was built for {meta['cpu']} and needs CPU features this "
            f"machine lacks: {', '.join(missing)}",
            hint="rebuild it here, or for a portable target: kiln compile --target native "
            "--cpu x86-64-v3",
        )
    with open_regular(path, lambda why: KilnError("K0403", f"cannot load {path}: {why}")) as file:
        check_elf_size(file, path)
    try:  # (dlopen would block on a FIFO)
        lib = ctypes.CDLL(str(path.resolve()))
    except OSError as exc:
        raise KilnError("K0403", f"cannot load {path}: {exc}") from None
    try:
        digest = bytes((ctypes.c_ubyte * 32).in_dll(lib, DIGEST_SYMBOL))
    except ValueError:
        raise _refuse(stem, f"{path.name} carries no digest of them (built by an older kiln)"
                      ) from None
    if digest != metadata_digest(meta):
        raise _refuse(stem, f"{stem.name}.kiln.json differs from what {path.name} was built "
                      "with")
    stored = load_weights(f"{stem}.safetensors")
    try:  # the metadata is the library's own from here on: its digest matched
        _check_arrays(stem, meta["arrays"], stored)
        interface, layout = _library_and_layout(meta)
        layout.constants = {k: v for k, v in stored.items() if k.startswith("const:")}
        _check_arrays(stem, meta.get("derived", {}), _remade(meta, stored))
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(stem, f"its metadata is incomplete ({exc})") from None
    params = {k: v for k, v in stored.items() if k in interface.param_info}
    entry = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 7))(("run", lib))
    return NativeModel.from_library(interface, params, layout, lib, entry, built,
                                    loaded_code(lib))


def loaded_code(lib: ctypes.CDLL) -> LoadedCode:
    """The LoadedCode of a loaded library: the same file loaded twice is one library (one set
    of worker threads), whose models share one LoadedCode, which stops the workers when the
    last of them goes."""
    code = _LOADED.get(lib._handle)
    if code is None:
        code = _LOADED[lib._handle] = LoadedCode(library=lib)
    return code


def c_compiler() -> str | None:
    """The system C compiler driver that links libraries ($CC, cc, gcc or clang), or None."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _remade(meta: dict, stored: dict) -> dict:
    """The derived arrays a library's .safetensors leaves out, made again from what it holds
    (only names that say how to make them from stored arrays: anything else is a KeyError)."""
    made = {}
    for name in meta.get("derived", {}):
        if not remakeable(name, stored.__contains__):
            raise KeyError(f"the derived array `{name}` cannot be made from the stored ones")
        made[name] = resolve(name, stored.__getitem__)
    return made


def _library_and_layout(meta: dict) -> tuple[Interface, ModuleLayout]:
    """What a library says of itself (signature, parameters, aliases) and the memory layout
    it was built with, from its metadata."""
    inputs = tuple(Port(e["name"], _tensor(e)) for e in meta["inputs"])
    outputs = tuple(Port(e["name"], _tensor(e)) for e in meta["outputs"])
    constraints = tuple(Constraint(c["op"], parse_dim(c["lhs"]), parse_dim(c["rhs"]), c["text"],
                                   None) for c in meta["constraints"])
    signature = Signature(meta["name"], inputs, outputs, tuple(meta["symbols"]), constraints)
    infos = {p: ParamInfo(p, i["kind"], i["dtype"], tuple(i["shape"]), None, i["persistent"],
                          "", "", None) for p, i in meta["param_info"].items()}
    layout = ModuleLayout(symbols=meta["symbols"], params=meta["params"])
    layout.slots = [(_tensor(s), s["born"], s["dies"]) for s in meta["slots"]]
    layout.failures = [(m if where is None else f"{m} (at {where})", None)
                       for m, where in meta["failures"]]
    layout.folded = set(meta["folded"])
    return Interface(signature, infos, meta["aliases"]), layout


__all__ = ["write_library", "library_files", "load_compiled", "parse_dim", "library_signature"]
