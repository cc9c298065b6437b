"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The ImageNet network downsamples 32x; on a 32x32 image that leaves a 1x1 map after the third stage.
The usual CIFAR adaptation (kuangliu/pytorch-cifar, and the pruning papers that report
MobileNetV2 on CIFAR) keeps the block table and changes two strides to 1: the stem and the second
stage (t=6, c=24). The network then downsamples 8x (32 -> 4, 28 -> 4), and an adaptive average
pool feeds the classifier at any input size.

Inverted residual blocks: 1x1 expansion (skipped when t=1) -> 3x3 depthwise -> 1x1 linear
projection, each with BN, ReLU6 after the first two; the residual add only where stride is 1 and
the width is unchanged (the paper's rule; kuangliu's extra 1x1 shortcut convs are not used).
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.models._init import init_weights
from regprune.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s); strides 2 -> 1 in the stem and in
# the second row are the CIFAR adaptation.
CIFAR_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor`` without losing more than 10%.

    The same rule as the reference implementation (and torchvision), so ``width_mult`` widths
    match published models and stay friendly to vectorised kernels.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6; ``groups=channels`` makes it depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear); residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with the CIFAR strides.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        width_mult: multiplies every width (rounded with :func:`make_divisible`); the last
            1x1 conv keeps at least 1280 channels, as in the paper.
        dropout: dropout probability before the classifier (0 disables it, as in the CIFAR code).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        stem = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, stem, 3, stride=1)]
        channels = stem
        for expansion, width, repeats, first_stride in CIFAR_BLOCKS:
            out_channels = make_divisible(width * width_mult)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, expansion))
                channels = out_channels
        layers.append(ConvBNReLU6(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.0
) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 (and 28x28) inputs; ``width_mult`` scales every layer."""
    return MobileNetV2Cifar(num_classes, in_channels, width_mult=width_mult, dropout=dropout)
