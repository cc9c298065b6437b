"""CIFAR ResNet-20/32/56/110 (He et al. 2016, section 4.2).

A 3x3 stem of 16 channels, three stages of ``n`` BasicBlocks with widths 16-32-64 (stride 2 at the
start of stages 2 and 3), global average pooling and one linear layer; depth = 6n + 2.

Two shortcut options for the blocks that change shape, because the papers differ:

- ``"A"`` (the original CIFAR paper): parameter-free; subsample by the stride and zero-pad the new
  channels. Pruning papers that start from the widespread Idelbayev reference code use this one.
- ``"B"`` (default): a 1x1 conv + BN projection, as in the ImageNet ResNets and in most pruning
  toolkits; it gives the pruner a real layer at every stage boundary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regprune.models._init import init_weights
from regprune.models.registry import register_model

Shortcut = Literal["A", "B"]


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` then zero channels split around the input's.

    A module rather than a lambda so the model pickles, prints and traces with torch.fx.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option A pads channels; cannot go from {in_channels} to {out_channels}"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; the ReLU comes after the addition."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _make_shortcut(in_channels: int, out_channels: int, stride: int, kind: Shortcut) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` for small images.

    Args:
        depth: 20, 32, 44, 56, 110, ... (any ``6n + 2``).
        num_classes: classifier outputs.
        in_channels: input image channels.
        shortcut: ``"A"`` (zero-pad identity) or ``"B"`` (1x1 conv + BN projection).
        widths: the three stage widths.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: Shortcut = "B",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(
                    BasicBlock(channels, width, stride if block_index == 0 else 1, shortcut)
                )
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet(depth: int, num_classes: int, in_channels: int, shortcut: Shortcut) -> CifarResNet:
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    """ResNet-20 (3 blocks per stage; 0.27 M params with shortcut A)."""
    return _resnet(20, num_classes, in_channels, shortcut)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    """ResNet-32 (5 blocks per stage; 0.46 M params with shortcut A)."""
    return _resnet(32, num_classes, in_channels, shortcut)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    """ResNet-56 (9 blocks per stage; 0.85 M params with shortcut A)."""
    return _resnet(56, num_classes, in_channels, shortcut)


@register_model("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    """ResNet-110 (18 blocks per stage; 1.7 M params with shortcut A)."""
    return _resnet(110, num_classes, in_channels, shortcut)
