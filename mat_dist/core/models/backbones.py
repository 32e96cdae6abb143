"""Backbones: plain classifiers mapping (B, in_channels, H, W) -> (B, num_outputs).

The MIMO wrapper builds them with in_channels = M * C and num_outputs = M * classes.
ResNets use the CIFAR-style stem (3x3 conv, stride 1, no max-pool) so that
32x32 and 28x28 inputs keep their resolution in the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


class MnistCNN(nn.Module):
    """The MNIST CNN of MSD (Maini et al. 2020): two 5x5 convs with max-pool, a 1024 hidden layer."""

    def __init__(self, in_channels: int, num_outputs: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size[0] // 4, image_size[1] // 4  # two 2x2 max-pools
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * h * w, 1024), nn.ReLU(), nn.Linear(1024, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016), as in the fast-adversarial and MAT released code."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False) if needs_projection else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """ResNet with a CIFAR-style stem; ``preact`` adds the final BN-ReLU of PreAct ResNets."""

    def __init__(self, block: type[nn.Module], num_blocks: tuple[int, ...], in_channels: int,
                 num_outputs: int, preact: bool = False) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = None if preact else nn.BatchNorm2d(64)
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stages.append(self._stage(block, planes, blocks, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(512 * block.expansion) if preact else None
        self.linear = nn.Linear(512 * block.expansion, num_outputs)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.stages(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


BackboneBuilder = Callable[[int, int, tuple[int, int]], nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: BackboneBuilder  # (in_channels, num_outputs, image_size) -> module
    stem: str               # the layer that reads the input channels (M*C in a MIMO model)
    head: str               # the layer that writes the logits (M*K in a MIMO model)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (
        BackboneSpec("mnist_cnn", "MSD's MNIST CNN (3.3M parameters); the CPU default",
                     lambda c, k, size: MnistCNN(c, k, size), stem="features.0", head="classifier.3"),
        BackboneSpec("resnet18", "ResNet-18, CIFAR-style stem",
                     lambda c, k, size: ResNet(BasicBlock, (2, 2, 2, 2), c, k), stem="conv1", head="linear"),
        BackboneSpec("preact_resnet18", "PreAct ResNet-18, CIFAR-style stem",
                     lambda c, k, size: ResNet(PreActBlock, (2, 2, 2, 2), c, k, preact=True),
                     stem="conv1", head="linear"),
        BackboneSpec("resnet50", "ResNet-50 (bottleneck blocks), CIFAR-style stem",
                     lambda c, k, size: ResNet(Bottleneck, (3, 4, 6, 3), c, k), stem="conv1", head="linear"),
    )
}
