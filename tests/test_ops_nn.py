"""Normalization, convolution, pooling and resize against direct loops and hand-computed cases.

The oracles loop over output positions (conv, pools) or input positions (conv_transpose scatters
each input through the kernel), following PyTorch's kernels' definitions, on tiny inputs.
"""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pytest
from _cases import CONV_CASES, CONV_T_CASES, HALF_CASES, POOL_CASES
from _optest import T, assert_close, infer1, raises, rand, run

from kiln.compiler.dims import Dim
from kiln.compiler.ops import REGISTRY

B, H, W = Dim.of("B"), Dim.of("H"), Dim.of("W")


# oracles ----------------------------------------------------------------------------------
def conv2d_loop(x, w, b, stride, pads, dilation, groups):
    """pads = (top, bottom, left, right); a sum over channels and kernel at each output."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads[:2], pads[2:]))
    n, _, hp, wp = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for b_, co, i, j in itertools.product(range(n), range(o), range(oh), range(ow)):
        g = co // (o // groups)
        for ki, kj in itertools.product(range(kh), range(kw)):
            pixel = x[b_, g * cg:(g + 1) * cg, i * sh + ki * dh, j * sw + kj * dw]
            out[b_, co, i, j] += float(np.dot(pixel, w[co, :, ki, kj]))
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def conv_transpose2d_loop(x, w, stride, pad, output_padding, dilation, groups):
    """Scatter each input pixel through the kernel (the transpose of a strided conv)."""
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape
    oh = (h - 1) * stride[0] - 2 * pad[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    ow = (wd - 1) * stride[1] - 2 * pad[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    out = np.zeros((n, cout_g * groups, oh, ow))
    cin_g = cin // groups
    for b_, ci, i, j, ki, kj in itertools.product(range(n), range(cin), range(h), range(wd),
                                                  range(kh), range(kw)):
        y = i * stride[0] - pad[0] + ki * dilation[0]
        z = j * stride[1] - pad[1] + kj * dilation[1]
        if 0 <= y < oh and 0 <= z < ow:
            g = ci // cin_g
            out[b_, g * cout_g:(g + 1) * cout_g, y, z] += x[b_, ci, i, j] * w[ci, :, ki, kj]
    return out


def pool_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling_output_shape."""
    span = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = span // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool2d_loop(x, k, s, p, d, ceil_mode, kind, count_include_pad=True):
    """PyTorch's max_pool2d / avg_pool2d kernels, one output at a time."""
    n, c, h, w = x.shape
    oh, ow = pool_size(h, k[0], s[0], p[0], d[0], ceil_mode), pool_size(w, k[1], s[1], p[1], d[1],
                                                                         ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for b_, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
        if kind == "max":
            vals = [x[b_, ch, h0 + a * d[0], w0 + e * d[1]]
                    for a in range(k[0]) for e in range(k[1])
                    if 0 <= h0 + a * d[0] < h and 0 <= w0 + e * d[1] < w]
            out[b_, ch, i, j] = max(vals)
            continue
        h1, w1 = min(h0 + k[0], h + p[0]), min(w0 + k[1], w + p[1])
        full = (h1 - h0) * (w1 - w0)
        h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
        total = x[b_, ch, h0:h1, w0:w1].sum()
        out[b_, ch, i, j] = total / (full if count_include_pad else (h1 - h0) * (w1 - w0))
    return out


# convolution ------------------------------------------------------------------------------
def pair(v):
    return (v, v) if isinstance(v, int) else v


def _pads_for(padding, kernel, dilation):
    dilation = pair(dilation)
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=False)]
        return (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2,
                totals[1] - totals[1] // 2)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_against_loop(case):
    xs, ws, stride, padding, dilation, groups = case
    x, w, b = rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[0], seed=3)
    out = run("conv", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    expected = conv2d_loop(x, w, b, pair(stride), _pads_for(padding, ws[2:], dilation),
                           pair(dilation), groups)
    assert_close("conv", out, expected)
    if padding == "same":
        assert out.shape[2:] == xs[2:]


def test_conv1d_against_loop():
    x, w = rand(2, 4, 11, seed=4), rand(6, 2, 3, seed=5)
    out = run("conv", x, w, stride=2, padding=2, dilation=2, groups=2)
    expected = conv2d_loop(x[:, :, None], w[:, :, None], None, (1, 2), (0, 0, 2, 2), (1, 2), 2)
    assert_close("conv", out, expected[:, :, 0])


def depthwise_weight_grad_loop(x, g, kernel, stride, pads, dilation):
    """dw[o, 0, i, j] = sum over n, p, q of g[n, o, p, q] * xpad[n, o // m, p*sh + i*dh,
    q*sw + j*dw], a term at a time; pads = (top, bottom, left, right)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads[:2], pads[2:]))
    n, outs, oh, ow = g.shape
    per = outs // x.shape[1]
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    out = np.zeros((outs, 1, kh, kw))
    for b_, o, p, q, i, j in itertools.product(range(n), range(outs), range(oh), range(ow),
                                               range(kh), range(kw)):
        out[o, 0, i, j] += g[b_, o, p, q] * x[b_, o // per, p * sh + i * dh, q * sw + j * dw]
    return out


@pytest.mark.parametrize("xs, gs, kernel, stride, pads, dilation", [
    ((2, 3, 7, 9), (2, 3, 7, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 2, 9, 8), (1, 4, 4, 4), (3, 2), (2, 2), (1, 0, 2, 0), (1, 2)),  # two filters each
    ((2, 2, 8, 7), (2, 2, 3, 3), (2, 3), (3, 2), (0, 1, 0, 0), (2, 1)),  # rows never read
])
def test_depthwise_weight_grad_against_loop(xs, gs, kernel, stride, pads, dilation):
    x, g = rand(*xs, seed=1), rand(*gs, seed=2)
    out = run("depthwise_weight_grad", x, g, kernel_size=list(kernel), stride=list(stride),
              pads=list(pads[:2]) + list(pads[2:]), dilation=list(dilation))
    assert_close("depthwise_weight_grad", out,
                 depthwise_weight_grad_loop(x, g, kernel, stride, pads, dilation))
    line = run("depthwise_weight_grad", x[:, :, 0], g[:, :, 0], kernel_size=kernel[1],
               stride=stride[1], pads=list(pads[2:]), dilation=dilation[1])
    want = depthwise_weight_grad_loop(x[:, :, :1], g[:, :, :1], (1, kernel[1]), stride,
                                      (0, 0, *pads[2:]), dilation)
    assert_close("depthwise_weight_grad", line, want[:, :, 0])


def test_depthwise_weight_grad_shapes_and_errors():
    assert infer1("depthwise_weight_grad", T([B, 3, H, W]), T([B, 6, H, W]), kernel_size=3,
                  pads=1) == T([6, 1, 3, 3])
    raises("K0301", "depthwise_weight_grad", T([2, 3, 7, 7]), T([2, 3, 6, 7]), kernel_size=3,
           pads=1, arg="grad", match="output size")
    raises("K0301", "depthwise_weight_grad", T([2, 3, 7, 7]), T([2, 4, 7, 7]), kernel_size=3,
           pads=1, arg="grad", match="depthwise")
    raises("K0301", "depthwise_weight_grad", T([2, 3, 7, 7]), T([1, 3, 7, 7]), kernel_size=3,
           pads=1, arg="grad")


def test_conv_half_precision():
    x, w = rand(1, 2, 5, 5, dtype="f16"), rand(3, 2, 3, 3, dtype="f16", seed=7)
    out = run("conv", x, w, padding=1)
    expected = conv2d_loop(x, w.astype(np.float64), None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert_close("conv", out, expected, "f16")


@pytest.mark.parametrize("case", CONV_T_CASES)
def test_conv_transpose2d_against_scatter_loop(case):
    xs, ws, stride, padding, output_padding, dilation, groups = case
    x, w, b = rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[1] * groups, seed=3)
    out = run("conv_transpose", x, w, b, stride=stride, padding=padding,
              output_padding=output_padding, dilation=dilation, groups=groups)
    expected = conv_transpose2d_loop(x, w, pair(stride), pair(padding), pair(output_padding),
                                     pair(dilation), groups)
    assert_close("conv_transpose", out, expected + b.reshape(1, -1, 1, 1))


def test_conv_transpose1d():
    x, w = rand(1, 2, 5), rand(2, 3, 3, seed=9)
    out = run("conv_transpose", x, w, stride=2, padding=1, output_padding=1)
    expected = conv_transpose2d_loop(x[:, :, None], w[:, :, None], (1, 2), (0, 1), (0, 1),
                                     (1, 1), 1)
    assert_close("conv_transpose", out, expected[:, :, 0])


def test_conv_symbolic_output_sizes_and_macs():
    out = infer1("conv", T(["B", 3, "H", "W"]), T([64, 3, 7, 7]), None, stride=2, padding=3)
    assert out == T([B, 64, (H + 2 * 3 - 1 * (7 - 1) - 1) // 2 + 1, (W + 2 * 3 - 6 - 1) // 2 + 1])
    assert out.shape[2] == (H - 1) // 2 + 1
    same = infer1("conv", T(["B", 3, "H", "W"]), T([8, 3, 3, 5]), None, padding="same")
    assert same.shape == (B, Dim.of(8), H, W)
    macs = REGISTRY["conv"].macs([T(["B", 3, 32, 32]), T([16, 3, 5, 5]), None],
                                 [T(["B", 16, 28, 28])], {})
    assert macs == B * 16 * 28 * 28 * 3 * 25
    up = infer1("conv_transpose", T(["B", 8, "H", "W"]), T([8, 4, 4, 4]), None, stride=2,
                padding=1)
    assert up.shape == (B, Dim.of(4), H * 2, W * 2)
    tmacs = REGISTRY["conv_transpose"].macs([T(["B", 8, "H", "H"]), T([8, 4, 4, 4]), None],
                                            [up], {})
    assert tmacs == B * 8 * H * H * 4 * 16


def test_conv_runs_with_symbolic_types():
    x, w = rand(2, 3, 9, 9), rand(4, 3, 3, 3)
    out = run("conv", x, w, None, stride=2, padding=1,
              types=[T(["B", 3, "H", "H"]), T([4, 3, 3, 3]), None], env={"B": 2, "H": 9})
    assert out.shape == (2, 4, 5, 5)


def test_conv_errors():
    raises("K0301", "conv", T([1, 4, 8, 8]), T([6, 3, 3, 3]), None, arg="weight",
           match=r"\[6, 3, 3, 3\].*\[1, 4, 8, 8\]")
    raises("K0301", "conv", T([1, 4, 8, 8]), T([6, 2, 3, 3]), None, groups=4, arg="groups")
    raises("K0301", "conv", T([1, 3, 2, 2]), T([6, 3, 3, 3]), None, arg="x")
    raises("K0301", "conv", T([1, 3, 8]), T([6, 3, 3, 3]), None, arg="weight")
    raises("K0301", "conv", T([1, 3, 8, 8]), T([6, 3, 3, 3]), T([5]), arg="bias")
    raises("K0302", "conv", T([1, 3, 8, 8], "i32"), T([6, 3, 3, 3], "i32"), None, arg="x")
    raises("K0302", "conv", T([1, 3, 8, 8]), T([6, 3, 3, 3], "f16"), None, arg="weight")
    raises("K0303", "conv", T([1, 3, 8, 8]), T([6, 3, 3, 3]), None, padding="same", stride=2,
           arg="padding")
    raises("K0303", "conv", T([1, 3, 8, 8]), T([6, 3, 3, 3]), None, stride=0, arg="stride")
    raises("K0303", "conv", T([1, 3, 8, 8]), T([6, 3, 3, 3]), None, padding=[1, 2, 3],
           arg="padding")
    raises("K0303", "conv_transpose", T([1, 3, 8, 8]), T([3, 3, 3, 3]), None, stride=2,
           output_padding=2, arg="output_padding")
    raises("K0301", "conv_transpose", T([1, 4, 8, 8]), T([3, 3, 3, 3]), None, arg="weight")


# pooling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("shape", [(1, 2, 7, 6), (2, 1, 8, 9)])
def test_max_pool_against_loop(case, shape):
    k, s, p, d, ceil_mode = case
    x = rand(*shape, seed=11)
    out = run("max_pool", x, kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode)
    assert_close("max_pool", out, pool2d_loop(x, k, s or k, p, d, ceil_mode, "max"))


@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[3] == (1, 1)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_against_loop(case, count_include_pad):
    k, s, p, _d, ceil_mode = case
    x = rand(2, 3, 7, 8, seed=12)
    out = run("avg_pool", x, kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode,
              count_include_pad=count_include_pad)
    assert_close("avg_pool", out, pool2d_loop(x, k, s or k, p, (1, 1), ceil_mode, "avg", count_include_pad))


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_grad_against_torch(case):
    """max_pool's gradient op against PyTorch's autograd, on values with many ties (rounded to
    halves): each window's cotangent goes to its first maximum."""
    torch = pytest.importorskip("torch")
    k, s, p, d, ceil_mode = case
    x = np.round(rand(2, 3, 7, 8, seed=13) * 2) / 2
    tx = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(tx, k, s or k, p, d, ceil_mode)
    g = rand(*y.shape, seed=14)
    y.backward(torch.tensor(g))
    out = run("max_pool_grad", x, g, kernel_size=k, stride=s, padding=p, dilation=d,
              ceil_mode=ceil_mode)
    assert_close("max_pool_grad", out, tx.grad.numpy())


def test_pool1d_and_integer_max_pool():
    x = np.array([[[3, -1, 4, 1, -5, 9, 2]]], np.int32)
    np.testing.assert_array_equal(run("max_pool", x, kernel_size=3, stride=2, padding=1),
                                  [[[3, 4, 9, 9]]])
    xf = x.astype(np.float32)
    np.testing.assert_allclose(run("avg_pool", xf, kernel_size=2, ceil_mode=True),
                               [[[1, 2.5, 2, 2]]])
    assert run("max_pool", x.astype(np.float16), kernel_size=2).dtype == np.float16


def test_pool_symbolic_sizes():
    out = infer1("max_pool", T(["B", 64, "H", "W"]), kernel_size=3, stride=2, padding=1)
    assert out.shape[2] == (H + 2 - 2 - 1) // 2 + 1
    ceil = infer1("max_pool", T(["B", 64, "H", "W"]), kernel_size=3, stride=2, padding=1,
                  ceil_mode=True)
    assert ceil.shape[2] == (H + 2 - 2 - 1 + 1) // 2 + 1
    pooled = infer1("avg_pool", T(["B", 8, "L"]), kernel_size=2)
    assert pooled == T([B, 8, (Dim.of("L") - 1 * (2 - 1) - 1) // 2 + 1])
    assert infer1("global_avg_pool", T(["B", 8, "H", "W"])) == T(["B", 8, 1, 1])
    for k, s, p in itertools.product([1, 2, 3, 4], [1, 2, 3], [0, 1, 2]):
        if 2 * p > k:
            continue
        out = infer1("max_pool", T(["B", 8, "H"]), kernel_size=k, stride=s, padding=p,
                     ceil_mode=True).shape[2]
        for h in range(max(k - 2 * p, 1), 12):
            assert out.evaluate({"H": h}) == pool_size(h, k, s, p, 1, True), (k, s, p, h)


def test_global_avg_pool():
    x = rand(2, 3, 4, 5, dtype="bf16")
    expected = [[statistics.fmean(x[n, c].astype(np.float64).ravel()) for c in range(3)]
                for n in range(2)]
    assert_close("global_avg_pool", run("global_avg_pool", x)[:, :, 0, 0], expected, "bf16")


def test_pool_errors():
    raises("K0303", "max_pool", T([1, 3, 8, 8]), kernel_size=2, padding=2, arg="padding")
    raises("K0303", "max_pool", T([1, 3, 8, 8]), kernel_size=[2, 2, 2], arg="kernel_size")
    raises("K0301", "max_pool", T([1, 3, 8, 8, 8]), kernel_size=2, arg="x")
    raises("K0301", "avg_pool", T([1, 3, 1, 1]), kernel_size=2, arg="x")
    raises("K0302", "avg_pool", T([1, 3, 8, 8], "i32"), kernel_size=2, arg="x")
    raises("K0302", "global_avg_pool", T([1, 3, 8, 8], "i64"), arg="x")


# resize -----------------------------------------------------------------------------------
X22 = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)


def test_bilinear_2x2_to_4x4_like_pytorch():
    expected = [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5],
                [3.0, 3.25, 3.75, 4.0]]
    assert_close("resize", run("resize", X22, size=4, mode="bilinear")[0, 0], expected)
    assert_close("resize", run("resize", X22, scale_factor=2.0, mode="bilinear")[0, 0], expected)
    third = 1 / 3
    corners = [[1, 1 + third, 1 + 2 * third, 2], [1 + 2 * third, 2, 2 + third, 2 + 2 * third],
               [2 + third, 2 + 2 * third, 3, 3 + third], [3, 3 + third, 3 + 2 * third, 4]]
    assert_close("resize", run("resize", X22, size=[4, 4], mode="bilinear", align_corners=True)[0, 0],
                 corners)


def test_nearest_is_legacy_floor():
    x = np.arange(2 * 3, dtype=np.float32).reshape(1, 1, 2, 3)
    out = run("resize", x, size=[4, 5])
    np.testing.assert_array_equal(out[0, 0], x[0, 0][np.ix_([0, 0, 1, 1], [0, 0, 1, 1, 2])])
    line = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    # scale_factor 1.7: 8 outputs reading floor(dst / 1.7), as PyTorch without recompute
    np.testing.assert_array_equal(run("resize", line, scale_factor=1.7)[0, 0],
                                  [0, 0, 1, 1, 2, 2, 3, 4])
    np.testing.assert_array_equal(run("resize", line, size=8)[0, 0], [0, 0, 1, 1, 2, 3, 3, 4])


def test_nearest_exact_reads_pixel_centres():
    """floor((dst + 0.5) * in / out), PyTorch's nearest-exact: 5 -> 8 reads 0.3125, 0.9375,
    1.5625, 2.1875, 2.8125, 3.4375, 4.0625, 4.6875; 5 -> 3 reads 0.83, 2.5, 4.17."""
    line = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    np.testing.assert_array_equal(run("resize", line, size=8, mode="nearest-exact")[0, 0],
                                  [0, 0, 1, 2, 2, 3, 4, 4])
    np.testing.assert_array_equal(run("resize", line, size=3, mode="nearest-exact")[0, 0],
                                  [0, 2, 4])


def test_bilinear_downsample_and_half():
    x = np.arange(16, dtype=np.float16).reshape(1, 1, 4, 4)
    out = run("resize", x, size=[2, 2], mode="bilinear")
    assert_close("resize", out[0, 0], [[2.5, 4.5], [10.5, 12.5]], "f16")


def test_resize_symbolic_and_errors():
    assert infer1("resize", T(["B", 3, "H", "W"]), scale_factor=2) == T(["B", 3, H * 2, W * 2])
    assert infer1("resize", T(["B", 3, 5, "W"]), scale_factor=[1.5, 3.0]) == T(["B", 3, 7, W * 3])
    assert infer1("resize", T(["B", 3, "H", "W"]), size=[H, 8]) == T(["B", 3, "H", 8])
    raises("K0301", "resize", T(["B", 3, "H", "W"]), scale_factor=1.5)
    raises("K0303", "resize", T([1, 3, 4, 4]), arg="size")
    raises("K0303", "resize", T([1, 3, 4, 4]), size=8, scale_factor=2, arg="size")
    raises("K0303", "resize", T([1, 3, 4, 4]), size=8, mode="cubic", arg="mode")
    raises("K0303", "resize", T([1, 3, 4, 4]), size=8, align_corners=True, arg="align_corners")
    raises("K0302", "resize", T([1, 3, 4, 4], "i64"), size=8)


# normalization ----------------------------------------------------------------------------
def _normalized(values, eps):
    mean, var = statistics.fmean(values), statistics.pvariance(values)
    return [(v - mean) / (var + eps) ** 0.5 for v in values]


def test_layer_norm_against_statistics():
    x, w, b = rand(2, 3, 4, seed=1), rand(3, 4, seed=2), rand(3, 4, seed=3)
    out = run("layer_norm", x, [3, 4], w, b, eps=1e-3)
    for n in range(2):
        rows = np.array(_normalized(x[n].astype(np.float64).ravel().tolist(), 1e-3))
        assert_close("layer_norm", out[n], rows.reshape(3, 4) * w + b)
    plain = run("layer_norm", x, 4)
    assert_close("layer_norm", plain[1, 2], _normalized(x[1, 2].astype(np.float64).tolist(), 1e-5))


def test_batch_norm_by_hand():
    """Running variances as small as eps: a dropped eps, or one added outside the square
    root, moves every output by far more than the tolerance."""
    x = rand(2, 3, 2, 2)
    mean, var = np.array([0.5, -1, 0], np.float32), np.array([1e-3, 4e-3, 1e-2], np.float32)
    w, b = np.array([1, 2, 3], np.float32), np.array([0, 1, -1], np.float32)
    for eps in (1e-3, 0.0, 1e-5):
        out = run("batch_norm", x, mean, var, w, b, eps=eps)
        for c in range(3):
            expected = (x[:, c].astype(np.float64) - mean[c]) / np.sqrt(var[c] + eps) * w[c] + b[c]
            assert_close("batch_norm", out[:, c], expected)
    assert run("batch_norm", rand(4, 3), mean, var).shape == (4, 3)


def test_batch_norm_stats_by_loops():
    """batch_norm_stats' four rows per channel from plain Python sums over every sample and
    position (statistics.fmean, math.fsum): mean(x), the biased variance, sum(dy) and
    sum(dy * (x - mean)); rank 3 and rank 4, and the shape checks."""
    import math

    for shape in ((3, 4, 5), (2, 3, 2, 3)):
        x, dy = rand(*shape, seed=21), rand(*shape, seed=22)
        got = run("batch_norm_stats", x, dy)
        assert got.shape == (4, shape[1])
        for c in range(shape[1]):
            xs = [float(v) for v in np.moveaxis(x, 1, 0)[c].ravel()]
            gs = [float(v) for v in np.moveaxis(dy, 1, 0)[c].ravel()]
            mean = statistics.fmean(xs)
            want = [mean, math.fsum((v - mean) ** 2 for v in xs) / len(xs), math.fsum(gs),
                    math.fsum(g * (v - mean) for g, v in zip(gs, xs, strict=True))]
            assert_close("batch_norm_stats", got[:, c], np.array(want))
    raises("K0301", "batch_norm_stats", T([2, 3, 4]), T([2, 3, 5]), arg="dy")


def test_group_and_instance_norm_against_statistics():
    x = rand(2, 6, 3, seed=4)
    w, b = rand(6, seed=5), rand(6, seed=6)
    out = run("group_norm", x, 3, w, b)
    inst = run("instance_norm", x.reshape(2, 6, 3, 1), eps=1e-5)
    for n, g in itertools.product(range(2), range(3)):
        block = x[n, 2 * g:2 * g + 2].astype(np.float64)
        expected = np.array(_normalized(block.ravel().tolist(), 1e-5)).reshape(2, 3)
        assert_close("group_norm", out[n, 2 * g:2 * g + 2], expected * w[2 * g:2 * g + 2, None]
                     + b[2 * g:2 * g + 2, None])
    for n, c in itertools.product(range(2), range(6)):
        assert_close("instance_norm", inst[n, c, :, 0], _normalized(x[n, c].astype(np.float64).tolist(), 1e-5))


def test_norm_symbolic_and_errors():
    assert infer1("layer_norm", T(["B", "T", 64]), 64, T([64]), T([64])) == T(["B", "T", 64])
    assert infer1("group_norm", T(["B", 32, "H", "W"]), 8) == T(["B", 32, "H", "W"])
    raises("K0301", "layer_norm", T(["B", 10]), [12], arg="normalized_shape",
           match=r"\[12\].*\[B, 10\]")
    raises("K0301", "layer_norm", T(["B", 10]), 10, T([12]), arg="weight")
    raises("K0302", "layer_norm", T(["B", 10]), 10, T([10], "f16"), arg="weight")
    raises("K0302", "layer_norm", T(["B", 10], "i64"), 10, arg="x")
    raises("K0301", "batch_norm", T(["B", 3, 4]), T([4]), T([3]), arg="running_mean")
    raises("K0303", "batch_norm", T(["B", 3]), T([3]), T([3]), training="yes", arg="training")
    raises("K0301", "group_norm", T([1, 6, 4]), 4, arg="num_groups")
    raises("K0303", "group_norm", T([1, 6, 4]), 0, arg="num_groups")
    raises("K0301", "instance_norm", T([1, 6]), arg="x")


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("case", HALF_CASES, ids=[c[0] for c in HALF_CASES])
def test_half_precision_agrees_with_f32(case, dtype):
    """Half inputs compute in f32 and round once: the f32 result rounded to the half dtype."""
    op, make, attrs = case
    x = rand(1, 2, 5, 5, dtype=dtype, seed=8)
    half = run(op, *make(x), **attrs)
    full = run(op, *(a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in make(x)),
               **attrs)
    assert half.dtype == x.dtype
    assert_close(op, half, full, dtype)
