"""Data for the benchmark: a seeded train loader, a fixed test subset held in memory, and the
calibration batches that HGSR and AdaPruner score on.

The train subset and the test subset depend on ``data_seed`` only, so every seed (and every
method) trains on the same images and is judged on the same test images; the seed changes the
initialization and the batch order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from regprune.data import build_loaders
from regprune.data.loaders import EpochShuffleSampler
from regprune.data.seeds import derive_seed
from regprune.data.splits import balanced_subset, targets_of
from regprune.data.transforms import AUGMENT_SPECS

from .config import BenchConfig


class DeviceLoader:
    """The training set as tensors on the device, shuffled and augmented there (no workers).

    What the data set's own training transform does to a 28x28 or 32x32 image (pad with black by
    ``padding``, random crop back, random horizontal flip), done per batch on the device on
    the normalized images (black is ``fill`` = -mean / std there), so a GPU never waits on a
    CPU decoding and cropping images one by one. The order is the library's
    ``EpochShuffleSampler`` (a function of ``(seed, epoch)``, set by the trainer) and the crops
    and flips draw from a generator seeded by the same pair.

    Args:
        images, labels: the normalized training images ``(N, C, H, W)`` and their classes.
        batch_size: the last batch is kept (as ``build_loaders`` does).
        seed: the run seed.
        padding: crop padding (0: no crop); ``hflip``: random horizontal flips.
        fill: per-channel value of a black pixel after normalization.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
        padding: int,
        hflip: bool,
        fill: torch.Tensor | None = None,
    ) -> None:
        self.dataset = TensorDataset(images, labels)
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.sampler = EpochShuffleSampler(len(labels), seed)
        self.padding = padding
        self.hflip = hflip
        channels = images.shape[1]
        fill = torch.zeros(channels) if fill is None else fill
        self.fill = fill.to(images.device, images.dtype).view(1, channels, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def _augment(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = batch.shape
        if self.padding:
            pad = self.padding
            padded = self.fill.expand(n, -1, height + 2 * pad, width + 2 * pad).clone()
            padded[:, :, pad:-pad, pad:-pad] = batch
            offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
            offsets = offsets.to(batch.device)
            rows = offsets[0, :, None] + torch.arange(height, device=batch.device)
            cols = offsets[1, :, None] + torch.arange(width, device=batch.device)
            index = torch.arange(n, device=batch.device)[:, None, None]
            batch = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
            batch = batch.permute(0, 3, 1, 2)
        if self.hflip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        return batch.contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(
            derive_seed(self.sampler.seed, 7, self.sampler.epoch)
        )
        order = torch.tensor(self.sampler.permutation(), device=self.labels.device)
        for start in range(0, len(order), self.batch_size):
            picks = order[start : start + self.batch_size]
            yield self._augment(self.images[picks], generator), self.labels[picks]


@dataclass
class BenchData:
    train: DataLoader | DeviceLoader
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


def device_loader(config: BenchConfig, splits, seed: int) -> DeviceLoader:
    """``config.data``'s training set decoded once (no augmentation) and moved to the device."""
    plain = replace(config.data, augment=False).build_datasets(config.data_seed).train
    images = torch.stack([plain[i][0] for i in range(len(plain))]).to(config.device)
    labels = torch.tensor([plain[i][1] for i in range(len(plain))]).to(config.device)
    spec = AUGMENT_SPECS.get(config.data.name)
    padding = spec.crop_padding if spec is not None and config.data.augment else 0
    hflip = bool(spec is not None and spec.hflip and config.data.augment)
    fill = None if spec is None else -torch.tensor(spec.mean) / torch.tensor(spec.std)
    return DeviceLoader(images, labels, config.data.batch_size, seed, padding, hflip, fill)


def build_bench_data(config: BenchConfig, seed: int) -> BenchData:
    """The data of one seed: the seed shuffles the train loader and picks the calibration
    images; the images themselves depend on ``data_seed`` only. ``data_on_device``: the
    training, test and calibration tensors are held on the config's device."""
    splits = config.data.build_datasets(config.data_seed)
    batch_size = config.data.batch_size
    images, labels = _test_tensors(config)
    calibration = random_batches(
        splits.train, config.calibration_batches * batch_size, batch_size, seed=10_000 + seed
    )
    if config.data_on_device:
        train = device_loader(config, splits, seed)
        images, labels = images.to(config.device), labels.to(config.device)
        calibration = [(x.to(config.device), y.to(config.device)) for x, y in calibration]
    else:
        train = build_loaders(splits, batch_size=batch_size, seed=seed).train
    test = DataLoader(TensorDataset(images, labels), batch_size=256, shuffle=False)
    return BenchData(
        train=train,
        test=test,
        calibration=calibration,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        device=config.device,
    )
