"""Re-estimating BatchNorm running statistics after the network changed under them.

Why: surgery (and zeroing) changes what every later BatchNorm sees, but its running mean and
variance still describe the old network, so a pruned model evaluated as-is often predicts one
class. A few hundred training images in train mode, with a cumulative average instead of the
momentum, give statistics that match the new network; no weight changes. AdaPruner uses it to
compare inheritance candidates fairly; the benchmarks use it to report accuracy right after
pruning with and without it.
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.layers import is_batch_norm
from regprune.lifecycle import CalibrationData
from regprune.modes import train_mode


def recalibrate_batch_norm(model: nn.Module, batches: CalibrationData) -> None:
    """Reset BN running statistics and re-estimate them (cumulative average) on ``batches``."""
    norms = [m for m in model.modules() if is_batch_norm(m)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    with train_mode(model), torch.no_grad():
        for x, _ in batches:
            model(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
