"""Source files as the loader reads them: a regular file of bounded size, UTF-8 text without
control characters, and a local import's path resolved against the importing file's directory.
Needs no parser: the compile cache (runtime/modelcache.py) checks a model's sources exactly as
the loader (elaborate/program.py) would read them."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import KilnError, Span
from .files import read_bounded

MAX_SOURCE_BYTES = 16 * 1024 * 1024
SOURCE_SUFFIX = ".kiln"
# C0 controls and DEL, except tab, newline, form feed and carriage return: binary, not text
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")


def decode_source(data: bytes, filename: str) -> str:
    """Source bytes as text; a file that is not UTF-8 is a located K0003 error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise KilnError(
            "K0003",
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            Span(filename, line, col, line, col + 1, None),
            hint="kiln source files must be UTF-8 text",
        ) from None
    if bad := _CONTROL.search(text):
        i = bad.start()
        line = text.count("\n", 0, i) + 1
        col = i - (text.rfind("\n", 0, i) + 1) + 1
        what = "a NUL byte" if text[i] == "\x00" else f"a control character (0x{ord(text[i]):02x})"
        # no source on the span: the line is binary, and may hold terminal escapes
        raise KilnError("K0003", f"the file contains {what}",
                        Span(filename, line, col, line, col + 1, None),
                        hint="kiln source files are text")
    return text.lstrip("\ufeff")


def read_source_file(path: Path, span: Span | None = None) -> str:
    """The text of a source file: a regular file of at most 16 MiB of UTF-8 (K0004, K0003)."""
    def refuse(why: str) -> KilnError:
        return KilnError("K0004", f"{why}: {path}", span)

    return decode_source(read_bounded(path, MAX_SOURCE_BYTES, refuse), str(path))


def import_path(file: str, directory: Path | None, span: Span) -> Path:
    """The file `import "file"` names: resolved against the importing file's directory (or the
    current directory), and a `.kiln` file both by name and after following symlinks, so that
    an error never shows a line of a file that is not kiln source."""
    if not file.endswith(SOURCE_SUFFIX):
        raise KilnError(
            "K0004", f"cannot import {file!r}: imports name {SOURCE_SUFFIX} files", span,
            hint=f'local imports name kiln source files: import "blocks{SOURCE_SUFFIX}"',
        )
    path = Path(file)
    path = path if path.is_absolute() else (directory or Path.cwd()) / path
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL, a name too long
        raise KilnError("K0004", f"cannot import {file!r}: not a path to a file", span) from None
    if not real.name.endswith(SOURCE_SUFFIX):
        raise KilnError("K0004", f"cannot import {file!r}: it is a link to a file that is not a "
                        f"{SOURCE_SUFFIX} file", span)
    return real
