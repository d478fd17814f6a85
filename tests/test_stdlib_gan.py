"""std.gan (DCGAN) against the PyTorch DCGAN tutorial's modules, written out here.

The torch Generator and Discriminator are the tutorial's (one nn.Sequential `main` each), so
their state_dicts load strictly into the kiln models; outputs are compared with torch run in
float64.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _crosscheck import OPTIMIZED, REFERENCE, check_opt_levels, oracle
from _stdlibtest import close, rand

import kiln

ROOT = Path(__file__).resolve().parent.parent
GAN = ROOT / "stdlib" / "gan.kiln"
EXAMPLE = ROOT / "examples" / "dcgan.kiln"

ONNX = {"target": "onnx", "providers": ["CPUExecutionProvider"]}  # no TF32 on a GPU provider

G_COUNT, D_COUNT = 3_576_704, 2_765_568  # the tutorial's nz=100, ngf=ndf=64, nc=3


@functools.cache
def gan_program():
    return kiln.load(GAN)


@functools.cache
def compiled(model: str, seed: int = 0, **args):
    """The default-size networks with their initial values; tests must not change them."""
    return kiln.compile(gan_program(), model=model, seed=seed, args=args or None, target="reference")


@functools.cache
def torch_refs():
    """The DCGAN tutorial's Generator and Discriminator (ngpu dropped) and its weights_init."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Generator(nn.Module):
        def __init__(self, nz=100, ngf=64, nc=3):
            super().__init__()
            self.main = nn.Sequential(
                nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
                nn.BatchNorm2d(ngf * 8),
                nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 4),
                nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 2),
                nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf),
                nn.ReLU(True),
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
                nn.Tanh())

        def forward(self, x):
            return self.main(x)

    class Discriminator(nn.Module):
        def __init__(self, nc=3, ndf=64):
            super().__init__()
            self.main = nn.Sequential(
                nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 2),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 4),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ndf * 8),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
                nn.Sigmoid())

        def forward(self, x):
            return self.main(x)

    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    return torch, Generator, Discriminator, weights_init


def torch_net(name: str, seed: int, **kw):
    """The tutorial's network with weights_init, random BN statistics, in eval mode."""
    torch, gen, disc, weights_init = torch_refs()
    torch.manual_seed(seed)
    net = (gen if name == "Generator" else disc)(**kw)
    net.apply(weights_init)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(3)
    return net.eval()


def rescale_convs(net) -> None:
    """He-scaled conv weights, N(0, 2 / fan_in): the DCGAN init's N(0, 0.02) leaves outputs of
    ~0.05, where an absolute tolerance would say little; these give outputs of O(1)."""
    torch = torch_refs()[0]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, math.sqrt(2 / (m.weight.shape[1] * 16)))
            elif isinstance(m, torch.nn.ConvTranspose2d):  # a stride-2 4x4 kernel: 4 taps a pixel
                taps = 16 if m.stride[0] == 1 else 4
                m.weight.normal_(0, math.sqrt(2 / (m.weight.shape[0] * taps)))


def state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def torch_run64(net, x: np.ndarray) -> np.ndarray:
    torch = torch_refs()[0]
    with torch.no_grad():
        y = net.double()(torch.from_numpy(x.astype(np.float64))).numpy()
    net.float()
    return y


def count(m) -> int:
    return sum(v.size for k, v in m.params.items() if m.model.params[k].kind == "param")


# ---------------------------------------------------------------------------- shapes and names
def test_signatures():
    g, d = compiled("Generator"), compiled("Discriminator")
    assert g.signature() == "Generator(z: f32[B, 100, 1, 1]) -> f32[B, 3, 64, 64]"
    assert d.signature() == "Discriminator(x: f32[B, 3, 64, 64]) -> f32[B, 1, 1, 1]"
    rng = np.random.default_rng(0)
    for b in (1, 3):
        img = g(rand(rng, b, 100, 1, 1))
        assert img.shape == (b, 3, 64, 64) and np.all(np.abs(img) <= 1)  # tanh
        p = d(img)
        assert p.shape == (b, 1, 1, 1) and np.all((p > 0) & (p < 1))  # sigmoid


def test_counts_are_the_tutorials():
    assert count(compiled("Generator")) == G_COUNT
    assert count(compiled("Discriminator")) == D_COUNT


@pytest.mark.parametrize("name", ["Generator", "Discriminator"])
def test_names_and_shapes_are_the_tutorials(name):
    ref = torch_net(name, 0).state_dict()
    m = compiled(name)
    assert list(m.params) == list(ref)  # main.0.weight, main.1.weight, ..., in order
    assert {k: v.shape for k, v in m.params.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert sum(v.numel() for k, v in ref.items() if "running" not in k and "num_" not in k) == \
        (G_COUNT if name == "Generator" else D_COUNT)


def test_other_sizes_match_torch_names():
    args = {"nz": 16, "ngf": 8, "nc": 1}
    ref = torch_net("Generator", 0, **args).state_dict()
    m = kiln.compile(gan_program(), model="Generator", args=args, target="reference")
    assert {k: v.shape for k, v in m.params.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert m.signature() == "Generator(z: f32[B, 16, 1, 1]) -> f32[B, 1, 64, 64]"


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["Generator", "Discriminator"])
def test_against_torch(name):
    args = {"nz": 32, "ngf": 16, "nc": 3} if name == "Generator" else {"nc": 3, "ndf": 16}
    net = torch_net(name, 1, **args)
    rescale_convs(net)
    m = kiln.compile(gan_program(), model=name, args=args, target="reference")
    m.load_weights(state(net))  # strict: every key must match
    rng = np.random.default_rng(1)
    for b in (1, 2):
        x = rand(rng, b, 32, 1, 1) if name == "Generator" else rand(rng, b, 3, 64, 64)
        close(m(x), torch_run64(net, x))


def test_default_size_generator_against_torch():
    net = torch_net("Generator", 2)
    rescale_convs(net)
    m = kiln.compile(gan_program(), model="Generator", target="reference")
    m.load_weights(state(net))
    x = rand(np.random.default_rng(2), 2, 100, 1, 1)
    close(m(x), torch_run64(net, x))


# ---------------------------------------------------------------------------- init
@pytest.mark.parametrize("name", ["Generator", "Discriminator"])
def test_dcgan_init(name):
    m = compiled(name)
    infos = m.model.params
    for k, v in m.params.items():
        owner, leaf = infos[k].owner, k.rsplit(".", 1)[1]
        if owner in ("ConvTranspose2d", "Conv2d"):  # N(0, 0.02)
            assert abs(v.mean()) < 5 * 0.02 / math.sqrt(v.size), k
            assert v.std() == pytest.approx(0.02, rel=max(0.03, 6 / math.sqrt(v.size))), k
        elif leaf == "weight":  # batch norm weight: N(1, 0.02)
            assert v.mean() == pytest.approx(1.0, abs=5 * 0.02 / math.sqrt(v.size)), k
            assert v.std() == pytest.approx(0.02, rel=0.25), k  # 64 to 512 samples
        elif leaf in ("bias", "running_mean", "num_batches_tracked"):
            assert np.all(v == 0), k
        elif leaf == "running_var":
            assert np.all(v == 1), k
    convs = [v for k, v in m.params.items() if infos[k].owner.endswith("2d") and v.ndim == 4]
    allw = np.concatenate([v.ravel() for v in convs])  # millions of samples: within 1%
    assert allw.std() == pytest.approx(0.02, rel=0.01)
    bnw = np.concatenate([v for k, v in m.params.items()
                          if infos[k].owner == "BatchNorm2d" and k.endswith(".weight")])
    assert bnw.mean() == pytest.approx(1.0, abs=0.003)
    assert bnw.std() == pytest.approx(0.02, rel=0.1)


# ---------------------------------------------------------------------------- the example
def test_example_dcgan_checks_and_is_std_gans_generator():
    result = subprocess.run([sys.executable, "-m", "kiln.cli", "check", str(EXAMPLE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Generator: ok" in result.stdout and "f32[B, 3, 64, 64]" in result.stdout
    ex = kiln.compile(EXAMPLE, seed=0, target="reference")
    std = compiled("Generator")
    assert list(ex.params) == list(std.params)
    for k, v in std.params.items():  # initial values are a function of (seed, path, init)
        np.testing.assert_array_equal(ex.params[k], v, err_msg=k)
    z = rand(np.random.default_rng(3), 2, 100, 1, 1)
    np.testing.assert_array_equal(ex(z), std(z))


# ---------------------------------------------------------------------------- ONNX target
@pytest.mark.parametrize("name", ["Generator", "Discriminator"])
def test_onnx_agrees_with_reference(name):
    pytest.importorskip("onnxruntime")
    ref = oracle(gan_program(), model=name, seed=4)
    onnx = kiln.compile(gan_program(), model=name, seed=4, **ONNX)
    rng = np.random.default_rng(4)
    for b in (1, 3):
        x = rand(rng, b, 100, 1, 1) if name == "Generator" else rand(rng, b, 3, 64, 64)
        close(onnx(x), ref(x))


# ---------------------------------------------------------------------------- -O0 vs -O1
# (examples/dcgan.kiln's sweep runs the Generator on native code)
@pytest.mark.parametrize("name, args, targets", [("Generator", {"nz": 16, "ngf": 8}, REFERENCE),
                                                 ("Discriminator", {"ndf": 8}, OPTIMIZED)])
def test_optimized_targets_match_the_unoptimized_reference(name, args, targets):
    check_opt_levels(gan_program(), name, args=args, targets=targets)
