"""std.nn's PyTorch layers for architectures beyond the examples (MobileNetV3, EfficientNet,
ConvNeXt, 1-D CNNs, super-resolution and style-transfer decoders): activations, 1-D pooling,
padding, upsampling, pixel shuffle, instance norm, dropout variants and shape layers.

Layers are batched into one model per input rank (members `l0`, `l1`, ... so that the PyTorch
twin, an nn.Module with the same attributes, has the same state_dict), compiled once per
target. Each model runs at two input sizes with symbolic batch and spatial sizes:

- forward against numpy code written from PyTorch's documented formulas (no torch needed);
- forward and `model.vjp` (every parameter's gradient and the input's) against PyTorch
  autograd in float64 with the same weights, on the reference, native and ONNX targets.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from _stdlibtest import close
from test_grad_models import TARGETS, check_against_torch
from test_stdlib_nn import randomize, ref_avg_pool2d, ref_max_pool2d

import kiln

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _softplus(x, beta=1.0, threshold=20.0):
    return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(x))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _instance_norm(x, w=None, b=None, eps=1e-5):
    axes = tuple(range(2, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    c = (1, -1) + (1,) * (x.ndim - 2)
    return y if w is None else y * w.reshape(c) + b.reshape(c)


def _pixel_shuffle(x, r):
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


def _pixel_unshuffle(x, r):
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * r * r, h // r, w // r)


def _np_pad(x, pads, mode="constant", value=0.0):
    """F.pad order (last axis first) to numpy's per-axis widths."""
    widths = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        widths[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    if mode == "constant":
        return np.pad(x, widths, constant_values=value)
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _bicubic(x, out, scale=None, corners=False):
    """PyTorch's upsample_bicubic2d by its definition, one output pixel at a time: source
    (dst + 0.5) / scale - 0.5 (not clamped; dst * (in - 1) / (out - 1) with align_corners),
    Keys' cubic with A = -0.75 over the 4 x 4 nearest inputs, reads clamped into the image."""
    def cubic(d):
        d, a = abs(d), -0.75
        return ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else \
            ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0

    def taps(o, size, n, s):
        if corners:
            src = o * (size - 1) / (n - 1) if n > 1 else 0.0
        else:
            src = (o + 0.5) / (s or n / size) - 0.5
        lo = math.floor(src)
        return [(min(max(lo - 1 + k, 0), size - 1), cubic(src - (lo - 1 + k))) for k in range(4)]
    h, w = x.shape[2:]
    y = np.zeros(x.shape[:2] + tuple(out))
    for i in range(out[0]):
        for j in range(out[1]):
            for r, wr in taps(i, h, out[0], scale):
                for c, wc in taps(j, w, out[1], scale):
                    y[:, :, i, j] += wr * wc * x[:, :, r, c]
    return y


def _adaptive_1d(x, n, reduce):
    size = x.shape[2]
    return np.stack([reduce(x[:, :, (i * size) // n: -(-(i + 1) * size // n)], axis=2)
                     for i in range(n)], axis=2)


def _1d(pool):
    """A 2-D pooling reference applied to [N, C, L] as [N, C, 1, L]."""
    def run(x, k, s=None, p=0, **kw):
        return pool(x[:, :, None, :], (1, k), (1, s or k), (0, p), **kw)[:, :, 0, :]
    return run


_max_pool1d, _avg_pool1d = _1d(ref_max_pool2d), _1d(ref_avg_pool2d)


def _conv_transpose1d(x, w, b, stride):
    n, _, length = x.shape
    k = w.shape[2]
    out = np.zeros((n, w.shape[1], (length - 1) * stride + k))
    for t in range(k):
        out[:, :, t: t + stride * (length - 1) + 1: stride] += np.einsum("ncl,co->nol", x, w[:, :, t])
    return out + b[None, :, None]


# (kiln block, PyTorch module where it is spelled differently, numpy reference(x, params) or
# None where the op's own tests hold the reference: bilinear resizing)
ACTS = [
    ("nn.ReLU6", None, lambda x, p: np.clip(x, 0, 6)),
    ("nn.Hardtanh(-0.5, 0.7)", None, lambda x, p: np.clip(x, -0.5, 0.7)),
    ("nn.Hardsigmoid", None, lambda x, p: np.clip(x + 3, 0, 6) / 6),
    ("nn.Hardswish", None, lambda x, p: x * np.clip(x + 3, 0, 6) / 6),
    ("nn.PReLU", None, lambda x, p: np.where(x >= 0, x, p["weight"] * x)),
    ("nn.PReLU(6, 0.1)", None, lambda x, p: np.where(x >= 0, x, p["weight"][:, None, None] * x)),
    ("nn.Softplus(2.0, 3.0)", None, lambda x, p: _softplus(x, 2.0, 3.0)),
    ("nn.Mish", None, lambda x, p: x * np.tanh(_softplus(x))),
    ("nn.SELU", None, lambda x, p: SELU_SCALE * _elu(x, SELU_ALPHA)),
    ("nn.CELU(0.7)", None, lambda x, p: np.maximum(x, 0) + np.minimum(0, 0.7 * np.expm1(x / 0.7))),
    ("nn.Softsign", None, lambda x, p: x / (1 + np.abs(x))),
    ("nn.Tanhshrink", None, lambda x, p: x - np.tanh(x)),
    ("nn.LogSigmoid", None, lambda x, p: np.log(_sigmoid(x))),
    ("nn.GLU(1)", None, lambda x, p: x[:, :3] * _sigmoid(x[:, 3:])),
    ("nn.GLU", None, lambda x, p: x[..., :2] * _sigmoid(x[..., 2:])),
    ("nn.Hardshrink", None, lambda x, p: np.where(np.abs(x) > 0.5, x, 0)),
    ("nn.Softshrink(0.3)", None, lambda x, p: np.sign(x) * np.maximum(np.abs(x) - 0.3, 0)),
    ("nn.Threshold(0.1, -2.0)", None, lambda x, p: np.where(x > 0.1, x, -2.0)),
    ("nn.Softmin(1)", None, lambda x, p: np.exp(-x) / np.exp(-x).sum(1, keepdims=True)),
    ("nn.Softmax(dim = 1)", None, lambda x, p: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("nn.LogSoftmax(dim = 2)", None,
     lambda x, p: x - np.log(np.exp(x).sum(2, keepdims=True))),
    ("nn.Unflatten(1, [2, 3])", "nn.Unflatten(1, (2, 3))",
     lambda x, p: x.reshape(x.shape[0], 2, 3, *x.shape[2:])),
    ("nn.Identity", None, lambda x, p: x),
    ("nn.Flatten", None, lambda x, p: x.reshape(x.shape[0], -1)),
    ("nn.ChannelShuffle(3)", None,
     lambda x, p: x.reshape(x.shape[0], 3, 2, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)),
]

IMAGES = [
    ("nn.InstanceNorm2d(8)", None, lambda x, p: _instance_norm(x)),
    ("nn.InstanceNorm2d(8, affine = true)", None,
     lambda x, p: _instance_norm(x, p["weight"], p["bias"])),
    ("nn.InstanceNorm2d(8, eps = 1e-3, affine = true, track_running_stats = true)", None,
     lambda x, p: (x - p["running_mean"][:, None, None]) / np.sqrt(
         p["running_var"][:, None, None] + 1e-3) * p["weight"][:, None, None]
     + p["bias"][:, None, None]),
    ("nn.ZeroPad2d(1)", None, lambda x, p: _np_pad(x, [1] * 4)),
    ("nn.ZeroPad2d([1, 2, 0, 3])", None, lambda x, p: _np_pad(x, [1, 2, 0, 3])),
    ("nn.ConstantPad2d(1, 0.5)", None, lambda x, p: _np_pad(x, [1] * 4, value=0.5)),
    ("nn.ReflectionPad2d(1)", None, lambda x, p: _np_pad(x, [1] * 4, "reflect")),
    ("nn.ReflectionPad2d([2, 1, 1, 3])", None, lambda x, p: _np_pad(x, [2, 1, 1, 3], "reflect")),
    ("nn.ReplicationPad2d([2, 1, 1, 0])", None,
     lambda x, p: _np_pad(x, [2, 1, 1, 0], "replicate")),
    ("nn.Upsample(scale_factor = 2)", None, lambda x, p: x.repeat(2, 2).repeat(2, 3)),
    ("nn.Upsample(scale_factor = [2, 3], mode = \"nearest\")",
     "nn.Upsample(scale_factor=(2, 3), mode='nearest')",
     lambda x, p: x.repeat(2, 2).repeat(3, 3)),
    ("nn.Upsample(scale_factor = 2, mode = \"bilinear\")", None, None),
    ("nn.UpsamplingNearest2d(scale_factor = 3)", None, lambda x, p: x.repeat(3, 2).repeat(3, 3)),
    ("nn.Upsample(scale_factor = 2, mode = \"nearest-exact\")", None,
     lambda x, p: x.repeat(2, 2).repeat(2, 3)),
    ("nn.Upsample(scale_factor = 2, mode = \"bicubic\")", None,
     lambda x, p: _bicubic(x, (2 * x.shape[2], 2 * x.shape[3]), 2)),
    ("nn.PixelShuffle(2)", None, lambda x, p: _pixel_shuffle(x, 2)),
    ("nn.PixelUnshuffle(2)", None, lambda x, p: _pixel_unshuffle(x, 2)),
    ("nn.Dropout2d(0.3)", None, lambda x, p: x),
]

SEQUENCES = [
    ("nn.MaxPool1d(3, 2, 1)", None, lambda x, p: _max_pool1d(x, 3, 2, 1)),
    ("nn.MaxPool1d(2, ceil_mode = true)", None, lambda x, p: _max_pool1d(x, 2, ceil_mode=True)),
    ("nn.AvgPool1d(2)", None, lambda x, p: _avg_pool1d(x, 2)),
    ("nn.AvgPool1d(3, 2, 1, count_include_pad = false)", None,
     lambda x, p: _avg_pool1d(x, 3, 2, 1, count_include_pad=False)),
    ("nn.AdaptiveAvgPool1d(1)", None, lambda x, p: x.mean(2, keepdims=True)),
    ("nn.AdaptiveAvgPool1d(5)", None, lambda x, p: _adaptive_1d(x, 5, np.mean)),
    ("nn.AdaptiveMaxPool1d(1)", None, lambda x, p: x.max(2, keepdims=True)),
    ("nn.AdaptiveMaxPool1d(5)", None, lambda x, p: _adaptive_1d(x, 5, np.max)),
    ("nn.InstanceNorm1d(4, affine = true)", None,
     lambda x, p: _instance_norm(x, p["weight"], p["bias"])),
    ("nn.ReflectionPad1d(2)", None, lambda x, p: _np_pad(x, [2, 2], "reflect")),
    ("nn.ReplicationPad1d([0, 3])", None, lambda x, p: _np_pad(x, [0, 3], "replicate")),
    ("nn.ZeroPad1d([1, 0])", None, lambda x, p: _np_pad(x, [1, 0])),
    ("nn.ConstantPad1d(2, -1.5)", None, lambda x, p: _np_pad(x, [2, 2], value=-1.5)),
    ("nn.Upsample(scale_factor = 2)", None, lambda x, p: x.repeat(2, 2)),
    ("nn.Upsample(scale_factor = 2, mode = \"linear\")", None, None),
    ("nn.Upsample(scale_factor = 3)", None, lambda x, p: x.repeat(3, 2)),
    ("nn.ConvTranspose1d(4, 3, 3, stride = 2)", None,
     lambda x, p: _conv_transpose1d(x, p["weight"], p["bias"], 2)),
    ("nn.Dropout1d", None, lambda x, p: x),
    ("nn.BatchNorm1d(4)", None, lambda x, p: (x - p["running_mean"][:, None]) / np.sqrt(
        p["running_var"][:, None] + 1e-5) * p["weight"][:, None] + p["bias"][:, None]),
]

# resizing whose gradient needs constant sizes (the blend depends on them): align_corners, or
# an output size given
FIXED = [
    ("nn.Upsample(scale_factor = 2, mode = \"bilinear\", align_corners = true)", None, None),
    ("nn.Upsample(size = [5, 9], mode = \"bilinear\")", "nn.Upsample(size=(5, 9), mode='bilinear')",
     None),
    ("nn.UpsamplingBilinear2d(scale_factor = 2)", None, None),
    ("nn.Upsample(size = [5, 9])", "nn.Upsample(size=(5, 9))", None),
    ("nn.UpsamplingNearest2d(size = [3, 11])", "nn.UpsamplingNearest2d(size=(3, 11))", None),
    ("nn.Upsample(scale_factor = 0.5)", None, None),
    ("nn.Upsample(size = [9, 5], mode = \"bicubic\")", "nn.Upsample(size=(9, 5), mode='bicubic')",
     lambda x, p: _bicubic(x, (9, 5))),
    ("nn.Upsample(scale_factor = 1.5, mode = \"bicubic\", align_corners = true)", None,
     lambda x, p: _bicubic(x, (9, 6), corners=True)),
    ("nn.Upsample(size = [4, 7], mode = \"nearest-exact\")",
     "nn.Upsample(size=(4, 7), mode='nearest-exact')", None),
    ("nn.Upsample(scale_factor = [0.5, 1.75], mode = \"nearest-exact\")",
     "nn.Upsample(scale_factor=(0.5, 1.75), mode='nearest-exact')", None),
    ("nn.Upsample(scale_factor = 1.5, mode = \"bilinear\")", None, None),
    ("nn.Upsample(scale_factor = 1.5, mode = \"bilinear\", recompute_scale_factor = true)", None,
     None),
]

FIXED_1D = [
    ("nn.Upsample(size = 7, mode = \"linear\", align_corners = true)", None, None),
    ("nn.Upsample(scale_factor = 2.5, mode = \"linear\")", None, None),
    ("nn.Upsample(scale_factor = 3, mode = \"linear\")", None, None),
    ("nn.AdaptiveAvgPool1d(16)", None, lambda x, p: _adaptive_1d(x, 16, np.mean)),
    ("nn.Upsample(size = 10, mode = \"nearest-exact\")", None, None),
    ("nn.AdaptiveMaxPool1d(4)", None, lambda x, p: _adaptive_1d(x, 4, np.max)),
]

# name: (layers, forward's signature, two input shapes)
MODELS = {
    "Acts": (ACTS, "(x: f32[B, 6, H, 4])", [(2, 6, 5, 4), (1, 6, 3, 4)]),
    "Images": (IMAGES, "(x: f32[B, 8, H, W]) where H % 2 == 0, W % 2 == 0", [(2, 8, 6, 4), (1, 8, 4, 8)]),
    "Sequences": (SEQUENCES, "(x: f32[B, 4, L])", [(2, 4, 9), (1, 4, 12)]),
    "FixedImages": (FIXED, "(x: f32[B, 3, 6, 4])", [(2, 3, 6, 4), (1, 3, 6, 4)]),
    "FixedSequences": (FIXED_1D, "(x: f32[B, 2, 6])", [(2, 2, 6), (3, 2, 6)]),
}


def source() -> str:
    out = ["import std.nn"]
    for name, (layers, signature, _) in MODELS.items():
        members = "".join(f"  l{i} = {k}\n" for i, (k, _, _) in enumerate(layers))
        results = ", ".join(f"l{i}(x)" for i in range(len(layers)))
        out.append(f"model {name} {{\n{members}  forward{signature} {{\n"
                   f"    return {results}\n  }}\n}}")
    return "\n".join(out) + "\n"


@functools.cache
def program():
    return kiln.load(source())


@functools.cache
def compiled(name: str, target: str):
    return kiln.compile(program(), model=name, target=target, seed=0)


CASES = [(name, target) for name in MODELS for target in TARGETS]


@pytest.mark.parametrize("name, target", CASES)
def test_forward_against_numpy(name, target):
    layers, _, shapes = MODELS[name]
    model = compiled(name, target)
    randomize(model, np.random.default_rng(1))  # positive variances
    weights = model.params
    rng = np.random.default_rng(2)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        outs = model(x)
        for i, ((expr, _, ref), got) in enumerate(zip(layers, outs, strict=True)):
            if ref is None:
                continue
            own = {k.removeprefix(f"l{i}."): v.astype(np.float64)
                   for k, v in weights.items() if k.startswith(f"l{i}.")}
            want = ref(x.astype(np.float64), own)
            try:
                close(got, want, rtol=1e-5, atol=1e-5)
            except AssertionError as e:
                raise AssertionError(f"{expr} at {shape}: {e}") from None


def torch_twin(name: str):
    """An nn.Module whose attributes l0, l1, ... are the PyTorch layers, in eval mode, with
    random weights (positive variances), returning every layer's output."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference")
    nn = torch.nn
    layers = MODELS[name][0]
    twin = nn.Module()
    for i, (expr, spelled, _) in enumerate(layers):
        text = spelled or expr.replace(" = ", "=").replace("true", "True").replace("false", "False")
        setattr(twin, f"l{i}", eval(text if "(" in text else text + "()", {"nn": nn}))
    twin.forward = lambda x: tuple(getattr(twin, f"l{i}")(x) for i in range(len(layers)))
    return randomize_torch(twin, 3).eval()


def randomize_torch(module, seed: int):
    """Every float tensor of the module's state_dict N(0, 1), running variances in [0.5, 2]."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference")
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.tensor(rng.uniform(0.5, 2.0, v.shape) if k.endswith("running_var")
                                     else rng.standard_normal(v.shape)))
    return module


@pytest.mark.parametrize("name, target", CASES)
def test_forward_and_gradients_against_torch(name, target):
    model = compiled(name, target)
    rng = np.random.default_rng(4)
    for shape in MODELS[name][2]:
        x = rng.standard_normal(shape).astype(np.float32)
        cts = [rng.standard_normal(np.shape(y)).astype(np.float32) for y in model(x)]
        check_against_torch(model, torch_twin(name), [x], cts)


# ---------------------------------------------------------------------------- errors
# (block, input type, the message, the source line the caret marks) of a wrong argument
BAD = [
    ("nn.Upsample(scale_factor = -2)", "f32[B, 3, H, W]", "scale_factor must be positive",
     "require len([f for f in scales if f <= 0]) == 0"),
    ("nn.Upsample(scale_factor = [2, 0])", "f32[B, 3, H, W]", "scale_factor must be positive",
     "require len([f for f in scales if f <= 0]) == 0"),
    ('nn.Upsample(scale_factor = 2, mode = "trilinear")', "f32[B, 3, H, W]",
     "mode must be nearest, nearest-exact, linear, bilinear or bicubic", "require nearest or"),
    ('nn.Upsample(scale_factor = 2, mode = "bicubic")', "f32[B, 3, L]",
     "mode bicubic takes [N, C, L] (nearest, linear) or [N, C, H, W]", "require (mode =="),
    ('nn.Upsample(scale_factor = 2, mode = "linear")', "f32[B, 3, H, W]",
     "mode linear takes [N, C, L]", "require (mode =="),
    ("nn.Upsample(size = 4, scale_factor = 2)", "f32[B, 3, H, W]",
     "give exactly one of size and scale_factor", "require (size == none)"),
    ("nn.Upsample(scale_factor = 2, align_corners = true)", "f32[B, 3, H, W]",
     "align_corners can only be set", "require not nearest or"),
    ("nn.Upsample(scale_factor = 1.5)", "f32[B, 3, H, W]",
     "floor(H * 1.5) is not a symbolic size; give size instead", "return resize("),
    ("nn.PixelShuffle(3)", "f32[B, 8, H, W]",
     "the channels (8) must be divisible by upscale_factor ** 2 (9)", "require C % (r * r)"),
    ("nn.PixelShuffle(0)", "f32[B, 8, H, W]", "upscale_factor must be positive",
     "require upscale_factor >= 1"),
    ("nn.PixelUnshuffle(2)", "f32[B, 3, 5, 4]",
     "the height and width must be divisible by downscale_factor (2)", "require H % r == 0"),
    ("nn.PixelUnshuffle(2)", "f32[B, 3, H, W]", "hint: state it as a `where` constraint",
     "require H % r == 0"),
    ("nn.ZeroPad2d([1, 2, 3])", "f32[B, 3, H, W]",
     "padding must be an int or 4 ints (left, right, top, bottom)", "require len(p) =="),
    ("nn.ReflectionPad2d(4)", "f32[B, 3, 4, 9]", "reflect padding 4 must be smaller than the "
     "size 4", "return pad(x, p"),
    ("nn.InstanceNorm2d(4)", "f32[B, 3, H, W]",
     "the input must be [N, num_features, H, W] with num_features = 4", "require rank(x) =="),
    ("nn.InstanceNorm1d(3)", "f32[B, 3, H, W]", "the input must be [N, num_features, L]",
     "require rank(x) =="),
    ("nn.PReLU(5)", "f32[B, 3, H]", "num_parameters (5) must be 1 or the input's axis 1",
     "require num_parameters == 1 or"),
    ("nn.GLU(1)", "f32[B, 3, H]", "axis 1 of [B, 3, H] does not split into 2 equal parts",
     "a, b = split("),
    ("nn.Hardtanh(1.0, -1.0)", "f32[B, 3]", "max_val must be greater than min_val",
     "require max_val > min_val"),
    ("nn.AdaptiveAvgPool1d(0)", "f32[B, 3, L]", "output_size is a positive int",
     "require len(o) == 1"),
    ("nn.MaxPool1d(2)", "f32[B, 3, H, W]", "MaxPool1d: input x has shape [B, 3, H, W] but "
     "[N, C, L] is expected", "x |> nn.MaxPool1d(2)"),
    ("nn.Unflatten(1, [2, 2])", "f32[B, 3, H]", "cannot reshape", "return reshape(x,"),
]


@pytest.mark.parametrize("expr, in_type, message, line", BAD, ids=[c[0] for c in BAD])
def test_wrong_arguments_are_located_errors(expr, in_type, message, line):
    """A KilnError (never a Python exception) with the message, quoting the source line that
    failed with a caret under it, and naming the user's line that used the layer."""
    src = f"import std.nn\nmodel M {{\n  forward(x: {in_type}) {{\n    return x |> {expr}\n  }}\n}}\n"
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(src, target="reference")
    text = str(err.value)
    assert message in text, text
    quoted = [row for row in text.splitlines() if "|" in row and line in row]
    assert quoted, text
    assert "^" in text and "<source>:4:" in text, text


def test_reflect_padding_too_wide_for_a_symbolic_size_is_refused_on_every_target():
    """The size is only known at the call: every target refuses it (K0505) at the layer
    instead of reading past the input."""
    src = "import std.nn\nmodel M {\n  forward(x: f32[B, 2, H, W]) {\n" \
          "    return x |> nn.ReflectionPad2d(3)\n  }\n}\n"
    x = np.ones((1, 2, 2, 5), np.float32)
    for target in TARGETS:
        model = kiln.compile(src, target=target)
        np.testing.assert_array_equal(model(np.ones((1, 2, 4, 5), np.float32)), 1)
        with pytest.raises(kiln.KilnError) as err:
            model(x)
        assert err.value.code == "K0505" and "reflect" in str(err.value).lower(), target


TRAINING = """import std.nn
model M {
  drop = nn.Dropout2d(0.5)
  norm = nn.InstanceNorm2d(3, affine = true)
  forward(x: f32[B, 3, H, W]) { return x |> drop, x |> norm }
}
"""


def test_training_mode_drops_whole_channels_and_normalises_each_instance():
    """Dropout2d: each (sample, channel) all kept (times 2 at p = 0.5) or all zero, the same
    masks natively; InstanceNorm2d uses the instance's statistics in training mode too; one
    with running statistics is refused there (it would have to update them)."""
    x = np.random.default_rng(5).standard_normal((8, 3, 4, 5)).astype(np.float32)
    key = np.array([7, 0], np.int64)
    dropped, normed = kiln.compile(TRAINING, target="reference", training=True)(x, rng_key=key)
    kept = dropped != 0
    assert np.all(kept == kept[:, :, :1, :1]) and 0 < kept[:, :, 0, 0].sum() < 24
    close(dropped, np.where(kept, 2 * x, 0))
    native, _ = kiln.compile(TRAINING, target="native", training=True)(x, rng_key=key)
    np.testing.assert_array_equal(native, dropped)
    close(normed, _instance_norm(x.astype(np.float64), np.ones(3), np.zeros(3)), atol=1e-5)
    with pytest.raises(kiln.KilnError) as err:
        kiln.compile(TRAINING.replace("affine = true", "track_running_stats = true"),
                     target="reference", training=True)
    assert "track_running_stats = true is not supported in training mode" in str(err.value)


SYMBOLIC_GRADIENTS = """import std.nn
model M {
  unshuffle = nn.PixelUnshuffle(2)
  up = nn.Upsample(scale_factor = [2, 3])
  forward(x: f32[B, 2, H, W]) where H % 2 == 0, W % 2 == 0 {
    return x |> unshuffle, x |> up
  }
}
"""


@pytest.mark.parametrize("target", TARGETS)
def test_gradients_over_symbolic_sizes_without_torch(target):
    """vjp where H and W stay symbolic: PixelUnshuffle's reshapes to H // 2 and back (under
    the model's `where` facts), nearest Upsample by integer scales (each input's gradient
    the sum of the block of outputs it was copied to)."""
    model = kiln.compile(SYMBOLIC_GRADIENTS, target=target)
    rng = np.random.default_rng(6)
    for shape in [(2, 2, 4, 6), (1, 2, 2, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        n, c, h, w = shape
        ct_shuffled = rng.standard_normal((n, 4 * c, h // 2, w // 2)).astype(np.float32)
        ct_up = rng.standard_normal((n, c, 2 * h, 3 * w)).astype(np.float32)
        _, _, grads = model.vjp(x, cotangents=[ct_shuffled, ct_up])
        want = _pixel_shuffle(ct_shuffled.astype(np.float64), 2) + ct_up.reshape(
            n, c, h, 2, w, 3).sum(axis=(3, 5))
        close(grads["x"], want)
