"""tests/conftest.py under KILN_CI=1 (as .ci/run sets it): a skip whose reason is not on the
allow-list (hardware CI may lack) fails the session; without KILN_CI it stays a skip; and
Hypothesis runs derandomized."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

SKIPS = """
import pytest

def test_runs():
    pass

def test_needs_avx512():
    pytest.skip("this CPU cannot run code for x86-64-v4")
"""
MISSING_TORCH = """
import pytest
torch = pytest.importorskip("kiln_no_such_module_torch")

def test_parity():
    pass
"""


def run_suite(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess:
    """pytest on `source` and a passing test beside a copy of tests/conftest.py, KILN_CI set
    or not."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_it.py").write_text(source)
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "KILN_CI"}
    if ci:
        env["KILN_CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_allowed_skips_pass_in_ci(tmp_path):
    result = run_suite(tmp_path, SKIPS, ci=True)
    assert result.returncode == 0, result.stdout
    assert "2 passed, 1 skipped" in result.stdout


@pytest.mark.parametrize("source, skipped", [
    (SKIPS.replace("this CPU cannot run code for x86-64-v4", "linking needs cc"),
     "test_it.py::test_needs_avx512: linking needs cc"),
    (MISSING_TORCH, "test_it.py: could not import 'kiln_no_such_module_torch'"),
], ids=["in a test", "at collection"])
def test_other_skips_fail_ci_and_only_ci(tmp_path, source, skipped):
    result = run_suite(tmp_path, source, ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "KILN_CI: 1 test(s) skipped for a reason CI does not allow" in result.stdout
    assert skipped in result.stdout
    result = run_suite(tmp_path, source, ci=False)
    assert result.returncode == 0, result.stdout
    assert "KILN_CI" not in result.stdout


def test_hypothesis_is_derandomized():
    assert settings().derandomize and settings().deadline is None
