"""PyTorch modules that more than one benchmark uses as twins of kiln models (models.py,
train.py), with kiln's parameter names: made on first use, so that the scripts import
without PyTorch."""

from __future__ import annotations

import functools


@functools.cache
def modules() -> dict:
    """{"LeNet5": examples/lenet.kiln's twin, "BasicBlock": torchvision's, as std.cnn's}."""
    import torch
    from torch import nn

    class LeNet5(nn.Module):  # examples/lenet.kiln
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(),
                                          nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                                          nn.AvgPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
                                            nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    class BasicBlock(nn.Module):  # torchvision's, as std.cnn's BasicBlock
        def __init__(self, inplanes: int, planes: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride,
                                                          bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    return {"LeNet5": LeNet5, "BasicBlock": BasicBlock}
