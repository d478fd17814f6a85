"""Architectures no example covers, written from the docs as a PyTorch user would
(tests/zoo/*.kiln), against hand-written PyTorch twins with the same state_dict:
MobileNetV3-small (Hardswish, Hardsigmoid, squeeze-and-excitation, depthwise convs),
EfficientNet's MBConv (SiLU, SE), ConvNeXt blocks (depthwise 7x7, LayerNorm over channels
via permute, GELU, layer scale), a 1-D CNN (Conv1d, BatchNorm1d, pools, PReLU), ESPCN
(PixelShuffle) and a style-transfer decoder (ReflectionPad2d, InstanceNorm2d, Upsample
nearest and bilinear, ZeroPad2d).

Each model, on the reference, native and ONNX targets, at two input sizes (batch and spatial
sizes symbolic): outputs, every parameter's gradient and the input's (`model.vjp`) against
PyTorch autograd in float64 (test_grad_models.check_against_torch). Without PyTorch, the
native and ONNX outputs are compared with the reference interpreter's.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from test_grad_models import TARGETS, check_against_torch
from test_stdlib_nn_zoo import randomize_torch

import kiln

ZOO = Path(__file__).resolve().parent / "zoo"

# file: two input shapes
MODELS = {
    "mobilenetv3_small": [(2, 3, 32, 32), (1, 3, 24, 40)],
    "efficientnet_mbconv": [(2, 3, 16, 16), (1, 3, 12, 20)],
    "convnext_block": [(2, 16, 8, 8), (1, 16, 5, 7)],
    "timeseries_cnn": [(2, 2, 32), (3, 2, 20)],
    "espcn": [(2, 1, 6, 5), (1, 1, 4, 7)],
    "style_decoder": [(2, 8, 4, 4), (1, 8, 3, 5)],
}


@functools.cache
def compiled(name: str, target: str):
    return kiln.compile(ZOO / f"{name}.kiln", target=target, seed=0)


def inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in MODELS[name]]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("target", ["native", "onnx"])
def test_targets_agree_with_the_reference(name, target):
    """No torch needed: the same random weights and inputs on every target."""
    ref, model = compiled(name, "reference"), compiled(name, target)
    model.load_weights(ref.state_dict())
    for x in inputs(name):
        np.testing.assert_allclose(model(x), ref(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- PyTorch twins
def twins():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference")
    nn = torch.nn

    def make_divisible(v, divisor=8):
        r = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return r + divisor if r < 0.9 * v else r

    def cna(cin, cout, k=3, stride=1, groups=1, act=nn.Hardswish, eps=1e-3, momentum=0.01):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=eps, momentum=momentum)]
        return nn.Sequential(*layers, *([act()] if act else []))

    class SqueezeExcitation(nn.Module):  # torchvision.ops.SqueezeExcitation
        def __init__(self, cin, squeeze, activation=nn.ReLU, scale_activation=nn.Hardsigmoid):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(cin, squeeze, 1), nn.Conv2d(squeeze, cin, 1)
            self.activation, self.scale_activation = activation(), scale_activation()

        def forward(self, x):
            s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
            return self.scale_activation(s) * x

    class Residual(nn.Module):
        """self.block, plus its input when self.residual (torchvision's MobileNetV3 and
        EfficientNet blocks)."""

        def forward(self, x):
            y = self.block(x)
            return y + x if self.residual else y

    class InvertedResidual(Residual):  # torchvision.models.mobilenetv3
        def __init__(self, cin, k, expanded, cout, use_se, act, stride):
            super().__init__()
            layers = [cna(cin, expanded, 1, act=act)] if expanded != cin else []
            layers.append(cna(expanded, expanded, k, stride, expanded, act))
            if use_se:
                layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
            layers.append(cna(expanded, cout, 1, act=None))
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

    class MobileNetV3Small(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                cna(3, 16, 3, 2),
                InvertedResidual(16, 3, 16, 16, True, nn.ReLU, 2),
                InvertedResidual(16, 3, 72, 24, False, nn.ReLU, 2),
                InvertedResidual(24, 5, 96, 24, True, nn.Hardswish, 1),
                cna(24, 96, 1))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2),
                                            nn.Linear(128, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    class MBConv(Residual):  # torchvision.models.efficientnet.MBConv, eval mode
        def __init__(self, cin, cout, k, stride, expand_ratio):
            super().__init__()
            hidden = cin * expand_ratio

            def conv(a, b, kk, s=1, g=1, act=True):
                return cna(a, b, kk, s, g, nn.SiLU if act else None, eps=1e-3, momentum=0.1)
            layers = [conv(cin, hidden, 1)] if expand_ratio != 1 else []
            layers += [conv(hidden, hidden, k, stride, hidden),
                       SqueezeExcitation(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
                       conv(hidden, cout, 1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

    class EfficientNetStage(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cna(3, 16, 3, 2, act=nn.SiLU, momentum=0.1)
            self.blocks = nn.Sequential(MBConv(16, 8, 3, 1, 1), MBConv(8, 8, 5, 1, 6))

        def forward(self, x):
            return self.blocks(self.stem(x))

    class Permute(nn.Module):  # torchvision.ops.Permute
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return torch.permute(x, self.dims)

    class CNBlock(nn.Module):  # torchvision.models.convnext.CNBlock, eval mode
        def __init__(self, dim, layer_scale):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
            self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

        def forward(self, x):
            return self.layer_scale * self.block(x) + x

    class ConvNeXtStage(nn.Module):
        def __init__(self, dim=16):
            super().__init__()
            self.blocks = nn.Sequential(CNBlock(dim, 0.5), CNBlock(dim, 0.25))

        def forward(self, x):
            return self.blocks(x)

    class TimeSeriesCNN(nn.Module):
        def __init__(self, in_channels=2, num_classes=5):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv1d(in_channels, 8, 7, padding=3), nn.BatchNorm1d(8), nn.ReLU(),
                nn.MaxPool1d(2), nn.Conv1d(8, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                nn.AvgPool1d(2), nn.Conv1d(16, 16, 3, padding=1), nn.PReLU(16),
                nn.AdaptiveAvgPool1d(1))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.3),
                                            nn.Linear(16, num_classes))

        def forward(self, x):
            return self.classifier(self.features(x))

    class ESPCN(nn.Module):
        def __init__(self, upscale_factor=3, channels=1):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 16, 5, padding=2)
            self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
            self.conv3 = nn.Conv2d(8, channels * upscale_factor ** 2, 3, padding=1)
            self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

        def forward(self, x):
            x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
            return self.pixel_shuffle(self.conv3(x))

    class ConvLayer(nn.Module):  # the PyTorch examples' fast_neural_style ConvLayer
        def __init__(self, cin, cout, k, upsample=None, mode="nearest"):
            super().__init__()
            if upsample:
                self.up = nn.Upsample(scale_factor=upsample, mode=mode)
            self.upsample = upsample
            self.reflection_pad = nn.ReflectionPad2d(k // 2)
            self.conv2d = nn.Conv2d(cin, cout, k, bias=False)

        def forward(self, x):
            x = self.up(x) if self.upsample else x
            return self.conv2d(self.reflection_pad(x))

    class ResidualBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.conv2 = ConvLayer(c, c, 3), ConvLayer(c, c, 3)
            self.in1 = nn.InstanceNorm2d(c, affine=True)
            self.in2 = nn.InstanceNorm2d(c, affine=True)

        def forward(self, x):
            return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))

    class StyleDecoder(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.res = ResidualBlock(c)
            self.deconv1 = ConvLayer(c, c, 3, 2)
            self.in1 = nn.InstanceNorm2d(c, affine=True)
            self.deconv2 = ConvLayer(c, 4, 3, 2, "bilinear")
            self.in2 = nn.InstanceNorm2d(4)
            self.pad = nn.ZeroPad2d((1, 0, 0, 1))
            self.deconv3 = nn.Conv2d(4, 3, 2)

        def forward(self, x):
            y = torch.relu(self.in1(self.deconv1(torch.relu(self.res(x)))))
            y = torch.relu(self.in2(self.deconv2(y)))
            return torch.tanh(self.deconv3(self.pad(y)))

    return {"mobilenetv3_small": MobileNetV3Small, "efficientnet_mbconv": EfficientNetStage,
            "convnext_block": ConvNeXtStage, "timeseries_cnn": TimeSeriesCNN, "espcn": ESPCN,
            "style_decoder": StyleDecoder}


def twin(name: str, seed: int = 1):
    """The PyTorch twin with random weights (variances in [0.5, 2], so that every batch
    norm matters), in eval mode."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference")
    torch.manual_seed(seed)
    module = twins()[name]()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for key, v in module.state_dict().items():
            if key.endswith("running_var"):
                v.copy_(torch.tensor(rng.uniform(0.5, 2.0, v.shape)))
            elif key.endswith("running_mean"):
                v.copy_(torch.tensor(rng.normal(0, 0.3, v.shape)))
    return module.eval()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("target", TARGETS)
def test_forward_and_gradients_against_torch(name, target):
    model = compiled(name, target)
    rng = np.random.default_rng(2)
    for x in inputs(name):
        ct = rng.standard_normal(np.shape(model(x))).astype(np.float32)
        check_against_torch(model, twin(name), [x], [ct])


# ---------------------------------------------------------------------------- training mode
TRAINING_1D = """import std.nn
model Net {
  features = [
    nn.Conv1d(2, 8, 5, padding = 2, bias = false), nn.BatchNorm1d(8), nn.ReLU, nn.MaxPool1d(2),
    nn.Conv1d(8, 8, 3, padding = 1, bias = false), nn.InstanceNorm1d(8, affine = true),
    nn.PReLU(8), nn.AvgPool1d(2),
    nn.Conv1d(8, 6, 3, padding = 1, bias = false), nn.BatchNorm1d(6), nn.Hardswish,
    nn.AdaptiveAvgPool1d(3),
  ]
  head = [nn.Flatten, nn.Linear(18, 4)]
  forward(x: f32[B, 2, T]) -> f32[B, 4] { return x |> features |> head }
}
"""


def torch_training_1d():
    """TRAINING_1D in PyTorch, in training mode. No convolution before a norm has a bias:
    its gradient would be exactly 0, which no relative error measures."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Module()
    net.features = nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3, padding=1, bias=False), nn.InstanceNorm1d(8, affine=True),
        nn.PReLU(8), nn.AvgPool1d(2),
        nn.Conv1d(8, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6), nn.Hardswish(),
        nn.AdaptiveAvgPool1d(3))
    net.head = nn.Sequential(nn.Flatten(), nn.Linear(18, 4))
    net.forward = lambda x: net.head(net.features(x))
    return randomize_torch(net, 1).train()


# the reference alone: native training-mode batch norm runs in test_grad_nn_models.py's LeNet
# (its native backward graph here is 10 s of LLVM on these 2-core machines; it passed by hand)
@pytest.mark.parametrize("target", ["reference"])
def test_1d_cnn_in_training_mode(target):
    """BatchNorm1d over [N, C, L] with the batch's statistics (the running ones updated),
    InstanceNorm1d, PReLU and the 1-D pools: outputs, gradients and updated buffers."""
    model = kiln.compile(TRAINING_1D, target=target, training=True)
    rng = np.random.default_rng(0)
    for shape in [(4, 2, 24), (3, 2, 20)]:
        x = rng.standard_normal(shape).astype(np.float32)
        ct = rng.standard_normal((shape[0], 4)).astype(np.float32)
        check_against_torch(model, torch_training_1d(), [x], [ct])
