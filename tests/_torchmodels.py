"""Small PyTorch models for the ONNX import tests (issue 17), and their export.

Each case: a module, example inputs, and the dynamic axes of its first input (None: exported
with fixed sizes; a model whose graph computes shapes from a symbolic size needs symbolic
shape values, which the importer does not fold yet).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, padding=2)
        self.conv2 = nn.Conv2d(4, 8, 5)
        self.fc1 = nn.Linear(8 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 8, num_layers=1, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, h = self.rnn(x)
        return self.fc(h[-1])


class GCN(nn.Module):
    """Two graph convolutions written with gather and index_add (scatter-add)."""
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(5, 8)
        self.lin2 = nn.Linear(8, 3)

    def propagate(self, h, src, dst):
        msgs = h.index_select(0, src)
        index = dst.unsqueeze(1).expand(-1, h.shape[1])
        return torch.zeros_like(h).scatter_add(0, index, msgs) + h

    def forward(self, x, src, dst):
        h = torch.relu(self.propagate(self.lin1(x), src, dst))
        return self.propagate(self.lin2(h), src, dst)


class Generator(nn.Module):
    """DCGAN's generator, small."""
    def __init__(self, nz=8, ngf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class EncoderLayer(nn.Module):
    """A post-norm Transformer encoder layer (as nn.TransformerEncoderLayer computes it), with
    nn.MultiheadAttention: the TorchScript exporter of torch 2.13 cannot trace the layer
    itself (it passes is_causal as a tensor)."""
    def __init__(self, d=16, heads=4, ff=32):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x):
        a, _ = self.self_attn(x, x, x, need_weights=False)
        x = self.norm1(x + a)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


def cases():
    torch.manual_seed(0)
    enc = EncoderLayer()
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    n_nodes, n_edges = 7, 12
    g = torch.Generator().manual_seed(1)
    return {
        "mlp": (mlp, (torch.randn(3, 8),), {0: "batch"}),
        "lenet": (LeNet(), (torch.randn(2, 1, 28, 28),), {0: "batch"}),
        "resnet": (ResNet(), (torch.randn(2, 3, 16, 16),), {0: "batch"}),
        "lstm": (LSTM(), (torch.randn(2, 5, 6),), {0: "batch"}),
        "gru": (GRU(), (torch.randn(2, 5, 6),), {0: "batch"}),
        "transformer": (enc, (torch.randn(2, 5, 16),), {0: "batch"}),
        "gcn": (GCN(), (torch.randn(n_nodes, 5), torch.randint(0, n_nodes, (n_edges,), generator=g),
                        torch.randint(0, n_nodes, (n_edges,), generator=g)), None),
        "dcgan": (Generator(), (torch.randn(2, 8, 1, 1),), {0: "batch"}),
        # two layers: `kiln import` writes the layer once, as a block called twice
        "transformer2": (nn.Sequential(EncoderLayer(), EncoderLayer()),
                         (torch.randn(2, 5, 16),), {0: "batch"}),
    }


def export(name: str, directory: Path) -> tuple[Path, dict]:
    """Export case `name` with PyTorch's TorchScript-based exporter (the dynamo one needs
    onnxscript); returns the file and the example inputs by name, as numpy arrays."""
    module, args, dynamic = cases()[name]
    module.eval()
    names = [f"in{i}" for i in range(len(args))]
    path = directory / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=names,
                          output_names=["out"], opset_version=17,
                          dynamic_axes={names[0]: dynamic, "out": {0: "batch"}} if dynamic else None)
    return path, {n: a.numpy() for n, a in zip(names, args)}
