"""LeNet-5 (LeCun et al. 1998): conv(6, 5x5)-pool-conv(16, 5x5)-pool-fc120-fc84-fc.

Input sizes: the first conv pads by 2 (``padding=2``, the usual MNIST variant, which turns a
28x28 image into the 32x32 field the original design expects), and an adaptive average pool fixes
the last feature map at 5x5. So the classifier is always 16*5*5 -> 120 -> 84 -> classes, and the
same parameter count holds at 28x28 and 32x32:

- 28x28: 28 -> 28 -> 14 -> 10 -> 5; the adaptive pool is the identity (the classic network).
- 32x32: 32 -> 32 -> 16 -> 12 -> 6; the adaptive pool averages 6x6 to 5x5.
- ``padding=0`` at 32x32 gives the original unpadded CIFAR LeNet-5 exactly (32 -> 28 -> ... 5).

Pooling is max pooling and the activation ReLU, as in the pruning papers' code, not the 1998
subsampling layers and tanh.
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.models._init import init_weights
from regprune.models.registry import register_model


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling; see the module docstring for the input-size design."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, padding: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 3, padding: int = 2) -> LeNet5:
    """LeNet-5 for 28x28 (Fashion-MNIST) or 32x32 (CIFAR) inputs."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, padding=padding)
