"""Winograd F(4, 3) convolutions (codegen/llvm/winograd.py): the transform matrices, the
transformed weight's layout, and native results against a float64 direct convolution within
the stated error bound, at odd sizes, paddings, batches, channel counts, epilogues and threads;
the KILN_WINOGRAD=0 opt-out; and a bound tight enough to catch a wrong transform matrix.

The bound (docs/architecture.md): per output element,
    |y - y64| <= WINOGRAD_BOUND * eps32 * (|x| * |w| + |b|)
where `*` is the convolution and y64 the float64 direct convolution. Measured on ResNet-18's
layer shapes (64 channels at 56x56, 128 at 28x28, 256 at 14x14; N(0, 1) inputs, kaiming
weights) the largest ratio is 25 (the GEMM path's: 1.5): F(4, 3) loses about one decimal
digit more than a direct sum. A coefficient of G off by 4 % (1/25 for 1/24) exceeds it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import kiln
from kiln.compiler.codegen.llvm import packing, winograd
from kiln.compiler.codegen.llvm.microkernels import tiling
from kiln.compiler.codegen.llvm.packing import AT, BT, G, weight_transform, winograd_b
from kiln.compiler.ops.conv import conv_nd
from kiln.runtime.modelcache import Request

EPS = float(np.finfo(np.float32).eps)
WINOGRAD_BOUND = 64  # x eps32 x (|x| * |w| + |b|): 2.5x the worst ratio measured (25)
DIRECT_BOUND = 4  # the GEMM path's (measured 1.5)
RNG = np.random.default_rng(7)

SRC = """
import std.nn
model W(c: int, o: int, h: int, w: int, p: int) {
  a = nn.Conv2d(c, o, 3, padding = p)
  b = nn.Conv2d(c, o, 3, padding = p, bias = false)
  r = nn.Conv2d(c, o, 3, padding = p)
  forward(x: f32[B, c, h, w], s: f32[B, o, h + 2 * p - 2, w + 2 * p - 2]) {
    return x |> a, relu(x |> b), relu((x |> r) + s)
  }
}
"""


def _f43(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One 4x4 output tile from a 6x6 input tile, in float64."""
    return AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T


def test_matrices_compute_a_4x4_tile_of_a_3x3_correlation():
    for _ in range(20):
        d, g = RNG.standard_normal((6, 6)), RNG.standard_normal((3, 3))
        direct = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(4)]
                           for i in range(4)])
        np.testing.assert_allclose(_f43(d, g), direct, rtol=0, atol=1e-12)


def test_transformed_weight_is_36_prepacked_b_operands():
    """winograd_b's [36, O/NR panels, C, NR]: element (xi, c, o) of U = G g G^T at
    [xi, o // NR, c, o % NR], zero past O."""
    o, c, nr = 37, 5, tiling().nr
    w = RNG.standard_normal((o, c, 3, 3)).astype(np.float32)
    u = weight_transform(w)
    for oo, cc in [(0, 0), (36, 4), (17, 2)]:
        expected = (G @ w[oo, cc].astype(np.float64) @ G.T).reshape(-1)
        np.testing.assert_allclose(u[:, cc, oo], expected, rtol=1e-6, atol=1e-7)
    packed = winograd_b(w, nr)
    panels = -(-o // nr)
    assert packed.shape == (36, panels, c, nr)
    full = packed.transpose(0, 2, 1, 3).reshape(36, c, panels * nr)
    np.testing.assert_array_equal(full[:, :, :o], u)
    assert not full[:, :, o:].any()


def _oracle(model, x: np.ndarray, s: np.ndarray, p: int):
    """(float64 results, |x| * |w| + |b| for each) of the model's three outputs."""
    params = model.params
    x64 = x.astype(np.float64)
    pads = [(p, p), (p, p)]

    def conv(name: str, absolute: bool):
        w = params[f"{name}.weight"].astype(np.float64)
        bias = params.get(f"{name}.bias")
        b = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
        if absolute:
            return conv_nd(np.abs(x64), np.abs(w), (1, 1), pads, (1, 1), 1) + \
                np.abs(b).reshape(1, -1, 1, 1)
        return conv_nd(x64, w, (1, 1), pads, (1, 1), 1) + b.reshape(1, -1, 1, 1)

    a, b, r = (conv(n, False) for n in "abr")
    scale = [conv(n, True) for n in "abr"]
    scale[2] = scale[2] + np.abs(s)
    return [a, np.maximum(b, 0), np.maximum(r + s, 0)], scale


def _worst(model, c, o, h, w, p, batch) -> float:
    """The largest |y - y64| / (eps32 * scale) over the model's outputs."""
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    s = RNG.standard_normal((batch, o, h + 2 * p - 2, w + 2 * p - 2)).astype(np.float32)
    got = model(x, s)
    want, scale = _oracle(model, x, s, p)
    worst = 0.0
    for y, y64, sc in zip(got, want, scale, strict=True):
        assert y.shape == y64.shape
        assert np.isfinite(y).all()
        worst = max(worst, float((np.abs(y - y64) / (EPS * sc + 1e-30)).max()))
    return worst


@pytest.mark.parametrize("c, o, h, w, p, batch, threads", [
    (33, 35, 13, 9, 0, 3, 2),   # partial tiles on both edges, three samples
    (32, 40, 7, 7, 1, 1, 1),    # 7x7: tiles reach past the output
    (40, 33, 1, 1, 2, 1, 2),    # one pixel, padding 2: a 3x3 output from zeros around it
    (35, 32, 2, 5, 1, 3, 1),
    (48, 37, 17, 6, 2, 1, 2),   # padding 2, more tile rows than columns
    (33, 35, 13, 9, 0, 3, 5),   # the 36 products shared unevenly by five threads
])
def test_native_winograd_within_its_bound(c, o, h, w, p, batch, threads):
    args = {"c": c, "o": o, "h": h, "w": w, "p": p}
    model = kiln.compile(SRC, args=args, threads=threads, seed=11)
    chosen = {n for n in model.native_arrays() if n.startswith("winograd_b(")}
    assert len(chosen) == 3  # all three convolutions
    assert _worst(model, c, o, h, w, p, batch) <= WINOGRAD_BOUND
    if batch == 3 and threads == 2:  # and the numpy reference agrees, in one case
        ref = kiln.compile(SRC, args=args, target="reference", seed=11)
        x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
        s = RNG.standard_normal((batch, o, h + 2 * p - 2, w + 2 * p - 2)).astype(np.float32)
        for got, want in zip(model(x, s), ref(x, s), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _module_text(monkeypatch, *args, **kwargs):
    """kiln.compile(*args, **kwargs) with the compile caches off, and its module's LLVM IR."""
    from kiln.compiler.codegen.llvm import machine

    texts = []
    real = machine.ir_text
    monkeypatch.setattr(machine, "ir_text", lambda *a: texts.append(real(*a)) or texts[-1])
    monkeypatch.setenv("KILN_CACHE", "0")
    model = kiln.compile(*args, **kwargs)
    (text,) = texts
    return model, text


def test_convolution_makes_u_during_a_large_call(monkeypatch):
    """U too large to keep (96 channels in and out over a 3x4 output: one tile a sample, 36
    x 96 x 96 floats of U against 2**18 a tile): the GEMM's prepacked A and the weight
    channels-last are kept (winograd_lazy_a); batch 3 takes the GEMM, batch 9 (LAZY_MIN_ROWS
    tiles or more) F(4, 3) with U made a block at a time, a bias, none, and a fused
    residual add alike. Each within its bound, 1 and 2 threads bit-equal, the reference
    agrees, and new weights reach both paths."""
    args = {"c": 96, "o": 96, "h": 5, "w": 6, "p": 0}
    model, text = _module_text(monkeypatch, SRC, args=args, threads=2, seed=6)
    assert sum(n.startswith("winograd_lazy_a(") for n in model.native_arrays()) == 3
    # the kernels take U made during the call (the GEMM path alone would pass the bounds)
    assert 'define internal void @"kiln_winograd_conv_lazy_' in text
    one = kiln.compile(SRC, args=args, threads=1, seed=6)
    ref = kiln.compile(SRC, args=args, target="reference", seed=6)
    for batch, bound in ((3, DIRECT_BOUND), (9, WINOGRAD_BOUND), (200, WINOGRAD_BOUND)):
        assert (batch >= winograd.LAZY_MIN_ROWS) == (batch != 3)
        assert _worst(model, 96, 96, 5, 6, 0, batch) <= bound
        x = RNG.standard_normal((batch, 96, 5, 6)).astype(np.float32)
        s = RNG.standard_normal((batch, 96, 3, 4)).astype(np.float32)
        for got, single, want in zip(model(x, s), one(x, s), ref(x, s), strict=True):
            np.testing.assert_array_equal(got, single)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _new_weights(model, ref)
    for batch in (3, 9):
        x = RNG.standard_normal((batch, 96, 5, 6)).astype(np.float32)
        s = RNG.standard_normal((batch, 96, 3, 4)).astype(np.float32)
        for got, want in zip(model(x, s), ref(x, s), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # code for AVX2 (8 lanes, 16-wide panels) makes the same U, within the bound
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    avx2 = targets.named("x86-64-v3")
    if avx2.missing_on(targets.host()):
        pytest.skip("this CPU cannot run code for x86-64-v3")
    native = NativeModel(Compilation.of(kiln.load(SRC), cpu=avx2, args=args),
                         dict(model.params), threads=2)
    assert sum(n.startswith("winograd_lazy_a(") for n in native.native_arrays()) == 3
    assert _worst(native, 96, 96, 5, 6, 0, 9) <= WINOGRAD_BOUND


def _new_weights(*models) -> None:
    """The same new random weights into each model (a made-during-the-call U is remade)."""
    weights = {k: RNG.standard_normal(v.shape).astype(np.float32)
               for k, v in models[0].params.items()}
    for model in models:
        model.load_weights(weights)


def test_opt_out_keeps_the_gemm_and_its_accuracy(monkeypatch, tmp_path):
    """KILN_WINOGRAD=0, even for a model whose Winograd code is in the compile caches (the
    variable is part of their keys)."""
    args = {"c": 32, "o": 40, "h": 7, "w": 7, "p": 1}  # a case above: cached with Winograd
    kiln.compile(SRC, args=args, threads=1, seed=11)
    path = tmp_path / "w.kiln"
    path.write_text(SRC)
    keys = [Request.of(path, None, args, 1, False).key]
    monkeypatch.setenv("KILN_WINOGRAD", "0")
    keys.append(Request.of(path, None, args, 1, False).key)
    assert keys[0] != keys[1]
    model = kiln.compile(SRC, args=args, threads=2, seed=11)
    names = model.native_arrays()
    assert not any(n.startswith("winograd_b(") for n in names)
    assert any(n.startswith("prepack_a(") for n in names)
    assert _worst(model, 32, 40, 7, 7, 1, 2) <= DIRECT_BOUND


def test_convolutions_of_different_shapes_share_the_transform_functions(monkeypatch):
    """The transforms and the steps between them take every size at run time: two Winograd
    convolutions of different channels and image sizes call one function per transform and
    one for the steps (not one each), and both stay within the bound against a float64
    direct convolution."""
    src = """
import std.nn
model Two { a = nn.Conv2d(32, 48, 3, padding = 1)
            b = nn.Conv2d(48, 40, 3, padding = 1)
  forward(x: f32[2, 32, 12, 10], y: f32[1, 48, 9, 7]) { return a(x), b(y) } }
"""
    model, text = _module_text(monkeypatch, src, seed=4)
    assert sum(n.startswith("winograd_b(") for n in model.native_arrays()) == 2
    for transform in ("wino_pad", "wino_in", "wino_out", "wino_store", "winograd_conv_kept"):
        defined = re.findall(rf'define [^@]*@"?([\w.]*{transform}[\w]*)"?\(', text)
        assert len([d for d in defined if not d.endswith(("_claim", "_parallel"))]) == 1, \
            (transform, defined)
    x = RNG.standard_normal((2, 32, 12, 10)).astype(np.float32)
    y = RNG.standard_normal((1, 48, 9, 7)).astype(np.float32)
    got = model(x, y)
    for out, inp, name in ((got[0], x, "a"), (got[1], y, "b")):
        w = model.params[f"{name}.weight"].astype(np.float64)
        bias = model.params[f"{name}.bias"].astype(np.float64).reshape(1, -1, 1, 1)
        pads = [(1, 1), (1, 1)]
        want = conv_nd(inp.astype(np.float64), w, (1, 1), pads, (1, 1), 1) + bias
        scale = conv_nd(np.abs(inp.astype(np.float64)), np.abs(w), (1, 1), pads, (1, 1),
                        1) + np.abs(bias)
        assert out.shape == want.shape
        assert np.max(np.abs(out - want) / (EPS * scale)) <= WINOGRAD_BOUND


def test_small_or_unshaped_convolutions_keep_the_gemm():
    """Fewer than 32 channels, a symbolic image size, or a stride: the GEMM path."""
    model = kiln.compile(SRC, args={"c": 16, "o": 64, "h": 8, "w": 8, "p": 1}, seed=1)
    assert not any(n.startswith("winograd_b(") for n in model.native_arrays())
    symbolic = """
import std.nn
model S { a = nn.Conv2d(64, 64, 3, padding = 1)
  forward(x: f32[B, 64, H, W]) { return x |> a } }
"""
    strided = symbolic.replace("padding = 1", "padding = 1, stride = 2").replace(
        "H, W", "16, 16")
    for src in (symbolic, strided):
        model = kiln.compile(src, seed=1)
        assert not any(n.startswith("winograd_b(") for n in model.native_arrays())


def test_bound_catches_a_wrong_transform_matrix(monkeypatch):
    """G with one coefficient 4 % off (the weight transform, made when weights are bound):
    the results break the bound the correct matrices keep."""
    wrong = G.copy()
    wrong[3, 0] = 1 / 25
    monkeypatch.setattr(packing, "G", wrong)
    args = {"c": 32, "o": 40, "h": 7, "w": 7, "p": 1}  # a case above: its code is cached
    model = kiln.compile(SRC, args=args, threads=1, seed=11)
    assert any(n.startswith("winograd_b(") for n in model.native_arrays())
    assert _worst(model, 32, 40, 7, 7, 1, 1) > WINOGRAD_BOUND


# a 4x4, stride-2, padding-1 transposed convolution (DCGAN's up-sampling) runs as the stride-1
# 3x3 convolution of packing.transposed_as_conv3 in F(4, 3), its outputs stored in place. Its
# bound is looser than a convolution's: at the last output row and column only one of a
# pixel's four taps lands (|x| * |w| is small there), while the tile's transforms mix in its
# other inputs' rounding; measured up to 112 (DCGAN's 128 -> 64 channels at 16x16), 15-20
# away from those edges
CT_BOUND = 256
CT_SRC = """
import std.nn
model T(c: int, o: int, h: int, w: int) {
  a = nn.ConvTranspose2d(c, o, 4, 2, 1)
  b = nn.ConvTranspose2d(c, o, 4, 2, 1, bias = false)
  forward(x: f32[B, c, h, w]) { return x |> a, relu(x |> b) }
}
"""


def _transposed64(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """conv_transpose(x, w) + b, stride 2, padding 1, in float64 by its definition: tap
    (i, j) of input pixel (ih, iw) lands on (2 ih - 1 + i, 2 iw - 1 + j)."""
    n, _, h, wd = x.shape
    y = np.zeros((n, w.shape[1], 2 * h + 2, 2 * wd + 2))  # one extra row/column each side
    for i in range(4):
        for j in range(4):
            y[:, :, i:i + 2 * h:2, j:j + 2 * wd:2] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
    y = y[:, :, 1:2 * h + 1, 1:2 * wd + 1]
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def test_transposed_weight_as_a_3x3_convolutions():
    """transposed_as_conv3: the 3x3 convolution's channel (2 ph + pw) C_out + o is the
    transposed convolution's pixels (2 a + ph, 2 b + pw) of channel o, and winograd_ct its U."""
    x = RNG.standard_normal((2, 5, 3, 4))
    w = RNG.standard_normal((5, 3, 4, 4)).astype(np.float32)
    z = conv_nd(x, packing.transposed_as_conv3(w).astype(np.float64), (1, 1), [(1, 1), (1, 1)],
                (1, 1), 1)
    shuffled = z.reshape(2, 2, 2, 3, 3, 4).transpose(0, 3, 4, 1, 5, 2).reshape(2, 3, 6, 8)
    np.testing.assert_allclose(shuffled, _transposed64(x, w.astype(np.float64), None),
                               rtol=1e-12, atol=1e-12)
    nr = tiling().nr
    np.testing.assert_array_equal(packing.winograd_ct(w, nr),
                                  winograd_b(packing.transposed_as_conv3(w), nr))


def _worst_transposed(model, c, o, h, w, batch) -> float:
    x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
    got = model(x)
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    x64 = x.astype(np.float64)
    want = [_transposed64(x64, params["a.weight"], params["a.bias"]),
            np.maximum(_transposed64(x64, params["b.weight"], None), 0)]
    scale = [_transposed64(np.abs(x64), np.abs(params["a.weight"]), np.abs(params["a.bias"])),
             _transposed64(np.abs(x64), np.abs(params["b.weight"]), None)]
    worst = 0.0
    for y, y64, sc in zip(got, want, scale, strict=True):
        assert y.shape == y64.shape == (batch, o, 2 * h, 2 * w)
        assert np.isfinite(y).all()
        worst = max(worst, float((np.abs(y - y64) / (EPS * sc + 1e-30)).max()))
    return worst


@pytest.mark.parametrize("c, o, h, w, batch, threads", [
    (32, 8, 16, 16, 13, 1),    # 16 tiles a sample: groups of 12 samples, then one
    (40, 9, 9, 7, 3, 2),       # partial tiles on both edges, odd channels (4 o = 36)
    (48, 16, 17, 5, 1, 2),     # one sample, more tile rows than columns
    (33, 12, 12, 12, 2, 1),
    # C_out a multiple of NR: each xi's products skip the phases whose U is zero
    (32, 32, 9, 7, 3, 2),
    (40, 64, 8, 8, 2, 1),
    (32, 32, 16, 16, 13, 1),   # groups of 12 samples, then one: M's zeroed blocks serve both
    (32, 32, 16, 16, 1, 3),    # the 100 live products shared unevenly by three threads
])
def test_native_transposed_winograd_within_its_bound(c, o, h, w, batch, threads):
    args = {"c": c, "o": o, "h": h, "w": w}
    model = kiln.compile(CT_SRC, args=args, threads=threads, seed=5)
    chosen = {n for n in model.native_arrays() if n.startswith("winograd_ct(")}
    assert len(chosen) == 2  # both transposed convolutions
    assert _worst_transposed(model, c, o, h, w, batch) <= CT_BOUND
    if threads == 2:  # and the numpy reference agrees
        ref = kiln.compile(CT_SRC, args=args, target="reference", seed=5)
        x = RNG.standard_normal((batch, c, h, w)).astype(np.float32)
        for got, want in zip(model(x), ref(x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_transposed_winograd_in_code_for_avx2_and_one_thread_agree():
    """The same model built for AVX2 (8 lanes) and for this CPU, on 1 and 2 threads, within
    the bound, the threads' results bit-equal."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    args = {"c": 36, "o": 16, "h": 11, "w": 6}  # (AVX2's panels, 16 wide: phases skipped)
    src = CT_SRC.replace("model T(c: int, o: int, h: int, w: int)", "model T").replace(
        "f32[B, c, h, w]", "f32[B, 36, 11, 6]").replace("(c, o, 4", "(36, 16, 4")
    host = kiln.compile(src, threads=2, seed=3)
    assert any(n.startswith("winograd_ct(") for n in host.native_arrays())
    assert _worst_transposed(host, *args.values(), 5) <= CT_BOUND
    one = kiln.compile(src, threads=1, seed=3)
    x = RNG.standard_normal((5, 36, 11, 6)).astype(np.float32)
    for a, b in zip(host(x), one(x), strict=True):
        np.testing.assert_array_equal(a, b)
    avx2 = targets.named("x86-64-v3")
    if avx2.missing_on(targets.host()):
        pytest.skip("this CPU cannot run code for x86-64-v3")
    native = NativeModel(Compilation.of(kiln.load(src), cpu=avx2), dict(host.params),
                         threads=2)
    assert any(n.startswith("winograd_ct(") for n in native.native_arrays())
    assert _worst_transposed(native, *args.values(), 4) <= CT_BOUND


def test_phases_skipped_are_those_whose_u_is_zero():
    """winograd._live_phases: U[xi] of the stride-1 form is zero, for any weight, in exactly
    the phases it leaves out (25 of 36 xi live in each phase), and the GEMMs' table of them
    lists those."""
    w = RNG.standard_normal((6, 8, 4, 4)).astype(np.float32)
    u = packing.weight_transform(packing.transposed_as_conv3(w))  # [36, C, 4 C_out]
    for xi in range(36):
        live = winograd._live_phases(xi)
        for phase in range(4):
            block = u[xi, :, phase * 8:(phase + 1) * 8]
            assert (phase in live) == bool(np.any(block != 0)), (xi, phase)
    assert [sum(p in winograd._live_phases(xi) for xi in range(36)) for p in range(4)] == \
        [winograd.LIVE] * 4


def test_transposed_winograd_makes_u_during_a_large_call(monkeypatch):
    """U too large to keep for any batch (256 -> 128 channels at 4x4: 19 MB for a 2 MB
    weight): the GEMM's panels and the weight channels-last are kept (winograd_lazy_or_b);
    batch 3 goes through the GEMM and its scatter, batch 9 (LAZY_MIN_ROWS tiles or more)
    through F(4, 3) with U made a block at a time. Each within its bound, 1 and 2 threads
    bit-equal, and the reference agrees; new weights reach both."""
    args = {"c": 256, "o": 128, "h": 4, "w": 4}
    model, text = _module_text(monkeypatch, CT_SRC, args=args, threads=2, seed=4)
    assert sum(n.startswith("winograd_lazy_or_b(") for n in model.native_arrays()) == 2
    assert 'define internal void @"kiln_winograd_ct_lazy_phased_' in text
    one = kiln.compile(CT_SRC, args=args, threads=1, seed=4)
    ref = kiln.compile(CT_SRC, args=args, target="reference", seed=4)
    for batch in (3, 9, 200):  # (200: a group of GROUP_ROWS samples, then one of 8)
        assert (batch >= winograd.LAZY_MIN_ROWS) == (batch != 3)
        assert _worst_transposed(model, 256, 128, 4, 4, batch) <= CT_BOUND
        x = RNG.standard_normal((batch, 256, 4, 4)).astype(np.float32)
        for got, single, want in zip(model(x), one(x), ref(x), strict=True):
            np.testing.assert_array_equal(got, single)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _new_weights(model, ref)
    x = RNG.standard_normal((9, 256, 4, 4)).astype(np.float32)
    for got, want in zip(model(x), ref(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_other_transposed_convolutions_keep_the_gemm():
    """A 3x3 kernel, output padding, groups, few channels, or a symbolic size: the GEMM and
    its scatter."""
    base = """
import std.nn
model S { a = nn.ConvTranspose2d(64, 32, KERNEL)
  forward(x: f32[B, 64, H, 8]) { return x |> a } }
"""
    for kernel, h in (("3, 2, 1", "8"), ("4, 2, 1, output_padding = 1", "8"),
                      ("4, 2, 1, groups = 2", "8"), ("4, 1, 1", "8"), ("4, 2, 1", "H")):
        model = kiln.compile(base.replace("KERNEL", kernel).replace("H, 8", f"{h}, 8"),
                             seed=1)
        assert not any(n.startswith("winograd_ct(") for n in model.native_arrays()), kernel
    few = base.replace("KERNEL", "4, 2, 1").replace("64, 32", "16, 32").replace(
        "B, 64", "B, 16").replace("H, 8", "8, 8")
    assert not any(n.startswith("winograd_ct(") for n in kiln.compile(few, seed=1)
                   .native_arrays())


def test_transposed_winograd_chosen_by_the_batch():
    """U too large for one sample's tiles (64 -> 32 channels at 4x4: one tile a sample) but
    not for a few samples': both layouts kept (winograd_ct_or_b), batch 1 through the GEMM
    and its scatter, batch 3 through F(4, 3); each within its bound, on 1 and 2 threads
    bit-equal, and the reference agrees."""
    args = {"c": 64, "o": 32, "h": 4, "w": 4}
    model = kiln.compile(CT_SRC, args=args, threads=2, seed=9)
    assert sum(n.startswith("winograd_ct_or_b(") for n in model.native_arrays()) == 2
    one = kiln.compile(CT_SRC, args=args, threads=1, seed=9)
    ref = kiln.compile(CT_SRC, args=args, target="reference", seed=9)
    for batch in (1, 3):
        assert _worst_transposed(model, 64, 32, 4, 4, batch) <= CT_BOUND
        x = RNG.standard_normal((batch, 64, 4, 4)).astype(np.float32)
        for got, single, want in zip(model(x), one(x), ref(x), strict=True):
            np.testing.assert_array_equal(got, single)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the GEMM path at batch 1 is as accurate as a direct sum
    assert _worst_transposed(model, 64, 32, 4, 4, 1) <= DIRECT_BOUND
