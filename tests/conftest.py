"""Test-wide settings: compiled objects go to a private cache, not the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln-cache")))
    yield
    mp.undo()
