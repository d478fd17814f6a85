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
from kiln.compiler.codegen.llvm import packing
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
    """The transforms take every size at run time: two Winograd convolutions of different
    channels and image sizes call one function per transform (not one each), and both
    stay within the bound against a float64 direct convolution."""
    from kiln.compiler.codegen.llvm import machine

    texts = []
    real = machine.ir_text
    monkeypatch.setattr(machine, "ir_text", lambda *a: texts.append(real(*a)) or texts[-1])
    monkeypatch.setenv("KILN_CACHE", "0")
    src = """
import std.nn
model Two { a = nn.Conv2d(32, 48, 3, padding = 1)
            b = nn.Conv2d(48, 40, 3, padding = 1)
  forward(x: f32[2, 32, 12, 10], y: f32[1, 48, 9, 7]) { return a(x), b(y) } }
"""
    model = kiln.compile(src, seed=4)
    assert sum(n.startswith("winograd_b(") for n in model.native_arrays()) == 2
    (text,) = texts
    for transform in ("wino_pad", "wino_in", "wino_out", "wino_store"):
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
