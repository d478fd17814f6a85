"""Long steps announce themselves on stderr; quick ones stay quiet."""

from __future__ import annotations

import time

from kiln.compiler import progress


def test_a_slow_step_is_announced_and_timed(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0.01)
    with progress.step("compiling a big model"):
        time.sleep(0.1)
    err = capsys.readouterr().err
    assert "kiln: compiling a big model..." in err and "done in" in err


def test_a_quick_step_says_nothing_and_progress_can_be_silenced(capsys, monkeypatch):
    with progress.step("a quick step"):
        pass
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setenv("KILN_PROGRESS", "0")
    with progress.step("silenced"):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""
