"""Model entries of the compile cache: a warm `kiln.compile` without the compiler.

The object caches (codegen/llvm/cache.py, graphcache.py) are keyed by what the compiler makes
(the LLVM IR, the optimized graph), so a warm compile still parses, elaborates and optimizes
before it finds its code. A model entry sits in front of them, keyed by what the user gives:

    key = sha256(FORMAT, kiln's version, a digest of the compiler's and runtime's own source
                 and grammar, this CPU (/proc/cpuinfo's vendor, family, model, flags), the
                 model file's resolved path and text, the model's name, its compile-time
                 arguments, opt_level, training)

An entry is three files in $KILN_CACHE_DIR/models/ (written together, staged and renamed into
place, never through a symlink): KEY.DIGEST.so, the model's object code (the JIT's own)
linked by `cc -shared` with a digest of the metadata, as an ahead-of-time library carries one
(runtime/aot.py), and named by its own SHA-256; KEY.json, the metadata: the key, every file
the model imports (stdlib ones included) with the digest of its text and, for a local import,
the path it resolves to; the signature, parameters (dtype, shape, initializer), aliases,
training updates, memory layout, the size checks and failure messages with their source
spans; the digests of the library and of KEY.safetensors, which holds the constants and the
initial values the elaborator computed. Beside them, KEY.seed-N.values keeps the initial
values drawn for seed N (CRC-checked).

A hit checks every imported file against the entry (resolved as the loader resolves it), the
library's digest against the metadata and the arrays it reads against the types it was built
for; anything that does not match (an edited import, a truncated, damaged or swapped file, a
symlink) is removed and the model compiled the long way, which writes the entry again. Initial
values are drawn, from the entry's initializers, only for the parameters the weights leave out:
the same values a cold compile draws. What needs the graph (export_onnx, vjp, profile,
pass_stats) elaborates the model on first use, after checking its sources are still the ones
the entry was built from (K0970 if not).

Nothing here imports the parser, networkx, llvmlite or onnx: a hit loads numpy, safetensors and
the library. KILN_CACHE=0 turns every compile cache off.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import hashlib
import json
import os
import re
import stat
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compiler.codegen.llvm import cache, evict
from ..compiler.codegen.llvm import target as targets
from ..compiler.codegen.llvm.calling import ModuleLayout
from ..compiler.codegen.llvm.packing import winograd_enabled
from ..compiler.dims import parse_size
from ..compiler.errors import KilnError, Span
from ..compiler.files import (
    memory_bytes,
    open_regular,
    read_bounded,
    staged_writes,
    write_atomically,
)
from ..compiler.initializers import Initializer
from ..compiler.interface import Constraint, ParamInfo, Port
from ..compiler.sizes import SizeCheck
from ..compiler.sources import import_path, read_source_file
from ..compiler.types import TensorType, dtype_of_numpy
from ..compiler.version import __version__
from .aot import (
    DIGEST_SYMBOL,
    c_compiler,
    check_elf_size,
    loaded_code,
    metadata_digest,
    object_files,
)
from .model import Interface
from .native import _NONE, NativeModel
from .signature import Signature
from .weights import apply_weights, load_weights, save_weights

if TYPE_CHECKING:
    from ..compiler.driver import Compilation
    from ..compiler.elaborate import Program

FORMAT = "kiln-model-1"
VALUES_MAGIC = b"KILNVAL2"  # a seed's initial values: magic, CRC-32, size, payload
VALUES_ALIGN = 64  # bytes: the header's, and each value's start in the payload
META_LIMIT = 64 << 20  # bytes of KEY.json read at most (ResNet-18's is ~0.1 MB)
LIBRARY_LIMIT = 1 << 32  # bytes of a library hashed at most (ResNet-18's is 0.4 MB)
LIBRARY_DIGEST = "library_sha256"  # the metadata's digest of the library (the stamp leaves it out)
STDLIB = "kiln.stdlib"


def enabled() -> bool:
    """Whether compile caches are used (KILN_CACHE=0 turns them off)."""
    return cache.enabled()


# ---------------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class Request:
    """A `kiln.compile` of a model file for native code, as its entry's key sees it: the file
    (resolved as the loader resolves it) and its text, and the options that shape the code."""

    path: Path
    text: str
    model: str | None
    args: dict
    opt_level: int
    training: bool
    key: str

    @staticmethod
    def of(source: Any, model: Any, args: Any, opt_level: Any, training: Any) -> Request | None:
        """The request for these `kiln.compile` arguments, or None when a model entry cannot
        serve them (source text, an ONNX file, arguments the key cannot spell, a cache turned
        off, a CPU it cannot fingerprint): those compile the long way, which also reports
        any mistake in them). K0975 when $KILN_CACHE_SIZE is set to no size."""
        if not enabled() or not (model is None or isinstance(model, str)):
            return None
        evict.limit()  # K0975 for a $KILN_CACHE_SIZE that is no size, before any work
        if opt_level not in (0, 1) or not isinstance(training, bool) or isinstance(opt_level,
                                                                                   bool):
            return None
        path = _source_path(source)
        spelled = _spelled(args or {}) if isinstance(args or {}, dict) else None
        host = _host()
        if path is None or spelled is None or host is None:
            return None
        try:
            text = read_source_file(path)  # as the loader reads it
        except (KilnError, OSError):
            return None
        key = hashlib.sha256(json.dumps(
            [FORMAT, __version__, code_digest(), host, str(path), _digest(text), model, spelled,
             opt_level, training, winograd_enabled()],  # KILN_WINOGRAD changes the code
            separators=(",", ":")).encode()).hexdigest()
        return Request(path, text, model, dict(args or {}), opt_level, training, key)

    @property
    def base(self) -> Path:
        """The entry's files are this path with a suffix."""
        return cache.cache_dir() / "models" / self.key

    def files(self) -> tuple[Path, Path]:
        """The entry's metadata and arrays."""
        return Path(f"{self.base}.json"), Path(f"{self.base}.safetensors")

    def library(self, digest: str) -> Path:
        """The entry's library, named by its own SHA-256 (`digest`): a rebuilt entry's library
        is a new file, never one the dynamic loader still holds under the old one's name."""
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("not a library digest")
        return Path(f"{self.base}.{digest[:32]}.so")


def _source_path(source: Any) -> Path | None:
    """The resolved model file `kiln.load` would read for `source` (a path: os.PathLike, or a
    str without a newline or a brace, not .onnx), or None."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
        if not isinstance(source, str):
            return None
    elif not isinstance(source, str) or "\n" in source or "{" in source or not source.strip():
        return None
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        return None
    try:
        return path.resolve() if path.exists() else None
    except (OSError, RuntimeError, ValueError):
        return None


def _spelled(value: Any) -> Any:
    """A JSON spelling of a compile-time argument that differs wherever the value does (types
    included: 1, 1.0 and True are three keys), or None for a value it cannot spell."""
    if value is None or isinstance(value, (bool, int, str)):
        return [type(value).__name__, value]
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, (list, tuple)):
        items = [_spelled(v) for v in value]
        return None if None in items else [type(value).__name__, items]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _spelled(v) for k, v in value.items()}
        return None if None in items.values() else ["dict", sorted(items.items())]
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache
def code_digest() -> str:
    """A digest of kiln's own code that shapes compiled models and reads their entries: every
    .py file of the compiler and the runtime, and the grammar (the standard library's files
    are digested one by one, as a model imports them)."""
    digest = hashlib.sha256()
    roots = [resources.files(p) for p in ("kiln.compiler", "kiln.runtime", "kiln.grammar")]
    for root in (Path(str(r)) for r in roots):
        for path in sorted([*root.rglob("*.py"), *root.glob("*.lark")]):
            digest.update(f"{root.name}/{path.relative_to(root)}".encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _host() -> list[str] | None:
    """This CPU as /proc/cpuinfo describes it (what LLVM's host detection reads too: vendor,
    family, model, stepping and every feature flag), or None where there is no such file."""
    try:  # (a proc file: its size is 0 to stat, so read with a bound of our own)
        with open("/proc/cpuinfo", "rb") as file:
            text = file.read(1 << 24)
    except OSError:
        return None
    first = text.decode("utf-8", "replace").split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":")
                                                   for line in first.splitlines())}
    wanted = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    if "flags" not in fields:
        return None
    return [os.uname().machine, *(fields.get(k, "") for k in wanted)]


# ------------------------------------------------------------------------- the model's files


def program_sources(program: Program) -> list[dict] | None:
    """Every file `program` imports, with the digest of the text the loader parsed: a std
    module by name, a local file by the directory and string of its import and the path it
    resolved to. None when a module's text is not known (nothing to check a hit against)."""
    loader, found = program.loader, []
    from ..compiler.syntax import ast as A  # the program is parsed: its AST is loaded

    for scope in loader.modules.values():
        for item in scope.ast.items:
            if not isinstance(item, A.Import):
                continue
            if item.module is not None:
                name = item.module[-1]
                text = loader.texts.get(f"<std>/{name}.kiln")
                record = {"std": name}
            else:
                resolved = str(import_path(item.file, scope.directory, item.span))
                text = loader.texts.get(resolved)
                record = {"dir": str(scope.directory), "file": item.file, "path": resolved}
            if text is None:
                return None
            found.append({**record, "sha256": _digest(text)})
    return found


def _source_texts(sources: list[dict]) -> dict[str, str] | None:
    """The current text of every file of an entry's `sources`, by the name spans give it, if
    each still resolves and reads as it did when the entry was built; else None."""
    texts = {}
    for record in sources:
        try:
            if "std" in record:
                name = f"<std>/{record['std']}.kiln"
                res = resources.files(STDLIB).joinpath(f"{record['std']}.kiln")
                text = res.read_text(encoding="utf-8") if res.is_file() else None
            else:
                name = str(import_path(record["file"], Path(record["dir"]), None))
                text = read_source_file(Path(name)) if name == record["path"] else None
        except (KilnError, OSError, TypeError, KeyError, ValueError):
            return None
        if text is None or _digest(text) != record.get("sha256"):
            return None
        texts[name] = text
    return texts


# --------------------------------------------------------------- spelling the model's parts


def _span(span: Span | None) -> list | None:
    if span is None:
        return None
    return [span.file, span.line, span.col, span.end_line, span.end_col, list(span.uses)]


def _unspan(value: list | None, texts: dict[str, str]) -> Span | None:
    """A span read back, with its file's text (for the caret line) when the file is one of
    the model's."""
    if value is None:
        return None
    file, line, col, end_line, end_col, uses = value
    return Span(str(file), int(line), int(col), int(end_line), int(end_col), texts.get(file),
                tuple(str(u) for u in uses))


def _type(t: TensorType) -> list:
    return [t.dtype, [str(d) for d in t.shape]]


def _untype(value: list) -> TensorType:
    dtype, shape = value
    return TensorType(str(dtype), tuple(parse_size(str(d)) for d in shape))


def _port(p: Port) -> list:
    return [p.name, _type(p.type), p.optional, _span(p.span)]


def _unport(value: list, texts: dict[str, str]) -> Port:
    name, t, optional, span = value
    return Port(str(name), _untype(t), bool(optional), _unspan(span, texts))


def _initializer(info: ParamInfo) -> dict | None:
    """How a parameter's initial value is made: an initializer and its arguments (drawn again
    on a hit), or an array the elaborator computed (stored); None if neither reads back
    exactly."""
    if isinstance(info.init, np.ndarray):
        return {"array": f"init:{info.path}"}
    initializer = getattr(info.init, "initializer", None)
    if not isinstance(initializer, Initializer):
        return None
    spelled = {"name": initializer.name, "args": [list(kv) for kv in initializer.params]}
    back = json.loads(json.dumps(spelled))
    if _uninitializer(back) != initializer or repr(_uninitializer(back)) != repr(initializer):
        return None
    return spelled


def _uninitializer(value: dict) -> Initializer:
    return Initializer(str(value["name"]), tuple((str(k), v) for k, v in value["args"]))


# ------------------------------------------------------------------------------------ store


def store(request: Request, model: NativeModel, program: Program, seed: int,
          all_drawn: bool) -> None:
    """Write the model entry of `request` for `model` (just compiled from `program`), when it
    can serve later compiles exactly: no optional inputs, code that takes any weights as data
    (no constants folded from weights), initializers that read back exactly, the model file
    unchanged since the request read it, and a C compiler to link with. Then least recently
    used entries are evicted to keep the cache within its bound (evict.py; K0975, before
    anything is written, when $KILN_CACHE_SIZE is no size). A cache that cannot be written
    is simply not used."""
    keep = evict.limit()
    try:
        _store(request, model, program, seed, all_drawn)
    except (KilnError, OSError, ValueError, TypeError, KeyError, subprocess.SubprocessError):
        return
    evict.bound(cache.cache_dir(), keep)


def _store(request: Request, model: NativeModel, program: Program, seed: int,
           all_drawn: bool) -> None:
    compilation: Compilation = model.compilation
    elaborated = compilation.model
    cc = c_compiler()
    if cc is None or any(p.optional for p in elaborated.inputs):
        return
    if program.loader.texts.get(str(request.path)) != request.text:
        return  # the file changed between reading it for the key and compiling it
    sources = program_sources(program)
    inits = {path: _initializer(info) for path, info in elaborated.params.items()}
    state = model._state
    variant = state.built.get(elaborated.present)
    if sources is None or None in inits.values() or variant is None or not variant.remakes(
            state.params):
        return
    native = variant.native  # the object code just built and loaded
    if native is None:
        return
    layout, graph = native.layout, native.model.graph
    signature = model._signature  # what calls are bound by: the elaborated model's
    more = [t for t, _born, _dies in layout.slots]
    more += [p.type for p in (*signature.inputs, *signature.outputs)]
    check = SizeCheck.of(graph, more)
    arrays = dict(layout.constants)
    arrays.update({spelled["array"]: info.init for path, info in elaborated.params.items()
                   if "array" in (spelled := inits[path])})
    meta_path, arrays_path = request.files()

    def refuse(why: str) -> KilnError:
        return KilnError("K0403", f"compile cache entry {request.key}: {why}")

    meta_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, staged_writes(refuse) as staging:
        save_weights(arrays_path, arrays, staging, role="compile cache")
        with open(staging.path(arrays_path), "rb") as file:
            arrays_digest = hashlib.sha256(file.read()).hexdigest()
        meta = {
            "format": FORMAT, "key": request.key, "kiln": __version__,
            "cpu": compilation.cpu.cpu, "features": compilation.cpu.features,
            "sources": sources, "name": signature.name,
            "inputs": [_port(p) for p in signature.inputs],
            "outputs": [_port(p) for p in signature.outputs],
            "symbols": list(signature.symbols),
            "constraints": [[c.op, str(c.lhs), str(c.rhs), c.text, _span(c.span)]
                            for c in signature.constraints],
            "params": {path: {"kind": i.kind, "dtype": i.dtype, "shape": list(i.shape),
                              "persistent": i.persistent, "owner": i.owner,
                              "member": i.member, "span": _span(i.span), "init": inits[path]}
                       for path, i in elaborated.params.items()},
            "aliases": elaborated.aliases, "updates": elaborated.updates,
            "layout": {"symbols": layout.symbols, "params": layout.params,
                       "slots": [[_type(t), born, dies] for t, born, dies in layout.slots],
                       "failures": [[m, _span(s)] for m, s in layout.failures]},
            "reads": [[dtype_of_numpy(a.dtype), list(a.shape)] for a in variant.arrays],
            "size_check": {"tensors": [[_type(t), _span(s)] for t, s in check.tensors],
                           "reductions": [[op, [str(d) for d in dims], _span(s)]
                                          for op, dims, s in check.reductions]},
            "arrays": {"sha256": arrays_digest,
                       "types": {k: [dtype_of_numpy(a.dtype), list(a.shape)]
                                 for k, a in arrays.items()}},
        }
        stamp, so = (Path(tmp) / name for name in ("stamp.c", "model.so"))
        objects = object_files(Path(tmp), native.code)
        digest = ", ".join(str(b) for b in metadata_digest(meta))
        stamp.write_text(f"const unsigned char {DIGEST_SYMBOL}[32] = {{{digest}}};\n")
        proc = subprocess.run([cc, "-shared", "-fPIC", "-Wl,-Bsymbolic", "-o", str(so),
                               *objects, str(stamp),
                               "-lm", "-lpthread"], capture_output=True, check=False)
        if proc.returncode != 0:
            raise refuse("linking failed")
        # the library carries the digest of the metadata, which then names the library's own
        # digest: damage anywhere in the code is seen before it is loaded
        code = so.read_bytes()
        meta[LIBRARY_DIGEST] = hashlib.sha256(code).hexdigest()
        library = request.library(meta[LIBRARY_DIGEST])
        staging.write(library, code)
        staging.write(meta_path, json.dumps(meta, separators=(",", ":")).encode())
    for old in meta_path.parent.glob(f"{request.key}.*.so"):  # a previous build's
        if old != library:
            _unlink(old)
    if all_drawn:  # every initial value was drawn (no weights given): keep them for `seed`
        _store_values(request, meta, seed, state.params)


# ------------------------------------------------------------------------------------- load


def load(request: Request, seed: Any, weights: Any, strict: bool, threads: Any
         ) -> NativeModel | None:
    """The model of `request` from its entry, with `weights` loaded and initial values from
    `seed` for the rest, exactly as a cold compile gives it; None on a miss (no entry, or one
    that does not match: it is removed). Errors in `weights` or `threads` raise as a cold
    compile's would."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return None  # the long way reports it
    entry = _open(request)
    if entry is None:
        return None
    meta, texts, stored, lib, code = entry
    try:
        interface, layout, check = _interface(meta, texts, stored)
        inits = {path: p["init"] for path, p in meta["params"].items()}
        reads, sources, updates = meta["reads"], list(meta["sources"]), dict(meta["updates"])
        entry_point = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 7))(("run", lib))
        cpu = targets.Target(str(meta["cpu"]), str(meta["features"]))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        _remove(request)
        return None
    loaded = (apply_weights({}, interface.param_info, interface.aliases, weights, strict)
              if weights is not None else {})
    drawn = _drawn_values(request, meta, seed, interface.param_info, set(loaded))
    params = {}
    for path in interface.param_info:
        if path in loaded:
            params[path] = loaded[path]
        elif "array" in inits[path]:
            params[path] = np.array(stored[inits[path]["array"]], copy=True)
        else:
            params[path] = drawn[path]
    try:  # binding makes the derived arrays (packed weights) the layout names
        model = CachedNativeModel.from_library(interface, params, layout, lib, entry_point,
                                               cpu, code, threads)
        variant = model._state.built[_NONE]
    except (KeyError, ValueError, TypeError, IndexError):
        _remove(request)
        return None
    if [[dtype_of_numpy(a.dtype), list(a.shape)] for a in variant.arrays] != reads:
        _remove(request)  # never enter code with arrays it was not built for
        return None
    model.attach(request, sources, updates, check)
    evict.touch(request.files()[0])  # used: the last to be evicted
    return model


def _drawn_values(request: Request, meta: dict, seed: int, infos: dict[str, ParamInfo],
                  loaded: set[str]) -> dict[str, np.ndarray]:
    """The initial values of the parameters drawn by an initializer that the weights leave
    out (`loaded`), as a cold compile draws them: from the entry's values for `seed` when it
    has them (drawing ResNet-18's 11.7 M takes longer than the rest of a warm compile), else
    drawn, and kept for the next compile when they are all of them."""
    paths = _random_paths(meta)
    wanted = [p for p in paths if p not in loaded]
    if not wanted:
        return {}
    values = _load_values(request, meta, seed, infos)
    if values is not None:
        return {p: values[p] for p in wanted}
    drawn = {p: _draw(meta["params"][p]["init"], infos[p], seed) for p in wanted}
    if len(wanted) == len(paths):
        _store_values(request, meta, seed, drawn)
    return drawn


def _random_paths(meta: dict) -> list[str]:
    """The parameters whose initial values an initializer draws, in the values' order."""
    return sorted(p for p, info in meta["params"].items() if "name" in info["init"])


def _values_file(request: Request, meta: dict, seed: int) -> tuple[Path, bytes]:
    """Where the entry keeps the initial values for `seed`, and the name its checksum covers
    (the key, the seed and every initializer: values are never read for other ones)."""
    inits = json.dumps({p: meta["params"][p]["init"] for p in _random_paths(meta)},
                       sort_keys=True)
    name = f"{request.key}\0{seed}\0{inits}".encode()
    return Path(f"{request.base}.seed-{seed}.values"), name


def _value_layout(meta: dict, infos: dict[str, ParamInfo]) -> list[tuple[str, np.dtype, tuple,
                                                                         int]]:
    """(path, dtype, shape, offset) of each drawn value in a values file's payload: every
    array starts on a 64-byte boundary, as an allocated one would (the code reads them in
    place)."""
    from ..compiler.types import NUMPY_DTYPES

    layout, at = [], 0
    for path in _random_paths(meta):
        dtype, shape = np.dtype(NUMPY_DTYPES[infos[path].dtype]), tuple(infos[path].shape)
        layout.append((path, dtype, shape, at))
        at += -(-dtype.itemsize * int(np.prod(shape)) // VALUES_ALIGN) * VALUES_ALIGN
    return layout


def _store_values(request: Request, meta: dict, seed: int, params: dict) -> None:
    """Keep the drawn initial values for `seed` (a cache that cannot be written is not used)."""
    path, name = _values_file(request, meta, seed)
    layout = _value_layout(meta, {p: _info(meta, p) for p in _random_paths(meta)})
    size = layout[-1][3] + -(-layout[-1][1].itemsize * int(np.prod(layout[-1][2]))
                             // VALUES_ALIGN) * VALUES_ALIGN if layout else 0
    data = np.zeros(VALUES_ALIGN + size, np.uint8)  # the file: header, then payload
    payload = data[VALUES_ALIGN:]
    for p, dtype, shape, at in layout:
        count = int(np.prod(shape))
        payload[at:at + dtype.itemsize * count].view(dtype)[:] = np.ravel(params[p])
    head = VALUES_MAGIC + zlib.crc32(payload, zlib.crc32(name)).to_bytes(4, "little")
    data[:len(head) + 8] = np.frombuffer(head + size.to_bytes(8, "little"), np.uint8)
    try:
        write_atomically(path, memoryview(data), lambda why: KilnError("K0403", why))
    except (KilnError, OSError):
        pass


def _info(meta: dict, path: str) -> ParamInfo:
    """A parameter's description in the metadata, as far as its values need."""
    p = meta["params"][path]
    return ParamInfo(path, p["kind"], p["dtype"], tuple(p["shape"]), None, True, "", "", None)


def _load_values(request: Request, meta: dict, seed: int, infos: dict[str, ParamInfo]
                 ) -> dict[str, np.ndarray] | None:
    """The entry's initial values for `seed`, or None (absent, or damaged: removed). Read
    in one piece into one buffer, each value a read-only view of it."""
    path, name = _values_file(request, meta, seed)
    if not _regular(path):
        return None
    try:
        layout = _value_layout(meta, infos)
        with open_regular(path, lambda why: KilnError("K0403", why)) as file:
            head = file.read(VALUES_ALIGN)
            size = int.from_bytes(head[len(VALUES_MAGIC) + 4:len(VALUES_MAGIC) + 12], "little")
            want = layout[-1][3] + layout[-1][1].itemsize * int(np.prod(layout[-1][2])) \
                if layout else 0
            if head[:len(VALUES_MAGIC)] != VALUES_MAGIC or not want <= size < want + \
                    VALUES_ALIGN or os.fstat(file.fileno()).st_size != VALUES_ALIGN + size:
                raise ValueError("damaged")
            payload = np.empty(size, np.uint8)
            if file.readinto(payload) != size or file.read(1):
                raise ValueError("truncated")
        crc = zlib.crc32(payload, zlib.crc32(name)).to_bytes(4, "little")
        if crc != head[len(VALUES_MAGIC):len(VALUES_MAGIC) + 4]:
            raise ValueError("damaged")
    except (KilnError, OSError, ValueError, KeyError):
        try:
            path.unlink()
        except OSError:
            pass
        return None
    payload.flags.writeable = False
    return {p: payload[at:at + dtype.itemsize * int(np.prod(shape))].view(dtype).reshape(shape)
            for p, dtype, shape, at in layout}


def _draw(init: dict, info: ParamInfo, seed: int) -> np.ndarray:
    """A parameter's initial value, as generate_params draws it on a cold compile."""
    from ..compiler.initializers import InitError

    try:
        return _uninitializer(init).generate(info.shape, info.dtype, seed, info.path)
    except InitError as err:  # the cold compile reported it, and wrote no entry
        raise KilnError("K0202", f"cannot initialise {info.path}: {err.message}",
                        info.span) from None


def _regular(path: Path) -> bool:
    """A regular file, not a symlink to one (an entry is never a link)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove(request: Request) -> None:
    """Remove an entry (its values for each seed stay: their checksum names what they are)."""
    for path in (*request.files(), *request.base.parent.glob(f"{request.key}.*.so")):
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _open(request: Request):
    """(metadata, source texts, stored arrays, library, LoadedCode) of `request`'s entry if it
    is whole and matches; else None, and a damaged entry is removed."""
    meta_path, arrays_path = request.files()
    if not all(_regular(p) for p in (meta_path, arrays_path)):
        if any(p.exists() or p.is_symlink() for p in (meta_path, arrays_path)):
            _remove(request)
        return None

    def refuse(why: str) -> KilnError:
        return KilnError("K0403", why)

    try:
        meta = json.loads(read_bounded(meta_path, META_LIMIT, refuse))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or \
                meta.get("key") != request.key:
            raise ValueError("not this request's entry")
        texts = _source_texts(meta["sources"])
        if texts is None:
            return None  # an import changed: a new entry replaces this one on the long way
        texts[str(request.path)] = request.text
        data = read_bounded(arrays_path, memory_bytes(), refuse)
        if hashlib.sha256(data).hexdigest() != meta["arrays"]["sha256"]:
            raise ValueError("arrays damaged")
        stored = load_weights(str(arrays_path))
        types = {k: [dtype_of_numpy(a.dtype), list(a.shape)] for k, a in stored.items()}
        if types != meta["arrays"]["types"]:
            raise ValueError("arrays damaged")
        so = request.library(meta[LIBRARY_DIGEST])
        if not _regular(so):
            raise ValueError("no library, or not a file")
        with open_regular(so, refuse) as file:
            check_elf_size(file, so)
            file.seek(0)
            if hashlib.sha256(file.read(LIBRARY_LIMIT)).hexdigest() != meta[LIBRARY_DIGEST]:
                raise ValueError("library damaged")
        lib = ctypes.CDLL(str(so))
        stamped = {k: v for k, v in meta.items() if k != LIBRARY_DIGEST}
        if _stamp(lib) != metadata_digest(stamped):
            # never called: unloaded, so that a library written at this path is loaded anew
            # (the dynamic loader would give this one back for the same name)
            _ctypes.dlclose(lib._handle)
            raise ValueError("a library of another entry")
    except (KilnError, OSError, ValueError, TypeError, KeyError, RecursionError):
        _remove(request)
        return None
    return meta, texts, stored, lib, loaded_code(lib)


def _stamp(lib: ctypes.CDLL) -> bytes | None:
    """The metadata digest a library carries, or None."""
    try:
        return bytes((ctypes.c_ubyte * 32).in_dll(lib, DIGEST_SYMBOL))
    except ValueError:
        return None




def _interface(meta: dict, texts: dict[str, str], stored: dict
               ) -> tuple[Interface, ModuleLayout, SizeCheck]:
    """The model's interface, its code's layout and its size check, from the metadata."""
    inputs = tuple(_unport(p, texts) for p in meta["inputs"])
    outputs = tuple(_unport(p, texts) for p in meta["outputs"])
    constraints = tuple(Constraint(op, parse_size(lhs), parse_size(rhs), text,
                                   _unspan(span, texts))
                        for op, lhs, rhs, text, span in meta["constraints"])
    signature = Signature(str(meta["name"]), inputs, outputs, tuple(meta["symbols"]),
                          constraints)
    infos = {path: ParamInfo(path, p["kind"], p["dtype"], tuple(int(d) for d in p["shape"]),
                             None, bool(p["persistent"]), p["owner"], p["member"],
                             _unspan(p["span"], texts))
             for path, p in meta["params"].items()}
    entry = meta["layout"]
    layout = ModuleLayout(symbols=list(entry["symbols"]), params=list(entry["params"]))
    layout.constants = {k: v for k, v in stored.items() if k.startswith("const:")}
    layout.slots = [(_untype(t), int(born), int(dies)) for t, born, dies in entry["slots"]]
    layout.failures = [(str(m), _unspan(s, texts)) for m, s in entry["failures"]]
    sizes = meta["size_check"]
    check = SizeCheck([(_untype(t), _unspan(s, texts)) for t, s in sizes["tensors"]],
                      [(str(op), tuple(parse_size(d) for d in dims), _unspan(s, texts))
                       for op, dims, s in sizes["reductions"]])
    return Interface(signature, infos, dict(meta["aliases"])), layout, check


# ---------------------------------------------------------------------------------- the model


class CachedNativeModel(NativeModel):
    """A native model whose code came from a model entry of the compile cache. It runs, loads
    and saves weights as a compiled one does; what needs the graph (export_onnx, vjp, profile,
    pass_stats, lowered) elaborates the model on first use, from the same sources."""

    _request: Request | None = None
    _compilation: Compilation | None = None

    def attach(self, request: Request, sources: list[dict], updates: dict,
               check: SizeCheck) -> None:
        """Tie the model to what it was compiled from (its entry's sources), and give it the
        size check of its graph (the checks a cold compile makes before each call)."""
        self._request, self._sources, self._updates = request, sources, dict(updates)
        self.opt_level = request.opt_level
        self._library = None  # not a library built ahead of time: variants build from source
        self._size_checks[_NONE] = (None, check)

    @property
    def compilation(self) -> Compilation | None:
        """The model's compilation, elaborated from its sources on first use."""
        if self._compilation is None and self._request is not None:
            with self._lock:
                if self._compilation is None:
                    self._compilation = self._elaborate()
        return self._compilation

    @compilation.setter
    def compilation(self, value: Compilation | None) -> None:
        self._compilation = value

    @property
    def model(self):
        """The elaborated model (elaborated on first use)."""
        compilation = self.compilation
        return compilation.model if compilation is not None else None

    @model.setter
    def model(self, value) -> None:
        pass  # CompiledModel.__init__ sets it; here it follows the compilation

    @property
    def updates(self) -> dict[str, int]:
        return dict(self._updates)

    @property
    def pass_stats(self) -> list:
        """What the optimizer did to the model: the graph is optimized to say (as a cold
        compile did) on first use."""
        self.lowered()
        return self.compilation.pass_stats

    @property
    def pipeline_stats(self) -> dict[str, list]:
        self.lowered()
        return self.compilation.pipeline_stats

    def native_arrays(self) -> list[str]:
        return list(self._state.built[_NONE].layout.params)

    def _elaborate(self) -> Compilation:
        """The model's compilation from its sources, which must be those the entry was built
        from (K0970: a file changed since, and the running code is not its model)."""
        from ..compiler.driver import Compilation
        from ..compiler.elaborate import load_program

        request = self._request
        program = load_program(request.path)
        if program.loader.texts.get(str(request.path)) != request.text or \
                program_sources(program) != self._sources:
            raise KilnError(
                "K0970", f"{request.path} or a file it imports changed after this model was "
                "compiled (from the compile cache): its graph is no longer the running code's",
                hint="compile it again: kiln.compile(FILE)")
        compilation = Compilation.of(program, request.model, request.args, "native", None,
                                     request.opt_level, request.training)
        infos = compilation.model.params
        if {p: (i.dtype, i.shape) for p, i in infos.items()} != {
                p: (i.dtype, i.shape) for p, i in self.param_info.items()}:
            raise KilnError("K0970", f"{request.path}: the model elaborates to other "
                            "parameters than the compiled code reads",
                            hint="compile it again: kiln.compile(FILE)")
        return compilation


__all__ = ["CachedNativeModel", "Request", "code_digest", "enabled", "load", "store"]
