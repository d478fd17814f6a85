"""Trainer checkpoints: one .safetensors file of tensors plus a string header (metadata).

Written to a fresh file beside the destination and renamed into place (compiler/files.py:
write_atomically: never through a symlink, all or nothing); read with a bound (the file
must fit in memory), its header parsed by safetensors itself.
"""

from __future__ import annotations

import json
import os

import numpy as np

from kiln.compiler.errors import KilnError
from kiln.compiler.files import memory_bytes, read_bounded, write_atomically


def _error(path: str | os.PathLike, why: str) -> KilnError:
    return KilnError("K0838", f"checkpoint {os.fspath(path)}: {why}")


def check_name(path: str | os.PathLike) -> None:
    if not os.fspath(path).endswith(".safetensors"):
        raise _error(path, "a checkpoint is a .safetensors file")


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str]) -> None:
    """Write `tensors` and the string `metadata` to `path`, atomically."""
    import safetensors.numpy

    check_name(path)
    # np.asarray, not np.ascontiguousarray, which makes a 0-d array (BatchNorm's
    # num_batches_tracked) 1-d
    arrays = {k: np.asarray(a, order="C") for k, a in tensors.items()}
    data = safetensors.numpy.save(arrays, metadata=metadata)
    write_atomically(path, data, lambda why: _error(path, why))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the metadata of a checkpoint (K0838 if it is not one)."""
    import safetensors
    import safetensors.numpy

    check_name(path)
    data = read_bounded(path, memory_bytes(), lambda why: _error(path, why))
    try:
        tensors = safetensors.numpy.load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_size])
    except (safetensors.SafetensorError, ValueError, TypeError) as e:
        raise _error(path, f"not a valid safetensors file ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, meta if isinstance(meta, dict) else {}


__all__ = ["check_name", "read_checkpoint", "write_checkpoint"]
