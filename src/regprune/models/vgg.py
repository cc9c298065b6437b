"""CIFAR VGG-11/13/16/19 with BatchNorm, as in the network-slimming code (Liu et al. 2017).

conv3x3-BN-ReLU stacks separated by four 2x2 max pools; the fifth pool of ImageNet VGG is left
out (as in network slimming) so a 28x28 input still has a 1x1 map at the end (28 -> 14 -> 7 -> 3
-> 1). An adaptive average pool then makes the classifier input 512 at any input size, which is
what lets one model serve Fashion-MNIST and CIFAR.

Classifier: a single linear layer by default (network slimming). ``classifier_hidden=512`` gives
the Linear-BN-ReLU-Linear head of Li et al. 2017 ("Pruning Filters for Efficient ConvNets").

``cfg`` can be overridden with any widths (e.g. the kept widths of a pruned model), which is how
the slimming code rebuilds a smaller network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regprune.models._init import init_weights
from regprune.models.registry import ModelFn, register_model

VggCfg = Sequence[int | str]

CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ),
}  # fmt: skip


class VGG(nn.Module):
    """VGG with BatchNorm for small images.

    Args:
        cfg: output widths of the conv layers in order, ``"M"`` for a 2x2 max pool.
        num_classes: classifier outputs.
        in_channels: input image channels.
        classifier_hidden: ``None`` for a single linear classifier, or the hidden width of a
            Linear-BN-ReLU-Linear head.
    """

    def __init__(
        self,
        cfg: VggCfg,
        num_classes: int = 10,
        in_channels: int = 3,
        classifier_hidden: int | None = None,
    ) -> None:
        super().__init__()
        widths = [c for c in cfg if c != "M"]
        if not widths or any(not isinstance(c, int) or c <= 0 for c in widths):
            raise ValueError(f"cfg must hold positive ints and 'M', got {list(cfg)}")
        self.features = _make_features(cfg, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = int(widths[-1])
        if classifier_hidden is None:
            self.classifier: nn.Module = nn.Linear(last, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(last, classifier_hidden),
                nn.BatchNorm1d(classifier_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(classifier_hidden, num_classes),
            )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _make_features(cfg: VggCfg, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        width = int(item)
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    return nn.Sequential(*layers)


def scale_widths(cfg: VggCfg, width: float) -> list[int | str]:
    """``cfg`` with every conv width multiplied by ``width`` (rounded, at least 1).

    Why: a half-width VGG keeps the architecture's shape (depth, pools, plain chains) at a
    quarter of the MACs, which is what a CPU-scale benchmark can afford.
    """
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [c if c == "M" else max(1, round(int(c) * width)) for c in cfg]


def _vgg(name: str, description: str) -> ModelFn:
    """Register the constructor of ``CFGS[name]``; one body for the four depths."""

    def build(
        num_classes: int = 10,
        in_channels: int = 3,
        classifier_hidden: int | None = None,
        width: float = 1.0,
    ) -> VGG:
        return VGG(scale_widths(CFGS[name], width), num_classes, in_channels, classifier_hidden)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{description} ``width`` scales every conv width."
    return register_model(name)(build)


vgg11 = _vgg("vgg11", "VGG-11 with BatchNorm (8 conv layers).")
vgg13 = _vgg("vgg13", "VGG-13 with BatchNorm (10 conv layers).")
vgg16 = _vgg(
    "vgg16", "VGG-16 with BatchNorm (13 conv layers), the network-slimming / Li et al. CIFAR model."
)
vgg19 = _vgg("vgg19", "VGG-19 with BatchNorm (16 conv layers), the network-slimming CIFAR model.")
