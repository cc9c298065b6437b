"""One weight initialisation for every regprune model.

Kaiming-normal with the ReLU gain, as in He et al. and the CIFAR reference code the pruning papers
start from: fan_out for convolutions (torchvision's choice; keeps backward variance through deep
stacks), fan_in for linear layers (keeps the forward variance of the small classifiers, where a
tiny fixed std would shrink the signal layer after layer). BN scale 1 and shift 0, so BN-scale
importance starts neutral. Shared so that every architecture starts from the same
convention and a comparison between them is not a comparison of initialisers.
"""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Initialise ``model``'s conv, norm and linear layers in place."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
