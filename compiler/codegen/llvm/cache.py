"""The on-disk compile cache: object code keyed by the model's IR, the target CPU and kiln's
version. Entries are written atomically and carry a checksum, so a damaged or truncated entry
is detected, removed and rebuilt — never loaded. A module compiled in parts (parts.py) is
several object files, kept as one entry (`pack_objects`); an entry of one object is that
object's bytes alone, as entries were before parts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...errors import KilnError
from ...files import memory_bytes, read_bounded, write_atomically
from . import evict

# KILNOBJ2: the checksum covers the entry's name too (KILNOBJ1 entries are rebuilt)
MAGIC = b"KILNOBJ2"
# several object files in one payload: this, their count, each one's size, then their bytes
# (an object file itself starts with its format's magic: ELF's is b"\x7fELF")
OBJECTS = b"KILNOBJS"


def cache_dir() -> Path:
    """$KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln."""
    if os.environ.get("KILN_CACHE_DIR"):
        return Path(os.environ["KILN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kiln"


def enabled() -> bool:
    """Whether compile caches are used: KILN_CACHE=0 turns them all off (every compile builds
    its code, and nothing is written to the cache directory)."""
    return os.environ.get("KILN_CACHE", "1") != "0"


def key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def load(name: str) -> bytes | None:
    """The cached object code for `name`, or None (absent, unreadable or damaged)."""
    if not enabled():
        return None
    path = cache_dir() / f"{name}.o"
    try:
        # a cache entry is a regular file no larger than memory: never a device or a FIFO
        data = read_bounded(path, memory_bytes(), _unusable)
    except (KilnError, OSError):
        return None
    header = len(MAGIC) + 32
    payload = data[header:]
    if data[: len(MAGIC)] != MAGIC or _checksum(name, payload) != data[len(MAGIC):header]:
        try:
            path.unlink()  # damaged: never load it, rebuild it
        except OSError:
            pass
        return None
    evict.touch(path)  # used: the last to be evicted
    return payload


def store(name: str, payload: bytes) -> None:
    """Write an entry atomically, then evict what the cache's size bound leaves no room for
    (evict.py; K0975 before anything is written when $KILN_CACHE_SIZE is no size); a cache
    that cannot be written is simply not used (and a failed write, a full disk say, leaves
    nothing behind)."""
    if not enabled():
        return
    keep = evict.limit()
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / f"{name}.o",
                         MAGIC + _checksum(name, payload) + payload, _unusable)
    except (KilnError, OSError):
        return
    evict.bound(directory, keep)


def load_objects(name: str) -> tuple[bytes, ...] | None:
    """The object files cached under `name` (`store_objects`), or None."""
    payload = load(name)
    return None if payload is None else unpack_objects(payload)


def store_objects(name: str, objects: tuple[bytes, ...]) -> None:
    """Keep a module's object files (one, or its parts') as one entry."""
    store(name, pack_objects(objects))


def pack_objects(objects: tuple[bytes, ...]) -> bytes:
    """One object file as it is; several as OBJECTS, their count and sizes, their bytes."""
    if len(objects) == 1:
        return objects[0]
    sizes = b"".join(len(o).to_bytes(8, "little") for o in objects)
    return OBJECTS + len(objects).to_bytes(8, "little") + sizes + b"".join(objects)


def unpack_objects(payload: bytes) -> tuple[bytes, ...] | None:
    """The object files `pack_objects` made `payload` of; None if its sizes do not add up."""
    if not payload.startswith(OBJECTS):
        return (payload,) if payload else None
    start = len(OBJECTS) + 8
    count = int.from_bytes(payload[len(OBJECTS):start], "little")
    at = start + 8 * count
    if count < 1 or len(payload) < at:  # (read no more sizes than the payload holds)
        return None
    sizes = [int.from_bytes(payload[start + 8 * i:start + 8 * i + 8], "little")
             for i in range(count)]
    if at + sum(sizes) != len(payload):
        return None
    objects = []
    for size in sizes:
        objects.append(payload[at:at + size])
        at += size
    return tuple(objects)


def _checksum(name: str, payload: bytes) -> bytes:
    """The digest an entry carries: of its name (the key of what it was built for) and its
    payload, so that an intact entry under another entry's name (swapped, copied) is damaged
    too, never another model's code run silently."""
    return hashlib.sha256(name.encode() + b"\0" + payload).digest()


def _unusable(why: str) -> KilnError:
    return KilnError("K0403", f"compile cache entry: {why}")
