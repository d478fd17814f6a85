"""Files kiln reads and writes, handled the one safe way.

Reads: only regular files, with a bound. A path is opened with O_NONBLOCK (so a FIFO without a
writer cannot block the open) and its kind checked with fstat on the descriptor actually
opened (so nothing can swap the file between the check and the read); a device, FIFO, socket
or directory is refused, and so is a file larger than the caller's limit.

Writes: never through a symlink and never half-done. A `Staging` writes each file in a
private directory (mkdtemp: unpredictable, mode 0700, created exclusively) beside its
destination, then renames every file into place together on `commit()`; a rename replaces a
planted symlink instead of following it. On any failure every staged file is removed and the
destinations are untouched.

This lives in the compiler package because source files (imports) are read here too; the
runtime uses the same helpers for weights, inputs, libraries and the compile cache.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import KilnError

# How a caller words a refusal: the reason ("no such file", "not a regular file (a FIFO)")
# becomes that caller's KilnError, with its own code, path and span.
Refusal = Callable[[str], KilnError]

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def memory_bytes() -> int:
    """This machine's physical memory: no file kiln reads may declare more data than this."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a large machine
        return 1 << 40


def format_bytes(n: int) -> str:
    """`16 MiB`, `4 PiB`: a size in the largest binary unit that keeps it at least 1."""
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20),
                        ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def open_regular(path: str | os.PathLike, refuse: Refusal) -> BinaryIO:
    """`path` opened for reading if it is a regular file (after following symlinks); anything
    else is `refuse(reason)` without reading a byte."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except ValueError:  # a NUL byte in the path
        raise refuse("not a valid path") from None
    except OSError as exc:
        raise refuse(f"cannot be opened ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise refuse(f"not a regular file ({kind})")
    os.set_blocking(fd, True)  # a regular file never blocks; plain reads from here on
    return os.fdopen(fd, "rb")


def size_of(file: BinaryIO) -> int:
    """The size of an open regular file."""
    return os.fstat(file.fileno()).st_size


def read_exactly(file: BinaryIO, n: int, refuse: Refusal) -> bytearray:
    """The next `n` bytes of `file` (a file object or a zip member); fewer is truncation."""
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        chunk = file.readinto(view[got:])
        if not chunk:
            raise refuse(f"truncated: {format_bytes(n)} expected, {format_bytes(got)} found")
        got += chunk
    return data


def read_bounded(path: str | os.PathLike, limit: int, refuse: Refusal) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    with open_regular(path, refuse) as file:
        size = size_of(file)
        if size > limit:
            raise refuse(f"larger than {format_bytes(limit)}")
        data = file.read(size)
        # shorter or longer than fstat said: it changed while read (or is a /proc file,
        # whose size says 0)
        if len(data) != size or file.read(1):
            raise refuse("its size changed while it was read")
    return data


class Staging:
    """Files written beside their destinations and renamed into place together."""

    def __init__(self) -> None:
        self._private: dict[str, str] = {}  # destination directory -> its private directory
        self._moves: dict[str, str] = {}  # destination -> staged file
        self._optional: set[str] = set()  # destinations left alone if nothing was staged

    def path(self, destination: str | os.PathLike, optional: bool = False) -> str:
        """Where to write the new content of `destination`: a fresh name in a private
        directory, so a writer may open it by name (and write siblings such as ONNX's
        external data, each staged with its own `path`). An `optional` file the writer did
        not create is not committed."""
        destination = os.path.abspath(destination)
        _check_replaceable(destination)  # before anything is made beside it
        directory, name = os.path.split(destination)
        if directory not in self._private:
            self._private[directory] = tempfile.mkdtemp(prefix=".kiln-", dir=directory)
        staged = os.path.join(self._private[directory], name)
        self._moves[destination] = staged
        if optional:
            self._optional.add(destination)
        return staged

    def write(self, destination: str | os.PathLike, data: bytes) -> None:
        """Stage `data` as the new content of `destination`."""
        write_bytes(self.path(destination), data)

    def commit(self) -> None:
        """Rename every staged file over its destination. What can fail is checked first (a
        directory in the way, content not yet on disk), so a failure renames nothing."""
        for destination in self._optional:
            if not os.path.lexists(self._moves[destination]):
                del self._moves[destination]
        for destination, staged in self._moves.items():
            _check_replaceable(destination)  # again: it may have appeared since
            fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)  # a crash after the rename must not leave an empty file
            finally:
                os.close(fd)
        for destination, staged in self._moves.items():
            os.replace(staged, destination)
        self._moves.clear()
        self._optional.clear()

    def discard(self) -> None:
        """Remove whatever is still staged (everything, unless committed)."""
        for private in self._private.values():
            shutil.rmtree(private, ignore_errors=True)
        self._private.clear()
        self._moves.clear()
        self._optional.clear()


def _check_replaceable(destination: str) -> None:
    """A destination may be nothing yet, a regular file or a symlink (replaced, never
    followed); a directory, device, FIFO or socket is refused, never replaced: renaming a
    file over `/dev/null` as root would replace the device itself."""
    try:
        mode = os.lstat(destination).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", destination)
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise OSError(errno.EEXIST, f"not a regular file ({kind})", destination)


@contextmanager
def staged_writes(refuse: Refusal) -> Iterator[Staging]:
    """A `Staging` committed when the block ends normally and discarded on any failure; an
    OSError (a full disk, a directory in the way) becomes `refuse(reason)`."""
    staging = Staging()
    try:
        yield staging
        staging.commit()
    except OSError as exc:
        raise refuse(f"cannot write ({exc.strerror or exc})") from None
    finally:
        staging.discard()


def write_bytes(path: str, data: bytes) -> None:
    """Create the new file `path` (never an existing one, never through a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as file:
        file.write(data)


def write_atomically(path: str | os.PathLike, data: bytes, refuse: Refusal) -> None:
    """Replace `path` by a file holding `data`, all at once or not at all."""
    with staged_writes(refuse) as staging:
        staging.write(path, data)
