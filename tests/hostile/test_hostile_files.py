"""Hostile files: imports of files that are not kiln source, reads without a bound (devices,
FIFOs, npz bombs), writes through planted symlinks, and a disk that fills up mid-write.

Attacks that used to hang or exhaust memory run in a child process with a wall-clock limit
and an address-space limit, so that a regression fails the test instead of the machine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _hostile import assert_kiln_error, run_child

import kiln
from kiln import KilnError
from kiln.cli import main as cli_main
from kiln.compiler.codegen.llvm import cache
from kiln.runtime.weights import load_weights, save_weights

SECRET = "TOPSECRET-not-kiln-source"
TINY = "model M {\n  forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x) }\n}\n"
WEIGHTED = (
    "model M {\n  param w: [2, 3] = init.normal()\n"
    "  forward(x: f32[B, 3]) -> f32[B, 2] { return x @ w.T }\n}\n"
)
# 256 kB of weights: ONNX export puts them in external data (past a threshold), and they do
# not fit in the full disk below where the linked library (~30 kB) does
BIG = WEIGHTED.replace("[2, 3]", "[64, 1024]").replace("f32[B, 3]", "f32[B, 1024]") \
    .replace("f32[B, 2]", "f32[B, 64]")
# The child's preamble: a bounded address space turns "reads until memory runs out" into a
# quick MemoryError (a failure), and a KilnError is printed for assert_kiln_error.
PREAMBLE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import kiln
from kiln import KilnError
from kiln.cli import main
from kiln.runtime.weights import load_weights
def attempt(thunk):
    try:
        thunk()
    except KilnError as err:
        print("KilnError", err.code, str(err).replace(chr(10), " | "))
    else:
        print("no error")
"""


def _attempts(calls: list[str], code: str):
    """Run each call (a Python expression) in one child: every one must end by KilnError
    `code`, none may hang or run out of memory."""
    body = "".join(f"attempt(lambda: {call})\n" for call in calls)
    out = run_child(PREAMBLE + body, timeout=120)
    assert_kiln_error(out, code)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("KilnError", "no "))]
    assert len(lines) == len(calls) and all(f"KilnError {code}" in x for x in lines), \
        (out.stdout[-3000:], out.stderr[-3000:])


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _error(thunk) -> KilnError:
    with pytest.raises(KilnError) as info:
        thunk()
    return info.value


def _children(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Each file's inode and bytes: a file replaced by an identical copy still shows."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in directory.iterdir()}


# ---------------------------------------------------------------- imports (#9)


def test_import_of_a_file_that_is_not_kiln_source_never_shows_its_content(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET} = 1\n")
    (tmp_path / "link.kiln").symlink_to(secret)
    for target in ["secret.txt", str(secret), "link.kiln"]:
        main = tmp_path / "main.kiln"
        main.write_text(f'import "{target}"\n{TINY}')
        err = _error(lambda: kiln.load(main))  # noqa: B023
        assert err.code == "K0004", str(err)
        assert SECRET not in str(err), str(err)
        assert err.span is not None and err.span.line == 1  # the import, in main.kiln


def test_import_of_a_binary_kiln_file_is_refused_without_its_content(tmp_path):
    (tmp_path / "blob.kiln").write_bytes(SECRET.encode() + b"\x00\x01\x02" + bytes(range(256)))
    main = tmp_path / "main.kiln"
    main.write_text(f'import "blob.kiln"\n{TINY}')
    err = _error(lambda: kiln.load(main))
    assert err.code == "K0003" and SECRET not in str(err), str(err)


def test_a_source_with_control_characters_is_refused_without_echoing_them(tmp_path):
    """Binary content that happens to be UTF-8 (terminal escapes included) is not text."""
    path = tmp_path / "escape.kiln"
    path.write_bytes(TINY.encode() + b"\x1b]0;pwned\x07 model N {}\n")
    err = _error(lambda: kiln.load(path))
    assert err.code == "K0003" and err.span.line == 4, str(err)
    assert "\x1b" not in str(err) and "pwned" not in str(err)


def test_imports_of_impossible_paths_are_located_errors(tmp_path):
    (tmp_path / "loop.kiln").symlink_to(tmp_path / "loop.kiln")
    for name in ["a\\0b.kiln", "a" * 5000 + ".kiln", "loop.kiln"]:  # a NUL, too long, a loop
        (tmp_path / "m.kiln").write_text(f'import "{name}"\n{TINY}')
        err = _error(lambda: kiln.load(tmp_path / "m.kiln"))
        assert err.code == "K0004" and err.span.line == 1, str(err)
    err = _error(lambda: kiln.load(tmp_path / ("b" * 5000 + ".kiln")))
    assert err.code == "K0004", str(err)


def test_relative_imports_resolve_against_the_importing_file(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.kiln").write_text("const WIDTH = 4\n")
    (tmp_path / "lib" / "main.kiln").write_text(f'import "blocks.kiln"\n{TINY}')
    monkeypatch.chdir(tmp_path)  # not lib/: the import must not resolve against the cwd
    assert kiln.load(tmp_path / "lib" / "main.kiln").model_names == ["M"]


def test_imports_and_sources_that_are_devices_or_fifos_fail_fast(tmp_path):
    _fifo(tmp_path / "fifo.kiln")
    (tmp_path / "zero.kiln").symlink_to("/dev/zero")
    (tmp_path / "huge.kiln").touch()
    os.truncate(tmp_path / "huge.kiln", 64 << 30)  # sparse: 64 GiB without using the disk
    calls = []
    for i, target in enumerate(["fifo.kiln", "zero.kiln", "/dev/zero", "/dev/urandom",
                                "huge.kiln"]):
        (tmp_path / f"main{i}.kiln").write_text(f'import "{target}"\n{TINY}')
        calls.append(f"kiln.load({str(tmp_path / f'main{i}.kiln')!r})")
    calls += [f"kiln.load({str(tmp_path / s)!r})" for s in ["fifo.kiln", "huge.kiln"]]
    _attempts(calls, "K0004")


# ---------------------------------------------------------------- unbounded reads (#10)


def _npy_header(shape, dtype=np.float32) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)})
    return buf.getvalue()


def _npz_bomb(path: Path, members: dict[str, tuple[int, ...]]) -> Path:
    """An npz whose members declare `shape` and really hold that many zeros, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, shape in members.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                member.write(_npy_header(shape))
                left = int(np.prod(shape)) * 4
                chunk = bytes(1 << 20)
                while left:
                    member.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
    return path


def test_weights_and_inputs_that_are_devices_or_fifos_fail_fast(tmp_path):
    src = tmp_path / "m.kiln"
    src.write_text(TINY)
    paths = [_fifo(tmp_path / "fifo.npz"), _fifo(tmp_path / "fifo.safetensors")]
    for name, device in [("zero.npz", "/dev/zero"), ("random.safetensors", "/dev/urandom")]:
        (tmp_path / name).symlink_to(device)
        paths.append(tmp_path / name)
    calls = [f"load_weights({str(path)!r})" for path in paths]
    for name, device in [("zero.npy", "/dev/zero"), ("random.npz", "/dev/urandom")]:
        (tmp_path / name).symlink_to(device)
    _fifo(tmp_path / "fifo.npy")
    _attempts(calls, "K0403")
    cli = [f"main(['run', {str(src)!r}, '--target', 'reference', '--input', "
           f"'x={tmp_path / name}'])" for name in ["fifo.npy", "zero.npy", "random.npz"]]
    out = run_child(PREAMBLE + "".join(f"print('exit', {call})\n" for call in cli), timeout=120)
    assert not out.timed_out and out.stdout.count("exit 1") == 3, out.stderr[-2000:]
    assert out.stderr.count("error[K0403]") == 3, out.stderr[-2000:]


def test_an_npz_claiming_petabytes_is_refused_before_allocating(tmp_path, capsys):
    path = tmp_path / "claim.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w.npy", _npy_header((1 << 50,)) + bytes(64))
    assert path.stat().st_size < 1000
    err = _error(lambda: load_weights(path))
    assert err.code == "K0403" and "w" in err.message, str(err)
    npy = tmp_path / "claim.npy"  # the same lie in a plain .npy given to `kiln run --input`
    npy.write_bytes(_npy_header((1 << 50,)) + bytes(64))
    src = tmp_path / "m.kiln"
    src.write_text(TINY)
    capsys.readouterr()
    assert cli_main(["run", str(src), "--target", "reference", "--input", f"x={npy}"]) == 1
    assert "error[K0403]" in capsys.readouterr().err


def test_a_deflate_bomb_is_reported_without_being_decompressed(tmp_path):
    """A 100 MB member where the model expects 6 floats: the shape mismatch is reported from
    the member's header; an unexpected member under a non-strict load is never inflated."""
    bomb = _npz_bomb(tmp_path / "bomb.npz", {"w": (25_000_000,)})
    assert bomb.stat().st_size < 1_000_000
    model = kiln.compile(WEIGHTED, target="reference")
    tracemalloc.start()
    try:
        err = _error(lambda: model.load_weights(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "K0402" and "expected f32[2, 3], found f32[25000000]" in err.message
    assert peak < 20_000_000, peak  # the member declares 100 MB
    extra = tmp_path / "extra.npz"
    with zipfile.ZipFile(extra, "w") as archive:
        archive.writestr("w.npy", _npy_header((2, 3)) + np.arange(6, dtype=np.float32).tobytes())
    with zipfile.ZipFile(extra, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("junk.npy", _npy_header((25_000_000,)) + bytes(100_000_000))
    tracemalloc.start()
    try:
        model.load_weights(extra, strict=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak
    np.testing.assert_array_equal(model.state_dict()["w"], np.arange(6).reshape(2, 3))


def test_npz_weights_still_round_trip(tmp_path):
    """The member reader agrees with numpy: C and Fortran order, bf16, empty arrays."""
    import ml_dtypes

    arrays = {"a": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
              "b": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16),
              "c": np.zeros((0, 5), np.int32), "d": np.array(True)}
    path = tmp_path / "w.npz"
    np.savez_compressed(path, **arrays)
    save_weights(tmp_path / "mine.npz", arrays)
    for file in [path, tmp_path / "mine.npz"]:
        loaded = load_weights(file)
        assert set(loaded) == set(arrays)
        for name, array in arrays.items():
            assert loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name].astype(np.float64),
                                          array.astype(np.float64))
    data = bytearray((tmp_path / "mine.npz").read_bytes())  # stored: the array bytes are there
    at = data.index(np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16).tobytes())
    data[at] ^= 1
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    err = _error(lambda: load_weights(tmp_path / "flipped.npz"))
    assert err.code == "K0403" and "CRC" in err.message, str(err)


# ---------------------------------------------------------------- writes (#12, #14)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_onnx_export_never_writes_through_a_planted_symlink(tmp_path):
    victim = _victim(tmp_path)
    model = kiln.compile(TINY, target="reference")
    # the temp name v0.1 used, planted by someone who can write to the directory
    (tmp_path / f".m.onnx.{os.getpid()}.tmp").symlink_to(victim)
    (tmp_path / "m.onnx").symlink_to(victim)
    model.export_onnx(tmp_path / "m.onnx")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "m.onnx").is_symlink()
    import onnx

    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_onnx_reexport_with_external_data_replaces_it(tmp_path, monkeypatch):
    from kiln.compiler.codegen import onnx as onnx_codegen

    monkeypatch.setattr(onnx_codegen, "EXTERNAL_DATA_THRESHOLD", 100_000)
    victim = _victim(tmp_path)
    model = kiln.compile(BIG, target="reference")
    model.export_onnx(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").stat().st_size >= 64 * 1024 * 4
    model.load_weights({"w": np.full((64, 1024), 2.0, np.float32)})
    model.export_onnx(tmp_path / "m.onnx")  # a second export replaces the data file
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((1, 1024), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.full((1, 64), 2048.0))
    (tmp_path / "m.onnx.data").unlink()
    (tmp_path / "m.onnx.data").symlink_to(victim)
    model.export_onnx(tmp_path / "m.onnx")
    assert victim.read_text() == "precious\n"
    assert _children(tmp_path) == {"m.onnx", "m.onnx.data", "victim.txt"}


def test_native_library_companions_are_never_written_through_symlinks(tmp_path):
    victim = _victim(tmp_path)
    src = tmp_path / "lin.kiln"
    src.write_text(WEIGHTED)
    out = tmp_path / "out"
    out.mkdir()
    for name in ["lin.so", "lin.h", "lin.kiln.json", "lin.safetensors"]:
        (out / name).symlink_to(victim)
    assert cli_main(["compile", str(src), "-o", str(out / "lin.so")]) == 0
    assert victim.read_text() == "precious\n"
    assert not any(p.is_symlink() for p in out.iterdir())
    assert _children(out) == {"lin.so", "lin.h", "lin.kiln.json", "lin.safetensors"}
    assert kiln.load_compiled(out / "lin.so")(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_saved_weights_replace_a_planted_symlink(tmp_path):
    victim = _victim(tmp_path)
    for name in ["w.safetensors", "w.npz"]:
        (tmp_path / name).symlink_to(victim)
        save_weights(tmp_path / name, {"w": np.ones(3, np.float32)})
        assert not (tmp_path / name).is_symlink()
        np.testing.assert_array_equal(load_weights(tmp_path / name)["w"], np.ones(3))
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("output", ["lin.h", "lin.safetensors", "lin.kiln"])
def test_compile_refuses_an_output_that_is_one_of_its_companions(tmp_path, capsys, output):
    """`-o lin.h` would write the library where its header goes; `-o lin.kiln` over the
    model's own source."""
    src = tmp_path / "lin.kiln"
    src.write_text(WEIGHTED)
    before = _children(tmp_path)
    assert cli_main(["compile", str(src), "--target", "native", "-o", str(tmp_path / output)]) == 1
    err = capsys.readouterr().err
    assert "error[K0602]" in err, err
    assert _children(tmp_path) == before


@pytest.mark.parametrize("target", ["native", "onnx"])
def test_compile_refuses_an_output_that_is_a_directory(tmp_path, capsys, target):
    src = tmp_path / "lin.kiln"
    src.write_text(WEIGHTED)
    out = tmp_path / ("lib.so" if target == "native" else "lib.onnx")
    out.mkdir()
    assert cli_main(["compile", str(src), "--target", target, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error[K0602]" in err and "directory" in err, err
    assert _children(out) == set() and _children(tmp_path) == {"lin.kiln", out.name}


# A disk that fills up: RLIMIT_FSIZE makes every write past the limit fail with EFBIG (once
# SIGXFSZ is ignored), the way ENOSPC does, without a filesystem of our own.
FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
"""


def _full_disk_child(code: str, limit: int, tmp_path: Path):
    return run_child(FULL_DISK.format(limit=limit) + code, timeout=300,
                     env={"KILN_CACHE_DIR": str(tmp_path / "cache")})


def test_a_full_disk_during_kiln_compile_changes_nothing(tmp_path):
    src = tmp_path / "lin.kiln"
    src.write_text(BIG)
    out = tmp_path / "out"
    out.mkdir()
    for target, name in [("native", "lin.so"), ("onnx", "lin.onnx")]:
        assert cli_main(["compile", str(src), "-o", str(out / name), "--seed", "1"]) == 0
        before = _snapshot(out)
        # the library links (its .so is ~30 kB) but its 256 kB of weights do not fit
        child = _full_disk_child(
            f"from kiln.cli import main\nimport sys\nsys.exit(main(['compile', {str(src)!r}, "
            f"'-o', {str(out / name)!r}, '--seed', '2']))", 150_000, tmp_path)
        assert not child.timed_out and child.returncode == 1, child.stderr[-2000:]
        assert "error[K0403]" in child.stderr, child.stderr[-2000:]
        assert _snapshot(out) == before, target


def test_a_full_disk_leaves_no_partial_cache_entry(tmp_path):
    child = _full_disk_child(
        "from kiln.compiler.codegen.llvm import cache\ncache.store('entry', bytes(100_000))\n"
        "assert cache.load('entry') is None\n", 1000, tmp_path)
    assert child.returncode == 0, child.stderr[-2000:]
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_entries_replace_a_planted_symlink_and_never_read_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    victim = _victim(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "entry.o").symlink_to(victim)
    cache.store("entry", b"object code")
    assert victim.read_text() == "precious\n" and cache.load("entry") == b"object code"
    (tmp_path / "cache" / "fifo.o").unlink(missing_ok=True)
    _fifo(tmp_path / "cache" / "fifo.o")
    out = run_child("from kiln.compiler.codegen.llvm import cache\nprint(cache.load('fifo'))", timeout=60,
                    env={"KILN_CACHE_DIR": str(tmp_path / "cache")})
    assert not out.timed_out and out.stdout.strip() == "None", out.stderr[-2000:]


def test_cli_graph_output_replaces_a_planted_symlink(tmp_path):
    victim = _victim(tmp_path)
    src = tmp_path / "m.kiln"
    src.write_text(TINY)
    (tmp_path / "g.dot").symlink_to(victim)
    proc = subprocess.run([sys.executable, "-m", "kiln.cli", "graph", str(src), "-o",
                           str(tmp_path / "g.dot")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n"
    assert "digraph" in (tmp_path / "g.dot").read_text()


def test_a_library_whose_side_files_are_devices_or_fifos_is_refused(tmp_path):
    src = tmp_path / "m.kiln"
    src.write_text(TINY)
    assert cli_main(["compile", str(src), "-o", str(tmp_path / "m.so")]) == 0
    meta = tmp_path / "m.kiln.json"
    meta.rename(tmp_path / "saved.json")
    meta.symlink_to("/dev/zero")
    load = f"kiln.load_compiled({str(tmp_path / 'm.so')!r})"
    _attempts([load], "K0403")
    meta.unlink()
    (tmp_path / "saved.json").rename(meta)
    (tmp_path / "m.so").unlink()
    _fifo(tmp_path / "m.so")
    _attempts([load], "K0403")
