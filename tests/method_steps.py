"""A few regularized training steps on one batch, the way a user's loop drives a method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regprune.lifecycle import PruningMethod
from regprune.train import build_optimizer


def sparsify(
    model: nn.Module,
    method: PruningMethod,
    x: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    lr: float = 0.01,
) -> None:
    """``steps`` SGD steps on (x, targets) with the method's penalty, gradient edits, optimizer
    groups and schedule (cross-entropy task loss)."""
    optimizer = build_optimizer(model, lr=lr, groups=method.optimizer_groups())
    for _ in range(steps):
        loss = F.cross_entropy(model(x), targets) + method.penalty()
        loss.backward()
        method.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        method.step()
