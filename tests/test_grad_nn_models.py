"""Whole-model gradients of the convolutional examples: `model.vjp` on every target (reference,
native, onnx) against PyTorch autograd (float64) with the same state_dict, input and cotangent:
LeNet-5, ResNet-18 at a small input (BatchNorm in eval mode), DCGAN's generator and
discriminator, and the U-Net; in training mode (BatchNorm's batch statistics, the running
statistics updated), a LeNet with BatchNorm (reference and native) and ResNet-18 (reference).
Relative error at most 1e-4 on every parameter and input (test_grad_models.check_against_torch);
one small input each."""

from __future__ import annotations

import numpy as np
import pytest
from test_grad_models import EXAMPLES, TARGETS, check_against_torch
from test_stdlib_cnn import cnn_program, randomize_bn
from test_stdlib_cnn import torch_refs as cnn_refs
from test_stdlib_gan import gan_program, rescale_convs, torch_net

import kiln

torch = pytest.importorskip("torch", reason="PyTorch autograd is the gradient reference")
nn = torch.nn


def inputs_and_cotangent(model, *shape, seed=0):
    """A random input of `shape` and a random cotangent of the model's output for it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y = model(x)
    return [x], [rng.standard_normal(np.shape(y)).astype(np.float32)]


def compiled(source, target: str, model: str | None = None, args: dict | None = None,
             training: bool = False):
    return kiln.compile(source, target=target, seed=0, model=model, args=args,
                        training=training)


# ---------------------------------------------------------------------------- LeNet-5
def torch_lenet():
    """examples/lenet.kiln in PyTorch: features and classifier numbered as its lists."""
    torch.manual_seed(0)
    net = nn.Module()
    net.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                 nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
    net.classifier = nn.Sequential(nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84),
                                   nn.Tanh(), nn.Linear(84, 10))
    net.forward = lambda x: net.classifier(torch.flatten(net.features(x), 1))
    return net


@pytest.mark.parametrize("target", TARGETS)
def test_lenet(target):
    model = compiled(EXAMPLES / "lenet.kiln", target)
    check_against_torch(model, torch_lenet(), *inputs_and_cotangent(model, 2, 1, 28, 28))


# ---------------------------------------------------------------------------- ResNet-18
@pytest.mark.parametrize("target", TARGETS)
def test_resnet18_eval_mode(target):
    """std.cnn's ResNet18 (examples/resnet18.kiln is the same network at 224x224) at 32x32."""
    refs = cnn_refs()
    torch.manual_seed(0)
    net = refs["ResNet"](refs["BasicBlock"], [2, 2, 2, 2], num_classes=10)
    randomize_bn(net, 0)
    model = compiled(cnn_program(), target, model="ResNet18", args={"num_classes": 10})
    check_against_torch(model, net.eval(), *inputs_and_cotangent(model, 1, 3, 32, 32))


# ---------------------------------------------------------------------------- training mode
LENET_BN = """
import std.nn
model LeNetBN {
  features = [
    nn.Conv2d(1, 6, 5, padding = 2, bias = false), nn.BatchNorm2d(6), tanh, nn.AvgPool2d(2),
    nn.Conv2d(6, 16, 5, bias = false), nn.BatchNorm2d(16, momentum = 0.3), tanh, nn.AvgPool2d(2),
  ]
  classifier = [
    nn.Linear(400, 120, bias = false), nn.BatchNorm1d(120), tanh,
    nn.Linear(120, 84), tanh,
    nn.Linear(84, 10),
  ]
  forward(x: f32[B, 1, 28, 28]) -> f32[B, 10] { return x |> features |> flatten |> classifier }
}
"""


def torch_lenet_bn():
    """LENET_BN in PyTorch. The layers before a BatchNorm have no bias: in training mode its
    gradient is exactly 0 (the batch mean takes it out), which no relative error measures."""
    torch.manual_seed(0)
    net = nn.Module()
    net.features = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16, momentum=0.3), nn.Tanh(),
        nn.AvgPool2d(2))
    net.classifier = nn.Sequential(nn.Linear(400, 120, bias=False), nn.BatchNorm1d(120),
                                   nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    net.forward = lambda x: net.classifier(torch.flatten(net.features(x), 1))
    randomize_bn(net, 2)
    return net.train()


@pytest.mark.parametrize("target", ["reference", "native"])
def test_lenet_with_batch_norm_in_training_mode(target):
    model = compiled(LENET_BN, target, training=True)
    assert len(model.updates) == 9  # three BatchNorms: mean, variance, count
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 1, 28, 28)), rng.standard_normal((4, 10))
    check_against_torch(model, torch_lenet_bn(), [x.astype(np.float32)],
                        [dy.astype(np.float32)])


# reference only: its native backward graph is 2,100 kernels, over three minutes of LLVM on
# these shared 2-core machines (it passed when run by hand); the native train-mode BatchNorm,
# conv, pooling and residual rules run in the LeNet above and the eval-mode ResNet-18
def test_resnet18_training_mode(target="reference"):
    """Batch 2 at 64x64: the last stage's BatchNorms see 2x2 positions of 2 images. (At 32x32
    they would see one position per image: batch 1 has no batch variance there, PyTorch and
    kiln refuse it; with so few values batch statistics amplify rounding beyond 1e-4 even in
    PyTorch's own float32.)

    The seeds matter: of the ~10^6 ReLU inputs, most seeds put one within float32 rounding of
    0 (seeds 0 and 5 by 3e-7 and 7e-6), where the float32 forward can land on the other side
    of the kink than torch's float64 one; that element's cotangent then moves its channel's
    gradients by up to 20 %, every other channel agreeing to 1e-7. These seeds have no ReLU
    input that close to 0 that flips."""
    refs = cnn_refs()
    torch.manual_seed(1)
    net = refs["ResNet"](refs["BasicBlock"], [2, 2, 2, 2], num_classes=10)
    randomize_bn(net, 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    dy = rng.standard_normal((2, 10)).astype(np.float32)
    model = compiled(cnn_program(), target, model="ResNet18", args={"num_classes": 10},
                     training=True)
    check_against_torch(model, net.train(), [x], [dy])


# ---------------------------------------------------------------------------- DCGAN
@pytest.mark.parametrize("target", TARGETS)
def test_dcgan_generator(target):
    net = torch_net("Generator", 0, nz=8, ngf=4, nc=3)
    rescale_convs(net)
    model = compiled(EXAMPLES / "dcgan.kiln", target, args={"nz": 8, "ngf": 4})
    check_against_torch(model, net, *inputs_and_cotangent(model, 2, 8, 1, 1))


@pytest.mark.parametrize("target", TARGETS)
def test_dcgan_discriminator(target):
    net = torch_net("Discriminator", 0, ndf=4, nc=3)
    rescale_convs(net)
    model = compiled(gan_program(), target, model="Discriminator", args={"ndf": 4})
    check_against_torch(model, net, *inputs_and_cotangent(model, 2, 3, 64, 64))


# ---------------------------------------------------------------------------- U-Net
class DoubleConv(nn.Module):
    """examples/unet.kiln's DoubleConv: two 3x3 convolutions, each with BatchNorm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class UNet(nn.Module):
    """examples/unet.kiln's UNet, its parameters named as the kiln model's."""

    def __init__(self, in_channels=3, classes=2, width=4):
        super().__init__()
        self.enc1, self.enc2 = DoubleConv(in_channels, width), DoubleConv(width, 2 * width)
        self.bottleneck = DoubleConv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = DoubleConv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = DoubleConv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        pool = nn.functional.max_pool2d
        s1 = self.enc1(x)
        s2 = self.enc2(pool(s1, 2))
        h = self.bottleneck(pool(s2, 2))
        h = self.dec2(torch.cat([self.up2(h), s2], 1))
        h = self.dec1(torch.cat([self.up1(h), s1], 1))
        return self.head(h)


@pytest.mark.parametrize("target", TARGETS)
def test_unet(target):
    model = compiled(EXAMPLES / "unet.kiln", target, args={"width": 4})
    torch.manual_seed(0)
    net = UNet()
    randomize_bn(net, 1)
    check_against_torch(model, net.eval(), *inputs_and_cotangent(model, 1, 3, 8, 12))
