"""A small real task for behaviour tests: a ResNet-20 trained briefly on Fashion-MNIST."""

from __future__ import annotations

import copy
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from regprune.models import create_model
from regprune.train import build_optimizer, build_scheduler
from tests.real_data import needs_fashion_mnist

needs_fmnist = needs_fashion_mnist
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@cache
def _tensors(subset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from regprune.data import build_datasets

    splits = build_datasets("fashionmnist", subset=subset, seed=0, augment=False)

    def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        return torch.stack(xs), torch.tensor(ys)

    return (*stack(splits.train), *stack(splits.test))


def train_batches(subset: int = 2000, batch: int = 100, seed: int = 0) -> Batches:
    x, y, _, _ = _tensors(subset)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + batch]], y[order[i : i + batch]]) for i in range(0, len(x), batch)]


def accuracy(model: nn.Module, subset: int = 2000) -> float:
    _, _, x, y = _tensors(subset)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def fit(
    model: nn.Module, epochs: int, lr: float, method=None, seed: int = 0, schedule: str = "constant"
) -> None:
    """Plain SGD with the method's hooks in the one life-cycle order (its own parameters, L0's
    gates, in their optimizer group), the lr per iteration by ``schedule``."""
    groups = method.optimizer_groups() if method is not None else ()
    optimizer = build_optimizer(model, lr=lr, momentum=0.9, weight_decay=1e-4, groups=groups)
    scheduler = build_scheduler(
        optimizer, schedule, epochs=epochs, steps_per_epoch=len(train_batches())
    )
    model.train()
    for epoch in range(epochs):
        for x, y in train_batches(seed=seed + epoch):
            loss = F.cross_entropy(model(x), y)
            if method is not None:
                loss = loss + method.penalty()
            loss.backward()
            if method is not None:
                method.after_backward()
            optimizer.step()
            optimizer.zero_grad()
            if method is not None:
                method.step()
            scheduler.step()


@cache
def _pretrained() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    fit(model, epochs=3, lr=0.05)
    return model.eval()


def pretrained_resnet20() -> nn.Module:
    """A fresh copy of the shared baseline (trained once per test process)."""
    return copy.deepcopy(_pretrained())
