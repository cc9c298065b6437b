"""Tiny models, data and a stateful toy method shared by the training tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from regprune.data import DataSplits
from regprune.lifecycle import PruningMethod


class NoisyPoints(Dataset):
    """Two Gaussian blobs; every read adds noise from the global RNG, like an augmentation."""

    def __init__(self, n: int = 96, features: int = 6, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = (torch.arange(n) % 2).tolist()
        centers = torch.tensor(self.targets, dtype=torch.float32)[:, None] * 2 - 1
        self.points = centers + torch.randn(n, features, generator=generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index] + 0.1 * torch.randn(self.points.shape[1]), self.targets[index]


def tiny_splits(n: int = 96) -> DataSplits:
    return DataSplits(NoisyPoints(n), NoisyPoints(32, seed=1), NoisyPoints(32, seed=2), 2, 1, 6)


def tiny_model() -> nn.Module:
    """Dropout and BatchNorm make resume exactness depend on the RNG and on buffers."""
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2)
    )


class GrowingL1(PruningMethod):
    """A method using every hook: an L1 penalty, a gradient edit and a growing lambda."""

    name = "growing_l1"

    def __init__(self, model: nn.Module, interrupt_at: int | None = None) -> None:
        super().__init__(model)
        self.lam = 1e-3
        self.interrupt_at = interrupt_at

    def penalty(self) -> torch.Tensor:
        return self.lam * sum(p.abs().sum() for p in self.model.parameters())

    def after_backward(self) -> None:
        for param in self.model.parameters():
            param.grad.add_(self.lam * param.detach().sign())

    def step(self) -> None:
        super().step()
        self.lam *= 1.05
        if self.iteration == self.interrupt_at:
            raise KeyboardInterrupt("simulated crash")

    def sparsity_stats(self) -> dict[str, float]:
        return {"lam": self.lam}

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "lam": self.lam}

    def load_state_dict(self, state: dict[str, object]) -> None:
        super().load_state_dict(state)
        self.lam = float(state["lam"])
