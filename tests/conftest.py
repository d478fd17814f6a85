"""Test-wide settings: compiled objects go to a private cache, not the user's; every
optimization (kiln.compile, the CLI, compiler.passes.optimize) verifies the IR between passes
(KILN_VERIFY_IR=1, inherited by the CLI's child processes)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _test_environment(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln-cache")))
    mp.setenv("KILN_VERIFY_IR", "1")
    yield
    mp.undo()
