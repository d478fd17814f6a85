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


def test_the_wheel_holds_every_module_grammar_and_stdlib_file_and_their_json(tmp_path):
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",  # build as pip install does
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("kiln-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for top, name in TOP.items():
        prefix = name.replace(".", "/")
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".lark", ".kiln", ".json") and "__pycache__" not in path.parts:
                if (path.parent / "__init__.py").exists():
                    expected.add(f"{prefix}/{path.relative_to(ROOT / top).as_posix()}")
    assert expected - names == set()


def test_versions_agree():
    import kiln

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["version"] == kiln.__version__
