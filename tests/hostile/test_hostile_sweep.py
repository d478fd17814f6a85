"""The re-run of the hostile sweep (issue 12's acceptance), by someone who did not write the
fixes: each test is an attack that still failed then - a crash, a traceback that is not a
KilnError, a silent wrong answer or a misleading report."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from _hostile import assert_kiln_error, run_child

import kiln
from kiln import KilnError
from kiln.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
MLP = ROOT / "examples" / "mlp.kiln"


def test_compile_to_onnx_prints_the_onnx_pipelines_passes(capsys, tmp_path):
    # the ONNX file is made by the ONNX pipeline (no weight folding, no fusion): --print-passes
    # once printed the native pipeline's stats, passes that never touched the file written
    assert main(["compile", str(MLP), "-o", str(tmp_path / "m.onnx"), "--print-passes"]) == 0
    out = capsys.readouterr().out
    assert "cse" in out and "dce" in out
    for native_only in ("fold_weight_layout", "conv_layout", "fuse", "plan_memory"):
        assert native_only not in out, out
    assert main(["compile", str(MLP), "-o", str(tmp_path / "m.so"), "--print-passes"]) == 0
    assert "fuse" in capsys.readouterr().out


# ---------------------------------------------------------------------- weights files
LINEAR = """
import std.nn
model M { forward(x: f32[B, 3]) -> f32[B, 2] { return x |> nn.Linear(3, 4) |> relu
                                                     |> nn.Linear(4, 2) } }
"""
X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)


def _refused_and_unchanged(path, code: str = "K0403") -> KilnError:
    """Loading `path` into a fresh model is KilnError `code`; the model is as it was."""
    m = kiln.compile(LINEAR, target="reference")
    before = m(X)
    with pytest.raises(KilnError) as info:
        m.load_weights(path)
    assert info.value.code == code, str(info.value)
    np.testing.assert_array_equal(m(X), before)
    return info.value


def _ones_safetensors_header() -> tuple[list[tuple[str, dict]], bytes]:
    """The (key, entry) pairs and data of a valid safetensors file of LINEAR's weights."""
    shapes = {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4), "2.bias": (2,)}
    pairs, data = [], b""
    for key, shape in shapes.items():
        a = np.ones(shape, np.float32)
        pairs.append((key, {"dtype": "F32", "shape": list(shape),
                            "data_offsets": [len(data), len(data) + a.nbytes]}))
        data += a.tobytes()
    return pairs, data


def _safetensors(pairs: list[tuple[str, dict]], data: bytes) -> bytes:
    # written by hand: json.dumps of a dict cannot hold one key twice
    header = ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
              + "}").encode()
    return struct.pack("<Q", len(header)) + header + data


def test_a_safetensors_header_with_a_key_twice_is_refused(tmp_path):
    # JSON parsers disagree on which of two equal keys wins (serde and Python keep the last,
    # others the first): a file whose meaning depends on the reader is refused, not guessed
    pairs, data = _ones_safetensors_header()
    twice = ("0.bias", {**pairs[1][1], "data_offsets": pairs[3][1]["data_offsets"][:1] +
                        [pairs[3][1]["data_offsets"][0] + 8]})
    path = tmp_path / "w.safetensors"
    path.write_bytes(_safetensors([twice, *pairs], data))
    err = _refused_and_unchanged(path)
    assert "0.bias" in err.message and "twice" in err.message, str(err)
    path.write_bytes(_safetensors(pairs, data))  # the same file without the repeat loads
    kiln.compile(LINEAR, target="reference").load_weights(path)


def _npz(path, members: list[tuple[str, bytes]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        with zipfile.ZipFile(path, "w") as archive:
            for name, blob in members:
                archive.writestr(name, blob)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("second", ["0.bias.npy", "0.bias"])
def test_an_npz_with_a_member_twice_is_refused(tmp_path, second):
    # zipfile keeps both members and kiln once took whichever came last, silently
    members = [(f"{k}.npy", _npy(np.ones(s, np.float32))) for k, s in
               {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4), "2.bias": (2,)}.items()]
    path = tmp_path / "w.npz"
    _npz(path, [*members, (second, _npy(np.full(4, 7, np.float32)))])
    err = _refused_and_unchanged(path)
    assert "0.bias" in err.message and "twice" in err.message, str(err)


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,",  # unclosed: a TokenError
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 500 + ")" * 500 + ", }",
])
def test_an_npy_header_numpy_cannot_parse_is_a_kiln_error(tmp_path, header):
    blob = header.encode()
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(blob)) + blob
    path = tmp_path / "w.npz"
    _npz(path, [("0.bias.npy", npy)])
    _refused_and_unchanged(path)
    (tmp_path / "x.npy").write_bytes(npy)  # and as a `kiln run --input` array
    assert main(["run", str(MLP), "--target", "reference", "--input",
                 f"x={tmp_path / 'x.npy'}"]) == 1


# ---------------------------------------------------------------------- writes
def _special_files(tmp_path, suffix: str) -> list[Path]:
    """A FIFO and a socket: files kiln must never replace (as root, `-o /dev/full` once
    replaced the device itself with a regular file; a test cannot make device nodes)."""
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    sock_path = tmp_path / f"sock{suffix}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return [fifo, sock_path]


def _writes(special: Path) -> list:
    """Every way kiln writes a file of `special`'s kind, each refusing it (K0403)."""
    if special.suffix == ".dot":
        return [lambda: main(["graph", str(MLP), "-o", str(special)])]
    m = kiln.compile(LINEAR, target="reference")
    return [lambda: m.save_weights(special),
            lambda: main(["run", str(MLP), "--target", "reference", "--random-inputs",
                          "-o", str(special)])]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".dot"])
def test_writes_never_replace_a_device_fifo_or_socket(tmp_path, capsys, suffix):
    for special in _special_files(tmp_path, suffix):
        kind = stat.S_IFMT(special.lstat().st_mode)
        for write in _writes(special):
            try:
                assert write() == 1  # the CLI's exit status
                err = capsys.readouterr().err
            except KilnError as exc:
                err = str(exc)
            assert "error[K0403]" in err and "not a regular file" in err, err
            assert stat.S_IFMT(special.lstat().st_mode) == kind  # still what it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fifo{suffix}", f"sock{suffix}"]


# ---------------------------------------------------------------------- the command line
def test_an_input_given_twice_is_refused(tmp_path, capsys):
    # the second file once replaced the first silently
    np.save(tmp_path / "a.npy", np.ones((2, 784), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((3, 784), np.float32))
    code = main(["run", str(MLP), "--target", "reference", "--input", f"x={tmp_path / 'a.npy'}",
                 "--input", f"x={tmp_path / 'b.npy'}"])
    err = capsys.readouterr().err
    assert code == 1 and "error[K0602]" in err and "twice" in err, err


# ---------------------------------------------------------------------- the compile cache
def test_swapped_cache_entries_are_rebuilt_not_run(tmp_path, monkeypatch):
    # each entry's checksum once covered only its own bytes: two valid entries swapped (or
    # one copied over another) loaded, and a relu model ran a sigmoid's code
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    src = ("model M { param w: [3, 2] = init.normal()\n"
           "  forward(x: f32[B, 3]) -> f32[B, 2] { return relu(x @ w) } }")
    x = np.ones((2, 3), np.float32)
    want = kiln.compile(src, target="native", seed=0)(x)
    kinds = ("[0-9a-f]*.o", "g*.o")  # by LLVM IR, and by graph in front of it
    relu_entries = [next(tmp_path.glob(kind)) for kind in kinds]
    kiln.compile(src.replace("relu", "sigmoid"), target="native", seed=0)(x)
    for kind, relu_entry in zip(kinds, relu_entries, strict=True):
        (sigmoid_entry,) = set(tmp_path.glob(kind)) - {relu_entry}
        relu_bytes = relu_entry.read_bytes()
        relu_entry.write_bytes(sigmoid_entry.read_bytes())
        sigmoid_entry.write_bytes(relu_bytes)
    np.testing.assert_array_equal(kiln.compile(src, target="native", seed=0)(x), want)


# ---------------------------------------------------------------------- AOT side files
@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory) -> Path:
    """examples/mlp.kiln with 8 hidden units, built as a native library."""
    out = tmp_path_factory.mktemp("aot") / "m.so"
    assert main(["compile", str(MLP), "-o", str(out), "--arg", "hidden=8"]) == 0
    return out


def _copy_library(library: Path, where: Path) -> Path:
    for f in library.parent.glob("m.*"):
        shutil.copy(f, where / f.name)
    return where / "m.so"


def _load_in_child(library: Path):
    return run_child(f"""
        import numpy as np, kiln
        try:
            kiln.load_compiled({str(library)!r})(np.ones((2, 784), np.float32))
            print("loaded")
        except kiln.KilnError as e:
            print("KilnError", e.code, e.message)
        """, timeout=120)


def test_a_truncated_library_is_refused_not_a_sigbus(tiny_library, tmp_path):
    # dlopen maps the segments the ELF header lists; past the end of the file that was SIGBUS
    library = _copy_library(tiny_library, tmp_path)
    library.write_bytes(library.read_bytes()[:1000])
    outcome = _load_in_child(library)
    assert_kiln_error(outcome, "K0403")
    assert "truncated" in outcome.stdout


def test_metadata_nested_past_the_stack_is_a_kiln_error(tiny_library, tmp_path):
    library = _copy_library(tiny_library, tmp_path)
    (tmp_path / "m.kiln.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_kiln_error(_load_in_child(library), "K0403")  # was a RecursionError traceback
    (tmp_path / "whole").mkdir()  # the same library with its own metadata loads
    assert "loaded" in _load_in_child(_copy_library(tiny_library, tmp_path / "whole")).stdout


# ---------------------------------------------------------------------- sources
@pytest.mark.parametrize("source", [
    "model M { forward(x: f32[B], x: f32[B]) -> f32[B] { return x } }",
    "block A(n: int, n: int) { forward(x: f32[B]) -> f32[B] { return x } }\n"
    "model M { forward(x: f32[B]) -> f32[B] { return x |> A(1, 2) } }",
    "fn f(a, a) { return a }\nmodel M { forward(x: f32[B]) -> f32[B] { return f(x, x) } }",
])
def test_a_name_given_twice_in_one_signature_is_refused(source):
    # `forward(x, x)` once compiled, and m(ones, zeros) silently ran on the second x
    with pytest.raises(KilnError) as info:
        kiln.compile(source, target="reference")
    assert info.value.code == "K0106" and "twice" in info.value.message, str(info.value)
    assert info.value.span is not None


def test_a_negative_input_size_is_a_located_compile_time_error():
    # `x: f32[-3]` compiled, and every call then failed with "must have shape [-3]"
    with pytest.raises(KilnError) as info:
        kiln.compile("model M { forward(x: f32[B, 2 - 5]) -> f32[B, -3] { return x } }",
                     target="reference")
    assert info.value.code == "K0301" and "negative" in info.value.message, str(info.value)
    assert info.value.span is not None


# ---------------------------------------------------------------------- run-time edges
TARGETS = ["native", "reference", "onnx"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", ["max", "min", "argmax", "argmin"])
def test_a_reduction_without_identity_over_an_empty_axis_is_k0505(target, op):
    # max over an empty axis has no answer (numpy and torch refuse): the reference said K0505
    # while native code returned -inf and onnxruntime NaN, silently
    dtype = "i64" if op.startswith("arg") else "f32"
    m = kiln.compile(f"model M {{ forward(x: f32[N, K]) -> {dtype}[N] "
                     f"{{ return {op}(x, axis=1) }} }}", target=target)
    with pytest.raises(KilnError) as info:
        m(np.zeros((2, 0), np.float32))
    assert info.value.code == "K0505" and "empty" in info.value.message, str(info.value)
    assert info.value.span is not None
    np.testing.assert_array_equal(m(np.zeros((0, 3), np.float32)).shape, (0,))  # no rows: fine
    x = np.array([[1, 3, 2]], np.float32)
    assert m(x)[0] == {"max": 3, "min": 1, "argmax": 1, "argmin": 0}[op]


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # numpy's, in the reference
@pytest.mark.parametrize("target", TARGETS)
def test_the_mean_of_an_empty_axis_is_nan_on_every_target(target, tmp_path):
    # onnxruntime's ReduceMean gives 0 there; numpy, torch, native code and the reference NaN
    m = kiln.compile("model M { forward(x: f32[N, K]) -> f32[N] { return mean(x, axis=1) } }",
                     target=target)
    assert np.isnan(m(np.zeros((2, 0), np.float32))).all()
    np.testing.assert_allclose(m(np.array([[1, 2]], np.float32)), [1.5])
    if target == "onnx":  # the exported file stays valid ONNX
        m.export_onnx(tmp_path / "m.onnx")
        onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


@pytest.mark.parametrize("target", TARGETS)
def test_an_integer_to_a_negative_integer_power_is_k0505_on_every_target(target):
    # numpy and torch refuse it and so did the reference; native code and onnxruntime gave
    # the truncated 1 / x**-y (0 for 2 ** -1) silently
    m = kiln.compile("model M { forward(x: i32[N], y: i32[N]) -> i32[N] { return x ** y } }",
                     target=target)
    with pytest.raises(KilnError) as info:
        m(np.array([2, 3], np.int32), np.array([-1, 2], np.int32))
    assert info.value.code == "K0505" and info.value.span is not None, str(info.value)
    np.testing.assert_array_equal(m(np.array([2, -3, 0], np.int32), np.array([10, 3, 0], np.int32)),
                                  [1024, -27, 1])


@pytest.mark.parametrize("target", TARGETS)
def test_softmax_and_logsumexp_over_an_empty_axis_agree(target):
    # an empty softmax is empty and an empty logsumexp is log(0) = -inf (as torch); the
    # reference once failed (K0505) where native code and onnxruntime answered
    x = np.zeros((2, 0), np.float32)
    for op, want in (("softmax(x, axis=1)", np.zeros((2, 0))),
                     ("logsumexp(x, axis=1)", [-np.inf] * 2),
                     ("log_softmax(x, axis=1)", np.zeros((2, 0)))):
        out = "f32[N, K]" if "softmax" in op else "f32[N]"
        m = kiln.compile(f"model M {{ forward(x: f32[N, K]) -> {out} {{ return {op} }} }}",
                         target=target)
        np.testing.assert_array_equal(m(x), want)


@pytest.mark.parametrize("op, out, shape", [
    ("layer_norm(x, [W])", "f32[N, C, H, W]", (2, 3, 1, 0)),  # normalized over an empty axis
    ("instance_norm(x)", "f32[N, C, H, W]", (2, 3, 0, 4)),    # empty spatial axes
    ("group_norm(x, 1)", "f32[N, C, H, W]", (2, 3, 4, 0)),
    ("global_avg_pool(x)", "f32[N, C, 1, 1]", (2, 3, 0, 4)),  # the mean of nothing: NaN
    ("global_avg_pool(x)", "f32[N, C, 1, 1]", (0, 3, 2, 2)),
])
def test_a_norm_or_mean_over_empty_axes_agrees_on_every_target(op, out, shape, tmp_path):
    # native code divided the element count by the segment length, 0 here: SIGFPE, with no
    # tampering at all (hence the child process); onnxruntime refused LayerNormalization,
    # the group reshape and GlobalAveragePool there (K0505). Every target now gives the
    # reference's answer, and so does the exported file in onnxruntime alone.
    outcome = run_child(f"""
        import warnings
        import numpy as np, onnxruntime as ort, kiln
        warnings.simplefilter("ignore")  # numpy's "Mean of empty slice", in the reference
        src = "model M {{ forward(x: f32[N, C, H, W]) -> {out} {{ return {op} }} }}"
        x = np.ones({shape}, np.float32)
        want = kiln.compile(src, target="reference")(x)
        for target in ("native", "onnx"):
            m = kiln.compile(src, target=target)
            got = m(x)
            assert got.shape == want.shape, (target, got.shape, want.shape)
            np.testing.assert_array_equal(got, want)
        m.export_onnx({str(tmp_path / "m.onnx")!r})
        session = ort.InferenceSession({str(tmp_path / "m.onnx")!r},
                                       providers=["CPUExecutionProvider"])
        (alone,) = session.run(None, {{session.get_inputs()[0].name: x}})
        np.testing.assert_array_equal(alone, want)
        print("agree", want.shape, bool(want.size and np.isnan(want).all()))
        """, timeout=120)
    assert not outcome.crashed and not outcome.timed_out, outcome.stderr[-2000:]
    nan = "global_avg_pool" in op and 0 not in shape[:2]
    assert f"agree {shape if 'norm' in op else shape[:2] + (1, 1)} {nan}" in outcome.stdout, \
        outcome.stderr[-2000:]


@pytest.mark.parametrize("src", [
    "model M { forward(x: bf16[N]) -> bf16[N] { return x * x } }",
    "model M { forward(x: f32[N]) -> bf16[N] { return cast(x * x, \"bf16\") } }",
    "model M { forward(x: bf16[N]) -> f32[N] { return cast(x * x, \"f32\") } }",
])
def test_bf16_inputs_and_outputs_run_on_the_onnx_target(src):
    # onnxruntime's numpy bridge has no bfloat16: every such call was a raw RuntimeError
    dtype = np.dtype(ml_dtypes.bfloat16) if "x: bf16" in src else np.float32
    for x in (np.array([1.5, 2, 3.0078125], dtype), np.zeros(0, dtype)):
        want = kiln.compile(src, target="reference")(x)
        got = kiln.compile(src, target="onnx")(x)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("source", [b"examples/mlp.kiln", None, 123, ["model M {}"]])
def test_a_source_that_is_neither_text_nor_a_path_is_a_kiln_error(source):
    # bytes, None or a number once reached the lexer: TypeError or AttributeError tracebacks
    for call in (kiln.load, kiln.compile):
        with pytest.raises(KilnError) as info:
            call(source)
        assert info.value.code == "K0602", str(info.value)
