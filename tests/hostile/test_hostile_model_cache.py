"""A damaged, truncated, swapped or planted model entry of the compile cache
(runtime/modelcache.py) is detected and the model compiled the long way, which writes the entry
again: never a crash, never code entered with arrays it was not built for, never other values."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _hostile import run_child

import kiln

pytestmark = pytest.mark.skipif(not shutil.which("cc"), reason="a model entry is linked by cc")

MODEL = """
import std.nn
model Small(n: int = 6) {
  forward(x: f32[B, 5]) -> f32[B, n] { return x |> nn.Linear(5, n) |> tanh |> nn.Linear(n, n) }
}
"""
CHILD = """
import hashlib, sys, numpy as np, kiln
m = kiln.compile(sys.argv[1] if len(sys.argv) > 1 else {path!r}, seed=2)
y = m(np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5))
digest = hashlib.sha256(b"".join(v.tobytes() for v in m.params.values()) + y.tobytes())
print(type(m).__name__, digest.hexdigest())
"""


def expected(path: Path) -> str:
    """The digest of a cold compile's parameters and outputs, as CHILD prints it."""
    import hashlib

    old = os.environ.get("KILN_CACHE")
    os.environ["KILN_CACHE"] = "0"
    try:
        m = kiln.compile(path, seed=2)
    finally:
        if old is None:
            del os.environ["KILN_CACHE"]
        else:
            os.environ["KILN_CACHE"] = old
    y = m(np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5))
    return hashlib.sha256(b"".join(v.tobytes() for v in m.params.values())
                          + y.tobytes()).hexdigest()


@pytest.fixture
def entry(tmp_path, monkeypatch):
    """(model file, {suffix: path} of its entry) in a private cache, written by a cold
    compile with seed 2 (so its values file is there too)."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KILN_CACHE", raising=False)
    path = tmp_path / "small.kiln"
    path.write_text(MODEL)
    kiln.compile(path, seed=2)
    files = {_part(p): p for p in (tmp_path / "cache" / "models").iterdir()}
    assert set(files) == {"so", "json", "safetensors", "seed-2.values"}
    return path, files


def other_entry(path: Path) -> dict[str, Path]:
    """The entry of another model (other arguments), beside the first."""
    models = path.parent / "cache" / "models"
    before = set(models.iterdir())
    kiln.compile(path, args={"n": 7})
    return {_part(p): p for p in set(models.iterdir()) - before}


def _part(path: Path) -> str:
    """Which file of an entry `path` is: so (KEY.DIGEST.so), json, safetensors, seed-N.values."""
    return "so" if path.suffix == ".so" else path.name.split(".", 1)[1]


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for k in (1, 2, 3):  # code, data or tables: damage anywhere is seen
        data[len(data) * k // 4] ^= 0x40
    p.write_bytes(bytes(data))


def replace_with_link(p: Path) -> None:
    copy = p.with_name("planted")
    shutil.copyfile(p, copy)
    p.unlink()
    p.symlink_to(copy)


def replace_with_fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


ATTACKS = {
    "truncated library": ("so", truncate),
    "garbage library": ("so", lambda p: p.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 4000)),
    "empty library": ("so", lambda p: p.write_bytes(b"")),
    "library flipped": ("so", flip),
    "bad json": ("json", lambda p: p.write_text("{not json")),
    "truncated json": ("json", truncate),
    "json of another shape": ("json", lambda p: p.write_text('{"format": [1, 2]}')),
    "deep json": ("json", lambda p: p.write_text("[" * 100000 + "]" * 100000)),
    "json edited": ("json", lambda p: p.write_text(p.read_text().replace('"Small"',
                                                                         '"Big"'))),
    "truncated arrays": ("safetensors", truncate),
    "truncated values": ("seed-2.values", truncate),
    "values flipped": ("seed-2.values", flip),
    "linked json": ("json", replace_with_link),
    "linked library": ("so", replace_with_link),
    "fifo json": ("json", replace_with_fifo),
    "fifo values": ("seed-2.values", replace_with_fifo),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_damaged_entry_is_rebuilt(entry, attack):
    path, files = entry
    suffix, damage = ATTACKS[attack]
    damage(files[suffix])
    want = expected(path)
    first = run_child(CHILD.format(path=str(path)), timeout=120)
    assert first.returncode == 0 and not first.timed_out, first.stderr[-2000:]
    # damaged code or metadata: the long way; damaged values: the entry's code, values drawn
    way = "CachedNativeModel" if suffix.endswith(".values") else "NativeModel"
    assert first.stdout.split() == [way, want]
    second = run_child(CHILD.format(path=str(path)), timeout=120)
    assert second.stdout.split() == ["CachedNativeModel", want], second.stderr[-2000:]


@pytest.mark.parametrize("part", ["so", "json", "safetensors"])
def test_another_models_entry_swapped_in_is_never_run(entry, part):
    path, files = entry
    other = other_entry(path)
    shutil.copyfile(other[part], files[part])
    outcome = run_child(CHILD.format(path=str(path)), timeout=120)
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    assert outcome.stdout.split()[1] == expected(path)


def test_a_directory_in_the_entrys_place_compiles_the_long_way(entry):
    path, files = entry
    files["so"].unlink()
    files["so"].mkdir()
    for _ in range(2):
        outcome = run_child(CHILD.format(path=str(path)), timeout=120)
        assert outcome.stdout.split() == ["NativeModel", expected(path)], outcome.stderr[-2000:]
