"""The re-run of the hostile sweep (issue 12's acceptance), by someone who did not write the
fixes: each test is an attack that still failed then - a crash, a traceback that is not a
KilnError, a silent wrong answer or a misleading report."""

from __future__ import annotations

from pathlib import Path

from kiln.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
MLP = ROOT / "examples" / "mlp.kiln"


def test_compile_to_onnx_prints_the_onnx_pipelines_passes(capsys, tmp_path):
    # the ONNX file is made by the ONNX pipeline (no weight folding, no fusion): --print-passes
    # once printed the native pipeline's stats, passes that never touched the file written
    assert main(["compile", str(MLP), "-o", str(tmp_path / "m.onnx"), "--print-passes"]) == 0
    out = capsys.readouterr().out
    assert "cse" in out and "dce" in out
    for native_only in ("fold_weight_layout", "conv_layout", "fuse", "plan_memory"):
        assert native_only not in out, out
    assert main(["compile", str(MLP), "-o", str(tmp_path / "m.so"), "--print-passes"]) == 0
    assert "fuse" in capsys.readouterr().out
