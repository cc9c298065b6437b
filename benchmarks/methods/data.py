"""Data for the benchmark: a seeded train loader, a fixed test subset held in memory, and the
calibration batches that HGSR and AdaPruner score on.

The train subset and the test subset depend on ``data_seed`` only, so every seed (and every
method) trains on the same images and is judged on the same test images; the seed changes the
initialization and the batch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from regprune.data import build_datasets, build_loaders
from regprune.data.splits import balanced_subset, targets_of

from .config import BenchConfig


@dataclass
class BenchData:
    train: DataLoader
    test: DataLoader
    calibration: list[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    in_channels: int
    image_size: int
    device: str = "cpu"

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Random inputs on the benchmark's device (tracing, counting, latency)."""
        shape = (batch, self.in_channels, self.image_size, self.image_size)
        return torch.randn(shape, device=self.device)


def _test_tensors(config: BenchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test split (or a class-balanced subset of it), decoded once."""
    full = build_datasets(
        config.dataset, root=config.data_root, val_fraction=0.0, seed=config.data_seed
    )
    test = full.test
    indices = torch.arange(len(test))
    if config.test_subset is not None:
        indices = balanced_subset(targets_of(test), indices, config.test_subset, config.data_seed)
    images = torch.stack([test[i][0] for i in indices.tolist()])
    labels = torch.tensor([test[i][1] for i in indices.tolist()])
    return images, labels


def build_bench_data(config: BenchConfig, seed: int) -> BenchData:
    splits = build_datasets(
        config.dataset,
        root=config.data_root,
        subset=config.train_subset,
        val_fraction=0.0,
        seed=config.data_seed,
    )
    loaders = build_loaders(splits, batch_size=config.batch_size, seed=seed)
    images, labels = _test_tensors(config)
    test = DataLoader(TensorDataset(images, labels), batch_size=256, shuffle=False)
    generator = torch.Generator().manual_seed(10_000 + seed)
    picks = torch.randperm(len(splits.train), generator=generator)
    picks = picks[: config.calibration_batches * config.batch_size].tolist()
    calibration = []
    for start in range(0, len(picks), config.batch_size):
        batch = [splits.train[i] for i in picks[start : start + config.batch_size]]
        calibration.append(
            (torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch]))
        )
    return BenchData(
        train=loaders.train,
        test=test,
        calibration=calibration,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        device=config.device,
    )
