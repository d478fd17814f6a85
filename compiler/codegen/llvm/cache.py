"""The on-disk compile cache: object code keyed by the model's IR, the target CPU and kiln's
version. Entries are written atomically and carry a checksum, so a damaged or truncated entry
is detected, removed and rebuilt — never loaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...errors import KilnError
from ...files import memory_bytes, read_bounded, write_atomically
from . import evict

# KILNOBJ2: the checksum covers the entry's name too (KILNOBJ1 entries are rebuilt)
MAGIC = b"KILNOBJ2"


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


def _checksum(name: str, payload: bytes) -> bytes:
    """The digest an entry carries: of its name (the key of what it was built for) and its
    payload, so that an intact entry under another entry's name (swapped, copied) is damaged
    too, never another model's code run silently."""
    return hashlib.sha256(name.encode() + b"\0" + payload).digest()


def _unusable(why: str) -> KilnError:
    return KilnError("K0403", f"compile cache entry: {why}")
