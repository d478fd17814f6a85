"""Weights files: round trips, atomic saves, refusing bad files, and matching to a model."""

import io
import zipfile

import ml_dtypes
import numpy as np
import pytest

from kiln.compiler.errors import KilnError
from kiln.compiler.types import NUMPY_DTYPES
from kiln.runtime.weights import load_weights, match_weights, save_weights

FORMATS = ["safetensors", "npz"]


def sample_tensors():
    rng = np.random.default_rng(0)
    tensors = {
        f"layer.{name}": (rng.standard_normal((3, 4)) * 10).astype(dtype)
        for name, dtype in NUMPY_DTYPES.items()
    }
    tensors["scalar"] = np.array(2.5, np.float32)
    tensors["empty"] = np.zeros((0, 5), np.int64)
    tensors["bf16_scalar"] = np.array(-1.5, ml_dtypes.bfloat16)
    tensors["strided"] = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    tensors["file"] = np.ones(2, np.uint8)  # np.savez would take this key for its own argument
    return tensors


def assert_same(loaded, tensors):
    assert loaded.keys() == tensors.keys()
    for key, array in tensors.items():
        assert loaded[key].dtype == array.dtype and loaded[key].shape == array.shape, key
        assert loaded[key].tobytes() == np.ascontiguousarray(array).tobytes(), key


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_dtype(tmp_path, fmt):
    tensors = sample_tensors()
    path = tmp_path / f"model.{fmt}"
    save_weights(path, tensors)
    loaded = load_weights(path)
    assert_same(loaded, tensors)
    assert loaded["layer.bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_big_endian_input_is_saved_little_endian(tmp_path):
    save_weights(tmp_path / "w.safetensors", {"x": np.arange(3, dtype=">f4")})
    assert load_weights(tmp_path / "w.safetensors")["x"].tolist() == [0.0, 1.0, 2.0]


def expect_file_error(path, *words):
    with pytest.raises(KilnError) as err:
        load_weights(path)
    assert err.value.code == "K0403" and str(path) in err.value.message
    for word in words:
        assert word in str(err.value)


def test_bad_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights(good, {"w": np.ones((64, 64), np.float32)})
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    expect_file_error(tmp_path / "truncated.safetensors", "safetensors")
    (tmp_path / "text.safetensors").write_text("not weights at all")
    expect_file_error(tmp_path / "text.safetensors", "safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    expect_file_error(tmp_path / "empty.safetensors")
    expect_file_error(tmp_path / "missing.safetensors", "no such file")
    (tmp_path / "dir.npz").mkdir()
    expect_file_error(tmp_path / "dir.npz", "directory")
    (tmp_path / "model.pt").write_bytes(b"\x80\x02")
    expect_file_error(tmp_path / "model.pt", ".safetensors")


def test_bad_npz_files(tmp_path):
    save_weights(tmp_path / "good.npz", {"w": np.ones((64, 64), np.float32)})
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    expect_file_error(tmp_path / "truncated.npz", "npz")
    np.save(tmp_path / "plain.npy", np.ones(3))  # an .npy renamed to .npz is not an archive
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    expect_file_error(tmp_path / "plain.npz", "npz")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    expect_file_error(tmp_path / "other.npz", "readme.txt")
    corrupt = bytearray(data)
    corrupt[200:240] = b"\xff" * 40  # inside the stored member: the CRC check fails
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    expect_file_error(tmp_path / "corrupt.npz", "CRC")


UNPICKLED = []


def mark_unpickled():
    UNPICKLED.append(True)


class Payload:
    def __reduce__(self):
        return (mark_unpickled, ())


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as archive:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.array([Payload()], dtype=object), allow_pickle=True)
        archive.writestr("w.npy", buffer.getvalue())
    expect_file_error(tmp_path / "evil.npz", "pickle")
    assert not UNPICKLED


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_save_keeps_existing_file(tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    save_weights(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()
    for bad in [{"w": np.array([object()])}, {"w": np.array(["text"])}, {3: np.ones(2)}]:
        with pytest.raises(KilnError) as err:
            save_weights(path, bad)
        assert err.value.code == "K0403"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from kiln.runtime import weights

    path = tmp_path / "model.npz"
    save_weights(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()

    def disk_full(target, arrays):
        with open(target, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "_save_npz", disk_full)
    with pytest.raises(KilnError, match="No space left"):
        save_weights(path, {"w": np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unsupported_extension_on_save(tmp_path):
    with pytest.raises(KilnError) as err:
        save_weights(tmp_path / "model.pt", {"w": np.ones(3)})
    assert err.value.code == "K0403" and ".safetensors" in err.value.hint
    assert not list(tmp_path.iterdir())


# ---- match_weights ----

EXPECTED = {
    "fc1.weight": ((8, 4), "f32"),
    "fc1.bias": ((8,), "f32"),
    "fc2.weight": ((2, 8), "f32"),
    "steps": ((), "i64"),
}


def good_weights():
    return {
        "fc1.weight": np.ones((8, 4), np.float32),
        "fc1.bias": np.zeros(8, np.float32),
        "fc2.weight": np.full((2, 8), 0.5, np.float32),
        "steps": np.array(7, np.int64),
    }


def match_error(*args, **kwargs) -> KilnError:
    with pytest.raises(KilnError) as err:
        match_weights(*args, **kwargs)
    return err.value


def test_match_exact():
    result = match_weights(EXPECTED, good_weights())
    assert result.keys() == EXPECTED.keys()
    assert all(result[k].shape == shape for k, (shape, _) in EXPECTED.items())


def test_every_problem_in_one_error():
    found = good_weights()
    del found["fc1.bias"]
    found["fc2.weight"] = np.ones((8, 2), np.float32)
    found["extra.running_mean"] = np.zeros(5, np.float32)
    err = match_error(EXPECTED, found, source="model.safetensors")
    assert err.code == "K0401" and not err.others
    text = str(err)
    assert "model.safetensors" in text
    assert "fc1.bias" in text and "f32[8]" in text
    assert "extra.running_mean" in text and "f32[5]" in text
    assert "fc2.weight" in text and "f32[2, 8]" in text and "f32[8, 2]" in text
    assert "1 missing, 1 unexpected, 1 mismatched" in text


def test_shape_only_is_k0402():
    found = good_weights()
    found["fc1.weight"] = np.ones((4, 8), np.float32)
    found["fc2.weight"] = np.ones((2, 9), np.float32)
    err = match_error(EXPECTED, found)
    assert err.code == "K0402" and "fc1.weight" in err.message and "fc2.weight" in err.message


def test_prefix_hint():
    found = {"module." + k: v for k, v in good_weights().items()}
    err = match_error(EXPECTED, found)
    assert err.code == "K0401" and "`module.`" in err.hint
    err = match_error({"model." + k: v for k, v in EXPECTED.items()}, good_weights())
    assert "`model.`" in err.hint and "add" in err.hint


def test_aliases():
    expected = {"wte.weight": ((5, 3), "f32")}
    aliases = {"lm_head.weight": "wte.weight"}
    w = np.arange(15, dtype=np.float32).reshape(5, 3)
    for found in [{"wte.weight": w}, {"lm_head.weight": w}, {"wte.weight": w, "lm_head.weight": w}]:
        assert np.array_equal(match_weights(expected, found, aliases)["wte.weight"], w)
    err = match_error(expected, {"wte.weight": w, "lm_head.weight": w + 1}, aliases)
    assert "lm_head.weight" in err.message and "wte.weight" in err.message
    err = match_error(expected, {}, aliases)
    assert err.code == "K0401" and "wte.weight" in err.message and "f32[5, 3]" in err.message


def test_not_strict():
    found = good_weights()
    del found["fc1.bias"]
    found["extra"] = np.zeros(3)
    result = match_weights(EXPECTED, found, strict=False)
    assert set(result) == {"fc1.weight", "fc2.weight", "steps"}
    found["fc1.weight"] = np.ones((3, 3), np.float32)
    assert match_error(EXPECTED, found, strict=False).code == "K0402"


def test_dtype_rules():
    expected = {"w": ((2,), "f32"), "n": ((2,), "i32"), "mask": ((2,), "bool")}
    found = {
        "w": np.array([1.5, 2.5], np.float64),
        "n": np.array([1, 2], np.int64),
        "mask": np.array([True, False]),
    }
    for w_dtype in [np.float64, np.float16, ml_dtypes.bfloat16]:
        result = match_weights(expected, {**found, "w": found["w"].astype(w_dtype)})
        assert result["w"].dtype == np.float32 and result["w"].tolist() == [1.5, 2.5]
    assert result["n"].dtype == np.int32
    cases = [
        ("w", np.array([1, 2], np.int32), "expected f32, found i32[2]"),  # int into float
        ("n", np.array([1.0, 2.0], np.float32), "expected i32, found f32[2]"),  # float into int
        ("n", np.array([1, 2**40], np.int64), "i64[2] do not fit i32"),
        ("mask", np.array([1, 0], np.int32), "expected bool, found i32[2]"),  # bool from bool only
        ("w", np.array([True, False]), "expected f32, found bool[2]"),
    ]
    for key, bad, words in cases:
        err = match_error(expected, {**found, key: bad})
        assert err.code == "K0402" and f"`{key}`" in err.message and words in err.message


def test_initial_values_are_drawn_only_for_what_the_weights_leave_out(tmp_path, monkeypatch):
    import kiln
    import kiln.compiler.initializers as initializers

    src = ("import std.nn as nn\nmodel M {\n  a = nn.Linear(4, 3)\n  b = nn.Linear(3, 2)\n"
           "  forward(x: f32[B, 4]) -> f32[B, 2] { return b(a(x)) }\n}\n")
    first = kiln.compile(src, seed=5, target="reference")
    first.save_weights(tmp_path / "w.safetensors")
    drawn = []
    real = initializers.generate_params

    def counting(params, seed):
        drawn.append(sorted(params))
        return real(params, seed)

    monkeypatch.setattr(initializers, "generate_params", counting)
    full = kiln.compile(src, seed=9, target="reference", weights=tmp_path / "w.safetensors")
    assert drawn == [[]]  # a full set of weights: nothing drawn
    assert list(full.params) == list(first.params)  # in the model's order
    partial = {k: v for k, v in first.state_dict().items() if k.startswith("a.")}
    mixed = kiln.compile(src, seed=9, target="reference", weights=partial, strict=False)
    assert drawn[-1] == ["b.bias", "b.weight"]
    fresh = kiln.compile(src, seed=9, target="reference")
    for path in first.params:  # loaded ones from the file, the rest as seed 9 draws them
        want = first.params[path] if path.startswith("a.") else fresh.params[path]
        np.testing.assert_array_equal(mixed.params[path], want)
