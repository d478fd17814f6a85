"""std.nn against independent numpy code written from PyTorch's documented semantics.

Each block is wrapped in a one-line model (`x |> nn.Block(args)`), so its parameters are named
`0.weight`, ... exactly as in `nn.Sequential(block).state_dict()`. Outputs are compared with a
float64 numpy computation using the block's own parameters, at two batch sizes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from _crosscheck import REFERENCE, check_opt_levels
from _stdlibtest import close, rand

import kiln
from kiln import KilnError

BATCHES = [1, 3]


# ---------------------------------------------------------------------------- helpers
_BLOCKS: dict[tuple[str, str], str] = {}  # (block expression, input type) -> model name


def case(expr: str, in_type: str) -> tuple[str, str]:
    """Record a block to test; every recorded block becomes one model of a single source."""
    _BLOCKS.setdefault((expr, in_type), f"M{len(_BLOCKS)}")
    return expr, in_type


def source(blocks) -> str:
    models = "".join(
        f"model {name} {{\n  forward(x: {in_type}) {{\n    return x |> {expr}\n  }}\n}}\n"
        for (expr, in_type), name in blocks
    )
    return "import std.nn\n" + models


@functools.cache
def program(blocks: tuple):
    return kiln.load(source(blocks))


def compile_block(expr: str, in_type: str, seed: int = 0):
    """Parsing (std.nn included) is most of a compile, so the recorded blocks are parsed once."""
    if (expr, in_type) not in _BLOCKS:  # not recorded: compile it on its own
        return kiln.compile(source([((expr, in_type), "M")]), seed=seed, target="reference")
    return kiln.compile(program(tuple(_BLOCKS.items())), model=_BLOCKS[expr, in_type], seed=seed, target="reference")


def params(m) -> dict[str, np.ndarray]:
    """The block's own state_dict: the model's parameters less the `0.` of the pipeline stage."""
    return {k.removeprefix("0."): v.astype(np.float64) if v.dtype.kind == "f" else v
            for k, v in m.params.items()}


def randomize(m, rng) -> None:
    """Load random values (positive variances) so that affine terms and statistics matter."""
    new = {}
    for k, v in m.params.items():
        if v.dtype.kind != "f":
            new[k] = v
        elif k.endswith("running_var"):
            new[k] = rng.uniform(0.5, 2.0, v.shape).astype(v.dtype)
        else:
            new[k] = rng.standard_normal(v.shape).astype(v.dtype)
    m.load_weights(new)


def pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


# ---------------------------------------------------------------------------- references
def ref_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, mode="zeros"):
    """torch.nn.functional.conv2d: cross-correlation, zero (or reflect/replicate) padding."""
    x = x.astype(np.float64)
    kh, kw = w.shape[2:]
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == "same":  # the odd extra unit goes after (bottom/right)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    else:
        ph, pw = pair(padding)
        pads = ((ph, ph), (pw, pw))
    np_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[mode]
    xp = np.pad(x, ((0, 0), (0, 0)) + pads, mode=np_mode)
    H, W = xp.shape[2:]
    Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    out_channels, Cg = w.shape[:2]
    og = out_channels // groups
    out = np.zeros((x.shape[0], out_channels, Ho, Wo))
    for g in range(groups):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh,
                           j * dw: j * dw + sw * (Wo - 1) + 1: sw]
                out[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def ref_conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, mode="zeros"):
    def one(v):
        return v if isinstance(v, str) else (v[0] if isinstance(v, (list, tuple)) else v)
    padding = one(padding)
    y = ref_conv2d(x[:, :, None, :], w[:, :, None, :], b, (1, one(stride)),
                   padding if isinstance(padding, str) else (0, padding),
                   (1, one(dilation)), groups, mode)
    return y[:, :, 0, :]


def ref_conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                         dilation=1):
    """By definition: input pixel (i, j) adds x * w[c, :, ki, kj] at (i*s - p + ki*d, ...)."""
    N, C, H, W = x.shape
    _, og, kh, kw = w.shape
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    oph, opw = pair(output_padding)
    dh, dw = pair(dilation)
    Ho = (H - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    Wo = (W - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((N, og * groups, (H - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (W - 1) * sw + dw * (kw - 1) + 1 + opw))
    cg = C // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                full[:, g * og:(g + 1) * og, i * dh: i * dh + sh * (H - 1) + 1: sh,
                     j * dw: j * dw + sw * (W - 1) + 1: sw] += np.einsum(
                    "nchw,co->nohw", x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg, :, i, j])
    out = full[:, :, ph:ph + Ho, pw:pw + Wo]
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out


def _pool_out(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input
        out -= 1
    return out


def ref_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    k, s, p, d = pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation)
    N, C, H, W = x.shape
    Ho = _pool_out(H, k[0], s[0], p[0], d[0], ceil_mode)
    Wo = _pool_out(W, k[1], s[1], p[1], d[1], ceil_mode)
    out = np.full((N, C, Ho, Wo), -np.inf)
    for oh in range(Ho):
        for ow in range(Wo):
            for i in range(k[0]):
                for j in range(k[1]):
                    h, w = oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1]
                    if 0 <= h < H and 0 <= w < W:
                        out[:, :, oh, ow] = np.maximum(out[:, :, oh, ow], x[:, :, h, w])
    return out


def ref_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None):
    """PyTorch's avg_pool2d: the divisor counts padding cells (not ceil-mode overhang) or not,
    or is divisor_override."""
    k, s, p = pair(kernel_size), pair(stride or kernel_size), pair(padding)
    N, C, H, W = x.shape
    Ho = _pool_out(H, k[0], s[0], p[0], 1, ceil_mode)
    Wo = _pool_out(W, k[1], s[1], p[1], 1, ceil_mode)
    out = np.zeros((N, C, Ho, Wo))
    for oh in range(Ho):
        for ow in range(Wo):
            h0, w0 = oh * s[0] - p[0], ow * s[1] - p[1]
            h1, w1 = min(h0 + k[0], H + p[0]), min(w0 + k[1], W + p[1])
            pool = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
            total = x[:, :, h0:h1, w0:w1].astype(np.float64).sum(axis=(2, 3))
            out[:, :, oh, ow] = total / (divisor_override or (
                pool if count_include_pad else (h1 - h0) * (w1 - w0)))
    return out


def ref_norm(x, axes, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


_erf = np.vectorize(math.erf)


def ref_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def ref_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------------- names and shapes
# every block's state_dict keys and shapes, in PyTorch's order (torch 2.x)
BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
STATE_DICTS = [
    (case("nn.Linear(5, 3)", "f32[B, 5]"), [("weight", (3, 5)), ("bias", (3,))]),
    (case("nn.Linear(5, 3, false)", "f32[B, 5]"), [("weight", (3, 5))]),
    (case("nn.Conv1d(4, 6, 3, groups = 2)", "f32[B, 4, 9]"),
     [("weight", (6, 2, 3)), ("bias", (6,))]),
    (case("nn.Conv2d(3, 4, 3)", "f32[B, 3, 8, 8]"), [("weight", (4, 3, 3, 3)), ("bias", (4,))]),
    (case("nn.Conv2d(4, 8, [3, 5], groups = 4, bias = false)", "f32[B, 4, 8, 8]"),
     [("weight", (8, 1, 3, 5))]),
    (case("nn.ConvTranspose2d(4, 6, 3, groups = 2)", "f32[B, 4, 5, 5]"),
     [("weight", (4, 3, 3, 3)), ("bias", (6,))]),
    (case("nn.ConvTranspose2d(4, 6, [2, 3], bias = false)", "f32[B, 4, 5, 5]"),
     [("weight", (4, 6, 2, 3))]),
    (case("nn.BatchNorm1d(4)", "f32[B, 4]"), list(zip(BN_KEYS, [(4,)] * 4 + [()], strict=True))),
    (case("nn.BatchNorm2d(3)", "f32[B, 3, 4, 4]"),
     list(zip(BN_KEYS, [(3,)] * 4 + [()], strict=True))),
    (case("nn.BatchNorm2d(3, affine = false)", "f32[B, 3, 4, 4]"),
     [("running_mean", (3,)), ("running_var", (3,)), ("num_batches_tracked", ())]),
    (case("nn.BatchNorm2d(3, track_running_stats = false)", "f32[B, 3, 4, 4]"),
     [("weight", (3,)), ("bias", (3,))]),
    (case("nn.LayerNorm(6)", "f32[B, 6]"), [("weight", (6,)), ("bias", (6,))]),
    (case("nn.LayerNorm([4, 6], bias = false)", "f32[B, 4, 6]"), [("weight", (4, 6))]),
    (case("nn.LayerNorm(6, elementwise_affine = false)", "f32[B, 6]"), []),
    (case("nn.GroupNorm(2, 4)", "f32[B, 4, 3, 3]"), [("weight", (4,)), ("bias", (4,))]),
    (case("nn.GroupNorm(2, 4, affine = false)", "f32[B, 4, 3, 3]"), []),
    (case("nn.Embedding(10, 3)", "i64[B, 2]"), [("weight", (10, 3))]),
    (case("nn.MaxPool2d(2)", "f32[B, 3, 4, 4]"), []),
    (case("nn.ReLU()", "f32[B, 3]"), []),
]


@pytest.mark.parametrize("block, keys", STATE_DICTS, ids=[c[0][0] for c in STATE_DICTS])
def test_state_dict_names_and_shapes(block, keys):
    p = params(compile_block(*block))
    assert [(k, v.shape) for k, v in p.items()] == keys
    if "num_batches_tracked" in p:
        assert p["num_batches_tracked"].dtype == np.int64


BN2D = case("nn.BatchNorm2d(3)", "f32[B, 3, 4, 4]")


CONV_BN = case("nn.Conv2d(3, 3, 3, bias = false) |> nn.BatchNorm2d(3)", "f32[B, 3, 4, 4]")


def test_weights_round_trip(tmp_path):
    m = compile_block(*CONV_BN, seed=3)
    assert list(m.params) == ["0.weight"] + [f"1.{k}" for k in BN_KEYS]
    m.save_weights(tmp_path / "w.safetensors")
    m2 = compile_block(*CONV_BN, seed=4)
    assert not np.array_equal(m2.params["0.weight"], m.params["0.weight"])
    m2.load_weights(tmp_path / "w.safetensors")
    for k in m.params:
        assert m2.params[k].dtype == m.params[k].dtype
        np.testing.assert_array_equal(m2.params[k], m.params[k])


def test_loaded_weights_keep_their_shapes(tmp_path):
    m = compile_block(*BN2D)
    m.load_weights({k: v.copy() for k, v in m.params.items()})
    assert {k: v.shape for k, v in m.params.items()} == {
        k: v.shape for k, v in compile_block(*BN2D).params.items()}
    m.save_weights(tmp_path / "bn.safetensors")
    compile_block(*BN2D).load_weights(tmp_path / "bn.safetensors")


# ---------------------------------------------------------------------------- initialisation
def check_uniform(a, bound):
    """U(-bound, bound): inside it, reaching near it, with the uniform's mean and std."""
    a = a.astype(np.float64).ravel()
    n, sigma = a.size, bound / math.sqrt(3)
    assert np.all(np.abs(a) <= bound * (1 + 1e-6))
    assert np.abs(a).max() > (1 - 5 / n) * bound  # fails with probability ~e^-5
    assert abs(a.mean()) < 4 * sigma / math.sqrt(n)
    assert abs(a.std() - sigma) < 4 * sigma / math.sqrt(n)


UNIFORM_INIT = [  # the fan_in of PyTorch's rule for the weight's shape
    (case("nn.Linear(64, 32)", "f32[B, 64]"), 64),
    (case("nn.Conv1d(8, 16, 5)", "f32[B, 8, 9]"), 8 * 5),
    (case("nn.Conv2d(8, 16, 3)", "f32[B, 8, 6, 6]"), 8 * 9),
    (case("nn.Conv2d(8, 16, [3, 5], groups = 2)", "f32[B, 8, 6, 6]"), 4 * 15),
    (case("nn.ConvTranspose2d(8, 16, 3, groups = 2)", "f32[B, 8, 6, 6]"), 8 * 9),  # out/g * k*k
]


@pytest.mark.parametrize("block, fan_in", UNIFORM_INIT, ids=[c[0][0] for c in UNIFORM_INIT])
def test_default_init_is_pytorch_uniform(block, fan_in):
    p = params(compile_block(*block))
    # kaiming_uniform(a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in)
    check_uniform(p["weight"], 1 / math.sqrt(fan_in))
    check_uniform(p["bias"], 1 / math.sqrt(fan_in))


INIT_CONSTANT = [
    case("nn.BatchNorm2d(5)", "f32[B, 5, 2, 2]"),
    case("nn.LayerNorm(5)", "f32[B, 5]"),
    case("nn.GroupNorm(1, 5)", "f32[B, 5, 2]"),
]
EMBEDDING_INIT = case("nn.Embedding(200, 50)", "i64[B]")


def test_default_init_of_norms_and_embedding():
    for block in INIT_CONSTANT:
        p = params(compile_block(*block))
        expected = {"weight": 1, "bias": 0, "running_mean": 0, "running_var": 1}
        for key, value in expected.items():
            if key in p:
                np.testing.assert_array_equal(p[key], np.full(5, value))
        if "num_batches_tracked" in p:
            assert p["num_batches_tracked"] == 0
    w = params(compile_block(*EMBEDDING_INIT))["weight"]  # N(0, 1)
    assert abs(w.mean()) < 4 / 100 and abs(w.std() - 1) < 4 / 100


LINEAR8 = case("nn.Linear(8, 8)", "f32[B, 8]")


def test_init_depends_on_seed_only():
    a = compile_block(*LINEAR8, seed=0).params["0.weight"]
    b = compile_block(*LINEAR8, seed=0).params["0.weight"]
    c = compile_block(*LINEAR8, seed=1).params["0.weight"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------- forward
def in_shape(in_type: str, B: int) -> tuple[int, ...]:
    """`f32[B, 3, 8, 8]` at batch size B."""
    dims = in_type[in_type.index("[") + 1:-1].split(", ")
    return tuple(B if d == "B" else int(d) for d in dims)


LINEAR = [
    (case("nn.Linear(5, 3)", "f32[B, 5]"), True),
    (case("nn.Linear(5, 3, bias = false)", "f32[B, 2, 5]"), False),  # leading axes broadcast
]


@pytest.mark.parametrize("block, bias", LINEAR, ids=[c[0][0] for c in LINEAR])
def test_linear(block, bias):
    m = compile_block(*block)
    p = params(m)
    for B in BATCHES:
        x = rand(np.random.default_rng(B), *in_shape(block[1], B))
        close(m(x), x.astype(np.float64) @ p["weight"].T + (p["bias"] if bias else 0))


def conv_case(expr, spatial, **kw):
    cin = int(expr.split("(")[1].split(",")[0])
    return case(expr, f"f32[B, {cin}, {spatial}]"), kw


CONV2D = [
    conv_case("nn.Conv2d(3, 4, 3, padding = 1)", "9, 8", padding=1),
    conv_case("nn.Conv2d(3, 4, 3)", "9, 8"),
    conv_case("nn.Conv2d(4, 6, [3, 5], stride = 2, padding = [1, 2], dilation = [1, 2], "
              "groups = 2, bias = false)", "9, 8",
              stride=2, padding=(1, 2), dilation=(1, 2), groups=2),
    conv_case("nn.Conv2d(4, 8, 3, stride = [2, 1], groups = 4)", "9, 8", stride=(2, 1), groups=4),
    conv_case('nn.Conv2d(3, 4, 4, padding = "same")', "9, 8", padding="same"),  # asymmetric
    conv_case('nn.Conv2d(3, 4, 3, padding = "same", dilation = 2)', "9, 8",
              padding="same", dilation=2),
    conv_case('nn.Conv2d(3, 4, 3, padding = "valid")', "9, 8", padding="valid"),
    conv_case('nn.Conv2d(3, 4, 3, padding = 2, padding_mode = "reflect")', "9, 8",
              padding=2, mode="reflect"),
    conv_case('nn.Conv2d(3, 4, 3, 1, [1, 2], 1, 1, false, "replicate")', "9, 8",  # by position
              padding=(1, 2), mode="replicate"),
]
CONV1D = [
    conv_case("nn.Conv1d(3, 4, 3, padding = 1)", "11", padding=1),
    conv_case("nn.Conv1d(4, 6, [5], stride = 2, padding = [2], dilation = 2, groups = 2)", "11",
              stride=2, padding=2, dilation=2, groups=2),
    conv_case('nn.Conv1d(3, 4, 2, padding = "same", bias = false)', "11", padding="same"),
    conv_case('nn.Conv1d(3, 4, 3, padding = 2, padding_mode = "reflect")', "11",
              padding=2, mode="reflect"),
]
CONV_T = [
    conv_case("nn.ConvTranspose2d(3, 4, 3)", "5, 4"),
    conv_case("nn.ConvTranspose2d(4, 6, 3, stride = 2, padding = 1, output_padding = 1, "
              "groups = 2)", "5, 4", stride=2, padding=1, output_padding=1, groups=2),
    conv_case("nn.ConvTranspose2d(3, 2, [4, 3], stride = [2, 1], padding = [1, 0], bias = false, "
              "dilation = [1, 2])", "5, 4", stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    conv_case("nn.ConvTranspose2d(3, 5, 4, 2, 1)", "5, 4", stride=2, padding=1),  # DCGAN's
]


@pytest.mark.parametrize("ref, block, kw", [(ref_conv2d, *c) for c in CONV2D]
                         + [(ref_conv1d, *c) for c in CONV1D]
                         + [(ref_conv_transpose2d, *c) for c in CONV_T],
                         ids=[c[0][0] for c in CONV2D + CONV1D + CONV_T])
def test_convolutions(ref, block, kw):
    m = compile_block(*block)
    p = params(m)
    for B in BATCHES:
        x = rand(np.random.default_rng(B), *in_shape(block[1], B))
        close(m(x), ref(x, p["weight"], p.get("bias"), **kw))


def _bn(p, ndim, eps=1e-5):
    def ref(x):
        y = (x - channel(p["running_mean"], ndim)) / np.sqrt(channel(p["running_var"], ndim) + eps)
        return y * channel(p["weight"], ndim) + channel(p["bias"], ndim) if "weight" in p else y
    return ref


NORMS = [  # (block, reference(x, params)); B = 1 is left out: batch statistics need two samples
    (case("nn.BatchNorm1d(4)", "f32[B, 4]"), lambda x, p: _bn(p, 2)(x)),
    (case("nn.BatchNorm1d(4, eps = 0.1)", "f32[B, 4, 5]"), lambda x, p: _bn(p, 3, 0.1)(x)),
    (case("nn.BatchNorm2d(3)", "f32[B, 3, 4, 5]"), lambda x, p: _bn(p, 4)(x)),
    (case("nn.BatchNorm2d(3, 1e-3, 0.2, false)", "f32[B, 3, 4, 5]"),
     lambda x, p: _bn(p, 4, 1e-3)(x)),
    # without running statistics PyTorch normalises by the batch's own, even in eval mode
    (case("nn.BatchNorm2d(3, track_running_stats = false)", "f32[B, 3, 4, 5]"),
     lambda x, p: ref_norm(x, (0, 2, 3), 1e-5) * channel(p["weight"], 4) + channel(p["bias"], 4)),
    (case("nn.BatchNorm1d(4, affine = false, track_running_stats = false)", "f32[B, 4, 6]"),
     lambda x, p: ref_norm(x, (0, 2), 1e-5)),
    (case("nn.LayerNorm(6)", "f32[B, 2, 6]"),
     lambda x, p: ref_norm(x, (-1,), 1e-5) * p["weight"] + p["bias"]),
    (case("nn.LayerNorm([3, 4], eps = 1e-3)", "f32[B, 2, 3, 4]"),
     lambda x, p: ref_norm(x, (-2, -1), 1e-3) * p["weight"] + p["bias"]),
    (case("nn.LayerNorm([2, 3, 4], bias = false)", "f32[B, 2, 3, 4]"),
     lambda x, p: ref_norm(x, (-3, -2, -1), 1e-5) * p["weight"]),
    (case("nn.LayerNorm(6, elementwise_affine = false)", "f32[B, 6]"),
     lambda x, p: ref_norm(x, (-1,), 1e-5)),
    (case("nn.GroupNorm(2, 6)", "f32[B, 6, 3, 2]"),
     lambda x, p: ref_norm(x.reshape(x.shape[0], 2, -1), (2,), 1e-5).reshape(x.shape)
     * channel(p["weight"], 4) + channel(p["bias"], 4)),
    (case("nn.GroupNorm(3, 6, eps = 1e-2, affine = false)", "f32[B, 6, 5]"),
     lambda x, p: ref_norm(x.reshape(x.shape[0], 3, -1), (2,), 1e-2).reshape(x.shape)),
]


@pytest.mark.parametrize("block, ref", NORMS, ids=[c[0][0] for c in NORMS])
def test_norms(block, ref):
    m = compile_block(*block)
    rng = np.random.default_rng(0)
    randomize(m, rng)  # random affine terms and running statistics
    for B in (2, 5):
        x = rand(rng, *in_shape(block[1], B)) * 2 + 0.5
        close(m(x), ref(x.astype(np.float64), params(m)))


EMBEDDING = [case("nn.Embedding(10, 4)", "i64[B, T]"), case("nn.Embedding(10, 4)", "i64[B]")]


def test_embedding():
    for block in EMBEDDING:
        m = compile_block(*block)
        w = m.params["0.weight"]
        for B in BATCHES:
            for T in (1, 6):
                shape = (B, T) if "T" in block[1] else (B,)
                idx = np.random.default_rng(B + T).integers(0, 10, shape)
                y = m(idx)
                assert y.dtype == np.float32 and y.shape == shape + (4,)
                np.testing.assert_array_equal(y, w[idx])  # a gather is exact


PADDED_EMBEDDING = [case("nn.Embedding(10, 4, padding_idx = 2)", "i64[B, T]"),
                    case("nn.Embedding(10, 4, padding_idx = -1, sparse = true)", "i64[B, T]")]


@pytest.mark.parametrize("block, pad", list(zip(PADDED_EMBEDDING, (2, 9), strict=True)))
def test_embedding_padding_idx_row_starts_at_zero_and_takes_no_gradient(block, pad):
    """As nn.Embedding(padding_idx=...): the row is zero at initialisation (the others are
    init.normal()'s, as without padding_idx), lookups of it read the weight as it is, and
    its gradient is zero while every other row's is the sum of its lookups' cotangents."""
    src = source([(block, "M")])
    plain = kiln.compile(source([(case("nn.Embedding(10, 4)", "i64[B, T]"), "M")]),
                         target="reference", seed=3).params["0.weight"]
    for target in ("reference", "native"):
        m = kiln.compile(src, target=target, seed=3)
        w = m.params["0.weight"]
        assert not w[pad].any()
        np.testing.assert_array_equal(np.delete(w, pad, 0), np.delete(plain, pad, 0))
        rng = np.random.default_rng(pad)
        loaded = {"0.weight": rng.standard_normal((10, 4)).astype(np.float32)}
        m.load_weights(loaded)  # a trained (non-zero) padding row is looked up as it is
        idx = np.array([[pad, 1, pad, 7], [3, pad, 1, 0]])
        ct = rng.standard_normal((2, 4, 4)).astype(np.float32)
        out, grads, _ = m.vjp(idx, cotangents=[ct])
        np.testing.assert_array_equal(out, loaded["0.weight"][idx])
        want = np.zeros((10, 4))
        np.add.at(want, idx, ct)
        want[pad] = 0
        np.testing.assert_allclose(grads["0.weight"], want, rtol=1e-6, atol=1e-6)
    try:  # and PyTorch's own gradient, where it is installed
        import torch
    except ImportError:
        return
    e = torch.nn.Embedding(10, 4, padding_idx=pad - 10 if pad == 9 else pad)
    with torch.no_grad():
        e.weight.copy_(torch.from_numpy(loaded["0.weight"]))
    e(torch.from_numpy(idx)).backward(torch.from_numpy(ct))
    np.testing.assert_allclose(grads["0.weight"], e.weight.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    ("10, 4, padding_idx = 10", "padding_idx must be within num_embeddings"),
    ("10, 4, padding_idx = -11", "padding_idx must be within num_embeddings"),
    ("10, 4, max_norm = 1.0", "max_norm is not supported"),
    ("10, 4, scale_grad_by_freq = true", "scale_grad_by_freq is not supported")])
def test_embedding_refuses_what_it_does_not_do(args, message):
    with pytest.raises(kiln.KilnError, match=message):
        kiln.compile(source([(case(f"nn.Embedding({args})", "i64[B]"), "M")]))


POOL_IN = "f32[B, 3, 7, 8]"
POOLS = [
    (case("nn.MaxPool2d(2)", POOL_IN), lambda x: ref_max_pool2d(x, 2)),
    (case("nn.MaxPool2d(3, stride = 2, padding = 1)", POOL_IN),
     lambda x: ref_max_pool2d(x, 3, 2, 1)),
    (case("nn.MaxPool2d(3, 2, 1, 1, false, true)", POOL_IN),
     lambda x: ref_max_pool2d(x, 3, 2, 1, 1, True)),
    (case("nn.MaxPool2d([2, 3], stride = [1, 2], dilation = 2)", POOL_IN),
     lambda x: ref_max_pool2d(x, (2, 3), (1, 2), 0, 2)),
    (case("nn.MaxPool2d(2, ceil_mode = true)", POOL_IN),
     lambda x: ref_max_pool2d(x, 2, ceil_mode=True)),
    (case("nn.AvgPool2d(2)", POOL_IN), lambda x: ref_avg_pool2d(x, 2)),
    (case("nn.AvgPool2d(3, stride = 2, padding = 1)", POOL_IN),
     lambda x: ref_avg_pool2d(x, 3, 2, 1)),
    (case("nn.AvgPool2d(3, 2, 1, false, false)", POOL_IN),
     lambda x: ref_avg_pool2d(x, 3, 2, 1, False, False)),
    (case("nn.AvgPool2d(2, ceil_mode = true)", POOL_IN),
     lambda x: ref_avg_pool2d(x, 2, ceil_mode=True)),
    (case("nn.AvgPool2d(3, 2, 1, true)", POOL_IN), lambda x: ref_avg_pool2d(x, 3, 2, 1, True)),
    (case("nn.AvgPool2d(3, 2, 1, divisor_override = 5)", POOL_IN),
     lambda x: ref_avg_pool2d(x, 3, 2, 1, divisor_override=5)),
    (case("nn.AvgPool2d([2, 3], 1, 1, false, false, 4)", POOL_IN),
     lambda x: ref_avg_pool2d(x, (2, 3), 1, 1, False, False, 4)),
    (case("nn.AdaptiveAvgPool2d(1)", POOL_IN), lambda x: x.mean(axis=(2, 3), keepdims=True)),
    (case("nn.AdaptiveAvgPool2d([1, 1])", POOL_IN),
     lambda x: x.mean(axis=(2, 3), keepdims=True)),
]

ACT_IN = "f32[B, 4, 5]"
ACTIVATIONS = [
    (case("nn.ReLU()", ACT_IN), lambda x: np.maximum(x, 0)),
    (case("nn.ReLU(true)", ACT_IN), lambda x: np.maximum(x, 0)),
    (case("nn.LeakyReLU()", ACT_IN), lambda x: np.where(x >= 0, x, 0.01 * x)),
    (case("nn.LeakyReLU(0.2)", ACT_IN), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (case("nn.ELU()", ACT_IN), lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    (case("nn.ELU(alpha = 0.5)", ACT_IN), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    (case("nn.GELU()", ACT_IN), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    (case('nn.GELU(approximate = "tanh")', ACT_IN), lambda x: 0.5 * x * (
        1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    (case("nn.SiLU()", ACT_IN), lambda x: x * ref_sigmoid(x)),
    (case("nn.Sigmoid()", ACT_IN), ref_sigmoid),
    (case("nn.Tanh()", ACT_IN), np.tanh),
    (case("nn.Tanh", ACT_IN), np.tanh),  # a block without arguments may drop the parentheses
    (case("nn.Softmax()", ACT_IN), lambda x: ref_softmax(x, -1)),
    (case("nn.Softmax(axis = 1)", ACT_IN), lambda x: ref_softmax(x, 1)),
    (case("nn.LogSoftmax()", ACT_IN), lambda x: np.log(ref_softmax(x, -1))),
    (case("nn.LogSoftmax(0)", ACT_IN), lambda x: np.log(ref_softmax(x, 0))),
    (case("nn.Identity()", ACT_IN), lambda x: x),
    (case("nn.Dropout()", ACT_IN), lambda x: x),  # inference mode: the identity
    (case("nn.Dropout(0.2)", ACT_IN), lambda x: x),
    (case("nn.Flatten()", ACT_IN), lambda x: x.reshape(x.shape[0], -1)),
    (case("nn.Flatten(0, 1)", ACT_IN), lambda x: x.reshape(-1, x.shape[2])),
    (case("nn.Flatten(2)", ACT_IN), lambda x: x),
]


@pytest.mark.parametrize("block, ref", POOLS + ACTIVATIONS,
                         ids=[c[0][0] for c in POOLS + ACTIVATIONS])
def test_parameter_free_blocks(block, ref):
    m = compile_block(*block)
    assert m.params == {}
    for B in BATCHES:
        x = rand(np.random.default_rng(B), *in_shape(block[1], B)) * 3
        close(m(x), ref(x.astype(np.float64)))


# ---------------------------------------------------------------------------- adaptive pools
def ref_adaptive_pool2d(x, out, reduce):
    """PyTorch's adaptive bins, by loops: output (i, j) of (oh, ow) pools x over rows
    [floor(i * H / oh), ceil((i + 1) * H / oh)) and the like columns."""
    h, w = x.shape[2:]
    oh, ow = (s if o is None else o for o, s in zip(out, (h, w)))
    y = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * h // oh, -(-(i + 1) * h // oh))
            cols = slice(j * w // ow, -(-(j + 1) * w // ow))
            y[:, :, i, j] = reduce(x[:, :, rows, cols], axis=(2, 3))
    return y


ADAPTIVE = [  # (H, W, kiln output_size, numpy's): equal bins, unequal, overlapping, kept axes
    (7, 7, "[3, 3]", (3, 3)), (9, 13, "[4, 5]", (4, 5)), (8, 12, "[4, 3]", (4, 3)),
    (5, 6, "[7, 9]", (7, 9)), (6, 10, "[none, 4]", (None, 4)), (4, 4, "2", (2, 2)),
    (9, 9, "[3, none]", (3, None)), (10, 11, "1", (1, 1)), (1, 5, "[2, 1]", (2, 1)),
]


@pytest.mark.parametrize("kind, reduce", [("Avg", np.mean), ("Max", np.max)])
@pytest.mark.parametrize("h, w, arg, out", ADAPTIVE, ids=[f"{c[0]}x{c[1]}->{c[2]}"
                                                         for c in ADAPTIVE])
def test_adaptive_pools_any_output_size(kind, reduce, h, w, arg, out):
    """Against the loops above on both targets, with the input's sizes known at compile time
    and symbolic (bound at the call: the bins are computed from the sizes then)."""
    rng = np.random.default_rng(h * w)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    want = ref_adaptive_pool2d(x.astype(np.float64), out, reduce)
    for in_type in (f"f32[B, 3, {h}, {w}]", "f32[B, 3, H, W]"):
        src = source([((f"nn.Adaptive{kind}Pool2d({arg})", in_type), "M")])
        # natively and in onnxruntime the symbolic sizes, which take the general path (known
        # sizes take avg_pool or max_pool where the bins are equal, ops tested on their own)
        symbolic = "H" in in_type
        for target in ("reference", "native", "onnx") if symbolic else ("reference",):
            m = kiln.compile(src, target=target)
            close(m(x), want)
            if symbolic:  # other sizes at the next call: the bins follow them
                x2 = rng.standard_normal((1, 3, h + 3, 2 * w + 1)).astype(np.float32)
                close(m(x2), ref_adaptive_pool2d(x2.astype(np.float64), out, reduce))


def ref_adaptive_pool2d_grad(x, out, kind, dy):
    """The input gradient of the loops above: each bin's cotangent spread evenly over it
    (mean), or put on its maximum (max; the inputs are distinct)."""
    h, w = x.shape[2:]
    oh, ow = out
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(dy.shape):
        rows = slice(i * h // oh, -(-(i + 1) * h // oh))
        cols = slice(j * w // ow, -(-(j + 1) * w // ow))
        cell = dx[n, c, rows, cols]
        if kind == "Avg":
            cell += dy[n, c, i, j] / cell.size
        else:
            at = np.unravel_index(np.argmax(x[n, c, rows, cols]), cell.shape)
            cell[at] += dy[n, c, i, j]
    return dx


@pytest.mark.parametrize("kind", ["Avg", "Max"])
@pytest.mark.parametrize("size", ["9, 7", "H, W"])
def test_adaptive_pool_input_gradients(kind, size):
    """Unequal and overlapping bins (9 -> 4 rows, 7 -> 9 columns) on both targets."""
    src = source([((f"nn.Adaptive{kind}Pool2d([4, 9])", f"f32[B, 2, {size}]"), "M")])
    rng = np.random.default_rng(1)
    x = rng.permutation(2 * 2 * 9 * 7).reshape(2, 2, 9, 7).astype(np.float32) / 50
    dy = rng.standard_normal((2, 2, 4, 9)).astype(np.float32)
    want = ref_adaptive_pool2d_grad(x.astype(np.float64), (4, 9), kind, dy)
    for target in ("reference", "native"):
        _, _, grads = kiln.compile(src, target=target).vjp(x, cotangents=[dy])
        close(grads["x"], want)


# ---------------------------------------------------------------------------- errors
BAD = [
    ("nn.Conv2d(3, 4, 3, groups = 2)", "f32[B, 3, 8, 8]", "in_channels must be divisible"),
    ("nn.Conv2d(4, 3, 3, groups = 2)", "f32[B, 4, 8, 8]", "out_channels must be divisible"),
    ('nn.Conv2d(3, 4, 3, padding_mode = "circular")', "f32[B, 3, 8, 8]", "padding_mode must be"),
    ('nn.Conv2d(3, 4, 3, padding = "same", padding_mode = "reflect")', "f32[B, 3, 8, 8]",
     "needs padding_mode zeros"),
    ("nn.ConvTranspose2d(3, 4, 3, groups = 2)", "f32[B, 3, 8, 8]", "divisible by groups"),
    ("nn.GroupNorm(4, 6)", "f32[B, 6, 2]", "num_channels must be divisible by num_groups"),
    ("nn.AdaptiveMaxPool2d(2, return_indices = true)", "f32[B, 3, 8, 8]", "return_indices"),
    ("nn.AdaptiveAvgPool2d([2, 0])", "f32[B, 3, 8, 8]", "a positive int or a pair of them"),
    ("nn.AdaptiveMaxPool2d([1, 2, 3])", "f32[B, 3, 8, 8]", "a positive int or a pair of them"),
    ("nn.MaxPool2d(2, return_indices = true)", "f32[B, 3, 8, 8]", "return_indices"),
    ("nn.AvgPool2d(2, divisor_override = 0)", "f32[B, 3, 8, 8]", "must be a positive int"),
    ("nn.AvgPool2d(3, 2, ceil_mode = true, divisor_override = 4)", "f32[B, 3, 8, 8]",
     "not supported with ceil_mode"),
    ('nn.GELU("exact")', "f32[B, 3]", "approximate must be"),
    ("nn.Dropout(1.5)", "f32[B, 3]", "between 0 and 1"),
    ("nn.BatchNorm1d(3)", "f32[B, 3, 4, 4]", "BatchNorm1d takes [N, C] or [N, C, L]"),
    ("nn.BatchNorm1d(3, affine = false, track_running_stats = false)", "f32[B, 4]",
     "axis 1 must be num_features"),
    ("nn.GroupNorm(2, 4, affine = false)", "f32[B, 6, 3]", "must be [N, num_channels, ...]"),
    ("nn.Linear(5, 3)", "f32[B, 4]", "K0301"),  # a shape mismatch, at compile time
]


@pytest.mark.parametrize("expr, in_type, message", BAD, ids=[c[0] for c in BAD])
def test_invalid_arguments_fail_at_compile_time(expr, in_type, message):
    with pytest.raises(KilnError) as err:
        compile_block(expr, in_type)
    assert message in str(err.value)


# ---------------------------------------------------------------------------- PyTorch parity
PARITY = [  # (kiln block, the same torch module)
    (case("nn.Linear(5, 3)", "f32[B, 2, 5]"), "nn.Linear(5, 3)"),
    (case("nn.Linear(5, 3, false)", "f32[B, 5]"), "nn.Linear(5, 3, False)"),
    (case("nn.Conv1d(4, 6, 3, 2, 1, groups = 2)", "f32[B, 4, 9]"),
     "nn.Conv1d(4, 6, 3, 2, 1, groups=2)"),
    (case('nn.Conv2d(3, 4, [3, 5], stride = 2, padding = "valid", dilation = [2, 1])',
          "f32[B, 3, 9, 8]"),
     "nn.Conv2d(3, 4, (3, 5), stride=2, padding='valid', dilation=(2, 1))"),
    (case('nn.Conv2d(3, 4, 4, padding = "same", bias = false)', "f32[B, 3, 9, 8]"),
     "nn.Conv2d(3, 4, 4, padding='same', bias=False)"),
    (case('nn.Conv2d(3, 4, 3, padding = 1, padding_mode = "reflect")', "f32[B, 3, 9, 8]"),
     "nn.Conv2d(3, 4, 3, padding=1, padding_mode='reflect')"),
    (case("nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2)", "f32[B, 4, 5, 4]"),
     "nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2)"),
    (case("nn.BatchNorm1d(4)", "f32[B, 4, 3]"), "nn.BatchNorm1d(4)"),
    (case("nn.BatchNorm2d(3)", "f32[B, 3, 4, 4]"), "nn.BatchNorm2d(3)"),
    (case("nn.BatchNorm2d(3, track_running_stats = false)", "f32[B, 3, 4, 5]"),
     "nn.BatchNorm2d(3, track_running_stats=False)"),
    (case("nn.LayerNorm([3, 4])", "f32[B, 2, 3, 4]"), "nn.LayerNorm([3, 4])"),
    (case("nn.GroupNorm(2, 4)", "f32[B, 4, 3, 3]"), "nn.GroupNorm(2, 4)"),
    (case("nn.Embedding(10, 4)", "i64[B, T]"), "nn.Embedding(10, 4)"),
    (PADDED_EMBEDDING[1], "nn.Embedding(10, 4, padding_idx=-1, sparse=True)"),
    (case("nn.MaxPool2d(3, 2, 1, ceil_mode = true)", "f32[B, 3, 8, 7]"),
     "nn.MaxPool2d(3, 2, 1, ceil_mode=True)"),
    (case("nn.AvgPool2d(3, 2, 1, true, false)", "f32[B, 3, 8, 7]"),
     "nn.AvgPool2d(3, 2, 1, True, False)"),
    (case("nn.AdaptiveAvgPool2d(1)", "f32[B, 3, 5, 4]"), "nn.AdaptiveAvgPool2d(1)"),
    (case("nn.AvgPool2d(3, 2, 1, divisor_override = 7)", "f32[B, 3, 8, 7]"),
     "nn.AvgPool2d(3, 2, 1, divisor_override=7)"),
    (case("nn.AdaptiveAvgPool2d([3, none])", "f32[B, 3, 7, 4]"),
     "nn.AdaptiveAvgPool2d((3, None))"),
    (case("nn.AdaptiveMaxPool2d([4, 5])", "f32[B, 3, 9, 6]"), "nn.AdaptiveMaxPool2d((4, 5))"),
    (case('nn.GELU("tanh")', ACT_IN), "nn.GELU('tanh')"),
    (case("nn.ELU(0.5)", ACT_IN), "nn.ELU(0.5)"),
    (case("nn.LogSoftmax(axis = 1)", ACT_IN), "nn.LogSoftmax(dim=1)"),
]


@pytest.mark.parametrize("block, torch_src", PARITY, ids=[c[0][0] for c in PARITY])
def test_pytorch_parity(tmp_path, block, torch_src):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    module = torch.nn.Sequential(eval(torch_src, {"nn": torch.nn})).eval()
    with torch.no_grad():  # make the affine terms and running statistics non-trivial
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "var" in name else torch.randn_like(t))
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))

    m = compile_block(*block)
    assert {k: v.shape for k, v in m.params.items()} == {k: v.shape for k, v in state.items()}
    m.load_weights(tmp_path / "w.safetensors")  # strict: no missing or unexpected keys
    for B in (2, 3):
        rng = np.random.default_rng(B)
        if block[1].startswith("i64"):
            x = rng.integers(0, 10, (B, 5))
            want = module(torch.from_numpy(x)).detach().numpy()
        else:
            x = rng.standard_normal(in_shape(block[1], B)).astype(np.float32)
            with torch.no_grad():
                want = module(torch.from_numpy(x)).numpy()
        close(m(x), want.astype(np.float64))


# ---------------------------------------------------------------------------- -O0 vs -O1
# Every recorded block (the list is complete here, at the end of the module), on the
# reference: at -O1 it runs every pass native code gets; tests/test_native_nn.py runs the
# ops natively.
@pytest.mark.parametrize("block", list(_BLOCKS), ids=[f"{e}:{t}" for e, t in _BLOCKS])
def test_optimized_reference_matches_the_unoptimized_one(block):
    check_opt_levels(program(tuple(_BLOCKS.items())), _BLOCKS[block], targets=REFERENCE)
