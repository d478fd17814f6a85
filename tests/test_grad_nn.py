"""Gradient rules (OpRecord.vjp) of the neural-network ops against central finite differences
in float64 (tests/_gradcheck.py: check_vjp): conv and conv_transpose over every stride,
padding, dilation and groups combination of _cases.py's tables, the pools (ceil mode, counted
padding, dilation, PyTorch's tie rule for max), the norms with and without their affine
parameters, and resize in each mode; then the backward graphs on the native and ONNX targets
against the reference interpreter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _cases import CONV_CASES, CONV_T_CASES, POOL_CASES
from _gradcheck import backward, check_vjp, rules_graph
from _nativetest import native_model
from _optest import run
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kiln
from kiln import KilnError
from kiln.compiler.codegen.onnx import export
from kiln.compiler.dims import Dim
from kiln.compiler.elaborate.elaborator import Port
from kiln.compiler.evaluate import run_graph
from kiln.compiler.types import TensorType


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- conv, conv_transpose
@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", CONV_CASES)
def test_conv(xs, ws, stride, padding, dilation, groups):
    check_vjp("conv", normal(*xs, seed=1), normal(*ws, seed=2), normal(ws[0], seed=3),
              stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("padding", [0, 2, "same", "valid"])
def test_conv_1d(padding):
    check_vjp("conv", normal(2, 4, 11, seed=4), normal(6, 2, 3, seed=5), None,
              stride=1 if padding == "same" else 2, padding=padding, dilation=2, groups=2)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
       st.sampled_from([1, 2]), st.integers(4, 8), st.integers(1, 3))
def test_conv_random(k, stride, padding, dilation, groups, size, batch):
    """Strides that leave input rows unread, padding wider than the kernel reaches."""
    if (size + 2 * padding - dilation * (k - 1) - 1) < 0:
        return
    x = normal(batch, 2 * groups, size, size - 1, seed=size)
    w = normal(2 * groups, 2, k, k, seed=k)
    check_vjp("conv", x, w, normal(2 * groups, seed=3), stride=stride, padding=padding,
              dilation=dilation, groups=groups)


@pytest.mark.parametrize("stride, padding, dilation, groups, flipped, dw", [
    (1, 1, 1, 1, True, "shifted"),   # the common 3x3: both gradients on GEMMs, no patches
    (1, 2, 2, 1, True, "patches"),   # dilated columns of 2 channels: too narrow to shift
    (2, 1, 1, 1, False, "patches"),  # strided: dx stays a transposed convolution
    (1, 3, 1, 1, False, "shifted"),  # padding past what the kernel reaches: no flipped form
    (1, 1, 1, 2, False, "conv"),     # grouped: the general forms
])
def test_conv_rule_forms(stride, padding, dilation, groups, flipped, dw):
    """Where it can, conv's rule takes dx as a stride-1 convolution with the flipped kernel
    and dw as GEMMs over shifted rows of the input or over gathered patches (_conv_grad.py);
    each form against finite differences, with a symbolic batch."""
    x, w = normal(3, 2 * groups, 7, 6, seed=1), normal(4, 2, 3, 3, seed=2)
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    graph, *_ = rules_graph([("conv", (x.astype(np.float32), w.astype(np.float32), None),
                              attrs)])
    ops = {graph.op(n) for n in graph.order()}
    assert ("conv_transpose" not in ops and "flip" in ops) == flipped, ops
    form = "shifted" if "shifted_matmul" in ops else "patches" if "gather" in ops else "conv"
    assert form == dw, ops
    check_vjp("conv", x, w, None, types=[TensorType("f64", ("B", *x.shape[1:])),
                                          TensorType("f64", w.shape), None],
              dims={"B": 3}, **attrs)


@pytest.mark.parametrize("shape, stride", [((2, 3, 7, 6), 2), ((1, 4, 8, 9), (2, 3)),
                                           ((2, 2, 5, 5), 3)])
def test_conv_pointwise_strided_input_grad(shape, stride):
    """A strided 1x1 convolution's dx is its cotangent through w^T (a 1x1 conv) placed every
    s-th pixel, no transposed convolution; rows past the last window get zeros."""
    x, w = normal(*shape, seed=1), normal(5, shape[1], 1, 1, seed=2)
    graph, *_ = rules_graph([("conv", (x.astype(np.float32), w.astype(np.float32), None),
                              dict(stride=stride))])
    assert "conv_transpose" not in {graph.op(n) for n in graph.order()}
    check_vjp("conv", x, w, normal(5, seed=3), stride=stride,
              types=[TensorType("f64", ("B", *shape[1:])), TensorType("f64", w.shape),
                     TensorType("f64", (5,))], dims={"B": shape[0]})


PHASE_CASES = [  # (x shape, kernel, stride, padding, phases or None: a transposed conv)
    ((2, 3, 8, 6), 3, 2, 1, True),         # ResNet's downsampling 3x3
    ((1, 2, 8, 9), 3, (2, 3), (1, 0), True),
    ((2, 2, 6, 6), 5, 2, 2, True),         # phases of 3 and 2 taps
    ((1, 2, 8, 8), 4, 2, 1, True),         # an even kernel: cotangent shifted both ways
    ((1, 3, 9, 6), 3, 3, 0, True),         # one tap per phase
    ((2, 3, 7, 6), 3, 2, 1, False),        # 7 rows: no whole phases
    ((1, 2, 9, 9), 2, 3, 0, False),        # k < s: a phase no tap reaches
]


@pytest.mark.parametrize("shape, k, stride, padding, phases", PHASE_CASES)
def test_conv_strided_input_grad_by_phases(shape, k, stride, padding, phases):
    """A strided convolution's dx as stride-1 convolutions, one per output phase, interleaved
    (no transposed convolution) where the sizes are multiples of the strides: against finite
    differences with a symbolic batch, and natively against PyTorch."""
    x, w = normal(*shape, seed=1), normal(4, shape[1], k, k, seed=2)
    attrs = dict(stride=stride, padding=padding)
    graph, *_ = rules_graph([("conv", (x.astype(np.float32), w.astype(np.float32), None),
                              attrs)])
    assert ("conv_transpose" not in {graph.op(n) for n in graph.order()}) == phases
    check_vjp("conv", x, w, None, types=[TensorType("f64", ("B", *shape[1:])),
                                          TensorType("f64", w.shape), None],
              dims={"B": shape[0]}, **attrs)
    torch = pytest.importorskip("torch")
    s = [stride] * 2 if isinstance(stride, int) else list(stride)
    p = [padding] * 2 if isinstance(padding, int) else list(padding)
    source = f"""
model M {{
  forward(x: f32[B, {shape[1]}, {shape[2]}, {shape[3]}], w: f32[4, {shape[1]}, {k}, {k}]) {{
    return conv(x, w, stride = {s}, padding = {p})
  }}
}}"""
    model = kiln.compile(source, target="native")
    xs, ws = x.astype(np.float32), w.astype(np.float32)
    out = model(xs, ws)
    ct = normal(*out.shape, seed=4).astype(np.float32)
    _, _, grads = model.vjp(xs, ws, cotangents=[ct])
    xt = torch.from_numpy(xs).requires_grad_(True)
    y = torch.nn.functional.conv2d(xt, torch.from_numpy(ws), stride=s, padding=p)
    (y * torch.from_numpy(ct)).sum().backward()
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-4)


def _conv_weight_grad_f64(x, ct, k, padding, dilation, stride=(1, 1)):
    """dw[o, c, i, j] = sum over n, p, q of ct[n, o, p, q] * xpad[n, c, p*sh + i*dh,
    q*sw + j*dw], in float64."""
    (top, bottom), (left, right) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h, out_w = ct.shape[2:]
    dw = np.zeros((ct.shape[1], x.shape[1], k, k))
    for i in range(k):
        for j in range(k):
            y0, x0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, y0:y0 + stride[0] * (out_h - 1) + 1:stride[0],
                       x0:x0 + stride[1] * (out_w - 1) + 1:stride[1]]
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", ct, patch)
    return dw


def _check_weight_grad(source, shapes, want, target):
    """dw of the compiled `source` (inputs x, w) at two batch sizes against want(x, ct), in
    float64; natively also bit-equal on 2 threads. shapes: x's, w's and y's past the batch."""
    model = kiln.compile(source, target=target)
    x_shape, w_shape, y_shape = shapes
    for batch in (1, 3):
        x = normal(batch, *x_shape, seed=batch).astype(np.float32)
        wt = normal(*w_shape, seed=5).astype(np.float32)
        ct = normal(batch, *y_shape, seed=6).astype(np.float32)
        dw = model.vjp(x, wt, cotangents=[ct])[2]["w"]
        expected = want(x, ct)
        np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    if target == "native":
        two = kiln.compile(source, target="native", threads=2)
        np.testing.assert_array_equal(two.vjp(x, wt, cotangents=[ct])[2]["w"], dw)


@pytest.mark.parametrize("channels, k, padding, dilation, shifted", [
    (8, 3, ((1, 1), (1, 1)), (1, 1), True),     # a kernel row's three taps in one GEMM
    (16, 3, ((0, 0), (2, 2)), (2, 1), True),    # dilated rows, padding on one axis only
    (16, 3, ((1, 1), (1, 1)), (1, 2), True),    # dilated columns: a GEMM per tap
    (24, 1, ((0, 0), (0, 0)), (1, 1), True),    # 1x1
    (3, 3, ((1, 1), (1, 1)), (1, 1), True),     # a 3-channel stem: kernel rows stacked
    (1, 5, ((2, 2), (2, 2)), (1, 1), True),     # LeNet's first layer
    (3, 3, ((1, 1), (1, 1)), (1, 2), False),    # few channels, dilated columns: patches
])
@pytest.mark.parametrize("target", ["reference", "native"])
def test_conv_weight_grad_over_shifted_rows(channels, k, padding, dilation, shifted, target):
    """A stride-1 f32 convolution's dw as GEMMs over shifted rows of the channels-last input
    (shifted_matmul), against the sum over output pixels in float64, at two batch sizes of
    one compiled model."""
    (top, bottom), (left, right) = padding
    pads = f"[{left}, {right}, {top}, {bottom}]"
    out = 4
    h, w = 7, 6
    out_h = h + top + bottom - dilation[0] * (k - 1)
    out_w = w + left + right - dilation[1] * (k - 1)
    source = f"""
model M {{
  forward(x: f32[B, {channels}, {h}, {w}], w: f32[{out}, {channels}, {k}, {k}]) -> f32[B, {out}, {out_h}, {out_w}] {{
    return conv(pad(x, {pads}), w, dilation = [{dilation[0]}, {dilation[1]}])
  }}
}}"""
    _check_weight_grad(source, [(channels, h, w), (out, channels, k, k), (out, out_h, out_w)],
                       lambda x, ct: _conv_weight_grad_f64(x, ct, k, padding, dilation),
                       target)
    graph, *_ = rules_graph([("conv", (normal(2, channels, h + top + bottom,
                                              w + left + right).astype(np.float32),
                                       normal(out, channels, k, k).astype(np.float32), None),
                              dict(dilation=list(dilation)))])
    assert ("shifted_matmul" in {graph.op(n) for n in graph.order()}) == shifted


STRIDED_DW_CASES = [  # (channels, h, w, k, stride, padding ((top, bottom), (left, right)),
    # dilation, form: "phases", "pointwise" (strided slice, then shifted rows) or "patches")
    (16, 8, 8, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), "phases"),  # ResNet's downsampling 3x3
    (8, 9, 7, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), "phases"),   # odd sizes: a zero row added
    (8, 11, 10, 3, (3, 3), ((2, 0), (0, 2)), (1, 1), "phases"),  # stride 3, one-sided pads
    (3, 13, 12, 7, (2, 2), ((3, 3), (3, 3)), (1, 1), "phases"),  # a 7x7 stem of 3 channels
    (8, 10, 9, 3, (2, 3), ((0, 0), (1, 1)), (2, 1), "phases"),  # dilated rows, mixed strides
    (8, 12, 12, 3, (2, 2), ((2, 2), (2, 2)), (2, 2), "phases"),  # dilated columns: a GEMM a tap
    (16, 9, 8, 2, (2, 2), ((0, 1), (1, 0)), (1, 1), "phases"),  # an even kernel
    (8, 8, 8, 3, (2, 1), ((1, 1), (1, 1)), (1, 1), "phases"),   # strided rows only
    (16, 8, 8, 1, (2, 2), ((0, 0), (0, 0)), (1, 1), "pointwise"),  # a shortcut
    (32, 9, 7, 1, (3, 2), ((0, 0), (0, 0)), (1, 1), "pointwise"),  # odd, mixed strides
    (16, 8, 8, 1, (2, 2), ((1, 1), (1, 1)), (1, 1), "phases"),  # a padded 1x1
    (2, 9, 9, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), "patches"),  # too few columns
]


@pytest.mark.parametrize("channels, h, w, k, stride, padding, dilation, form",
                         STRIDED_DW_CASES)
@pytest.mark.parametrize("target", ["reference", "native"])
def test_conv_weight_grad_strided(channels, h, w, k, stride, padding, dilation, form, target):
    """A strided f32 convolution's dw as GEMMs over rows holding the stride's input rows side
    by side (shifted_matmul with a step), or over the pixels a strided 1x1 reads, against
    the sum over output pixels in float64, at two batch sizes of one compiled model, and
    natively bit-equal on 1 and 2 threads."""
    (top, bottom), (left, right) = padding
    outs = 5
    hp, wp = h + top + bottom, w + left + right
    out_h = (hp - dilation[0] * (k - 1) - 1) // stride[0] + 1
    out_w = (wp - dilation[1] * (k - 1) - 1) // stride[1] + 1
    symmetric = top == bottom and left == right  # conv's padding, else a pad before it
    inner = "x" if symmetric else f"pad(x, [{left}, {right}, {top}, {bottom}])"
    pads = [top, left] if symmetric else [0, 0]
    source = f"""
model M {{
  forward(x: f32[B, {channels}, {h}, {w}], w: f32[{outs}, {channels}, {k}, {k}]) -> f32[B, {outs}, {out_h}, {out_w}] {{
    return conv({inner}, w, stride = {list(stride)}, padding = {pads}, dilation = {list(dilation)})
  }}
}}"""
    _check_weight_grad(source, [(channels, h, w), (outs, channels, k, k),
                                (outs, out_h, out_w)],
                       lambda x, ct: _conv_weight_grad_f64(x, ct, k, padding, dilation, stride),
                       target)
    size = (h, w) if symmetric else (hp, wp)
    graph, *_ = rules_graph([("conv", (normal(2, channels, *size).astype(np.float32),
                                       normal(outs, channels, k, k).astype(np.float32), None),
                              dict(stride=list(stride), padding=pads,
                                   dilation=list(dilation)))])
    ops = {graph.op(n) for n in graph.order()}
    steps = {graph.node(n)["attrs"]["step"] for n in graph.nodes_with_op("shifted_matmul")}
    pointwise = k == 1 and top + bottom + left + right == 0
    # the phases read every sw-th row; the pointwise form's stride-1 GEMM every row
    got = ("patches" if "gather" in ops else "other" if not steps
           else "pointwise" if pointwise and steps == {1}
           else "phases" if steps == {stride[1]} else "other")
    assert got == form, (ops, steps)


@pytest.mark.parametrize("xs, ws, stride, padding, out_pad, dilation, groups", CONV_T_CASES)
def test_conv_transpose(xs, ws, stride, padding, out_pad, dilation, groups):
    check_vjp("conv_transpose", normal(*xs, seed=1), normal(*ws, seed=2),
              normal(ws[1] * groups, seed=3), stride=stride, padding=padding,
              output_padding=out_pad, dilation=dilation, groups=groups)


def test_conv_transpose_1d():
    check_vjp("conv_transpose", normal(1, 2, 5), normal(2, 3, 3, seed=9), None, stride=2,
              padding=1, output_padding=1)


# ---------------------------------------------------------------- pooling
def distinct(*shape, seed=0):
    """Random values far apart (finite differences must not move a window's maximum)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)


@pytest.mark.parametrize("k, s, p, d, ceil_mode", POOL_CASES)
@pytest.mark.parametrize("shape", [(1, 2, 7, 6), (2, 1, 8, 9)])
def test_max_pool(shape, k, s, p, d, ceil_mode):
    check_vjp("max_pool", distinct(*shape), kernel_size=k, stride=s, padding=p, dilation=d,
              ceil_mode=ceil_mode)


@pytest.mark.parametrize("kernel, shape", [((2, 2), (2, 3, 8, 7)), ((3, 2), (1, 2, 7, 9))])
def test_avg_pool_of_tiling_windows(kernel, shape):
    """Windows that tile the input (stride = kernel, no padding) take the cotangent over the
    window's size repeated over the window (a broadcast, no convolution); rows past the last
    window get nothing. At symbolic sizes too."""
    x = normal(*shape, seed=7)
    graph, *_ = rules_graph([("avg_pool", (x.astype(np.float32),), dict(kernel_size=kernel))])
    ops = {graph.op(n) for n in graph.order()}
    assert "broadcast_to" in ops and "conv_transpose" not in ops and "conv" not in ops, ops
    check_vjp("avg_pool", x, kernel_size=kernel)
    check_vjp("avg_pool", x, kernel_size=kernel, types=[TensorType("f64", ("B", shape[1], "H",
                                                                          "W"))],
              dims={"B": shape[0], "H": shape[2], "W": shape[3]})


@pytest.mark.parametrize("k, s, p, d, ceil_mode", [c for c in POOL_CASES if c[3] == (1, 1)])
@pytest.mark.parametrize("shape", [(1, 2, 7, 6), (2, 1, 8, 9)])
@pytest.mark.parametrize("counted", [True, False])
def test_avg_pool(shape, k, s, p, d, ceil_mode, counted):
    check_vjp("avg_pool", normal(*shape), kernel_size=k, stride=s, padding=p,
              ceil_mode=ceil_mode, count_include_pad=counted)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(1, 2), st.booleans(),
       st.integers(2, 7), st.integers(1, 6), st.booleans())
def test_pools_random(k, s, p, d, ceil_mode, h, w, counted):
    """Random windows over random sizes, size 1 included: max_pool's and avg_pool's rules."""
    assume(2 * p <= k and min(h, w) + 2 * p >= d * (k - 1) + 1)
    x = distinct(1, 2, h, w, seed=h * w)
    window = {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil_mode}
    # a dilated window may cover padding alone: its -inf has no finite differences (the rule
    # sends it nothing)
    assume(np.isfinite(run("max_pool", x, **window)).all())
    check_vjp("max_pool", x, **window)
    assume(min(h, w) + 2 * p >= k)
    check_vjp("avg_pool", x, kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode,
              count_include_pad=counted)

def test_pools_1d():
    line = distinct(2, 3, 9)
    check_vjp("max_pool", line, kernel_size=3, stride=2, padding=1, ceil_mode=True)
    check_vjp("avg_pool", line, kernel_size=3, stride=2, padding=1, ceil_mode=True,
              count_include_pad=False)
    check_vjp("global_avg_pool", line)
    check_vjp("global_avg_pool", normal(2, 3, 4, 5))


def test_max_pool_ties_follow_pytorch():
    """Ties go to the window's first maximum; overlapping windows add up; a window of -inf
    sends its gradient to its first input cell, never to padding; NaN: the last one."""
    torch = pytest.importorskip("torch")
    x = np.array([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.5, 2.0, 2.0], [-np.inf, -np.inf, 3.0, 3.0],
                    [-np.inf, -np.inf, np.nan, 1.0]]]])
    for attrs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 1, "padding": 1},
                  {"kernel_size": 2, "stride": 1, "dilation": 2},
                  {"kernel_size": 3, "stride": 2, "ceil_mode": True}):
        _fwd, (ct,), (grad,) = backward("max_pool", x, **attrs)
        tx = torch.tensor(x, requires_grad=True)
        torch.nn.functional.max_pool2d(tx, **attrs).backward(torch.tensor(ct))
        np.testing.assert_array_equal(grad, tx.grad.numpy(), err_msg=str(attrs))



@pytest.mark.parametrize("call, out", [
    ("avg_pool(x, 3, stride = 2, ceil_mode = true)", (1, 2, 3, 3)),
    ('resize(x, scale_factor = 2, mode = "bilinear", align_corners = true)', (1, 2, 14, 12)),
    ('resize(x, size = [5, 4])', (1, 2, 5, 4)),
    ('resize(x, scale_factor = 3, mode = "bilinear")', (1, 2, 21, 18)),
])
def test_symbolic_spatial_sizes_the_rule_needs_are_k0815(call, out):
    """Rules whose constants depend on the spatial sizes refuse symbolic ones, at the op."""
    src = ("model P {\n  forward(x: f32[B, 2, H, W]) -> f32[B, 2, _, _] {\n"
           f"    return {call}\n  }}\n}}\n")
    model = kiln.compile(src, target="reference")
    with pytest.raises(KilnError) as info:
        model.vjp(f32(1, 2, 7, 6), cotangents=[f32(*out)])
    assert info.value.code == "K0815" and info.value.span.line == 3, str(info.value)

# ---------------------------------------------------------------- norms
def affine(shape, with_weight, with_bias):
    return (normal(*shape, seed=7) if with_weight else None,
            normal(*shape, seed=8) if with_bias else None)


@pytest.mark.parametrize("with_weight, with_bias", [(True, True), (False, False),
                                                     (True, False), (False, True)])
def test_layer_norm(with_weight, with_bias):
    x = normal(2, 3, 4, 5, seed=1)
    for ns in ([5], [4, 5]):
        check_vjp("layer_norm", x, ns, *affine(ns, with_weight, with_bias), eps=1e-3, rtol=1e-4)


@pytest.mark.parametrize("with_weight, with_bias", [(True, True), (False, False)])
@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 2), 3), ((3, 4, 5), 2), ((2, 4), 1)])
def test_group_norm(shape, groups, with_weight, with_bias):
    check_vjp("group_norm", normal(*shape, seed=2), groups,
              *affine(shape[1:2], with_weight, with_bias), rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=3, max_size=4), st.sampled_from([1, 2]),
       st.booleans())
def test_norms_random(shape, groups, with_affine):
    """Random shapes, size-1 axes included (a norm over one element: its gradient is 0)."""
    shape = [shape[0], shape[1] * groups, *shape[2:]]
    x = normal(*shape, seed=sum(shape))
    params = affine(shape[1:2], with_affine, with_affine)
    check_vjp("group_norm", x, groups, *params, rtol=1e-4, atol=1e-6)
    check_vjp("instance_norm", x, *params, rtol=1e-4, atol=1e-6)
    check_vjp("layer_norm", x, shape[-2:], *affine(shape[-2:], with_affine, with_affine),
              rtol=1e-4, atol=1e-6)

@pytest.mark.parametrize("with_weight, with_bias", [(True, True), (False, True)])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 6)])
def test_instance_norm(shape, with_weight, with_bias):
    check_vjp("instance_norm", normal(*shape, seed=3), *affine(shape[1:2], with_weight, with_bias),
              rtol=1e-4)


# ---------------------------------------------------------------- resize
RESIZES = [
    ({"size": 7}, "nearest", False), ({"scale_factor": 2}, "nearest", False),
    ({"size": [3, 9]}, "bilinear", False), ({"size": [5, 4]}, "bilinear", True),
    ({"scale_factor": [1.5, 0.5]}, "bilinear", False), ({"scale_factor": 2}, "bilinear", True),
    ({"size": [3, 9]}, "nearest-exact", False), ({"scale_factor": [2, 0.5]}, "nearest-exact", False),
    ({"size": [7, 3]}, "bicubic", False), ({"scale_factor": 1.5}, "bicubic", True),
]


@pytest.mark.parametrize("sizes, mode, corners", RESIZES)
def test_resize(sizes, mode, corners):
    check_vjp("resize", normal(2, 3, 4, 6, seed=5), mode=mode, align_corners=corners, **sizes)


@pytest.mark.parametrize("mode, scale", [("nearest", 2), ("nearest", 3), ("nearest", [2, 3]),
                                         ("nearest-exact", 2), ("nearest-exact", 3),
                                         ("bicubic", 2), ("bicubic", [4, 2]),
                                         ("bilinear", 2), ("bilinear", 4), ("bilinear", [1, 2])])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 2)])
def test_resize_symbolic_sizes_by_an_integer_scale(mode, scale, shape):
    """Symbolic H and W scaled by an integer: the rule's stencil per phase, whose clamped
    ends a size of 1 or 2 exercises, against finite differences."""
    t = TensorType("f64", ("B", shape[1], "H", "W"))
    check_vjp("resize", normal(*shape, seed=6), mode=mode, scale_factor=scale, types=[t],
              dims={"B": shape[0], "H": shape[2], "W": shape[3]})


def test_resize_1d():
    line = normal(2, 3, 5)
    check_vjp("resize", line, size=8, mode="bilinear")
    check_vjp("resize", line, scale_factor=1.7, mode="nearest")


# ---------------------------------------------------------------- backward graphs on the backends
def f32(*shape, seed=0):
    return normal(*shape, seed=seed).astype(np.float32)


BACKEND_CASES = [
    *[("conv", (f32(*xs, seed=1), f32(*ws, seed=2), f32(ws[0], seed=3)),
       {"stride": s, "padding": p, "dilation": d, "groups": g})
      for xs, ws, s, p, d, g in CONV_CASES],
    ("conv", (f32(2, 4, 11), f32(6, 2, 3, seed=5), None),
     {"stride": 2, "padding": 2, "dilation": 2, "groups": 2}),
    *[("conv_transpose", (f32(*xs, seed=1), f32(*ws, seed=2), f32(ws[1] * g, seed=3)),
       {"stride": s, "padding": p, "output_padding": op, "dilation": d, "groups": g})
      for xs, ws, s, p, op, d, g in CONV_T_CASES],
    ("conv_transpose", (f32(1, 2, 5), f32(2, 3, 3, seed=9), None),
     {"stride": 2, "padding": 1, "output_padding": 1}),
    *[("max_pool", (f32(2, 3, 7, 6, seed=4),),
       {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": c})
      for k, s, p, d, c in POOL_CASES],
    *[("avg_pool", (f32(2, 3, 7, 6, seed=5),),
       {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": c, "count_include_pad": i})
      for k, s, p, d, c in POOL_CASES if d == (1, 1) for i in (True, False)],
    ("global_avg_pool", (f32(2, 3, 4, 5),), {}),
    ("layer_norm", (f32(2, 3, 4, 5), [4, 5], f32(4, 5, seed=1), f32(4, 5, seed=2)), {}),
    ("layer_norm", (f32(3, 6), [6], None, None), {}),
    ("group_norm", (f32(2, 6, 3, 2), 3, f32(6, seed=1), f32(6, seed=2)), {}),
    ("instance_norm", (f32(2, 3, 4, 5), f32(3, seed=1), None), {}),
    *[("resize", (f32(2, 3, 4, 6),), {"mode": m, "align_corners": c, **sizes})
      for sizes, m, c in RESIZES],
]


def _rule_results(run) -> None:
    """Every case's gradients computed by `run(graph, ports, feeds)` agree with the reference
    interpreter's (f32, so tolerances of f32 sums)."""
    graph, ports, feeds, names = rules_graph(BACKEND_CASES)
    want = run_graph(graph, [feeds[p.name] for p in ports], {}, {})
    got = run(graph, ports, feeds)
    for g, w, name in zip(got, want, names, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_backward_graphs_native():
    _rule_results(lambda graph, ports, feeds: native_model(graph, ports, [])(**feeds))


def test_backward_graphs_onnx():
    """The same graphs exported to ONNX and run by onnxruntime: a third oracle."""
    ort = pytest.importorskip("onnxruntime")

    def run(graph, ports, feeds):
        graph.output_names = [f"out{i}" for i in range(len(graph.outputs))]
        outputs = [Port(n, v.type) for n, v in zip(graph.output_names, graph.outputs,
                                                   strict=True)]
        proto = export(SimpleNamespace(name="grads", graph=graph, inputs=ports,
                                       outputs=outputs), {})
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    _rule_results(run)


SYMBOLIC_CONV = """
model M(k: int, c: int, d: int) {
  forward(x: f32[B, c, H, W], w: f32[5, c, k, k]) -> f32[B, 5, _, _] {
    return conv(x, w, padding = d * (k // 2), dilation = d)
  }
}
"""


def _weight_grad(x: np.ndarray, dy: np.ndarray, k: int, d: int) -> np.ndarray:
    """dw[o, c, i, j] = sum over n, p, q of dy[n, o, p, q] xpad[n, c, p + i d, q + j d], in
    float64."""
    pad = d * (k // 2)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = dy.shape[2:]
    return np.stack([np.stack([np.einsum("nopq,ncpq->oc", dy.astype(np.float64),
                                         xp[:, :, i * d:i * d + oh, j * d:j * d + ow])
                               for j in range(k)], axis=-1) for i in range(k)], axis=-2)


@pytest.mark.parametrize("k, c, d", [
    (3, 8, 1),  # a kernel row's taps side by side (span 3)
    (3, 16, 2),  # dilated across: a GEMM per tap (16 columns each)
    (5, 1, 1),  # one channel: the kernel rows stacked as channels
])
def test_conv_weight_gradient_over_symbolic_image_sizes(k, c, d, tmp_path):
    """Over symbolic H and W a stride-1 convolution's weight gradient is GEMMs over shifted
    rows of the input too (shifted_matmul with shifts that are sizes, i * Wp + j), not the
    general form's GEMM kh * kw columns wide: one compiled model at several image sizes, on
    the native, reference and ONNX targets, against float64 sums."""
    import kiln

    src = SYMBOLIC_CONV
    args = {"k": k, "c": c, "d": d}
    models = {t: kiln.compile(src, target=t, args=args) for t in ("native", "reference")}
    graph = models["native"].compilation.gradient(models["native"]._state.weights).model.graph
    shifted = [graph.node(n)["attrs"]["shifts"] for n in graph.order()
               if graph.op(n) == "shifted_matmul"]
    assert shifted, "the general form ran"  # the stacked case slices rows at size offsets
    assert c == 1 or any(isinstance(s, Dim) for s in shifted[0]), shifted
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "grad.onnx"
    models["reference"].export_onnx(path, gradients=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(k + c + d)
    w = rng.standard_normal((5, c, k, k)).astype(np.float32)
    for n, h, wd in ((2, 9, 13), (1, 4, 3), (3, 16, 7)):
        x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
        dy = rng.standard_normal((n, 5, h, wd)).astype(np.float32)
        want = _weight_grad(x, dy, k, d)
        got = {t: m.vjp(x, w, cotangents=[dy])[2]["w"] for t, m in models.items()}
        got["onnx"] = session.run(["grad:w"], {"x": x, "w": w, names[-1]: dy})[0]
        for target, dw in got.items():
            np.testing.assert_allclose(dw, want, rtol=1e-4, atol=1e-4 * np.sqrt(n * h * wd),
                                       err_msg=f"{target} {n}x{h}x{wd}")


DEPTHWISE_DW_CASES = [  # (channels, filters a channel, kernel, stride, padding, dilation)
    (5, 1, (3, 3), (1, 1), (1, 1), (1, 1)),  # MobileNet's 3x3
    (4, 1, (5, 5), (2, 2), (2, 2), (1, 1)),  # EfficientNet's strided 5x5: even lanes of two
    (3, 1, (7, 7), (1, 1), (3, 3), (1, 1)),  # ConvNeXt's 7x7: kernel rows in two or more groups
    (3, 2, (3, 2), (1, 2), (2, 0), (2, 1)),  # two filters a channel, dilated rows, strided columns
    (2, 1, (2, 4), (1, 1), "same", (1, 1)),  # even kernels: pads (0, 1) and (1, 2)
    (4, 1, (3, 3), (3, 2), (0, 1), (1, 2)),  # rows and columns no window reads
]


def _depthwise_dw_f64(x, ct, kernel, stride, pads, dilation):
    """dw[o, 0, i, j] = sum over n, p, q of ct[n, o, p, q] * xpad[n, o // m, p*sh + i*dh,
    q*sw + j*dw], in float64; pads ((top, bottom), (left, right))."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), *pads))
    n, outs, out_h, out_w = ct.shape
    per = outs // x.shape[1]
    xp = np.repeat(xp, per, axis=1)  # channel o reads x's channel o // m
    dw = np.zeros((outs, 1, *kernel))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            y0, x0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, y0:y0 + stride[0] * (out_h - 1) + 1:stride[0],
                       x0:x0 + stride[1] * (out_w - 1) + 1:stride[1]]
            dw[:, 0, i, j] = np.einsum("nohw,nohw->o", ct.astype(np.float64), patch)
    return dw


def _depthwise_pads(kernel, padding, dilation):
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in padding)


def _depthwise_source(channels, per, kernel, stride, padding, dilation, height="H"):
    pad = '"same"' if padding == "same" else list(padding)
    return f"""
model M {{
  forward(x: f32[B, {channels}, {height}, W], w: f32[{channels * per}, 1, {kernel[0]}, {kernel[1]}]) {{
    return conv(x, w, stride = {list(stride)}, padding = {pad}, dilation = {list(dilation)}, groups = {channels})
  }}
}}"""


def _depthwise_dw_check(models, session, channels, per, kernel, stride, padding, dilation,
                        sizes):
    """dw of each model (and of the ONNX session when given) at each (batch, H, W) in
    `sizes` against float64 sums."""
    pads = _depthwise_pads(kernel, padding, dilation)
    rng = np.random.default_rng(channels + per)
    w = rng.standard_normal((channels * per, 1, *kernel)).astype(np.float32)
    for n, h, wd in sizes:
        x = rng.standard_normal((n, channels, h, wd)).astype(np.float32)
        y = next(iter(models.values()))(x, w)
        ct = rng.standard_normal(y.shape).astype(np.float32)
        want = _depthwise_dw_f64(x, ct, kernel, stride, pads, dilation)
        got = {name: m.vjp(x, w, cotangents=[ct])[2]["w"] for name, m in models.items()}
        if session is not None:
            names = [i.name for i in session.get_inputs()]
            got["onnx"] = session.run(["grad:w"], {"x": x, "w": w, names[-1]: ct})[0]
        for name, dw in got.items():
            np.testing.assert_allclose(dw, want, rtol=1e-5,
                                       atol=1e-5 * np.sqrt(y[:, :1].size) * 4,
                                       err_msg=f"{name} {n}x{h}x{wd}")
        if "threads=2" in got:
            np.testing.assert_array_equal(got["threads=2"], got["native"])


@pytest.mark.parametrize("channels, per, kernel, stride, padding, dilation",
                         DEPTHWISE_DW_CASES)
def test_depthwise_weight_grad(channels, per, kernel, stride, padding, dilation, tmp_path):
    """A depthwise convolution's dw is one depthwise_weight_grad (a direct kernel, not the
    general form's GEMM over a kernel the image's size): one compiled model over symbolic
    batch, H and W at three image sizes, batch 1 and 3, on the native (1 and 2 threads,
    bit-equal), reference and ONNX targets, against float64 sums."""
    src = _depthwise_source(channels, per, kernel, stride, padding, dilation)
    models = {"native": kiln.compile(src, target="native", threads=1),
              "threads=2": kiln.compile(src, target="native", threads=2),
              "reference": kiln.compile(src, target="reference")}
    graph = models["native"].compilation.gradient(models["native"]._state.weights).model.graph
    assert graph.nodes_with_op("depthwise_weight_grad"), sorted(graph.op(n) for n in graph.order())
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "grad.onnx"
    models["reference"].export_onnx(path, gradients=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _depthwise_dw_check(models, session, channels, per, kernel, stride, padding, dilation,
                        [(1, 9, 13), (3, 16, 7), (3, 20, 37)])


def test_depthwise_weight_grad_1d():
    """1-D, two filters a channel, batch 1, 3 and 0, native and reference."""
    src = """
model M {
  forward(x: f32[B, 3, L], w: f32[6, 1, 5]) {
    return conv(x, w, stride = 2, padding = 2, groups = 3)
  }
}"""
    rng = np.random.default_rng(1)
    models = {t: kiln.compile(src, target=t) for t in ("native", "reference")}
    w = rng.standard_normal((6, 1, 5)).astype(np.float32)
    for n, length in ((1, 11), (3, 40), (0, 9)):  # an empty batch: zeros
        x = rng.standard_normal((n, 3, length)).astype(np.float32)
        y = models["native"](x, w)
        ct = rng.standard_normal(y.shape).astype(np.float32)
        want = _depthwise_dw_f64(x[:, :, None], ct[:, :, None], (1, 5), (1, 2),
                                 ((0, 0), (2, 2)), (1, 1))[:, :, 0]
        for name, m in models.items():
            np.testing.assert_allclose(m.vjp(x, w, cotangents=[ct])[2]["w"], want, rtol=1e-5,
                                       atol=1e-4, err_msg=name)


@pytest.mark.parametrize("cpu", [None, "x86-64-v3"])
@pytest.mark.parametrize("channels, per, kernel, stride, padding, dilation",
                         DEPTHWISE_DW_CASES[:4])
def test_depthwise_weight_grad_in_bands_and_for_avx2(cpu, channels, per, kernel, stride,
                                                     padding, dilation):
    """Code for this CPU and for AVX2 (8 lanes, kernel rows in smaller groups), on 1 and 2
    threads (bit-equal), over images whose planes pass the stack buffer: output rows in
    bands (300 x 230) and rows too wide for one band (7 x 25000: the direct loops)."""
    from kiln.compiler.codegen.llvm import target as targets
    from kiln.compiler.driver import Compilation
    from kiln.runtime.native import NativeModel

    target = targets.named(cpu) if cpu else targets.host()
    if target.missing_on(targets.host()):
        pytest.skip(f"this CPU cannot run code for {cpu}")
    src = _depthwise_source(channels, per, kernel, stride, padding, dilation)
    program = kiln.load(src)
    models = {"native": NativeModel(Compilation.of(program, cpu=target), {}, threads=1),
              "threads=2": NativeModel(Compilation.of(program, cpu=target), {}, threads=2)}
    _depthwise_dw_check(models, None, channels, per, kernel, stride, padding, dilation,
                        [(2, 300, 230), (1, 7, 25000), (3, 11, 29)])


STRIDED_SYMBOLIC = """
model M(c: int, k: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int) {
  forward(x: f32[B, c, H, W], w: f32[5, c, k, k]) -> f32[B, 5, _, _] {
    return conv(x, w, stride = [sh, sw], padding = [ph, pw], dilation = [dh, dw])
  }
}
"""


@pytest.mark.parametrize("c, k, stride, padding, dilation", [
    (8, 3, (2, 2), (1, 1), (1, 1)),  # ResNet's downsampling 3x3
    (8, 3, (3, 2), (2, 0), (1, 1)),  # stride 3 down, no padding across
    (16, 3, (2, 2), (1, 2), (2, 2)),  # dilated: a GEMM per tap
    (8, 4, (2, 1), (1, 1), (1, 1)),  # an even kernel, strided rows only
    (16, 1, (2, 2), (1, 1), (1, 1)),  # a padded 1x1
])
def test_strided_weight_gradient_over_symbolic_image_sizes(c, k, stride, padding, dilation,
                                                           tmp_path):
    """Over symbolic H and W a strided convolution's weight gradient is the phases' GEMMs too
    (shifted_matmul with a step and shifts that are sizes; grid sizes that bound every image
    size), not the general form: one compiled model at three image sizes (odd ones: x's rows
    completed to whole groups), on the native (1 and 2 threads, bit-equal), reference and
    ONNX targets, against float64 sums."""
    args = {"c": c, "k": k, "sh": stride[0], "sw": stride[1], "ph": padding[0],
            "pw": padding[1], "dh": dilation[0], "dw": dilation[1]}
    models = {"native": kiln.compile(STRIDED_SYMBOLIC, target="native", args=args, threads=1),
              "threads=2": kiln.compile(STRIDED_SYMBOLIC, target="native", args=args,
                                        threads=2),
              "reference": kiln.compile(STRIDED_SYMBOLIC, target="reference", args=args)}
    graph = models["native"].compilation.gradient(models["native"]._state.weights).model.graph
    steps = {graph.node(n)["attrs"]["step"] for n in graph.nodes_with_op("shifted_matmul")}
    assert steps == {stride[1]}, sorted(graph.op(n) for n in graph.order())
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "grad.onnx"
    models["reference"].export_onnx(path, gradients=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(c + k)
    w = rng.standard_normal((5, c, k, k)).astype(np.float32)
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    for n, h, wd in ((1, 9, 13), (3, 16, 7), (3, 21, 30)):
        x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
        y = models["native"](x, w)
        ct = rng.standard_normal(y.shape).astype(np.float32)
        want = _conv_weight_grad_f64(x, ct, k, pads, dilation, stride)
        got = {t: m.vjp(x, w, cotangents=[ct])[2]["w"] for t, m in models.items()}
        got["onnx"] = session.run(["grad:w"], {"x": x, "w": w, names[-1]: ct})[0]
        for target, dw in got.items():
            np.testing.assert_allclose(dw, want, rtol=1e-4, atol=1e-4 * np.sqrt(y[:, :1].size),
                                       err_msg=f"{target} {n}x{h}x{wd}")
        np.testing.assert_array_equal(got["threads=2"], got["native"])


def test_depthwise_weight_grad_rule():
    """depthwise_weight_grad's own rule (a depthwise convolution of x with the cotangent as
    its weight, and that convolution's input gradient) against finite differences: strided,
    dilated, asymmetric pads, two filters a channel."""
    check_vjp("depthwise_weight_grad", normal(2, 3, 7, 6, seed=1), normal(2, 6, 4, 3, seed=2),
              kernel_size=[3, 2], stride=[2, 2], pads=[1, 1, 0, 1], dilation=[1, 2])
    check_vjp("depthwise_weight_grad", normal(1, 2, 9, seed=3), normal(1, 2, 9, seed=4),
              kernel_size=3, pads=1)
