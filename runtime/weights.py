"""Weights files in and out (safetensors or npz, never pickle) and matching them to a model.

Every problem with a file or with its contents is a KilnError: K0401 missing or unexpected
keys, K0402 wrong shapes, dtypes or tied values, K0403 a file that cannot be read or written.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.numpy

from ..compiler.errors import KilnError
from ..compiler.files import (
    Refusal,
    Staging,
    format_bytes,
    memory_bytes,
    open_regular,
    read_bounded,
    read_exactly,
    size_of,
    staged_writes,
)
from ..compiler.types import NUMPY_DTYPES, bfloat16, dtype_of_numpy, is_bfloat16

# safetensors' dtype names -> numpy; safetensors.numpy itself has no BF16
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype)
    for name, dtype in {
        "F64": np.float64, "F32": np.float32, "F16": np.float16,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    }.items()
}  # and BF16, ml_dtypes' bfloat16 (bfloat16(): imported when a file has it)
_SAVEABLE = frozenset(_SAFETENSORS_DTYPES.values())
# np.save writes bfloat16 as the 2-byte void type "V2"; nothing else kiln saves has that type
_NPZ_BF16 = np.dtype("V2")
_FORMATS = (".safetensors", ".npz")


def _file_error(path, what: str, hint: str | None = None, role: str = "weights") -> KilnError:
    return KilnError("K0403", f"{role} file {os.fspath(path)}: {what}", hint=hint)


def check_tensor_file(path: str | os.PathLike, role: str = "weights") -> str:
    """The format (".safetensors" or ".npz") of a tensor file to read or write at `path`;
    KilnError K0403, naming the file by its `role` ("weights", "outputs"), if its extension
    is neither or it is a directory."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if os.path.isdir(path):
        raise _file_error(path, "it is a directory", role=role,
                          hint=f"name a file in it, e.g. {os.path.join(path, role + '.npz')}")
    if ext not in _FORMATS:
        raise _file_error(
            path,
            f"unsupported extension {ext or '(none)'!r}",
            hint="kiln reads and writes .safetensors (preferred) and .npz files",
            role=role,
        )
    return ext



def load_weights(
    path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """All tensors in a .safetensors or .npz file, by key; KilnError K0403 if it is not one.

    Only a regular file is read, and no array larger than its member could hold (or than this
    machine's memory). With `expected` (key -> the shape the model wants), an npz member whose
    key is not expected or whose declared shape differs is not decompressed: it comes back as
    a read-only zero-stride stand-in of its declared shape and dtype, so that the matching
    reports it without a deflate bomb ever being inflated.
    """
    ext = check_tensor_file(path)
    if ext == ".safetensors":
        return _load_safetensors(path)
    return _load_npz(path, expected, lambda why: _file_error(path, why))


def _load_safetensors(path) -> dict[str, np.ndarray]:
    # not compressed: the arrays are no larger than the file, which must fit in memory
    data = read_bounded(path, memory_bytes(), lambda why: _file_error(path, why))
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as e:
        raise _file_error(path, f"not a valid safetensors file ({e})") from None
    repeated = _repeated_key(data)
    if repeated is not None:
        # readers disagree on which of two equal keys wins: such a file has no one meaning
        raise _file_error(path, f"its header holds the key `{repeated}` twice")
    tensors = {}
    for name, view in entries:
        dtype = (bfloat16() if view["dtype"] == "BF16" else
                 _SAFETENSORS_DTYPES.get(view["dtype"]))
        if dtype is None:
            raise _file_error(path, f"tensor `{name}` has dtype {view['dtype']}, unsupported")
        tensors[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return tensors


def _repeated_key(data: bytes) -> str | None:
    """A top-level key that a safetensors file's header (valid: `deserialize` read it) holds
    twice, if any; safetensors itself keeps the last silently."""
    (length,) = struct.unpack_from("<Q", data)
    keys: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        # called for every object, inner ones first: the last call is the header itself
        keys[:] = [k for k, _ in items]
        return dict(items)

    json.loads(data[8:8 + length], object_pairs_hook=pairs)
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


# deflate expands at most 1032:1 (RFC 1951: a 258-byte match per 2 bits, at best), so a member
# cannot hold more than this many bytes per compressed byte, whatever its header says
_DEFLATE_RATIO = 1032
_NPZ_METHODS = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: _DEFLATE_RATIO}
_ZIP_MAGIC = b"PK\x03\x04"  # how an npz (a zip archive) begins


def _load_npz(path, expected: Mapping[str, tuple[int, ...]] | None,
              refuse: Refusal) -> dict[str, np.ndarray]:
    tensors = {}
    with open_regular(path, refuse) as file:
        try:
            archive = zipfile.ZipFile(file)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise refuse("not an npz file (not a zip archive, or a truncated one)") from None
        with archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name in tensors:  # `a.npy` twice, or `a` beside `a.npy`: which one is meant?
                    raise refuse(f"it holds the array `{name}` twice")
                tensors[name] = _npz_member(archive, info, name, expected, refuse)
    return tensors


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                expected: Mapping[str, tuple[int, ...]] | None, refuse: Refusal) -> np.ndarray:
    """One member's array, decompressed only if `expected` is None or wants it in the shape
    its header declares."""

    def member_refuse(why: str) -> KilnError:
        return refuse(f"member `{name}`: {why}")

    ratio = _NPZ_METHODS.get(info.compress_type)
    if ratio is None:
        raise member_refuse(f"compression method {info.compress_type} is not one numpy "
                            "writes (stored or deflated)")
    try:
        with archive.open(info) as member:
            shape, fortran, dtype = _npy_header(member, member_refuse)
            _check_declared(shape, dtype, ratio * info.compress_size, member_refuse)
            if member.tell() + math.prod(shape) * dtype.itemsize != info.file_size:
                raise member_refuse(f"its size ({info.file_size} bytes) disagrees with its "
                                    "header")
            # (-1,): never a declared shape, so a key the model lacks is never inflated
            if expected is not None and tuple(expected.get(name, (-1,))) != shape:
                return _from_npy(np.broadcast_to(np.zeros((), dtype), shape))  # not inflated
            # reading the member's last byte makes zipfile check its CRC
            return _npy_data(member, shape, fortran, dtype, member_refuse)
    # zipfile and zlib raise these for damaged members (a bad CRC, a broken stream)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise member_refuse(f"damaged ({e})") from None


def _npy_header(file, refuse: Refusal) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from a .npy header, refusing pickled objects."""
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    # numpy's errors for bad headers (it tokenizes and literal_evals them)
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError, RecursionError) as e:
        raise refuse(f"not a .npy array ({e})") from None
    if dtype.hasobject:
        raise refuse("holds Python objects, which kiln never unpickles")
    if dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise refuse(f"declares an impossible array ({dtype}, shape {shape})")
    return tuple(shape), fortran, dtype


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, capacity: int,
                    refuse: Refusal) -> None:
    """An array's declared size must fit what holds it (`capacity` bytes) and memory."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > capacity:
        raise refuse(f"declares {format_bytes(nbytes)} of data but can hold at most "
                     f"{format_bytes(capacity)}")
    if nbytes > memory_bytes():
        raise refuse(f"declares {format_bytes(nbytes)}, more than this machine's memory")


def _npy_data(file, shape: tuple[int, ...], fortran: bool, dtype: np.dtype,
              refuse: Refusal) -> np.ndarray:
    """The array after a .npy header: exactly its declared bytes, in its declared order."""
    data = read_exactly(file, math.prod(shape) * dtype.itemsize, refuse)
    array = np.frombuffer(data, dtype).reshape(shape[::-1] if fortran else shape)
    return _from_npy(array.T if fortran else array)


def _from_npy(array: np.ndarray) -> np.ndarray:
    return array.view(bfloat16()) if array.dtype == _NPZ_BF16 else array


def load_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """The one array of a .npy file (whatever its name), read with the bounds of
    `load_weights`: the input `name` of `kiln run --input`."""

    def refuse(why: str) -> KilnError:
        return KilnError("K0403", f"cannot read input {name} from {os.fspath(path)}: {why}")

    with open_regular(path, refuse) as file:
        if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            raise KilnError("K0502", f"input {name}: {os.fspath(path)} is an npz archive of "
                            "arrays, not one array",
                            hint="save one array with np.save(path, x) (.npy)")
        file.seek(0)
        shape, fortran, dtype = _npy_header(file, refuse)
        # not compressed: the data must be in the file
        _check_declared(shape, dtype, size_of(file) - file.tell(), refuse)
        return _npy_data(file, shape, fortran, dtype, refuse)


def save_weights(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    staging: Staging | None = None,
    role: str = "weights",
) -> None:
    """Write tensors to .safetensors or .npz (by extension), atomically: all or nothing.

    With `staging`, the file is staged there, to be renamed into place with the other files
    of one build (`Staging.commit`); never written through a symlink either way. Errors name
    the file by its `role` (`kiln run -o` writes an "outputs" file)."""
    ext = check_tensor_file(path, role)
    arrays = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        if not isinstance(name, str) or not name:
            raise _file_error(path, f"cannot save a tensor under the key {name!r}", role=role)
        dtype = array.dtype.newbyteorder("=")  # both formats are little-endian on disk
        if dtype not in _SAVEABLE and not is_bfloat16(dtype):
            raise _file_error(path, f"cannot save tensor `{name}` of dtype {array.dtype}",
                              role=role)
        arrays[name] = np.asarray(array, dtype=dtype, order="C")
    write = _save_safetensors if ext == ".safetensors" else _save_npz
    try:
        if staging is not None:
            write(staging.path(path), arrays)
            return
        with staged_writes(lambda why: _file_error(path, why, role=role)) as own:
            write(own.path(path), arrays)
    except safetensors.SafetensorError as e:
        raise _file_error(path, f"cannot write ({e})", role=role) from None


# Both writers get a fresh name in a private directory (Staging.path): writing by name is safe.


def _save_safetensors(target: str, arrays: dict[str, np.ndarray]) -> None:
    safetensors.numpy.save_file(arrays, target)
    # safetensors creates the file 0600; give it the mode any new file gets (0644 under the
    # usual umask), as .npz files and np.save/torch.save's files have
    os.chmod(target, 0o666 & ~_umask())


def _umask() -> int:
    """This process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_npz(target: str, arrays: dict[str, np.ndarray]) -> None:
    # what np.savez does, without its keyword arguments (a tensor named `file` would clash)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


# ---- matching a file's tensors to a model's parameters ----


def _kind(dtype: np.dtype) -> str | None:
    if dtype == np.bool_:
        return "bool"
    if dtype.kind in "iu":
        return "int"
    if dtype.kind == "f" or is_bfloat16(dtype):
        return "float"
    return None


def _dtype_name(dtype: np.dtype) -> str:
    return dtype_of_numpy(dtype) or str(dtype)


def _typed(dtype: str, shape) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def _describe(array: np.ndarray) -> str:
    return _typed(_dtype_name(array.dtype), array.shape)


def _convert(path: str, array: np.ndarray, shape, dtype: str) -> np.ndarray | str:
    """A copy of `array` in the parameter's dtype (the caller's array stays theirs), or a line
    saying why it does not fit: conversions keep to a kind and to values the dtype holds."""
    target = NUMPY_DTYPES[dtype]
    found = _describe(array)
    if tuple(array.shape) != tuple(shape):
        return f"wrong shape  `{path}`: expected {_typed(dtype, shape)}, found {found}"
    if _kind(array.dtype) != _kind(target):
        return (
            f"wrong dtype  `{path}`: expected {dtype}, found {found} "
            "(kiln converts float to float and int to int only)"
        )
    if _kind(target) == "int" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            return f"wrong dtype  `{path}`: values of {found} do not fit {dtype}"
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.array(array, dtype=target, order="C", copy=True)
        if _kind(target) == "float" and array.dtype != target:
            # a finite value that comes out infinite does not fit (1e300 in f32)
            overflow = np.isfinite(array) & ~np.isfinite(converted)
            if overflow.any():
                worst = np.abs(array[overflow].astype(np.float64)).max()
                return (f"wrong dtype  `{path}`: values of {found} do not fit {dtype} "
                        f"(a magnitude of {worst:.3g} is out of its range)")
    return converted


def _as_array(value) -> np.ndarray | str:
    """A weights dict's value as a numpy array, or what it is instead. A torch tensor gives
    its values (detached from autograd, moved to the CPU; bf16 kept as bf16, exactly)."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        import torch

        tensor = value.detach().cpu().resolve_conj().resolve_neg()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits, viewed
            return tensor.contiguous().view(torch.int16).numpy().view(bfloat16())
        try:
            return tensor.numpy()
        except (TypeError, RuntimeError) as e:
            return f"a torch tensor numpy cannot hold ({e})"
    if isinstance(value, (bool, int, float, list, tuple, np.generic)):
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError):
            return "nested lists of different lengths (ragged), not an array"
        if array.dtype != object:
            return array
        return "a list that is not an array of numbers"
    return f"a {type(value).__name__}, not an array"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold one tensor: equal values, NaN equal to NaN (kiln saves a tied
    tensor under both names, NaN included)."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and a.tobytes() == b.tobytes():
        return True
    nan_aware = _kind(a.dtype) == "float" and _kind(b.dtype) == "float"
    return bool(np.array_equal(a, b, equal_nan=nan_aware))


def _found(value) -> str:
    """What a value in a weights dict is, for a message."""
    array = _as_array(value)
    return array if isinstance(array, str) else _describe(array)


def _prefix(longer: list, shorter: set[str]) -> str | None:
    """The most common dotted prefix p with p + s in `longer` for some s in `shorter`."""
    counts = Counter(
        ".".join(parts[:i]) + "."
        for parts in (key.split(".") for key in longer if isinstance(key, str))
        for i in range(1, len(parts))
        if ".".join(parts[i:]) in shorter
    )
    return counts.most_common(1)[0][0] if counts else None


def _hint(missing: list[str], unexpected: list[str]) -> str | None:
    if unexpected and all(isinstance(k, str) and k.startswith("optimizer.") for k in unexpected):
        return ("the `optimizer.` keys are a kiln.Trainer checkpoint's optimizer state: resume "
                "from it (kiln train --resume, Trainer.load_checkpoint); for its weights "
                "alone, write them with trainer.model.save_weights after loading it")
    if prefix := _prefix(unexpected, set(missing)):
        return f"the file's keys start with `{prefix}` where the model's do not; strip it"
    if prefix := _prefix(missing, set(unexpected)):
        return f"the model's paths start with `{prefix}` where the file's keys do not; add it"
    if missing and not unexpected:
        return "to keep the initial values of the missing parameters, load non-strictly"
    return None


def match_weights(
    expected: dict[str, tuple[tuple[int, ...], str]],
    found: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    strict: bool = True,
    source: str = "weights",
) -> dict[str, np.ndarray]:
    """Match loaded tensors to the model's parameters (canonical path -> (shape, kiln dtype)).

    A key in `aliases` (from `tie a = b`) names its canonical path. Returns canonical path ->
    array in the parameter's dtype. Every problem goes into one KilnError; with strict=False
    missing parameters are left out of the result and unexpected keys are ignored.
    """
    aliases = aliases or {}
    keys_of: dict[str, list[str]] = {}  # canonical path -> the keys in `found` naming it
    unexpected = []
    for key in found:
        path = (key if key in expected else aliases.get(key)) if isinstance(key, str) else None
        if path in expected:
            keys_of.setdefault(path, []).append(key)
        else:
            unexpected.append(key)
    missing, wrong, result = [], [], {}
    for path, (shape, dtype) in expected.items():
        if path not in keys_of:
            missing.append(path)
            continue
        arrays = {key: _as_array(found[key]) for key in keys_of[path]}
        bad = [f"not an array `{key}`: {a}" for key, a in arrays.items() if isinstance(a, str)]
        if bad:
            wrong += bad
            continue
        first, *others = keys_of[path]
        array = arrays[first]
        for other in others:
            if not _same(array, arrays[other]):
                wrong.append(f"tied differ  `{first}` and `{other}` name one tensor, but differ")
        converted = _convert(path, array, shape, dtype)
        if isinstance(converted, str):
            wrong.append(converted)
        else:
            result[path] = converted
    if not strict:
        missing, unexpected = [], []
    if not (missing or unexpected or wrong):
        return result
    lines = [
        *(f"missing      `{p}`: expected {_typed(expected[p][1], expected[p][0])}"
          for p in missing),
        *(f"unexpected   `{k}`: {_found(found[k])}" for k in unexpected),
        *wrong,
    ]
    counts = [(len(missing), "missing"), (len(unexpected), "unexpected"),
              (len(wrong), "mismatched")]
    summary = ", ".join(f"{n} {what}" for n, what in counts if n)
    code = "K0401" if missing or unexpected else "K0402"
    message = f"cannot load {source} into the model ({summary}):\n" + "\n".join(
        f"  {line}" for line in lines
    )
    raise KilnError(code, message, hint=_hint(missing, unexpected))


def apply_weights(params: Mapping[str, np.ndarray], infos: Mapping, aliases: dict[str, str],
                  path_or_dict, strict: bool = True) -> dict[str, np.ndarray]:
    """`params` (by path) with a weights file (or dict) applied, matched by dotted path to the
    persistent parameters of `infos` (path -> ParamInfo) and their tied `aliases`; `params`
    is not changed."""
    expected = {p: (info.shape, info.dtype) for p, info in infos.items() if info.persistent}
    # the shape each key should have, so that a file's other arrays are never inflated
    shapes = {key: expected[p][0] for key, p in
              [*((p, p) for p in expected), *aliases.items()] if p in expected}
    if isinstance(path_or_dict, Mapping):  # a dict, or another model's `params`
        found, source = dict(path_or_dict), "weights"
    elif isinstance(path_or_dict, (str, os.PathLike)):
        found, source = load_weights(path_or_dict, shapes), os.fspath(path_or_dict)
    else:
        raise KilnError("K0403", "cannot load weights from an object of type "
                        f"{type(path_or_dict).__name__}",
                        hint="give a path to a .safetensors or .npz file, or a dict of "
                             "arrays by parameter path")
    matched = match_weights(expected, found, aliases, strict, source)
    out = dict(params)
    for path, array in matched.items():
        out[path] = array  # match_weights' own copy: the caller's array stays theirs
    return out
