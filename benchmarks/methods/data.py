"""Data for the benchmark: a seeded train loader, a fixed test subset held in memory, and the
calibration batches that HGSR and AdaPruner score on.

The train subset and the test subset depend on ``data_seed`` only, so every seed (and every
method) trains on the same images and is judged on the same test images; the seed changes the
initialization and the batch order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from regprune.data import build_loaders
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
    test = replace(config.data, subset=None).build_datasets(config.data_seed).test
    indices = torch.arange(len(test))
    if config.test_subset is not None:
        indices = balanced_subset(targets_of(test), indices, config.test_subset, config.data_seed)
    images = torch.stack([test[i][0] for i in indices.tolist()])
    labels = torch.tensor([test[i][1] for i in indices.tolist()])
    return images, labels


def random_batches(
    dataset: Dataset, samples: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``samples`` random items of ``dataset`` in batches, the same for the same ``seed``.

    The items go through the training transform (random crop / flip), as the images a method
    scores during training would; that augmentation draws from torch's global generator, so
    it runs under a fork of it seeded with ``seed``. Unseeded, the calibration images, and with
    them HGSR's and AdaPruner's choices and the BN re-estimation, changed from one process to
    the next; forked, the caller's random stream is left as it was.
    """
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    picks = picks[:samples].tolist()
    batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(picks), batch_size):
            items = [dataset[i] for i in picks[start : start + batch_size]]
            batches.append(
                (torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))
            )
    return batches


def build_bench_data(config: BenchConfig, seed: int) -> BenchData:
    """The data of one seed: the seed shuffles the train loader and picks the calibration
    images; the images themselves depend on ``data_seed`` only."""
    splits = config.data.build_datasets(config.data_seed)
    batch_size = config.data.batch_size
    loaders = build_loaders(splits, batch_size=batch_size, seed=seed)
    images, labels = _test_tensors(config)
    test = DataLoader(TensorDataset(images, labels), batch_size=256, shuffle=False)
    calibration = random_batches(
        splits.train, config.calibration_batches * batch_size, batch_size, seed=10_000 + seed
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
