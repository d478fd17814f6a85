"""Whole-model gradients of the convolutional examples: `model.vjp` on every target (reference,
native, onnx) against PyTorch autograd (float64) with the same state_dict, input and cotangent:
LeNet-5, ResNet-18 at a small input (BatchNorm in eval mode), DCGAN's generator and
discriminator, and the U-Net. Relative error at most 1e-4 on every parameter and input
(test_grad_models.check_against_torch); one small input each."""

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


def compiled(source, target: str, model: str | None = None, args: dict | None = None):
    return kiln.compile(source, target=target, seed=0, model=model, args=args)


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
