"""Attacks through the `kiln` command line's options: malformed --bind values and sizes too
large to allocate are a KilnError with a code (exit status 1), never an internal error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.cli import main

MLP = Path(__file__).resolve().parent.parent.parent / "examples" / "mlp.kiln"


@pytest.mark.parametrize("bind", [
    "B=²",            # a unicode digit: str.isdigit() is true, int() refuses it
    "B=٣",            # Arabic-Indic three
    "B=-1", "B=", "=4", "B", "B=4.0", "B=0x10", "B=1e3",
    f"B={2**62}",     # too large to be a size
    "B=99999999999999999999999999999",
])
def test_malformed_bind_is_a_kiln_error(capsys, bind):
    code = main(["run", str(MLP), "--target", "reference", "--random-inputs", "--bind", bind])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error[K0602]" in err and "internal error" not in err


def test_random_inputs_larger_than_memory_are_refused(capsys):
    code = main(["run", str(MLP), "--target", "reference", "--random-inputs",
                 "--bind", f"B={2**31 - 1}"])
    err = capsys.readouterr().err
    assert code == 1 and "error[K0602]" in err and "memory" in err


def test_an_npz_file_as_input_is_a_kiln_error(capsys, tmp_path):
    path = tmp_path / "x.npz"  # np.load gives an NpzFile of arrays, not an array
    np.savez(path, x=np.ones((2, 784), np.float32))
    code = main(["run", str(MLP), "--target", "reference", "--input", f"x={path}"])
    err = capsys.readouterr().err
    assert code == 1 and "error[K0502]" in err and "internal error" not in err
