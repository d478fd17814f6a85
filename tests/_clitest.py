"""Running the `kiln` CLI in-process, for the CLI tests."""

from __future__ import annotations

from kiln.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    """`kiln ARGS...` in this process: its exit code, stdout and stderr (paths as strings)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
