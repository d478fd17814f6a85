"""Test-wide settings.

- Compiled objects go to a private cache, not the user's (KILN_CACHE_DIR).
- Every optimization (kiln.compile, the CLI, compiler.pipelines.optimize) verifies the IR between
  passes (KILN_VERIFY_IR=1, inherited by the CLI's child processes).
- Hypothesis is derandomized: a property test runs the same examples on every run and machine.
- With KILN_CI=1 (as .ci/run sets it), a test skipped for a reason not in CI_ALLOWED_SKIPS
  fails the session: in CI a missing dependency (torch, onnxruntime, cc) is an error, not a
  quiet `s`. Without it, those tests skip with their reason (`pytest -rs` lists them).
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import settings

settings.register_profile("kiln", derandomize=True, deadline=None)
settings.load_profile("kiln")

# What CI may lack: hardware, not software (tests/test_native.py's ISA levels, a GPU).
CI_ALLOWED_SKIPS = (
    re.compile(r"this CPU cannot run code for "),
    re.compile(r"\b(CUDA|GPU)\b"),
)


@pytest.fixture(autouse=True, scope="session")
def _test_environment(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln-cache")))
    mp.setenv("KILN_VERIFY_IR", "1")
    yield
    mp.undo()


_unexpected_skips: list[str] = []


def _note_skip(report) -> None:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return  # an xfail's skip carries no tuple; only real skips count
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    if not any(p.search(reason) for p in CI_ALLOWED_SKIPS):
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report) -> None:
    _note_skip(report)


def pytest_collectreport(report) -> None:
    _note_skip(report)  # a module-level importorskip skips at collection


def pytest_sessionfinish(session, exitstatus) -> None:
    if os.environ.get("KILN_CI") != "1" or not _unexpected_skips:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"KILN_CI: {len(_unexpected_skips)} test(s) skipped for a reason CI "
                            "does not allow (tests/conftest.py CI_ALLOWED_SKIPS):", red=True)
        for line in _unexpected_skips:
            reporter.write_line(f"  {line}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
