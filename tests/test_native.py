"""The native target: LLVM-compiled code agrees with the reference, and is only ever entered
with arguments it was compiled for."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import oracle
from _nativetest import assembly
from _sizes import symbol_sizes
from hostile._hostile import run_child

import kiln
from kiln import KilnError
from kiln.compiler.codegen.llvm import cache
from kiln.compiler.ops import REGISTRY, Prop
from kiln.compiler.types import NUMPY_DTYPES

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(7)


def both(src: str, **kw):
    """The model on native code, and the oracle it must agree with (the reference, -O0)."""
    return kiln.compile(src, target="native", **kw), oracle(src, **kw)


def agree(native, ref, *inputs, rtol=1e-5, atol=1e-6):
    got, want = native(*inputs), ref(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def test_mlp_example_at_two_batch_sizes():
    native, ref = both(str(ROOT / "examples" / "mlp.kiln"))
    for batch in (1, 5):
        agree(native, ref, RNG.standard_normal((batch, 784)).astype(np.float32))


def _f32_to_f32(rec) -> bool:
    """An elementwise op taking and giving f32 (the ones these generic tests can build)."""
    from kiln.compiler.types import TensorType

    try:
        types = [TensorType("f32", (3,))] * sum(a.kind == "tensor" for a in rec.args)
        attrs = {a.name: a.default for a in rec.args if a.kind == "attr"}
        return rec.infer(types, attrs)[0].dtype == "f32"
    except Exception:
        return False


UNARY = [name for name, rec in REGISTRY.items()
         if rec.has(Prop.ELEMENTWISE) and rec.llvm is not None and len(rec.args) == 1 and _f32_to_f32(rec)]
BINARY = [name for name, rec in REGISTRY.items()
          if rec.has(Prop.ELEMENTWISE) and rec.llvm is not None and len(rec.args) == 2
          and all(a.kind == "tensor" for a in rec.args) and _f32_to_f32(rec)]


@pytest.mark.parametrize("op", UNARY)
def test_unary_ops_agree_with_the_reference(op):
    native, ref = both(f"model M {{ forward(x: f32[B, 7]) -> f32[B, 7] {{ return {op}(x) }} }}")
    x = RNG.standard_normal((3, 7)).astype(np.float32) * 3
    if op in ("log", "sqrt"):
        x = np.abs(x) + 0.1
    agree(native, ref, x)


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("shapes", [("[B, 5]", "[B, 5]"), ("[B, 1]", "[1, 5]"), ("[5]", "[B, 5]"),
                                    ("[B, 5]", "[]")])
def test_binary_ops_broadcast_like_the_reference(op, shapes):
    sa, sb = shapes
    out = "[B, 5]"
    native, ref = both(f"model M {{ forward(a: f32{sa}, b: f32{sb}) -> f32{out} "
                       f"{{ return {op}(a, b) }} }}")
    for batch in (1, 4):
        a = RNG.standard_normal([batch if d == "B" else int(d)
                                 for d in sa.strip("[]").split(", ") if d]).astype(np.float32)
        b = RNG.standard_normal([batch if d == "B" else int(d)
                                 for d in sb.strip("[]").split(", ") if d]).astype(np.float32)
        if op == "div":
            b = np.abs(b) + 0.5
        agree(native, ref, a, b)


def test_integer_bool_and_cast_paths():
    native, ref = both("""
model M {
  forward(i: i64[N], j: i32[N], x: f32[N]) -> (i64[N], f32[N], i32[N], f32[N], bool[N]) {
    return i * 3 - i, i / 2, cast(x, "i32"), cast(j, "f32") + x, cast(x, "bool") + cast(i, "bool")
  }
}""")
    i = np.array([-3, 0, 5, 7], np.int64)
    agree(native, ref, i, i.astype(np.int32), np.array([-1.7, 0.0, 2.5, 3.9], np.float32))


def test_matmul_transpose_softmax_and_batched_broadcasting():
    native, ref = both("""
model M {
  forward(a: f32[B, 2, 3, 4], b: f32[4, 5], c: f32[1, 2, 4, 3]) -> (f32[B, 2, 3, 5], f32[B, 2, 3, 3], f32[B, 2, 5, 3]) {
    y = a @ b
    return softmax(y, axis = 2), log_softmax(a @ c, axis = -1), transpose(y, -1, -2)
  }
}""")
    for batch in (1, 3):
        agree(native, ref, RNG.standard_normal((batch, 2, 3, 4)).astype(np.float32),
              RNG.standard_normal((4, 5)).astype(np.float32),
              RNG.standard_normal((1, 2, 4, 3)).astype(np.float32))


def test_reshapes_view_their_operand_which_lives_until_the_last_reader():
    """A reshape (flatten, squeeze, unsqueeze) has no memory of its own: it reads its operand's
    bytes, which must then stay untouched until the reshape's own last reader, past the
    operand's last direct use, while later intermediates of the same size take free memory."""
    source = """
model M {
  forward(x: f32[B, 4, 6]) -> (f32[B, 24], f32[B, 6, 4], f32[B, 4, 6]) {
    a = exp(x)
    v = unsqueeze(flatten(reshape(a, [B, 6, 4]), start = 1), axis = 0)
    b = tanh(x) * 2.0
    c = sin(b) + b
    d = cos(c) * c
    return squeeze(v, axis = 0) + 1.0, reshape(d, [B, 6, 4]), flatten(v, start = 0, end = 1) |> reshape([B, 4, 6])
  }
}"""
    native, ref = both(source)
    for batch in (1, 5):
        agree(native, ref, RNG.standard_normal((batch, 4, 6)).astype(np.float32))
    graph = native.lowered().graph
    memory = graph.memory
    assert len(memory.views) >= 2  # the optimizer merges each chain into one reshape
    viewed = set(memory.views.values())
    assert all(graph.op(node) not in ("reshape", "flatten", "squeeze", "unsqueeze")
               for node, _ in viewed)
    position = {nid: i for i, nid in enumerate(memory.order)}
    dies = {(b.node, b.index): b.dies for b in memory.buffers}
    for view, base in memory.views.items():
        readers = [position[v] for v in graph.g.successors(view[0])]
        assert dies[base] >= max(readers)
    assert not {b.node for b in memory.buffers} & {node for node, _ in memory.views}


@pytest.mark.parametrize("dtype", ["f32", "f16", "i64", "i32", "bool"])
def test_permutes_copy_every_element_in_blocks_and_at_the_edges(dtype):
    """A permute whose result's last axis is not x's contiguous one copies whole 8 x 8 blocks
    through registers and the edges element by element: sizes below, at and past a block,
    every dtype's width, exactly."""
    source = f"""
model M {{
  forward(x: {dtype}[A, B], y: {dtype}[N, C, H, W]) -> ({dtype}[B, A], {dtype}[N, H, W, C], {dtype}[W, C, N, H]) {{
    return transpose(x, 0, 1), permute(y, [0, 2, 3, 1]), permute(y, [3, 1, 0, 2])
  }}
}}"""
    native = kiln.compile(source)
    rng = np.random.default_rng(3)

    def make(*shape):
        values = rng.integers(-1000, 1000, shape) if dtype != "bool" else rng.random(shape) < .5
        return values.astype(NUMPY_DTYPES[dtype])

    for (a, b), (n, c, h, w) in [((3, 5), (1, 2, 3, 4)), ((8, 8), (2, 8, 3, 8)),
                                 ((17, 24), (2, 9, 5, 17)), ((64, 33), (1, 16, 8, 8))]:
        x, y = make(a, b), make(n, c, h, w)
        got = native(x, y)
        for g, want in zip(got, (x.T, y.transpose(0, 2, 3, 1), y.transpose(3, 1, 0, 2)),
                           strict=True):
            assert g.dtype == want.dtype
            np.testing.assert_array_equal(g, want)


def test_half_precision_matmul_rounds_once():
    native, ref = both("model M { forward(a: f16[3, 64], b: f16[64, 2]) -> f16[3, 2] "
                       "{ return a @ b } }")
    agree(native, ref, RNG.standard_normal((3, 64)).astype(np.float16),
          RNG.standard_normal((64, 2)).astype(np.float16), rtol=1e-3, atol=1e-3)


def test_an_op_without_a_native_lowering_is_a_located_error(monkeypatch):
    import dataclasses

    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(REGISTRY["tanh"], llvm=None))
    src = "model M {\n  forward(x: f32[B]) -> f32[B] {\n    return tanh(x)\n  }\n}\n"
    with pytest.raises(KilnError) as info:
        kiln.compile(src, target="native")
    assert info.value.code == "K0702" and info.value.span.line == 3


def test_sizes_that_inputs_make_negative_are_refused_before_native_code_runs():
    native, ref = both("model M { forward(x: f32[T]) -> f32[T - 2] { return x[1:T - 1] * 2.0 } }")
    agree(native, ref, RNG.standard_normal(5).astype(np.float32))
    for m in (native, ref):
        with pytest.raises(KilnError) as info:
            m(np.ones(1, np.float32))
        assert info.value.code == "K0505"


@pytest.mark.parametrize("target", ["reference", "native", "onnx"])
@pytest.mark.parametrize("body, n, fine", [
    ("return x[:40] * 1.0", 2, 40),         # a constant bound past a symbolic size
    ("return x[-3:] * 1.0", 2, 3),
    ("return x[2:M] * 1.0", 5, 9),           # another input's size past it
    ("return sum(x[:M] * 2.0)", 3, 7),       # an intermediate, not a result
    ("return sum(x[:40] * 2.0)", 3, 40),
    ("return x[::-1][:6] * 1.0", 4, 6),
])
def test_a_slice_bound_past_a_symbolic_size_is_refused_on_every_target(body, n, fine, target):
    """A slice's symbolic bounds are taken in range by its type (x[:40] of x: f32[N] is 40
    long); a call whose sizes put one out of range is refused (K0505) on every target, as
    the reference does, and native code reads nothing past x (it used to return what lay
    after it); in range, the same values as numpy."""
    src = f"model S {{ forward(x: f32[N], y: f32[M]) {{ {body} }} }}"
    m = kiln.compile(src, target=target)
    y = np.zeros(7, np.float32)
    x = RNG.standard_normal(fine).astype(np.float32)
    ref = kiln.compile(src, target="reference")
    np.testing.assert_allclose(m(x, y), ref(x, y), rtol=1e-5, atol=1e-5)
    with pytest.raises(KilnError) as info:
        m(RNG.standard_normal(n).astype(np.float32), y)
    assert info.value.code == "K0505"


def test_bad_inputs_are_refused_before_native_code_runs():
    m = kiln.compile("model M { forward(x: f32[B, 3]) -> f32[B, 3] { return x * 2.0 } }",
                     target="native")
    for bad in (np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float64), np.zeros(3, np.float32)):
        with pytest.raises(KilnError):
            m(bad)
        with pytest.raises(KilnError):  # by name: the keyword fast path checks the same
            m(x=bad)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)[:, ::-1]  # not contiguous: copied
    np.testing.assert_array_equal(m(x), x * 2)
    np.testing.assert_array_equal(m(x=x), x * 2)
    np.testing.assert_array_equal(m(x=np.ascontiguousarray(x)), x * 2)
    for kwargs in ({"y": x}, {"x": x, "y": x}):  # unknown names: refused, naming them
        with pytest.raises(KilnError, match="y"):
            m(**kwargs)
    with pytest.raises(KilnError):
        m(x, x=x)  # given twice


def test_calls_from_several_threads_at_once():
    native, ref = both(str(ROOT / "examples" / "mlp.kiln"))
    inputs = [RNG.standard_normal((n, 784)).astype(np.float32) for n in (1, 2, 3, 4, 5, 6)]
    want = [ref(x) for x in inputs]
    errors = []

    def work(k):
        for _ in range(20):
            x = inputs[k % len(inputs)]
            if not np.allclose(native(x), want[k % len(inputs)], rtol=1e-5, atol=1e-6):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


LEAK_CHECK = """
import numpy as np, kiln

def rss_kib():  # the resident set now (not the peak, which compiling raised)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (__import__("os").sysconf("SC_PAGE_SIZE") // 1024)

m = kiln.compile("model M { forward(x: f32[B, 64]) -> f32[B, 64] { return relu(x) + 1.0 } }",
                 target="native")
# a stride-1 convolution takes a heap block for its padded input on every call, on each
# thread that runs a block of the batch: about 8 KB a call, 80 MB if it leaked
conv = kiln.compile("import std.nn\\nmodel C { forward(x: f32[B, 4, 12, 12]) {\\n"
                    "  return x |> nn.Conv2d(4, 8, 3, padding = 1) } }", threads=2)
x, image = np.zeros((4, 64), np.float32), np.ones((2, 4, 12, 12), np.float32)
for _ in range(500):
    m(x)
    conv(image)
before = rss_kib()
for _ in range(10_000):
    m(x)
    conv(image)
print("grew", rss_kib() - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_many_calls_do_not_grow_memory():
    """In a fresh process: this one's memory is what earlier tests left."""
    child = run_child(LEAK_CHECK, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    grew = int(child.stdout.split("grew")[-1])
    assert grew < 10_000  # KiB: no per-call leak


def test_the_compile_cache_serves_unchanged_models_and_rebuilds_damaged_entries(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    src = "model M { forward(x: f32[B, 8]) -> f32[B, 8] { return tanh(x) * 2.0 } }"
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    first = kiln.compile(src, target="native")(x)
    (entry,) = tmp_path.glob("[0-9a-f]*.o")  # by LLVM IR (a `g` entry: by graph, in front)
    stamp = entry.stat().st_mtime_ns
    np.testing.assert_array_equal(kiln.compile(src, target="native")(x), first)
    assert entry.stat().st_mtime_ns == stamp  # served from the cache, not rewritten
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
                   lambda b: b"garbage"):
        for by_graph in tmp_path.glob("g*.o"):  # (else the graph's entry serves the code)
            by_graph.unlink()
        entry.write_bytes(damage(entry.read_bytes()))
        np.testing.assert_array_equal(kiln.compile(src, target="native")(x), first)
        assert entry.read_bytes()[:8] == cache.MAGIC  # rebuilt, whole again
    kiln.compile(src.replace("2.0", "3.0"), target="native")  # constants are data, not code
    assert len(list(tmp_path.glob("[0-9a-f]*.o"))) == 1 and len(list(tmp_path.glob("g*.o"))) == 1
    kiln.compile(src.replace("tanh", "sigmoid"), target="native")
    assert len(list(tmp_path.glob("[0-9a-f]*.o"))) == 2  # changed code is a new entry
    assert not list(tmp_path.glob(".*.tmp"))  # writes are atomic: no leftovers


def _ahead_of_time(tmp_path, src, cpu=None):
    path = tmp_path / "model.kiln"
    path.write_text(src)
    args = ["compile", str(path), "--target", "native", "-o", str(tmp_path / "model.so")]
    if cpu:
        args += ["--cpu", cpu]
    from kiln.cli import main

    assert main(args) == 0
    return tmp_path / "model.so"


AOT_SRC = ("model M(k: float = 2.0) {\n  param w: [8, 8] = init.normal()\n"
           "  forward(x: f32[B, 8]) -> f32[B, 8] where B <= 64 { return softmax(x @ w * k) }\n}\n")


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_ahead_of_time_library_runs_without_recompiling(tmp_path, monkeypatch):
    lib = _ahead_of_time(tmp_path, AOT_SRC)
    for name in ("model.so", "model.safetensors", "model.kiln.json", "model.h"):
        assert (tmp_path / name).exists()
    monkeypatch.setattr("kiln.compiler.driver.compile_object", None)  # no compiling allowed now
    m = kiln.load_compiled(lib)
    ref = kiln.compile(AOT_SRC, target="reference")
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(m(x), ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(KilnError) as info:
        m(np.zeros((65, 8), np.float32))  # the where constraint survives the trip
    assert info.value.code == "K0504"
    assert repr(m) == repr(ref).replace("reference", "native")  # the signature, from metadata
    for no_graph in (m.lowered, lambda: m.export_onnx(tmp_path / "m.onnx"), lambda: m.profile(x)):
        with pytest.raises(KilnError) as info:  # a library has no graph to optimize or export
            no_graph()
        assert info.value.code == "K0602" and "library built ahead of time" in info.value.message
    assert not (tmp_path / "m.onnx").exists()


CONV_SRC = ("import std.nn as nn\n"
            "model C {\n  conv = nn.Conv2d(3, 8, 3, padding = 1)\n  bn = nn.BatchNorm2d(8)\n"
            "  fc = nn.Linear(8, 4)\n  forward(x: f32[B, 3, 6, 6]) -> f32[B, 4] {\n"
            "    return fc(flatten(global_avg_pool(relu(bn(conv(x))))))\n  }\n}\n")


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
@pytest.mark.parametrize("c_arrays", [False, True])
def test_a_library_stores_each_weight_once_and_derives_the_rest(tmp_path, c_arrays):
    """Weights packed for the GEMM or with a BatchNorm folded in are made again on loading
    (the .safetensors holds each parameter once), or stored for C callers with --c-arrays."""
    import json

    from kiln.cli import main
    from kiln.runtime.weights import load_weights

    (tmp_path / "c.kiln").write_text(CONV_SRC)
    ref = kiln.compile(CONV_SRC, target="reference", seed=3)
    ref.save_weights(tmp_path / "w.safetensors")
    args = ["compile", str(tmp_path / "c.kiln"), "-o", str(tmp_path / "c.so"),
            "--weights", str(tmp_path / "w.safetensors")] + (["--c-arrays"] if c_arrays else [])
    assert main(args) == 0
    meta = json.loads((tmp_path / "c.kiln.json").read_text())
    stored = load_weights(tmp_path / "c.safetensors")
    derived = [n for n in meta["params"] if n not in ref.params and not n.startswith("const:")]
    assert derived  # the weights the code reads are packed or folded, under derived names
    if c_arrays:
        assert set(meta["params"]) <= set(stored) and not meta["derived"]
    else:
        assert set(stored) == set(ref.params) | {n for n in stored if n.startswith("const:")}
        assert sorted(meta["derived"]) == sorted(derived)
    m = kiln.load_compiled(tmp_path / "c.so")
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(m(x), ref(x), rtol=1e-4, atol=1e-5)
    assert sorted(m.params) == sorted(ref.params)


def test_c_arrays_is_for_a_native_library(tmp_path):
    from kiln.cli import main

    (tmp_path / "c.kiln").write_text(CONV_SRC)
    assert main(["compile", str(tmp_path / "c.kiln"), "-o", str(tmp_path / "c.onnx"),
                 "--c-arrays"]) != 0
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_a_library_keeps_output_names_and_where_facts(tmp_path):
    src = ("model M {\n  forward(x: f32[B, 2, H]) -> (pooled: f32[B, 2, H // 2], "
           "joined: f32[B, 4, H])\n      where H % 2 == 0 {\n    h = max_pool(x, 2)\n"
           "    return h, concat([concat([h, h], axis = 2), x], axis = 1)\n  }\n}\n")
    m = kiln.load_compiled(_ahead_of_time(tmp_path, src))
    ref = kiln.compile(src, target="reference")
    assert [p.name for p in m.outputs] == ["pooled", "joined"]
    x = RNG.standard_normal((3, 2, 6)).astype(np.float32)
    got, want = m(x), ref(x)
    assert got._fields == ("pooled", "joined")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    with pytest.raises(KilnError) as info:
        m(np.zeros((1, 2, 5), np.float32))
    assert info.value.code == "K0504"


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_a_library_is_built_for_one_set_of_optional_inputs(tmp_path, capsys):
    """An optional input is built in as a required input (as in an ONNX export), or left out
    with --omit; calls are checked against the library's own signature."""
    from kiln.cli import main

    src = tmp_path / "opt.kiln"
    src.write_text("model M { forward(x: f32[B, 4], m: f32[B, 4]?) -> f32[B, 4] {\n"
                   "  return x * m if defined(m) else x + 1.0 } }\n")
    x, m = np.ones((2, 4), np.float32), np.full((2, 4), 3.0, np.float32)
    assert main(["compile", str(src), "-o", str(tmp_path / "with.so")]) == 0
    assert main(["compile", str(src), "-o", str(tmp_path / "without.so"), "--omit", "m"]) == 0
    assert "M(x: f32[B, 4]) -> f32[B, 4]" in (tmp_path / "without.h").read_text()
    with_m, without = (kiln.load_compiled(tmp_path / f"{n}.so") for n in ("with", "without"))
    np.testing.assert_array_equal(with_m(x, m), x * m)
    np.testing.assert_array_equal(without(x), x + 1)
    for call, text in [(lambda: with_m(x), "missing input m"), (lambda: without(x, m), "takes 1")]:
        with pytest.raises(KilnError) as info:
            call()
        assert info.value.code == "K0501" and text in info.value.message, str(info.value)
    capsys.readouterr()
    assert main(["compile", str(src), "-o", str(tmp_path / "bad.so"), "--omit", "x"]) == 1
    assert "no optional input x" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_a_library_for_missing_cpu_features_is_refused(tmp_path):
    import json

    lib = _ahead_of_time(tmp_path, AOT_SRC, cpu="x86-64-v3")
    meta_path = tmp_path / "model.kiln.json"
    meta = json.loads(meta_path.read_text())
    assert "+avx2" in meta["features"] and "avx512f" not in meta["features"]
    kiln.load_compiled(lib)  # every machine here has AVX2
    meta["features"] += ",+imaginary-feature"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(KilnError) as info:
        kiln.load_compiled(lib)
    assert info.value.code == "K0704" and "imaginary-feature" in info.value.message


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_the_library_is_usable_from_c_with_its_header(tmp_path):
    import subprocess

    from kiln.runtime.weights import load_weights

    src = "model M { forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x) * 3.0 + 1.0 } }"
    lib = _ahead_of_time(tmp_path, src)
    meta = __import__("json").loads((tmp_path / "model.kiln.json").read_text())
    consts = load_weights(tmp_path / "model.safetensors")
    values = ", ".join(f"{float(consts[name]):.1f}f" for name in meta["params"])
    (tmp_path / "main.c").write_text(f"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(void) {{
    float x[8] = {{-1, 2, -3, 4, 5, -6, 7, 0}}, y[8];
    float consts[] = {{{values}}};
    void *params[{len(meta['params'])}];
    for (int i = 0; i < {len(meta['params'])}; i++) params[i] = &consts[i];
    /* a stale code in status: run sets status[0] itself (0: no failure) */
    int64_t dims[1] = {{2}}, offsets[{max(1, len(meta['slots']))}], status[1] = {{7}};
    void *work = aligned_alloc(64, 64 + kiln_plan(dims, offsets));
    void *in[1] = {{x}}, *out[1] = {{y}};
    run(in, out, params, work, dims, offsets, status);
    if (status[0]) return 1;
    for (int i = 0; i < 8; i++) printf("%g ", y[i]);
    return 0;
}}
""")
    exe = tmp_path / "main"
    subprocess.run(["cc", "-o", str(exe), str(tmp_path / "main.c"), str(lib), "-lm",
                    f"-Wl,-rpath,{tmp_path}"], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert [float(v) for v in out] == [1, 7, 1, 13, 16, 1, 22, 1]


@pytest.mark.parametrize(("cpu", "wide"), [("x86-64-v3", False), ("x86-64-v4", True)])
def test_code_for_a_named_cpu_uses_its_vector_width(cpu, wide):
    asm = assembly("model M { forward(a: f32[N], b: f32[N]) -> f32[N] { return a * b + a } }",
                   cpu)
    assert "ymm" in asm  # vectorised with AVX2 at least
    assert ("zmm" in asm) == wide  # and AVX-512 only where the target has it


AVX2_SRC = """
import std.nn
model Narrow {
  forward(x: f32[B, 8, 13, 17], v: f32[M, 200], w: f32[200, N]) {
    c = x |> nn.Conv2d(8, 12, 3, padding = 1) |> relu      # stride 1: the padded copy
    d = c |> nn.Conv2d(12, 7, 3, stride = 2, padding = 1)   # im2col, 7 rows: 6 + 1
    e = c |> nn.Conv2d(12, 2, 1)                            # C += A @ B, A prepacked
    return d, e, v @ w                                      # M of 1 or 2 streams w
  }
}
"""


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_code_for_a_named_cpu_computes_like_the_reference(cpu):
    """Machine code for AVX2 (8 lanes: 6 x 16 tiles, 12 accumulators) and for AVX-512 runs
    here whatever the host's widest vectors: both tilings against the reference."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.compiler.initializers import generate_params
    from kiln.runtime.native import NativeModel

    target = targets.named(cpu)
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    program = kiln.load(AVX2_SRC)
    compilation = Compilation.of(program, cpu=target)
    params = generate_params(compilation.model.params, 0)
    native = NativeModel(compilation, params, threads=2)
    ref = kiln.compile(AVX2_SRC, target="reference")
    for batch, m, n in [(1, 1, 300), (3, 2, 37), (2, 13, 129)]:
        feeds = [RNG.standard_normal(s).astype(np.float32)
                 for s in [(batch, 8, 13, 17), (m, 200), (200, n)]]
        for got, want in zip(native(*feeds), ref(*feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


FINISHED_SRC = """
import std.nn
model Finished {
  forward(x: f32[B, 3, 12, 48], r: f32[B, 10, 6, 24]) {
    return relu((x |> nn.Conv2d(3, 10, 7, stride = 2, padding = 3)) + r)
  }
}
"""


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_strided_convolutions_finish_their_blocks_in_code_for_a_named_cpu(cpu):
    """A stride-2 convolution with a fused residual add and relu in AVX2 code (8-lane
    vectors: panels 16 columns wide) and AVX-512 code: its vectors inside the input pack
    from plain loads (24 outputs a row: AVX2's third vector of a row is one whose last taps
    fall in the padding), the rest through masks or gathers, and the GEMM's finishing hook
    adds the bias and applies the epilogue (finish.py); against the reference at batch 1
    and 3."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.compiler.initializers import generate_params
    from kiln.runtime.native import NativeModel

    target = targets.named(cpu)
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    compilation = Compilation.of(kiln.load(FINISHED_SRC), cpu=target)
    params = generate_params(compilation.model.params, 0)
    params = {name: RNG.standard_normal(value.shape).astype(np.float32) * 0.2
              for name, value in params.items()}  # a bias that is not zero
    native = NativeModel(compilation, params, threads=2)
    ref = kiln.compile(FINISHED_SRC, target="reference")
    ref.load_weights(params)
    for batch in (1, 3):
        feeds = [RNG.standard_normal(s).astype(np.float32)
                 for s in [(batch, 3, 12, 48), (batch, 10, 6, 24)]]
        for got, want in zip(native(*feeds), ref(*feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


STREAMED_SRC = """
import std.nn
model S {
  fc = nn.Linear(300, 40)
  forward(x: f32[M, 300], b: f32[300, 37]) {
    return relu(fc(x)), x @ b
  }
}
"""


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_products_of_few_rows_stream_b_in_code_for_a_named_cpu(cpu):
    """Every row count up to a few tiles in AVX2 code (Tiling.stream_rows 6: a panel a row in
    its 12 accumulators; past it the 6-row tiles) and AVX-512 code (11, then 12-row tiles):
    a prepacked weight with a fused bias and relu, and an input read in place, both with
    columns past the last whole vector; against the reference on one and two threads."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.compiler.initializers import generate_params
    from kiln.runtime.native import NativeModel

    target = targets.named(cpu)
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    compilation = Compilation.of(kiln.load(STREAMED_SRC), cpu=target)
    params = {name: RNG.standard_normal(value.shape).astype(np.float32) * 0.2
              for name, value in generate_params(compilation.model.params, 0).items()}
    natives = [NativeModel(compilation, params, threads=t) for t in (1, 2)]
    ref = kiln.compile(STREAMED_SRC, target="reference")
    ref.load_weights(params)
    for m in range(1, 15):
        feeds = [RNG.standard_normal(s).astype(np.float32) for s in [(m, 300), (300, 37)]]
        want = ref(*feeds)
        for native in natives:
            for got, expected in zip(native(*feeds), want, strict=True):
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


EXAMPLES = sorted((ROOT / "examples").glob("*.kiln"))


def _feeds(model, sizes, rng):
    feeds = []
    for p in model.inputs:
        env = symbol_sizes(model, sizes, 3)
        shape = tuple(d.evaluate(env) for d in p.type.shape)
        if p.type.dtype == "i64":  # ids valid for the smallest size
            feeds.append(rng.integers(0, min(sizes.values()), size=shape).astype(np.int64))
        elif p.type.dtype == "bool":
            feeds.append(rng.random(shape) < 0.5)
        else:
            feeds.append(rng.standard_normal(shape).astype(p.type.np_dtype))
    return feeds


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_runs_natively_like_the_reference(path):
    native, ref = both(str(path))
    rng = np.random.default_rng(3)
    for sizes in ({"B": 1, "T": 4, "N": 3, "E": 5}, {"B": 2, "T": 7, "N": 6, "E": 9}):
        agree(native, ref, *_feeds(ref, sizes, rng), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["LSTM", "SCAN_REVERSE", "SCAN_CAPTURE"])
def test_scan_runs_natively_like_the_reference(name):
    import test_language

    native, ref = both(getattr(test_language, name))
    rng = np.random.default_rng(4)
    for sizes in ({"B": 1, "T": 1}, {"B": 3, "T": 6}):
        agree(native, ref, *_feeds(ref, sizes, rng))


SCAN_WEIGHT_INPUT = """
model S {
  forward(xs: f32[T, B, 45], h0: f32[B, 45], w: f32[37, 45], v: f32[45, 37]) {
    ys, h = scan x in xs carry (h = h0) {
      g = tanh(h @ v)
      h = tanh(x + g @ w)
      emit h @ v
    }
    return ys, h
  }
}"""


def test_a_scan_packs_a_captured_weight_input_once_per_call(monkeypatch):
    """Matrices a scan body's GEMMs read as B that are not known before the call (model
    inputs here; a training step's weights) are packed into B's panels once, before the
    loop (45 and 37 columns: partial panels), for a plain matmul and for fused ones (a
    tanh epilogue; v read by two products): the results are the reference's, at one step
    and at several, on one thread and on two."""
    from kiln.compiler.codegen.llvm import module as emitter

    packed = []
    real = emitter._b_packer
    monkeypatch.setattr(emitter, "_b_packer", lambda kb, nr: packed.append(nr) or real(kb, nr))
    monkeypatch.setenv("KILN_CACHE", "0")
    ref = kiln.compile(SCAN_WEIGHT_INPUT, target="reference")
    for threads in (1, 2):
        native = kiln.compile(SCAN_WEIGHT_INPUT, threads=threads)
        for steps, batch in ((1, 1), (5, 3), (4, 70)):
            xs = RNG.standard_normal((steps, batch, 45)).astype(np.float32)
            h0 = RNG.standard_normal((batch, 45)).astype(np.float32)
            w = (RNG.standard_normal((37, 45)) / 6).astype(np.float32)
            v = (RNG.standard_normal((45, 37)) / 6).astype(np.float32)
            agree(native, ref, xs, h0, w, v, rtol=1e-4, atol=1e-5)
    assert len(packed) == 4  # w and v, for each of the two builds


def test_weights_loaded_after_compiling_reach_folded_native_code():
    src = ("import std.nn\nmodel M {\n  conv = nn.Conv2d(2, 3, 3, padding = 1)\n"
           "  bn = nn.BatchNorm2d(3)\n"
           "  forward(x: f32[B, 2, 5, 5]) -> f32[B, 3, 5, 5] { return x |> conv |> bn }\n}\n")
    native, ref = both(src)
    assert any(s.name == "fold_batch_norm" and s.changes.get("folded") for s in native.pass_stats)
    new = {k: RNG.standard_normal(v.shape).astype(v.dtype) if v.dtype == np.float32 else v
           for k, v in ref.params.items()}
    new["bn.running_var"] = np.abs(new["bn.running_var"]) + 0.5
    native.load_weights(new)
    ref.load_weights(new)
    agree(native, ref, RNG.standard_normal((2, 2, 5, 5)).astype(np.float32), rtol=1e-4,
          atol=1e-5)


def test_weights_are_read_from_one_fresh_block_and_a_new_load_gets_a_new_one(monkeypatch):
    """The arrays native code reads (FRESH to FRESH_MAX bytes in all) are copied into one
    anonymous mapping, read-only; new weights bind a new block and leave the old one as it
    was; with no mapping to be had, they stay where they are."""
    from kiln.runtime import native as rt

    src = ("import std.nn\nmodel M {\n  a = nn.Linear(300, 512)\n  b = nn.Linear(512, 300)\n"
           "  forward(x: f32[B, 300]) -> f32[B, 300] { return x |> a |> b }\n}\n")
    model, ref = both(src)
    x = RNG.standard_normal((3, 300)).astype(np.float32)

    def block(m):
        """The bound arrays, and the one object holding their memory."""
        arrays, roots = m._state.built[frozenset()].arrays, {}
        for a in arrays:
            while isinstance(a.base, np.ndarray):
                a = a.base
            root = a.base.obj if isinstance(a.base, memoryview) else a.base
            roots[id(root)] = root
        assert len(roots) == 1
        return arrays, roots.popitem()[1]

    arrays, mapping = block(model)
    assert sum(a.nbytes for a in arrays) >= rt.FRESH and isinstance(mapping, rt.mmap.mmap)
    assert all(not a.flags.writeable for a in arrays)
    assert all(a.ctypes.data % 64 == 0 for a in arrays)
    agree(model, ref, x, rtol=1e-4, atol=1e-5)
    old = [a.copy() for a in arrays]
    new = {k: (0.05 * RNG.standard_normal(v.shape)).astype(np.float32)
           for k, v in ref.params.items()}
    model.load_weights(new)
    ref.load_weights(new)
    agree(model, ref, x, rtol=1e-4, atol=1e-5)
    assert block(model)[1] is not mapping
    assert all(np.array_equal(a, b) for a, b in zip(arrays, old))  # a call in flight's

    def no_mapping(*args, **kwargs):
        raise OSError("no anonymous mappings here")

    monkeypatch.setattr(rt.mmap, "mmap", no_mapping)
    model.load_weights(ref.params)
    assert block(model)[1] is None  # np.empty's own memory
    agree(model, ref, x, rtol=1e-4, atol=1e-5)
    with pytest.raises(KilnError, match="from an object of type int") as err:
        model.load_weights(42)
    assert err.value.code == "K0403"
    for size in (3, (rt.FRESH_MAX + 4) // 4):  # under FRESH bytes, over FRESH_MAX: as they were
        array = np.ones(size, np.float32)
        assert rt._gathered([array])[0] is array


def test_threads_split_large_gemms_and_agree_with_one_thread():
    src = "model G { forward(a: f32[M, 900], b: f32[900, 257]) -> f32[M, 257] { return a @ b } }"
    one = kiln.compile(src, threads=1)
    two = kiln.compile(src, threads=2)
    assert (one.threads, two.threads) == (1, 2)
    for m in (1, 13, 200, 299):  # below and above the size that pays; uneven blocks
        a = RNG.standard_normal((m, 900)).astype(np.float32)
        b = RNG.standard_normal((900, 257)).astype(np.float32)
        np.testing.assert_array_equal(two(a, b), one(a, b))  # disjoint rows: the same sums
        np.testing.assert_allclose(two(a, b), a @ b, rtol=1e-4, atol=1e-4)
    with pytest.raises(KilnError):
        kiln.compile(src, threads=0)


@pytest.mark.parametrize("k, n", [(256, 768), (200, 777), (96, 700), (300, 40)])
def test_threads_split_matrix_vector_products_and_agree_with_one_thread(k, n):
    """A C of at most STREAM_ROWS rows (a recurrent step, a layer at a small batch) streams
    B once, row by row (1 or 2 rows in runs of up to 8 vectors, 3 to 11 a panel at a time), and is
    split by columns from gemm.STREAM_PARALLEL_WORK multiply-adds (B read from memory, not
    its arithmetic, is its cost): the last block short, B a weight (prepacked panels) or an
    input (read in place). A column's sum is the same whichever block holds it."""
    src = (f"import std.nn\nmodel V {{ fc = nn.Linear({k}, {n})\n"
           f"  forward(x: f32[M, {k}], b: f32[{k}, {n}]) {{ return fc(x), x @ b }} }}")
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    two.load_weights(one.state_dict())
    w, bias = (one.state_dict()[name] for name in ("fc.weight", "fc.bias"))
    for m in (1, 2, 3, 5, 8, 11, 12):  # 12: the tiles, one of them
        x = RNG.standard_normal((m, k)).astype(np.float32)
        b = RNG.standard_normal((k, n)).astype(np.float32)
        for got, want in zip(two(x, b), one(x, b), strict=True):
            np.testing.assert_array_equal(got, want)
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(two(x, b)[0], x64 @ w.T.astype(np.float64) + bias,
                                   rtol=1e-5, atol=1e-5 * np.sqrt(k))
        np.testing.assert_allclose(two(x, b)[1], x64 @ b, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_threads_split_a_batch_of_convolutions_by_sample():
    src = ("model C { forward(x: f32[B, 8, 20, 20], w: f32[16, 8, 3, 3]) -> f32[B, 16, 18, 18] "
           "{ return conv(x, w) } }")
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    ref = kiln.compile(src, target="reference")
    w = RNG.standard_normal((16, 8, 3, 3)).astype(np.float32)
    for batch in (1, 2, 3, 5):  # one sample, even and uneven splits
        x = RNG.standard_normal((batch, 8, 20, 20)).astype(np.float32)
        np.testing.assert_array_equal(two(x, w), one(x, w))
        np.testing.assert_allclose(two(x, w), ref(x, w), rtol=1e-4, atol=1e-4)


def test_threads_split_a_batch_of_products_with_epilogues_by_sample():
    """A matmul heading a fused epilogue splits its batch across the threads from
    module.ROW_BLOCK rows a thread, each block's GEMM and epilogue on its thread: a linear
    layer's bias and relu, one over [B, 5, 37] with a residual add, a weight given at run
    time (matmul_bt), a batched product with a scale. Bit-equal on 1, 2 and 3 threads (a
    row's sums do not depend on the split), and agreeing with the reference, at batches of
    one sample, 7 (too few rows of x's products to split; the others' 35 and 49 split on
    two threads) and 40 (every product split, unevenly on three threads)."""
    from kiln.compiler.codegen.llvm import module

    src = ("import std.nn\nmodel P {\n  a = nn.Linear(37, 150)\n  b = nn.Linear(37, 150)\n"
           "  forward(x: f32[B, 37], y: f32[B, 5, 37], r: f32[B, 5, 150], w: f32[150, 37],"
           " q: f32[B, 7, 16], k: f32[B, 7, 16]) {\n"
           "    return relu(a(x)), b(y) + r, tanh(matmul(x, permute(w, [1, 0]))),"
           " matmul(q, permute(k, [0, 2, 1])) * 0.25 } }")
    models = [kiln.compile(src, threads=t, seed=2) for t in (1, 2, 3)]
    ref = kiln.compile(src, target="reference", seed=2)
    assert 7 // 2 < module.ROW_BLOCK <= 40 // 3  # x's 7 rows never split, its 40 always
    w = RNG.standard_normal((150, 37)).astype(np.float32)
    for batch in (1, 7, 40):
        x = RNG.standard_normal((batch, 37)).astype(np.float32)
        y = RNG.standard_normal((batch, 5, 37)).astype(np.float32)
        r = RNG.standard_normal((batch, 5, 150)).astype(np.float32)
        q, k = (RNG.standard_normal((batch, 7, 16)).astype(np.float32) for _ in range(2))
        outs = [m(x, y, r, w, q, k) for m in models]
        for got in outs[1:]:
            for g, o in zip(got, outs[0], strict=True):
                np.testing.assert_array_equal(g, o)
        for g, want in zip(outs[0], ref(x, y, r, w, q, k), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


# (batch, in channels, out channels, height, width, padding, dilation, groups): C of 13 rows
# (12 + 1), of 100 (past a 96-row block of A) over a 360-deep sum (two slices of 256);
# grids of 43 columns (a panel and 11), 232 (7 panels and 8) and 6 (a partial panel alone)
IN_PLACE_CONVS = [(2, 3, 13, 5, 7, 1, 1, 1), (1, 40, 100, 6, 37, 1, 1, 1),
                  (3, 4, 16, 9, 9, 2, 2, 1), (2, 6, 10, 7, 8, 1, 1, 2), (2, 5, 17, 2, 3, 1, 1, 1)]


@pytest.mark.parametrize("shape", IN_PLACE_CONVS, ids=lambda s: "x".join(map(str, s)))
def test_stride_one_convolutions_read_their_padded_input_in_place(shape, monkeypatch):
    """A stride-1 convolution's GEMM reads its zero-bordered input in place through a table
    of row offsets (gemm `rows_in_place`, never packing whole panels): weights as an input
    (A packed per call) and as a parameter (A prepacked) agree with the reference at every
    edge (row remainders, a second block of rows, a second slice of the sum, partial panels,
    dilation, groups), and two threads agree with one exactly. (Winograd, which would take
    the 40 -> 100 layer, is off.)"""
    monkeypatch.setenv("KILN_WINOGRAD", "0")
    batch, c, o, h, w, pad, dil, groups = shape
    conv = (f"model C {{ forward(x: f32[B, {c}, {h}, {w}], w: f32[{o}, {c // groups}, 3, 3]) "
            f"{{ return conv(x, w, padding = {pad}, dilation = {dil}, groups = {groups}) }} }}")
    layer = (f"import std.nn\nmodel L {{ c = nn.Conv2d({c}, {o}, 3, padding = {pad}, "
             f"dilation = {dil}, groups = {groups})\n  forward(x: f32[B, {c}, {h}, {w}]) "
             f"{{ return c(x) }} }}")
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    wt = RNG.standard_normal((o, c // groups, 3, 3)).astype(np.float32)
    ref = kiln.compile(conv, target="reference")
    for threads in (1, 2):
        native = kiln.compile(conv, threads=threads)
        got = native(x, wt)
        np.testing.assert_allclose(got, ref(x, wt), rtol=1e-4, atol=1e-4)
        if threads == 1:
            alone = got
        else:
            np.testing.assert_array_equal(got, alone)
    native, ref = both(layer)
    agree(native, ref, x, rtol=1e-4, atol=1e-5)


def test_matrices_of_up_to_four_tiles_of_rows_are_read_in_place():
    """C of up to IN_PLACE_ROWS tiles of MR rows reads a B matrix where it is (no packing):
    row counts just under, at and past the bound, sums shallower than a slice and deeper
    than several, full and partial panels of columns, against float64 products, on one
    thread and on two (which may split the rows and sum in another order: within 1e-5)."""
    from kiln.compiler.codegen.llvm.gemm import IN_PLACE_ROWS
    from kiln.compiler.codegen.llvm.microkernels import tiling

    bound = IN_PLACE_ROWS * tiling().mr
    src = "model G { forward(a: f32[M, K], b: f32[K, N]) -> f32[M, N] { return a @ b } }"
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    for m in (13, 16, 25, bound - 1, bound, bound + 1):
        for k, n in ((16, 37), (300, 64), (41, 100)):
            a = RNG.standard_normal((m, k)).astype(np.float32)
            b = RNG.standard_normal((k, n)).astype(np.float32)
            want = a.astype(np.float64) @ b.astype(np.float64)
            for native in (one, two):
                np.testing.assert_allclose(native(a, b), want, rtol=1e-5, atol=1e-4)


def test_a_last_panel_one_vector_wide_takes_the_one_vector_tiles():
    """Columns past the last whole panel, at most one vector of them, go through the
    one-vector micro-kernels (a weight gradient's 48 = 32 + 16 columns): widths around one
    vector and one panel, C read in place (13 rows) and packed (60 rows), against float64."""
    from kiln.compiler.codegen.llvm.microkernels import tiling

    width = tiling().width
    src = "model G { forward(a: f32[M, 300], b: f32[300, N]) -> f32[M, N] { return a @ b } }"
    native = kiln.compile(src, threads=2)
    for m in (13, 60):
        for n in (1, 9, width - 1, width, width + 1, 2 * width + 5, 3 * width):
            a = RNG.standard_normal((m, 300)).astype(np.float32)
            b = RNG.standard_normal((300, n)).astype(np.float32)
            np.testing.assert_allclose(native(a, b), a.astype(np.float64) @ b, rtol=1e-4,
                                       atol=1e-4)


DEEP_SUMS = """
model D {
  forward(a: f32[M, K], b: f32[K, N], at: f32[K, M], bt: f32[N, K]) {
    return a @ b, permute(at, perm = [1, 0]) @ b, a @ permute(bt, perm = [1, 0])
  }
}
"""


def test_a_small_product_over_a_deep_sum_splits_its_sum_the_same_on_any_threads():
    """A C of few elements over a deep sum (a weight gradient's shape) is computed as
    DEPTH_PIECES partial products added in order, whatever the thread count: one thread and
    two agree exactly, and both with float64 products, for A and B read as stored or
    transposed, row and column remainders and a depth the pieces do not divide; a sum too
    shallow to split and a C too large to split agree too."""
    from kiln.compiler.codegen.llvm.gemm import DEPTH_LEAST, DEPTH_MOST_C, DEPTH_PIECES

    one, two = kiln.compile(DEEP_SUMS, threads=1), kiln.compile(DEEP_SUMS, threads=2)
    deep = DEPTH_PIECES * DEPTH_LEAST
    for m, k, n in ((16, deep + 13, 48), (13, 3 * deep + 5, 37), (2, deep, 40),
                    (16, deep - 1, 48), (DEPTH_MOST_C // 32 + 1, deep, 32)):
        a = RNG.standard_normal((m, k)).astype(np.float32)
        b = RNG.standard_normal((k, n)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        alone = one(a, b, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
        shared = two(a, b, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
        for x, y in zip(alone, shared, strict=True):
            np.testing.assert_array_equal(y, x)
            np.testing.assert_allclose(x, want, rtol=1e-4, atol=2e-3)


def test_a_block_of_rows_takes_the_whole_products_path():
    """Two threads split a C taller than wide by rows: a 60-row C is packed, and so are its
    blocks of 24 and 36 rows (which alone would read B in place and sum in other slices),
    so one thread and two agree exactly."""
    src = "model G { forward(a: f32[M, 300], b: f32[300, 40]) -> f32[M, 40] { return a @ b } }"
    one, two = kiln.compile(src, threads=1), kiln.compile(src, threads=2)
    for m in (60, 97, 130):
        a = RNG.standard_normal((m, 300)).astype(np.float32)
        b = RNG.standard_normal((300, 40)).astype(np.float32)
        np.testing.assert_array_equal(two(a, b), one(a, b))
        np.testing.assert_allclose(one(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


SAMPLEWISE_MOVES = """
model S {
  forward(x: f32[B, 8, 40, 41], s: f32[1, 8, 1, 1], v: f32[41], t: f32[B, 1, 1, 1])
      -> (f32[B, 40, 41, 8], f32[B, 8, 43, 44], f32[B + 2, 8, 40, 41], f32[8, B, 40, 41],
          f32[B, 8, 40, 41], f32[B, B]) {
    wide = (x - s) * v + t
    q = sum(t, axis = [2, 3])
    return (permute(x, perm = [0, 2, 3, 1]), pad(wide, pads = [1, 2, 0, 3]),
            pad(x, pads = [0, 0, 0, 0, 0, 0, 1, 1]), permute(x, perm = [1, 0, 2, 3]),
            pad(pad(x, pads = [2, 1, -1, 0]), pads = [-2, -1, 1, 0]),
            q * (q * permute(q, perm = [1, 0])))
  }
}
"""


def test_threads_split_a_batch_of_moves_and_broadcasts_by_sample():
    """A permute keeping the batch first, a pad (or crop) leaving it alone and an elementwise
    chain with operands broadcast over the batch (per channel, per column, per sample) run
    their samples on threads, as a convolution does; a pad of the batch axis, a permute
    moving it and a result whose other axis is the batch too run whole. Each agrees with
    the reference, and two threads agree with one exactly, for batches that do and do not
    reach the size at which threads start (elementwise.FLAT_PARALLEL elements)."""
    import llvmlite.binding as llvm

    from kiln.compiler.codegen.llvm.module import build_module

    model = kiln.load(SAMPLEWISE_MOVES).elaborate()
    module, _ = build_module(model, llvm.get_process_triple(), "")
    split = Counter(f.name.split("_", 1)[1].removesuffix("_samples") for f in module.functions
                    if f.name.endswith("_samples"))
    # unfused: one permute, three pads (the batch's own is not), the chain's sub, mul, add
    # (not the muls of [B, 1] by [1, B] and by [B, B])
    assert split == {"permute": 1, "pad": 3, "sub": 1, "mul": 1, "add": 1}, split
    one, two = kiln.compile(SAMPLEWISE_MOVES, threads=1), kiln.compile(SAMPLEWISE_MOVES, threads=2)
    ref = kiln.compile(SAMPLEWISE_MOVES, target="reference")
    s = RNG.standard_normal((1, 8, 1, 1)).astype(np.float32)
    v = RNG.standard_normal(41).astype(np.float32)
    for batch in (1, 2, 3, 5):  # 13120 elements a sample: threads from 5 samples on
        x = RNG.standard_normal((batch, 8, 40, 41)).astype(np.float32)
        t = RNG.standard_normal((batch, 1, 1, 1)).astype(np.float32)
        alone, shared = one(x, s, v, t), two(x, s, v, t)
        for a, b, w in zip(alone, shared, ref(x, s, v, t), strict=True):
            np.testing.assert_array_equal(b, a)  # each element computed the same way
            np.testing.assert_allclose(a, w, rtol=1e-6, atol=1e-6)  # (a fused multiply-add)


def _os_threads(expected: int | None = None) -> int:
    """Threads of this process once the count has settled (a joined Python thread's OS thread,
    or an earlier test's, may take a moment to exit): the count when it is `expected`, or,
    without `expected`, when it has not changed for 0.1 s; waits at most 2 s either way."""
    last, same = -1, 0
    for _ in range(200):
        count = len(os.listdir("/proc/self/task"))
        same = same + 1 if count == last else 0
        if count == expected or (expected is None and same == 10):
            break
        last = count
        time.sleep(0.01)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_worker_threads_start_once_are_shared_stop_and_start_again():
    src = "model G { forward(a: f32[M, 600], b: f32[600, 700]) { return a @ b } }"
    m = kiln.compile(src, threads=3)
    a = RNG.standard_normal((64, 600)).astype(np.float32)
    b = RNG.standard_normal((600, 700)).astype(np.float32)
    want = (a.astype(np.float64) @ b).astype(np.float32)
    before = _os_threads()
    np.testing.assert_allclose(m(a, b), want, rtol=1e-4, atol=1e-4)
    assert _os_threads(before + 2) == before + 2  # two workers, then asleep between calls
    for _ in range(5):
        m(a, b)
    assert _os_threads() == before + 2  # the same workers every call (settled: no more)
    errors = []

    def work():  # callers at once: one has the workers, the others run their GEMMs alone
        for _ in range(10):
            if not np.allclose(m(a, b), want, rtol=1e-4, atol=1e-4):
                errors.append(1)

    callers = [threading.Thread(target=work) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors
    m._stop_workers()
    assert _os_threads(before) == before
    np.testing.assert_allclose(m(a, b), want, rtol=1e-4, atol=1e-4)  # started again
    running = _os_threads()
    pid = os.fork()
    if pid == 0:  # a forked child has none of the parent's workers: it starts its own
        os._exit(0 if np.allclose(m(a, b), want, rtol=1e-4, atol=1e-4) else 1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0
    m = None  # the last reference
    gc.collect()
    assert _os_threads(running - 2) <= running - 2  # the workers stop with their model


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="linking needs cc")
def test_a_library_failure_names_the_block_use(tmp_path):
    """A K0505 inside a std block, from a library built ahead of time, still says where the
    user's file used the block (issue 13 #3)."""
    src = ("import std.nn\nmodel M {\n  words = nn.Embedding(10, 4)\n  tags = nn.Embedding(3, 4)\n"
           "  forward(w: i64[B], t: i64[B]) { return words(w) + tags(t) }\n}\n")
    m = kiln.load_compiled(_ahead_of_time(tmp_path, src))
    with pytest.raises(KilnError) as info:
        m(np.array([1, 2]), np.array([0, 7]))
    assert info.value.code == "K0505"
    assert f"in Embedding, used at {tmp_path / 'model.kiln'}:5:53)" in info.value.message


def test_a_model_alive_at_interpreter_exit_goes_quietly(tmp_path):
    """A native model held until exit (a functools.cache in a pytest module, as the example
    tests do) is finalized after runtime.native's globals are cleared: nothing is printed."""
    (tmp_path / "test_held.py").write_text(
        "import functools\nimport numpy as np\nimport kiln\n\n"
        "@functools.cache\ndef held():\n"
        "    return kiln.compile('model M { forward(x: f32[B, 2]) -> f32[B, 2] { return x } }')\n\n"
        "def test_call():\n    held()(np.ones((1, 2), np.float32))\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_held.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KILN_PROGRESS": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr


def _lookups(n: int) -> str:
    """A model of `n` lookups of the same shape, each in its own line."""
    uses = "\n".join(f"    y{i} = lookup{i}(w{i})" for i in range(n))
    return ("import std.nn\nmodel M {\n"
            + "".join(f"  lookup{i} = nn.Embedding(10, 4)\n" for i in range(n))
            + "  forward(" + ", ".join(f"w{i}: i64[B]" for i in range(n)) + ") {\n" + uses
            + "\n    return " + " + ".join(f"y{i}" for i in range(n)) + "\n  }\n}\n")


def test_nodes_of_the_same_kernel_share_one_function_and_name_their_own_failure():
    """Same-shaped lookups call one kernel function (share.py), yet an index out of range
    names the line of the lookup that met it, also after another lookup's failure."""
    import llvmlite.binding as llvm

    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.codegen.llvm.module import build_module
    from kiln.compiler.driver import Weights

    m = kiln.compile(_lookups(3), target="native")
    lowered = m.compilation.lowered(Weights.of(m.params))
    module, _ = build_module(lowered, llvm.get_process_triple(), "",
                             vector_width=targets.host().vector_width)
    gathers = [f.name for f in module.functions if "gather" in f.name and not f.is_declaration]
    assert len(gathers) == 1, gathers
    ok = np.array([1, 2])
    for bad, line in ((0, 7), (1, 8), (2, 9)):
        words = [ok, ok, ok]
        words[bad] = np.array([0, 12])
        with pytest.raises(KilnError) as info:
            m(*words)
        assert info.value.code == "K0505" and f"used at <source>:{line}:" in str(info.value), \
            str(info.value)
    with pytest.raises(KilnError) as info:  # two fail: the first one's line
        m(ok, np.array([11, 0]), np.array([0, 13]))
    assert "used at <source>:8:" in str(info.value), str(info.value)
    np.testing.assert_array_equal(m(ok, ok, ok), kiln.compile(_lookups(3), target="reference")(
        ok, ok, ok))


def test_large_outputs_start_at_a_page_boundary():
    """Outputs of 64 KiB or more are page-aligned (runtime/native.py: streams at one offset in
    a page never stall on 4K aliasing), smaller ones as numpy gives them; values unchanged,
    and each output is an array of its own the caller may write."""
    src = ("model M { forward(x: f32[N], s: f32[4]) {\n"
           "  return x * 2.0, x + 1.0, s * 3.0, s - x[0:4]\n} }")
    native, ref = both(src)
    for n in (16384, 20000):  # exactly 64 KiB, and a size no multiple of a page
        x = RNG.standard_normal(n).astype(np.float32)
        s = RNG.standard_normal(4).astype(np.float32)
        got = native(x, s)
        for g, w in zip(got, ref(x, s), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6)
        assert [g.ctypes.data % 4096 == 0 for g in got[:2]] == [True, True]
        got[0][:] = 0
        np.testing.assert_allclose(got[1], x + 1.0, rtol=1e-6)  # no output shares bytes
        assert all(g.flags.writeable and g.flags.c_contiguous for g in got)


def test_large_outputs_reuse_only_the_blocks_their_callers_dropped():
    """Outputs of 1 MiB or more (runtime/native.REUSED) take the blocks of an earlier call's
    outputs once the caller holds no array or view of them. An output still held, whole or
    through a view, keeps its values while later calls run; results kept from many calls
    are each their own; two outputs of one call never share a block; the blocks kept stay
    at most twice a call's outputs."""
    native = kiln.compile("model M { forward(x: f32[N]) { return x * 2.0, x + 1.0 } }")
    n = 1 << 18  # 1 MiB of f32
    x = RNG.standard_normal(n).astype(np.float32)
    a, b = native(x)
    blocks = {a.ctypes.data, b.ctypes.data}
    assert len(blocks) == 2
    del a, b
    y = x + 1
    c, d = native(y)
    assert {c.ctypes.data, d.ctypes.data} == blocks  # dropped: both blocks again
    np.testing.assert_array_equal(c, y * 2)
    np.testing.assert_array_equal(d, y + 1)
    view, held = d[5:], c
    del c, d
    inputs = [x * k for k in range(6)]
    results = [native(v) for v in inputs]  # c (held) and d (a view held) are not reused
    np.testing.assert_array_equal(held, y * 2)
    np.testing.assert_array_equal(view, (y + 1)[5:])
    starts = {held.ctypes.data, view.ctypes.data - 20}
    for v, (e, f) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(e, v * 2)
        np.testing.assert_array_equal(f, v + 1)
        starts |= {e.ctypes.data, f.ctypes.data}
    assert len(starts) == 2 + 2 * len(results)
    assert len(native._thread_state().kept) <= 4
    del results, view, held
    e, f = native(x)
    assert {e.ctypes.data, f.ctypes.data} <= starts  # a kept block, once all were dropped
    g, h = native(native(y)[0])  # an output passed straight back in is not written over
    np.testing.assert_array_equal(g, y * 2 * 2)
    np.testing.assert_array_equal(h, y * 2 + 1)


@pytest.mark.parametrize("target", ["native", "reference"])
def test_an_input_named_self_is_given_by_name(tmp_path, target):
    """An ONNX graph's inputs are named anything, `self` too (a traced method's argument):
    call, vjp and profile take it by name, not as their own `self`."""
    path = tmp_path / "m.kiln"
    path.write_text("model M { forward(self: f32[B, 3], x: f32[B, 3]) -> f32[B, 3] "
                    "{ return self * 2.0 + x } }")
    m = kiln.compile(str(path), target=target)
    a, b = np.ones((2, 3), np.float32), np.full((2, 3), 5.0, np.float32)
    np.testing.assert_array_equal(m(**{"self": a, "x": b}), a * 2 + b)
    _, _, grads = m.vjp(**{"self": a, "x": b}, cotangents=[b])
    np.testing.assert_array_equal(grads["self"], b * 2)
    if target == "native":
        assert m.profile(**{"self": a, "x": b}, repeat=1).calls == 1


def test_derived_arrays_made_on_threads_are_those_of_one_thread():
    """runtime.native._resolved: the derived arrays (here prepacked panels, a permuted weight,
    Winograd's U and a transposed convolution's panels with its channels-last weight) made
    on several threads equal one thread's, in the layout's order; a source that is missing
    raises the same error."""
    from kiln.compiler.derived import derived_name
    from kiln.runtime.native import _resolved

    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal((40, 70)).astype(np.float32),
              "c": rng.standard_normal((48, 40, 3, 3)).astype(np.float32),
              "t": rng.standard_normal((40, 32, 4, 4)).astype(np.float32)}
    names = ["a", derived_name("prepack_b", "a", nr=32, groups=1),
             derived_name("permute", "a", perm=[1, 0]), derived_name("winograd_b", "c", nr=32),
             "c", derived_name("winograd_lazy_a", "c", kc=256),
             derived_name("winograd_lazy_or_b", "t", nr=32)]
    one = _resolved(names, params.__getitem__, 1)
    for threads in (2, 4):
        many = _resolved(names, params.__getitem__, threads)
        assert len(many) == len(one)
        for x, y in zip(many, one, strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(one[2], params["a"].T)
    with pytest.raises(KeyError, match="missing"):
        _resolved([*names, derived_name("prepack_b", "missing", nr=32, groups=1)],
                  params.__getitem__, 2)
