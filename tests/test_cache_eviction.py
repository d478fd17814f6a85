"""The compile cache's size bound (codegen/llvm/evict.py): least-recently-used eviction, safe
against a concurrent reader, never following a symlink; `kiln cache info` / `clear`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import KilnError
from kiln.cli import main
from kiln.compiler.codegen.llvm import cache, evict

SRC = "model M {{ forward(x: f32[B, 4]) -> f32[B, 4] {{ return relu(x) * {k}.0 }} }}"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("KILN_CACHE_DIR", str(root))
    monkeypatch.delenv("KILN_CACHE", raising=False)
    monkeypatch.delenv("KILN_CACHE_SIZE", raising=False)
    return root


def _name(i: int) -> str:
    return f"{i:064x}"


def _store(i: int, size: int = 1000, used: float | None = None) -> Path:
    cache.store(_name(i), bytes(size))
    path = cache.cache_dir() / f"{_name(i)}.o"
    if used is not None and path.exists():
        os.utime(path, (used, used))
    return path


def _total(root: Path) -> int:
    return sum(e.size for e in evict.entries(root))


@pytest.mark.parametrize("text, want", [("1000", 1000), ("4k", 4096), ("2M", 2 << 20),
                                        ("3 GiB", 3 << 30), (" 1T ", 1 << 40)])
def test_the_bound_is_read_from_kiln_cache_size(monkeypatch, text, want):
    monkeypatch.setenv("KILN_CACHE_SIZE", text)
    assert evict.limit() == want


@pytest.mark.parametrize("text", ["lots", "-1", "1.5G", "4X", "1" * 20])
def test_a_bound_that_is_no_size_is_k0975_before_anything_is_written(cache_dir, monkeypatch,
                                                                    text):
    monkeypatch.setenv("KILN_CACHE_SIZE", text)
    with pytest.raises(KilnError) as info:
        cache.store(_name(1), b"code")
    assert info.value.code == "K0975"
    assert not cache_dir.exists() or not list(cache_dir.iterdir())


def test_the_default_bound(monkeypatch):
    monkeypatch.delenv("KILN_CACHE_SIZE", raising=False)
    assert evict.limit() == evict.DEFAULT_LIMIT == 2 << 30


def test_object_entries_stay_within_the_bound(cache_dir, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_SIZE", "5000")
    for i in range(12):
        _store(i, used=1000.0 + i)
        assert 0 < _total(cache_dir) <= 5000
    # the newest stay, and load
    assert cache.load(_name(11)) == bytes(1000)
    assert cache.load(_name(0)) is None


def test_the_least_recently_used_goes_first_and_a_hit_counts_as_use(cache_dir, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_SIZE", str(3 * 1100))
    for i in range(3):
        _store(i, used=1000.0 + i)
    assert cache.load(_name(0)) is not None  # entry 0 used now: 1 is the oldest
    _store(3)
    assert cache.load(_name(1)) is None
    assert all(cache.load(_name(i)) is not None for i in (0, 2, 3))


def test_model_entries_are_evicted_whole_and_the_model_compiles_again(cache_dir, tmp_path,
                                                                     monkeypatch):
    files = []
    for k in range(3):
        files.append(tmp_path / f"m{k}.kiln")
        files[-1].write_text(SRC.format(k=k + 1))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
    kiln.compile(files[0])
    one = _total(cache_dir)
    models = cache_dir / "models"
    assert len({n.split(".")[0] for n in os.listdir(models)}) == 1
    monkeypatch.setenv("KILN_CACHE_SIZE", str(int(one * 1.5)))
    for f in files[1:]:
        kiln.compile(f)
        assert _total(cache_dir) <= int(one * 1.5)
    left = os.listdir(models)
    keys = {n.split(".")[0] for n in left}
    assert len(keys) < 3, left  # some model entry went
    for key in keys:  # whole entries, no strays
        assert {f"{key}.json", f"{key}.safetensors"} <= set(left)
        assert any(n.startswith(key) and n.endswith(".so") for n in left)
    for k, f in enumerate(files):  # a miss compiles it again, with the same result
        np.testing.assert_array_equal(kiln.compile(f)(x), np.maximum(x, 0) * (k + 1))


def test_symlinks_in_the_cache_are_never_followed(cache_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / f"{_name(7)}.o"
    precious.write_bytes(b"keep me")
    kept_dir = outside / "models"
    kept_dir.mkdir()
    (kept_dir / f"{_name(8)}.json").write_text("{}")
    cache_dir.mkdir()
    (cache_dir / f"{_name(7)}.o").symlink_to(precious)
    (cache_dir / "models").symlink_to(kept_dir, target_is_directory=True)
    _store(1)
    assert [e.names for e in evict.entries(cache_dir)] == [[f"{_name(7)}.o"], [f"{_name(1)}.o"]]
    evict.clear(cache_dir)
    assert precious.read_bytes() == b"keep me" and (kept_dir / f"{_name(8)}.json").exists()
    assert not (cache_dir / f"{_name(7)}.o").is_symlink()  # the link itself went
    assert (cache_dir / "models").is_symlink()  # not an entry: left alone


def test_other_files_and_trash_are_handled(cache_dir, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_SIZE", "1")
    cache_dir.mkdir()
    (cache_dir / "notes.txt").write_text("mine")
    (cache_dir / ".kiln-staging").mkdir()
    trash = cache_dir / f"{evict.TRASH}1-abcd-{_name(3)}.o"
    trash.write_bytes(b"left by a killed process")
    _store(2)
    assert (cache_dir / "notes.txt").exists() and (cache_dir / ".kiln-staging").is_dir()
    assert not trash.exists()


READER = r"""
import sys
import numpy as np
import kiln
x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
hits = 0
for _ in range(int(sys.argv[2])):
    model = kiln.compile(sys.argv[1])
    hits += type(model).__name__ == "CachedNativeModel"
    assert np.array_equal(model(x), np.maximum(x, 0) * 2), "wrong result"
print("hits", hits)
"""


def test_a_concurrent_reader_never_crashes_while_entries_are_evicted(cache_dir, tmp_path):
    """One process compiles (mostly hits) while this one empties the cache over and over:
    every compile in it succeeds with the right result, hit or miss."""
    model = tmp_path / "m.kiln"
    model.write_text(SRC.format(k=2))
    kiln.compile(model)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(model), "25"],
                              env={**os.environ, "KILN_PROGRESS": "0"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cleared = 0
    while reader.poll() is None:
        if evict.clear(cache_dir):
            cleared += 1
        time.sleep(0.01)
    out, err = reader.communicate()
    assert reader.returncode == 0, err
    assert cleared > 0 and out.startswith("hits")


def test_cache_info_and_clear(cache_dir, capsys, monkeypatch):
    _store(1, size=3000)
    _store(2, size=3000)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir) in out and "0 models, 2 object files" in out and "2 GiB" in out
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert evict.entries(cache_dir) == []
    monkeypatch.setenv("KILN_CACHE_SIZE", "big")
    _store_dir = list(cache_dir.iterdir())
    assert main(["cache", "clear"]) == 1
    assert "K0975" in capsys.readouterr().err
    assert list(cache_dir.iterdir()) == _store_dir
