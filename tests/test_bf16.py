"""precision="bf16" (codegen/llvm/bf16.py): matmul and convolution against an independent
emulation (operands rounded to bf16 by PyTorch, products summed in float64), against f32 within
bf16's error bound, the examples, the cache keys, and K0971 on a CPU without AVX512_BF16.

On such a CPU (the CI's AVX2 Zen 3) every test that needs the instructions checks that error
instead, through `compile_bf16`: nothing is skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _crosscheck import random_inputs

import kiln
from kiln.compiler.codegen.llvm import bf16
from kiln.compiler.codegen.llvm import target as targets
from kiln.compiler.errors import KilnError

HAS_BF16 = bf16.FEATURE in targets.host().feature_set
HAS_AMX = all(f in targets.host().feature_set for f in bf16.AMX_FEATURES)
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.kiln"))
# |bf16 - f32| <= BOUND * sum_k |a_k b_k| per output element: each operand rounds by at most
# 2**-9 relative, a product by 2**-8 (+ 2**-18); twice that leaves room for the f32 sums
BOUND = 2.0**-7
# the examples, end to end: relative L2 error of each output against f32. Measured 4e-5 (the
# LSTM classifier) to 1.6e-2 (the Transformer classifier at batch 1), ResNet-18 4e-3: errors
# of about 2**-9 per rounding add in quadrature over the layers; the bound leaves a factor 3
# for other inputs and seeds, and a wrong kernel (operands unrounded, a lost or misplaced
# pair) is off by O(1)
EXAMPLE_BOUND = 5e-2
MATMUL = "model Mm { forward(a: f32[R, K], b: f32[K, N]) -> f32[R, N] { return a @ b } }"


def compile_bf16(source, **options):
    """kiln.compile(source, precision="bf16", ...) on a CPU with AVX512_BF16; on one without,
    checks that it is refused with K0971 naming the feature, and gives None (the caller's
    test has then checked all it can on this CPU)."""
    if HAS_BF16:
        return kiln.compile(source, precision="bf16", **options)
    with pytest.raises(KilnError) as error:
        kiln.compile(source, precision="bf16", **options)
    assert error.value.code == "K0971" and bf16.FEATURE in str(error.value)
    return None


def rounded(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 (to nearest, ties to even, as PyTorch and the CPU's VCVTNE2PS2BF16:
    the f32 bits plus 0x7FFF plus the kept part's last bit, cut to the top 16), in float64:
    the oracle's operands. Finite inputs only (the tests' are)."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def check_product(y, exact_bf16, exact_f32, magnitude) -> None:
    """y against the emulation to f32 summation error, and against f32 within BOUND."""
    scale = magnitude + 1e-30
    assert np.all(np.abs(y - exact_bf16) <= 1e-5 * scale), np.max(np.abs(y - exact_bf16) / scale)
    assert np.all(np.abs(y - exact_f32) <= BOUND * scale)
    # and the rounding really happened (f32 operands would match exact_f32 to ~1e-6)
    assert np.max(np.abs(y - exact_f32) / scale) > 1e-4


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 29), (64, 300, 257), (2, 600, 33),
                                   (13, 257, 70)], ids=str)
def test_matmul_odd_shapes(shape):
    m = compile_bf16(MATMUL)
    if m is None:
        return
    r, k, n = shape
    rng = np.random.default_rng(r * k * n)
    a = rng.standard_normal((r, k), dtype=np.float32) + 0.1
    b = rng.standard_normal((k, n), dtype=np.float32)
    if shape == (1, 1, 1):  # one product: rounding must show (pi * e)
        a, b = np.full((1, 1), np.pi, np.float32), np.full((1, 1), np.e, np.float32)
    check_product(m(a, b), rounded(a) @ rounded(b), a.astype(np.float64) @ b,
                  np.abs(a.astype(np.float64)) @ np.abs(b))


# AMX (bf16.amx_micro_kernel, where the CPU has it): tiles of 16 rows and 32 elements of the
# sum, 32 and 16 rows per micro-kernel then AVX512_BF16 for the rest, sums shallower than
# AMX_MIN_DEPTH on AVX512_BF16 alone; each case around one of those edges
AMX_SHAPES = [(16, 16, 16), (32, 32, 32), (48, 17, 33), (33, 255, 100), (127, 257, 64),
              (200, 513, 50), (40, 15, 40), (64, 31, 1)]


@pytest.mark.parametrize("shape", AMX_SHAPES, ids=str)
def test_tile_edges(shape):
    """B packed per call (zero pair rows up to a whole tile) and B a prepacked weight (its
    panels read K rows deep, 16 pair rows at a time), both against the emulation."""
    r, k, n = shape
    rng = np.random.default_rng(k * n + r)
    a = rng.standard_normal((r, k), dtype=np.float32) + 0.1
    b = rng.standard_normal((k, n), dtype=np.float32)
    source = (f"import std.nn\nmodel L {{ fc = nn.Linear({k}, {n}, bias = false)\n"
              f"  forward(x: f32[B, {k}]) -> f32[B, {n}] {{ return fc(x) }} }}")
    m, layer = compile_bf16(MATMUL), compile_bf16(source)
    if m is None or layer is None:
        return
    layer.load_weights({"fc.weight": np.ascontiguousarray(b.T)})
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b)
    for y in (m(a, b), layer(a)):
        check_product(y, rounded(a) @ rounded(b), a.astype(np.float64) @ b, magnitude)


def test_amx_code_for_a_cpu_with_amx():
    """On any machine: the bf16 GEMM for a CPU with AMX holds the tile instructions, asks
    Linux for the tiles once (arch_prctl), and LLVM compiles it; without AMX, or with
    KILN_AMX=0, none of that."""
    import llvmlite.binding as llvm

    from kiln.compiler.codegen.llvm.machine import machine_code
    from kiln.compiler.codegen.llvm.module import build_module, ir_text

    spr = targets.Target("sapphirerapids", "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,"
                         "+avx512bf16,+amx-tile,+amx-bf16,+avx2,+fma,+avx")
    assert bf16.amx(spr) and not bf16.amx(targets.named("x86-64-v4"))
    model = kiln.compile(MATMUL).lowered()
    machine = spr.machine()
    texts = {}
    for amx in (True, False):
        module, _ = build_module(model, llvm.get_process_triple(), str(machine.target_data),
                                 vector_width=16, precision="bf16", amx=amx)
        texts[amx] = ir_text(module, 16)
    assert "llvm.x86.tdpbf16ps" in texts[True] and "arch_prctl" in texts[True]
    assert "llvm.x86.tdpbf16ps" not in texts[False] and "arch_prctl" not in texts[False]
    assert "dpbf16ps.512" in texts[True]  # the rows below 16, and a refused process
    assert machine_code(texts[True], machine)


def test_amx_opt_out(monkeypatch, tmp_path):
    """KILN_AMX=0: the bf16 GEMM on AVX512_BF16 alone, its own cache entries, the same
    product within the emulation's error."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(11)
    a = rng.standard_normal((64, 96), dtype=np.float32)
    b = rng.standard_normal((96, 40), dtype=np.float32)
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv(bf16.AMX_ENV, flag)
        assert bf16.amx(targets.host()) == (HAS_AMX and flag == "1")
        m = compile_bf16(MATMUL)
        if m is None:
            return
        results.append(m(a, b))
        check_product(results[-1], rounded(a) @ rounded(b), a.astype(np.float64) @ b,
                      magnitude)


def test_winograd_layer_on_tiles():
    """A 3x3 convolution that f32 runs as Winograd F(4, 3): under bf16 on AMX through the
    bf16 GEMM (its weight paired, no Winograd panels), on AVX512_BF16 alone in f32 Winograd;
    within the bf16 bound of the emulation on AMX, and of f32 either way."""
    layer = ("import std.nn\nmodel P { c = nn.Conv2d(32, 40, 3, padding = 1, bias = false)\n"
             "  forward(x: f32[B, 32, 9, 10]) -> f32[B, 40, 9, 10] { return c(x) } }")
    m = compile_bf16(layer, seed=4)
    if m is None:
        return
    names = m.native_arrays()
    on_tiles = bf16.amx(targets.host())
    assert any(n.startswith("prepack_a_bf16(") for n in names) == on_tiles, names
    assert any(n.startswith("winograd_b(") for n in names) != on_tiles, names
    x = np.random.default_rng(4).standard_normal((2, 32, 9, 10), dtype=np.float32)
    w = kiln.compile(layer, seed=4, target="reference").params["c.weight"]
    exact_bf16, exact, magnitude = conv_oracle(x, w, 1, 1, 1)
    if on_tiles:
        check_product(m(x), exact_bf16, exact, magnitude)
    else:
        assert np.all(np.abs(m(x) - exact) <= 1e-4 * (magnitude + 1e-30))


def test_batched_matmul():
    m = compile_bf16("model Bm { forward(a: f32[G, R, K], b: f32[G, K, N]) -> f32[G, R, N] "
                     "{ return a @ b } }")
    if m is None:
        return
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 5, 47), dtype=np.float32)
    b = rng.standard_normal((3, 47, 19), dtype=np.float32)
    check_product(m(a, b), rounded(a) @ rounded(b), a.astype(np.float64) @ b,
                  np.abs(a.astype(np.float64)) @ np.abs(b))


def test_linear_prepacked_weight():
    """nn.Linear's weight is a parameter: packed and paired once, when bound (PackedB)."""
    source = ("import std.nn\nmodel L { fc = nn.Linear(75, 45, bias = false)\n"
              "  forward(x: f32[B, 75]) -> f32[B, 45] { return fc(x) } }")
    m = compile_bf16(source, seed=3)
    if m is None:
        return
    w = kiln.compile(source, seed=3, target="reference").params["fc.weight"]
    for rows in (1, 2, 9, 40):  # the streamed, in-place and packed f32 paths' sizes
        x = np.random.default_rng(rows).standard_normal((rows, 75), dtype=np.float32)
        check_product(m(x), rounded(x) @ rounded(w).T, x.astype(np.float64) @ w.T,
                      np.abs(x.astype(np.float64)) @ np.abs(w.T))


def conv_oracle(x, w, stride, padding, groups):
    def run(x, w):  # PyTorch's conv2d in float64: windows of the zero-padded x, per group
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        kh, kw = w.shape[2:]
        windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        windows = windows[:, :, ::stride, ::stride]  # [N, C, OH, OW, kh, kw]
        cg, og = x.shape[1] // groups, w.shape[0] // groups
        return np.concatenate([
            np.einsum("ncpqij,ocij->nopq", windows[:, g * cg:(g + 1) * cg],
                      w[g * og:(g + 1) * og]) for g in range(groups)], axis=1)

    return (run(rounded(x), rounded(w)), run(x.astype(np.float64), w.astype(np.float64)),
            run(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))))


@pytest.mark.parametrize("c,o,k,stride,groups,size", [
    (3, 8, 3, 1, 1, 9),     # 3x3
    (20, 17, 1, 1, 1, 7),   # 1x1
    (5, 6, 3, 2, 1, 11),    # strided
    (8, 12, 3, 1, 2, 6),    # grouped
], ids=["3x3", "1x1", "strided", "grouped"])
def test_conv(c, o, k, stride, groups, size):
    """A weight given as an input (A packed per call) and as a parameter (prepacked)."""
    pad = k // 2
    h, w_ = size, size + 1
    oh, ow = ((n + 2 * pad - k) // stride + 1 for n in (h, w_))
    io = f"x: f32[B, {c}, {h}, {w_}]", f"f32[B, {o}, {oh}, {ow}]"
    as_input = compile_bf16(
        f"model C {{ forward({io[0]}, w: f32[{o}, {c // groups}, {k}, {k}]) -> {io[1]} "
        f"{{ return conv(x, w, stride = {stride}, padding = {pad}, groups = {groups}) }} }}")
    layer = (f"import std.nn\nmodel P {{ c = nn.Conv2d({c}, {o}, {k}, stride = {stride}, "
             f"padding = {pad}, groups = {groups}, bias = false)\n"
             f"  forward({io[0]}) -> {io[1]} {{ return c(x) }} }}")
    as_param = compile_bf16(layer, seed=5)
    if as_input is None or as_param is None:
        return
    rng = np.random.default_rng(c * o)
    x = rng.standard_normal((2, c, h, w_), dtype=np.float32)
    w = kiln.compile(layer, seed=5, target="reference").params["c.weight"]
    exact_bf16, exact, magnitude = conv_oracle(x, w, stride, pad, groups)
    check_product(as_input(x, w), exact_bf16, exact, magnitude)
    check_product(as_param(x), exact_bf16, exact, magnitude)


def relative_errors(a, b, inputs) -> list[float]:
    ya, yb = a(*inputs), b(*inputs)
    ya, yb = (y if isinstance(y, tuple) else (y,) for y in (ya, yb))
    return [float(np.linalg.norm((u - v).astype(np.float64))
                  / max(np.linalg.norm(u.astype(np.float64)), 1e-30))
            for u, v in zip(ya, yb, strict=True)]


UPSAMPLE = """
import std.nn as nn
model Up {
  c = nn.ConvTranspose2d(256, 128, 4, 2, 1, bias = false)
  forward(x: f32[B, 256, 8, 8]) { return c(x) }
}
"""


@pytest.mark.parametrize("amx", ["0", None])
def test_transposed_winograd_layers_under_bf16(amx, monkeypatch):
    """DCGAN's 8x8 -> 16x16 layer keeps Winograd's U and the GEMM's panels (the batch picks
    one a call): without AMX both run in f32 under precision="bf16" (the panels are f32's;
    the bf16 GEMM read them as pairs and gave NaN), with AMX the bf16 GEMM over pairs of its
    own; at batch 2 (the GEMM's) and 8 (Winograd's), within bf16's bound of f32."""
    if amx is not None:
        monkeypatch.setenv(bf16.AMX_ENV, amx)
    b = compile_bf16(UPSAMPLE)
    if b is None:
        return
    a = kiln.compile(UPSAMPLE)
    b.load_weights(a.state_dict())
    for batch in (2, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 256, 8, 8)).astype(np.float32)
        got, want = b(x), a(x)
        assert np.isfinite(got).all()
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert error <= EXAMPLE_BOUND, (batch, error)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_against_f32(path):
    b = compile_bf16(path)
    if b is None:
        return
    a = kiln.compile(path)
    errors = relative_errors(a, b, random_inputs(a, 2, np.random.default_rng(0)))
    assert max(errors) <= EXAMPLE_BOUND, errors


def test_cache_keys_separate_precisions(tmp_path, monkeypatch):
    """f32, then bf16, then f32 again of the same file (a fresh compile cache): each runs its
    own code (the model entry, the graph- and IR-keyed caches all see the precision)."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "mm.kiln"
    path.write_text(MATMUL)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((9, 70), dtype=np.float32)
    b = rng.standard_normal((70, 40), dtype=np.float32)
    exact = a.astype(np.float64) @ b
    first = kiln.compile(path)(a, b)
    m = compile_bf16(path)
    again = kiln.compile(path)(a, b)
    np.testing.assert_allclose(first, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again, first)
    if m is None:
        return
    check_product(m(a, b), rounded(a) @ rounded(b), exact, np.abs(a.astype(np.float64)) @
                  np.abs(b))


def test_missing_feature_is_refused():
    """A CPU without AVX512_BF16 (x86-64-v4: AVX-512 only) is refused before any code."""
    from kiln.api import prepare

    with pytest.raises(KilnError) as error:
        prepare(MATMUL, precision="bf16", cpu=targets.named("x86-64-v4"))
    assert error.value.code == "K0971" and "avx512bf16" in str(error.value)


@pytest.mark.parametrize("target", ["reference", "onnx"])
def test_other_targets_are_refused(target):
    with pytest.raises(KilnError) as error:
        kiln.compile(MATMUL, target=target, precision="bf16")
    assert error.value.code == "K0972"


def test_unknown_precision():
    with pytest.raises(KilnError) as error:
        kiln.compile(MATMUL, precision="fp8")
    assert error.value.code == "K0602"


def test_weights_are_paired_once_per_binding():
    """prepack_b_bf16: rows 2q and 2q + 1 of each panel paired, rounded to nearest even."""
    w = np.array([[1.0, 2.0], [1.00390625, -3.0], [np.pi, 0.0]], np.float32)  # K=3, N=2
    packed = bf16.prepack_b_bf16(w, 1, 4).view(np.uint32)  # [1, 1 panel, 3, 4]
    assert packed.shape == (1, 1, 3, 4)
    bits = bf16.round_bits(w)
    assert bits[1, 0] == 0x3F80  # 1 + 2**-8 is a tie: to even (1.0)
    np.testing.assert_array_equal(packed[0, 0, 0, :2], bits[0] | (bits[1] << 16))
    np.testing.assert_array_equal(packed[0, 0, 1, :2], bits[2])  # odd end: zero high half
    assert not packed[0, 0, 2].any() and not packed[0, 0, :, 2:].any()


def test_new_weights_are_paired_again():
    """load_weights remakes the paired weight from the new values (derived arrays)."""
    source = ("import std.nn\nmodel L { fc = nn.Linear(40, 30, bias = false)\n"
              "  forward(x: f32[B, 40]) -> f32[B, 30] { return fc(x) } }")
    m = compile_bf16(source)
    if m is None:
        return
    w = np.random.default_rng(2).standard_normal((30, 40), dtype=np.float32)
    m.load_weights({"fc.weight": w})
    x = np.random.default_rng(3).standard_normal((5, 40), dtype=np.float32)
    check_product(m(x), rounded(x) @ rounded(w).T, x.astype(np.float64) @ w.T,
                  np.abs(x.astype(np.float64)) @ np.abs(w.T))


def test_cli_precision(tmp_path, capsys):
    """`kiln run --precision bf16` runs the bf16 code (or reports K0971 on a CPU without it);
    `kiln compile --cpu x86-64-v4 --precision bf16` is refused on any CPU."""
    from kiln.cli import main

    path = tmp_path / "mm.kiln"
    path.write_text(MATMUL)
    code = main(["run", str(path), "--random-inputs", "--precision", "bf16", "--bind", "R=2",
                 "--bind", "K=3", "--bind", "N=4"])
    err = capsys.readouterr().err
    assert (code, "K0971" in err) == ((0, False) if HAS_BF16 else (1, True)), err
    code = main(["compile", str(path), "-o", str(tmp_path / "mm.so"), "--cpu", "x86-64-v4",
                 "--precision", "bf16"])
    assert code == 1 and "K0971" in capsys.readouterr().err
    assert not (tmp_path / "mm.so").exists()


def test_library_asks_for_tiles_itself(tmp_path):
    """A library from `kiln compile --precision bf16` runs in a fresh process, whose first
    GEMM asks Linux for AMX's tiles from inside the library (on a CPU with AMX), against the
    emulation; a C caller gets the same code."""
    import subprocess
    import sys

    from kiln.cli import main

    path = tmp_path / "mm.kiln"
    path.write_text(MATMUL)
    code = main(["compile", str(path), "-o", str(tmp_path / "mm.so"), "--precision", "bf16"])
    if not HAS_BF16:
        assert code == 1
        return
    assert code == 0
    rng = np.random.default_rng(5)
    a = rng.standard_normal((48, 70), dtype=np.float32)
    b = rng.standard_normal((70, 33), dtype=np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    script = ("import sys, numpy as np, kiln\n"
              "d = sys.argv[1]\n"
              "m = kiln.load_compiled(d + '/mm.so')\n"
              "np.save(d + '/y.npy', m(np.load(d + '/a.npy'), np.load(d + '/b.npy')))\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    check_product(np.load(tmp_path / "y.npy"), rounded(a) @ rounded(b),
                  a.astype(np.float64) @ b, np.abs(a.astype(np.float64)) @ np.abs(b))


def test_profile_says_which_peak():
    """`kiln profile --precision bf16`: the % of peak is of the f32 FMA peak, which a GEMM on
    AMX tiles may pass; the table says so (an f32 profile does not)."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((64, 128), dtype=np.float32)
    b = rng.standard_normal((128, 64), dtype=np.float32)
    assert "AMX" not in str(kiln.compile(MATMUL).profile(a, b, repeat=2))
    m = compile_bf16(MATMUL)
    if m is None:
        return
    table = str(m.profile(a, b, repeat=2))
    assert "f32 FMAs: bf16 products on AMX tiles can pass 100%" in table.splitlines()[0]
