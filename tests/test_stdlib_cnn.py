"""std.cnn against PyTorch (hand-written torchvision-compatible modules) and numpy.

torchvision does not work here, so the reference ResNet and MobileNetV2 below are written from
torchvision's source (same module tree, so the same state_dict keys, shapes and order). Parity
tests load the torch state_dict strictly into the kiln model and compare with torch run in
float64; only kiln's float32 rounding differs.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import OPTIMIZED, REFERENCE, check_opt_levels, oracle
from _stdlibtest import close, rand

import kiln
from kiln import KilnError

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "stdlib" / "cnn.kiln"
EXAMPLE = ROOT / "examples" / "resnet18.kiln"

# Whole networks stay within it too, so it is used for them as well. Measured: the ResNet-18
# logits (magnitude up to 15) differ from torch in float64 by at most 3.2e-6, MobileNetV2 (width
# 0.5, logits of O(1)) by far less; the ONNX target (onnxruntime on CPU) differs from the
# reference by at most 1.3e-6 on ResNet-18 logits of magnitude 2. The ONNX tests pin the CPU
# provider: a GPU provider may use TF32 convolutions, which these tolerances do not allow for.
ONNX = {"target": "onnx", "providers": ["CPUExecutionProvider"]}

# torchvision's parameter counts (params only, no buffers)
COUNTS = {"ResNet18": 11_689_512, "ResNet34": 21_797_672, "ResNet50": 25_557_032,
          "MobileNetV2": 3_504_872}


# ---------------------------------------------------------------------------- kiln helpers
@functools.cache
def cnn_program():
    return kiln.load(CNN)


@functools.cache
def program(src: str):
    return kiln.load(src)


def compile_src(src: str, model: str | None = None, **kw):
    return kiln.compile(program(src), model=model, **kw, target="reference")


@functools.cache
def std_resnet18():
    """std.cnn's ResNet18 with its initial values (seed 0); tests must not change its weights."""
    return kiln.compile(cnn_program(), model="ResNet18", seed=0, target="reference")


def param_infos(model: str, args: dict | None = None) -> dict:
    """Shape-check only (no initial values): path -> ParamInfo, in declaration order."""
    return cnn_program().elaborate(model, args).params


def only_params(infos: dict) -> dict:
    return {k: v for k, v in infos.items() if v.kind == "param"}


# ---------------------------------------------------------------------------- numpy reference
def ref_conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """torch.nn.functional.conv2d (cross-correlation, zero padding) in float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    w = w.astype(np.float64)
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    og = o // groups
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                out[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def ref_max_pool2(x):
    n, c, h, w = x.shape
    x = x[:, :, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


# ---------------------------------------------------------------------------- torch references
@functools.cache
def torch_refs():
    """torchvision's ResNet and MobileNetV2 module trees, written out (torchvision is absent)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], 2)
            self.layer3 = self._make_layer(block, 256, layers[2], 2)
            self.layer4 = self._make_layer(block, 512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    def make_divisible(v, divisor, min_value=None):
        min_value = divisor if min_value is None else min_value
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    def conv_norm_act(inp, oup, k=3, stride=1, groups=1):  # torchvision's Conv2dNormActivation
        return nn.Sequential(nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [conv_norm_act(inp, hidden, 1)] if expand_ratio != 1 else []
            layers += [conv_norm_act(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=1000, width_mult=1.0):
            super().__init__()
            setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            input_channel = make_divisible(32 * width_mult, 8)
            self.last_channel = make_divisible(1280 * max(1.0, width_mult), 8)
            features = [conv_norm_act(3, input_channel, stride=2)]
            for t, c, n, s in setting:
                output_channel = make_divisible(c * width_mult, 8)
                for i in range(n):
                    features.append(InvertedResidual(input_channel, output_channel,
                                                     s if i == 0 else 1, t))
                    input_channel = output_channel
            features.append(conv_norm_act(input_channel, self.last_channel, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(p=0.2),
                                            nn.Linear(self.last_channel, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return {"torch": torch, "BasicBlock": BasicBlock, "Bottleneck": Bottleneck,
            "ResNet": ResNet, "InvertedResidual": InvertedResidual, "MobileNetV2": MobileNetV2}


def torch_model(name: str, **kw):
    """A torch reference network on the meta device: its state_dict keys and shapes only."""
    r = torch_refs()
    torch = r["torch"]
    with torch.device("meta"):
        if name == "MobileNetV2":
            return r["MobileNetV2"](**kw)
        block, layers = {"ResNet18": ("BasicBlock", [2, 2, 2, 2]),
                         "ResNet34": ("BasicBlock", [3, 4, 6, 3]),
                         "ResNet50": ("Bottleneck", [3, 4, 6, 3])}[name]
        return r["ResNet"](r[block], layers, **kw)


def randomize_bn(module, seed: int) -> None:
    """Random batch-norm statistics and affine terms, so that every BN term matters."""
    torch = torch_refs()["torch"]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # 1d and 2d
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def scaled_random_weights(params: dict, rng) -> dict[str, np.ndarray]:
    """Random weights that keep activations of O(1): N(0, 2 / fan_in) for conv and linear
    weights, random batch-norm statistics and affine terms."""
    out = {}
    for k, v in params.items():
        leaf = k.rsplit(".", 1)[1]
        if v.dtype.kind != "f":
            out[k] = v
        elif v.ndim >= 2:
            out[k] = rng.normal(0, math.sqrt(2 / math.prod(v.shape[1:])), v.shape)
        elif leaf in ("weight", "running_var"):
            out[k] = rng.uniform(0.5, 1.5, v.shape)
        else:
            out[k] = rng.normal(0, 0.1, v.shape)
        out[k] = out[k].astype(v.dtype)
    return out


def state(module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


def torch_run64(module, x: np.ndarray) -> np.ndarray:
    torch = torch_refs()["torch"]
    m64 = module.double().eval()
    with torch.no_grad():
        y = m64(torch.from_numpy(x.astype(np.float64))).numpy()
    module.float()
    return y


# ---------------------------------------------------------------------------- names and counts
@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_count_is_torchvisions(name):
    infos = only_params(param_infos(name))
    assert sum(math.prod(p.shape) for p in infos.values()) == COUNTS[name]


@pytest.mark.parametrize("name", list(COUNTS))
def test_state_dict_keys_shapes_and_order_are_torchvisions(name):
    ref = torch_model(name).state_dict()
    infos = param_infos(name)
    assert list(infos) == list(ref)  # same keys, same order (buffers included)
    for k, v in ref.items():
        assert infos[k].shape == tuple(v.shape), k
        assert infos[k].kind == ("buffer" if k.split(".")[-1].startswith(("running", "num_"))
                                 else "param"), k


def test_resnet_names_spot_checks():
    infos = param_infos("ResNet18")
    for k in ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
              "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.running_var", "fc.weight", "fc.bias"]:
        assert k in infos, k
    assert "layer1.0.downsample.0.weight" not in infos  # layer1 keeps 64 channels: identity
    assert infos["bn1.num_batches_tracked"].dtype == "i64"
    r50 = param_infos("ResNet50")
    assert "layer1.0.downsample.0.weight" in r50  # 64 -> 256 needs a projection
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # the stride is on conv2


def test_resnet_block_generic_forms():
    """ResNeXt-50 32x4d through ResNet's groups/width_per_group (torchvision: 25,028,904), and a
    block with arguments bound, whose const `expansion` ResNet still reads."""
    src = ("import std.cnn: ResNet, Bottleneck\nmodel M {\n  net = ResNet(BLOCK)\n"
           "  forward(x: f32[B, 3, H, W]) -> f32[B, 1000] {\n    return net(x)\n  }\n}\n")
    infos = program(src.replace("BLOCK", "Bottleneck, [3, 4, 6, 3], groups = 32, width_per_group = 4")).elaborate().params
    assert sum(math.prod(p.shape) for p in only_params(infos).values()) == 25_028_904
    assert infos["net.layer1.0.conv2.weight"].shape == (128, 4, 3, 3)  # width 128, 32 groups
    infos = program(src.replace("BLOCK", "Bottleneck(base_width = 32), [1, 1, 1, 1]")).elaborate().params
    assert infos["net.fc.weight"].shape == (1000, 2048)


def test_mobilenet_v2_width_half_matches_torch_names():
    ref = torch_model("MobileNetV2", width_mult=0.5, num_classes=10).state_dict()
    infos = param_infos("MobileNetV2", {"width_mult": 0.5, "num_classes": 10})
    assert {k: v.shape for k, v in infos.items()} == {k: tuple(v.shape) for k, v in ref.items()}


# ---------------------------------------------------------------------------- init statistics
def test_resnet_init_is_torchvisions():
    m = std_resnet18()
    p = m.params
    infos = m.model.params
    convs = [k for k, v in infos.items() if v.owner == "Conv2d"]
    assert len(convs) == 20  # 1 stem + 16 in the blocks + 3 downsample
    for k in ["conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight",
              "layer3.0.downsample.0.weight"]:
        w = p[k]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        std = math.sqrt(2.0 / fan_out)  # kaiming_normal, mode fan_out, gain sqrt(2)
        assert abs(w.mean()) < 4 * std / math.sqrt(w.size), k
        assert w.std() == pytest.approx(std, rel=6 / math.sqrt(w.size) + 0.01), k
    for k, v in infos.items():
        if v.owner == "BatchNorm2d":
            leaf = k.rsplit(".", 1)[1]
            want = {"weight": 1, "bias": 0, "running_mean": 0, "running_var": 1,
                    "num_batches_tracked": 0}[leaf]
            assert np.all(p[k] == want), k
    bound = 1 / math.sqrt(512)  # the Linear keeps PyTorch's default U(±1/sqrt(fan_in))
    assert np.abs(p["fc.weight"]).max() <= bound
    assert p["fc.weight"].std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert np.abs(p["fc.bias"]).max() <= bound


def test_mobilenet_v2_init_is_torchvisions():
    m = kiln.compile(cnn_program(), model="MobileNetV2", seed=1, target="reference")
    p = m.params
    w = p["features.18.0.weight"]  # [1280, 320, 1, 1]
    assert w.std() == pytest.approx(math.sqrt(2 / 1280), rel=0.01)
    w = p["features.2.conv.1.0.weight"]  # depthwise [96, 1, 3, 3]: fan_out = 96 * 9
    assert w.std() == pytest.approx(math.sqrt(2 / (96 * 9)), rel=0.1)
    assert p["classifier.1.weight"].std() == pytest.approx(0.01, rel=0.01)
    assert np.all(p["classifier.1.bias"] == 0)
    assert np.all(p["features.0.1.weight"] == 1) and np.all(p["features.0.1.bias"] == 0)


def test_init_is_deterministic():
    a = kiln.compile(cnn_program(), model="MobileNetV2", seed=5, args={"width_mult": 0.5}, target="reference")
    b = kiln.compile(cnn_program(), model="MobileNetV2", seed=5, args={"width_mult": 0.5}, target="reference")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


# ---------------------------------------------------------------------------- small blocks
def test_vgg_block_against_numpy():
    src = "import std.cnn\nmodel M {\n  forward(x: f32[N, 3, H, W]) {\n    return x |> cnn.VGGBlock(3, 8, 2)\n  }\n}\n"
    m = compile_src(src, seed=2)
    p = m.params
    assert list(p) == ["0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias"]
    rng = np.random.default_rng(0)
    for n, h, w in [(1, 8, 8), (2, 7, 10)]:  # odd sizes: the pool floors
        x = rand(rng, n, 3, h, w)
        y = np.maximum(ref_conv2d(x, p["0.0.weight"], p["0.0.bias"], padding=1), 0)
        y = np.maximum(ref_conv2d(y, p["0.2.weight"], p["0.2.bias"], padding=1), 0)
        close(m(x), ref_max_pool2(y))


def test_vgg_block_names_are_d2ls_sequential():
    torch = torch_refs()["torch"]
    nn = torch.nn
    ref = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    src = "import std.cnn\nmodel M {\n  vgg = cnn.VGGBlock(4, 8, 3)\n  forward(x: f32[N, 4, H, W]) {\n    return x |> vgg\n  }\n}\n"
    m = compile_src(src)
    m.load_weights(state(ref, "vgg."))
    x = rand(np.random.default_rng(1), 2, 4, 6, 6)
    close(m(x), torch_run64(ref, x))


def test_depthwise_separable_against_numpy():
    src = "import std.cnn\nmodel M {\n  forward(x: f32[N, 6, H, W]) {\n    return x |> sep: cnn.DepthwiseSeparableConv2d(6, 10, stride = 2)\n  }\n}\n"
    m = compile_src(src, seed=4)
    p = m.params
    assert {k: v.shape for k, v in p.items()} == {
        "sep.depthwise.weight": (6, 1, 3, 3), "sep.depthwise.bias": (6,),
        "sep.pointwise.weight": (10, 6, 1, 1), "sep.pointwise.bias": (10,)}
    rng = np.random.default_rng(3)
    for n, h, w in [(1, 8, 8), (3, 9, 5)]:
        x = rand(rng, n, 6, h, w)
        y = ref_conv2d(x, p["sep.depthwise.weight"], p["sep.depthwise.bias"], stride=2,
                       padding=1, groups=6)
        close(m(x), ref_conv2d(y, p["sep.pointwise.weight"], p["sep.pointwise.bias"]))


def test_depthwise_separable_against_torch():
    torch = torch_refs()["torch"]
    nn = torch.nn

    class Sep(nn.Module):
        def __init__(self):
            super().__init__()
            self.depthwise = nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False)
            self.pointwise = nn.Conv2d(4, 7, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    ref = Sep()
    src = "import std.cnn\nmodel M {\n  sep = cnn.DepthwiseSeparableConv2d(4, 7, 5, padding = 2, bias = false)\n  forward(x: f32[N, 4, H, W]) {\n    return sep(x)\n  }\n}\n"
    m = compile_src(src)
    m.load_weights(state(ref, "sep."))
    x = rand(np.random.default_rng(2), 2, 4, 9, 9)
    close(m(x), torch_run64(ref, x))


def test_lenet5_against_torch():
    torch = torch_refs()["torch"]
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(400, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
            x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
            x = torch.tanh(self.fc2(torch.tanh(self.fc1(torch.flatten(x, 1)))))
            return self.fc3(x)

    ref = Net()
    m = kiln.compile(cnn_program(), model="LeNet5", target="reference")
    assert list(m.params) == list(ref.state_dict())
    m.load_weights(state(ref))
    rng = np.random.default_rng(5)
    for b in (1, 3):
        x = rand(rng, b, 1, 32, 32)
        close(m(x), torch_run64(ref, x))


def test_inverted_residual_against_torch():
    r = torch_refs()
    src = ("import std.cnn\nmodel M {\n"
           "  a = cnn.InvertedResidual(8, 8, 1, 6)\n"     # expansion, residual
           "  b = cnn.InvertedResidual(8, 12, 2, 6)\n"    # expansion, strided, no residual
           "  c = cnn.InvertedResidual(12, 12, 1, 1)\n"   # no expansion, residual
           "  forward(x: f32[N, 8, H, W]) {\n    return x |> a |> b |> c\n  }\n}\n")
    torch = r["torch"]
    ref = torch.nn.Module()
    ref.a = r["InvertedResidual"](8, 8, 1, 6)
    ref.b = r["InvertedResidual"](8, 12, 2, 6)
    ref.c = r["InvertedResidual"](12, 12, 1, 1)
    ref.forward = lambda x: ref.c(ref.b(ref.a(x)))
    randomize_bn(ref, 0)
    m = compile_src(src)
    assert list(m.params) == list(ref.state_dict())
    assert "c.conv.0.0.weight" in m.params and "c.conv.2.running_var" in m.params
    m.load_weights(state(ref))
    x = rand(np.random.default_rng(4), 2, 8, 9, 9) * 20  # large enough for ReLU6 to clip
    with torch.no_grad():
        want = ref.double().eval()(torch.from_numpy(x.astype(np.float64))).numpy()
    close(m(x), want)


# ---------------------------------------------------------------------------- whole networks
def resnet_parity(m, ref, prefix, sizes, seed):
    randomize_bn(ref, seed)
    m.load_weights(state(ref, prefix))  # strict: every key must match
    rng = np.random.default_rng(seed)
    for b, h, w in sizes:
        x = rand(rng, b, 3, h, w)
        want = torch_run64(ref, x)
        close(m(x), want)


def test_resnet18_against_torch():
    r = torch_refs()
    r["torch"].manual_seed(0)
    ref = r["ResNet"](r["BasicBlock"], [2, 2, 2, 2])
    m = kiln.compile(cnn_program(), model="ResNet18", target="reference")
    resnet_parity(m, ref, "", [(1, 64, 64), (2, 48, 40)], 0)


def test_bottleneck_resnet_against_torch():
    r = torch_refs()
    r["torch"].manual_seed(1)
    ref = r["ResNet"](r["Bottleneck"], [1, 1, 1, 1], num_classes=10)
    src = ("import std.cnn: ResNet, Bottleneck\nmodel M {\n  net = ResNet(Bottleneck, [1, 1, 1, 1], num_classes = 10)\n"
           "  forward(x: f32[B, 3, H, W]) -> f32[B, 10] {\n    return net(x)\n  }\n}\n")
    m = compile_src(src)
    resnet_parity(m, ref, "net.", [(1, 64, 64), (2, 64, 64)], 1)


def test_mobilenet_v2_against_torch():
    r = torch_refs()
    r["torch"].manual_seed(2)
    ref = r["MobileNetV2"](num_classes=10, width_mult=0.5)
    with r["torch"].no_grad():  # He-scaled weights: ReLU6 clips somewhere, logits are O(1)
        for mod in ref.modules():
            if isinstance(mod, (r["torch"].nn.Conv2d, r["torch"].nn.Linear)):
                mod.weight.normal_(0, math.sqrt(2 / math.prod(mod.weight.shape[1:])))
    m = kiln.compile(cnn_program(), model="MobileNetV2", args={"num_classes": 10, "width_mult": 0.5}, target="reference")
    resnet_parity(m, ref, "", [(1, 32, 32), (2, 40, 32)], 2)


def test_strict_loading_rejects_a_missing_key():
    r = torch_refs()
    ref = r["ResNet"](r["BasicBlock"], [2, 2, 2, 2])
    sd = state(ref)
    del sd["layer2.0.downsample.1.running_var"]
    sd["fc.extra"] = np.zeros(3, np.float32)
    m = std_resnet18()
    before = m.params["fc.weight"].copy()
    with pytest.raises(KilnError) as e:
        m.load_weights(sd)
    assert e.value.code == "K0401"
    assert "layer2.0.downsample.1.running_var" in str(e.value) and "fc.extra" in str(e.value)
    np.testing.assert_array_equal(m.params["fc.weight"], before)  # nothing was loaded


# ---------------------------------------------------------------------------- the example
def test_example_resnet18_checks():
    result = subprocess.run([sys.executable, "-m", "kiln.cli", "check", str(EXAMPLE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ResNet18: ok" in result.stdout
    assert "x: f32[B, 3, 224, 224]" in result.stdout and "f32[B, 1000]" in result.stdout


def test_example_resnet18_is_std_cnns_resnet18():
    """Same names, shapes and initial values (a pure function of seed and path) as std.cnn's."""
    ex = kiln.compile(EXAMPLE, seed=0, target="reference")
    std = std_resnet18()
    assert list(ex.params) == list(std.params)
    for k, v in std.params.items():
        np.testing.assert_array_equal(ex.params[k], v, err_msg=k)
    x = rand(np.random.default_rng(0), 1, 3, 224, 224)
    np.testing.assert_array_equal(ex(x), std(x))


# ---------------------------------------------------------------------------- ONNX target
def test_onnx_resnet18_agrees_with_reference():
    """ResNet-18 exported to ONNX (symbolic B, H, W) at two batch sizes, small images."""
    pytest.importorskip("onnxruntime")
    t0 = time.perf_counter()
    ref = oracle(cnn_program(), model="ResNet18", seed=0)
    onnx = kiln.compile(cnn_program(), model="ResNet18", seed=0, **ONNX)
    rng = np.random.default_rng(11)
    for b, h, w in [(1, 32, 32), (2, 48, 40)]:
        x = rand(rng, b, 3, h, w)
        close(onnx(x), ref(x))
    assert time.perf_counter() - t0 < 30


def test_onnx_mobilenet_v2_agrees_with_reference():
    pytest.importorskip("onnxruntime")
    args = {"num_classes": 10, "width_mult": 0.5}
    ref = oracle(cnn_program(), model="MobileNetV2", seed=12, args=args)
    onnx = kiln.compile(cnn_program(), model="MobileNetV2", seed=12, args=args, **ONNX)
    # torchvision's init (kaiming fan_out on depthwise convs, a N(0, 0.01) classifier) shrinks
    # the untrained logits to ~1e-8; load weights that keep activations of O(1) instead
    weights = scaled_random_weights(ref.params, np.random.default_rng(12))
    ref.load_weights(weights)
    onnx.load_weights(weights)
    rng = np.random.default_rng(12)
    for b in (1, 2):
        x = rand(rng, b, 3, 32, 32)
        # 53 layers of f32 summed in two orders: measured up to 1.8e-5 apart on logits of 2.5
        # (4.6e-6 beyond rtol 1e-5), so atol is 5e-5 here
        close(onnx(x), ref(x), atol=5e-5)


# ---------------------------------------------------------------------------- -O0 vs -O1
# std.cnn's networks, small (ResNet-18 on native code is examples/resnet18.kiln's sweep): each
# block type, BatchNorm after every convolution (folded at -O1), 32x32 images
SMALL_CNNS = """
import std.cnn
model Basic() = cnn.ResNet(cnn.BasicBlock, [1, 1, 1, 1], 10)
model Bottleneck() = cnn.ResNet(cnn.Bottleneck, [1, 1, 1, 1], 10, 1, 16)
model MobileNet() = cnn.MobileNetV2(10, 0.5)
model LeNet() = cnn.LeNet5()
"""


@pytest.mark.parametrize("model, targets", [
    ("Basic", REFERENCE), ("Bottleneck", REFERENCE), ("MobileNet", REFERENCE),
    ("LeNet", OPTIMIZED)])
def test_optimized_targets_match_the_unoptimized_reference(model, targets):
    check_opt_levels(program(SMALL_CNNS), model, sizes={"H": 32, "W": 32}, targets=targets)
