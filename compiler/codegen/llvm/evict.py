"""The compile cache's size bound: least-recently-used entries are evicted.

The cache directory ($KILN_CACHE_DIR, cache.cache_dir) holds object code (cache.py's `NAME.o`,
graphcache.py's `gNAME.o`) and, in `models/`, model entries (runtime/modelcache.py: `KEY.json`,
`KEY.safetensors`, `KEY.DIGEST.so`, `KEY.seed-N.values`). An *entry* is one object file, or
every file of one model key. Its last use is the newest modification time of its files: a
hit touches the file it read (`touch`), so that what is used stays.

After each write, `bound()` removes the least recently used entries until the files of all
of them take at most `limit()` bytes ($KILN_CACHE_SIZE, default 2 GiB). Concurrent processes
share the cache, so removal never pulls a file from under a reader: each file is first
renamed, atomically, to a trash name (`.evicted-...`, which no reader looks up) and then
unlinked. A reader that opened it before keeps reading it whole; one that comes after misses,
or finds the entry incomplete, which every reader already treats as a miss (and compiles it
again). Only names an entry can have are counted or removed, never followed: a symlink in the
directory is itself removed, never what it points to, and a subdirectory other than `models/`
(a writer's staging directory, say) is left alone.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import KilnError

DEFAULT_LIMIT = 2 << 30
"""The default bound, in bytes, of the files of every entry together (2 GiB)."""

TRASH = ".evicted-"
_OBJECT = re.compile(r"g?[0-9a-f]{64}\.o")
_MODEL = re.compile(r"([0-9a-f]{64})\.(?:json|safetensors|[0-9a-f]{32}\.so|seed-\d+\.values)")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def limit() -> int:
    """$KILN_CACHE_SIZE in bytes (a whole number, with an optional K, M, G or T suffix, powers
    of 1024), else DEFAULT_LIMIT; K0975 when it is set to anything else."""
    text = os.environ.get("KILN_CACHE_SIZE", "").strip()
    if not text:
        return DEFAULT_LIMIT
    match = re.fullmatch(r"(\d{1,15})\s*([kmgt]?)(?:i?b)?", text.lower())
    if match is None:
        raise KilnError("K0975", f"KILN_CACHE_SIZE={text!r} is not a size",
                        hint="a number of bytes, or one with a unit: KILN_CACHE_SIZE=500M, "
                             "KILN_CACHE_SIZE=4G")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Entry:
    """One cache entry: its files (by name, in `directory`), their bytes and last use."""

    directory: Path
    names: list[str] = field(default_factory=list)
    size: int = 0
    used: float = 0.0

    @property
    def kind(self) -> str:
        return "model" if self.directory.name == "models" else "object"


def entries(root: Path) -> list[Entry]:
    """The entries under `root` (the cache directory, cache.cache_dir()), least recently used
    first."""
    found: list[Entry] = []
    for directory, pattern in ((root, _OBJECT), (root / "models", _MODEL)):
        groups: dict[str, Entry] = {}
        for name, info in _files(directory):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            entry = groups.setdefault(match.group(1) if match.groups() else name,
                                      Entry(directory))
            entry.names.append(name)
            entry.size += info.st_size if stat.S_ISREG(info.st_mode) else 0
            entry.used = max(entry.used, info.st_mtime)
        found.extend(groups.values())
    found.sort(key=lambda e: e.used)
    return found


def _files(directory: Path) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of the regular files and symlinks directly in `directory` (nothing if
    it is not a real directory: a symlink to one is not descended)."""
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return []
        with os.scandir(directory) as listing:
            out = []
            for item in listing:
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                    out.append((item.name, info))
            return out
    except OSError:
        return []


def remove(entry: Entry) -> int:
    """Remove `entry`'s files (renamed to a trash name, then unlinked; a file another process
    removed first is skipped); returns the bytes freed."""
    freed = 0
    try:
        fd = os.open(entry.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        for name in entry.names:
            trash = f"{TRASH}{os.getpid()}-{secrets.token_hex(4)}-{name}"
            try:
                size = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.rename(name, trash, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                continue
            _unlink(trash, fd)
            freed += size.st_size if stat.S_ISREG(size.st_mode) else 0
    finally:
        os.close(fd)
    return freed


def _sweep(directory: Path) -> None:
    """Unlink the trash a process killed between its rename and its unlink left behind (no
    reader looks a trash name up; one that has it open keeps it)."""
    trash = [name for name, _info in _files(directory) if name.startswith(TRASH)]
    if not trash:
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        for name in trash:
            _unlink(name, fd)
    finally:
        os.close(fd)


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def bound(root: Path, keep: int | None = None) -> None:
    """Evict least-recently-used entries of the cache directory `root` until all take at most
    `keep` bytes (`limit()` by default). A cache that cannot be read or changed is left as it
    is."""
    keep = limit() if keep is None else keep
    for directory in (root, root / "models"):
        _sweep(directory)
    found = entries(root)
    total = sum(e.size for e in found)
    for entry in found:
        if total <= keep:
            break
        total -= entry.size
        remove(entry)


def touch(path: Path) -> None:
    """Mark the entry file at `path` as just used (never through a symlink)."""
    try:
        os.utime(path, follow_symlinks=False)
    except (OSError, NotImplementedError):
        pass


def clear(root: Path) -> int:
    """Remove every entry of the cache directory `root`; returns the bytes freed."""
    return sum(remove(entry) for entry in entries(root))


__all__ = ["DEFAULT_LIMIT", "Entry", "bound", "clear", "entries", "limit", "remove", "touch"]
