"""Every Python package in the tree is installed by a plain `pip install .`."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"kiln": "kiln", "compiler": "kiln.compiler", "runtime": "kiln.runtime",
       "grammar": "kiln.grammar", "stdlib": "kiln.stdlib"}


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top, name in TOP.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"missing from pyproject: {found - listed}; stale: {listed - found}"
    for name in listed:
        directory = config["package-dir"][name]
        assert (ROOT / directory / "__init__.py").exists(), name
