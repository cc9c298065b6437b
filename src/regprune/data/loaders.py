"""Data loaders whose randomness is a function of ``(seed, epoch)`` alone.

Why: a run resumed from the checkpoint of epoch k must see exactly the batches the uninterrupted
run saw in epoch k+1. So the shuffling order and the seeds of worker processes are re-derived
from ``(seed, epoch)`` at the start of every epoch (:func:`set_epoch`) instead of continuing
whatever state a generator happened to be in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from regprune.data.datasets import DataSplits
from regprune.data.seeds import derive_seed

_WORKER_STREAM = 3


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(length)`` that depends only on ``(seed, epoch)``.

    Call ``set_epoch`` before each epoch (the trainer does, through :func:`set_epoch`).
    :class:`ShardedShuffleSampler` is its counterpart for one rank of a distributed run.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation())

    def __len__(self) -> int:
        return self.length


class ShardedShuffleSampler(EpochShuffleSampler):
    """Every ``world_size``-th index, from ``rank`` on, of :class:`EpochShuffleSampler`'s order.

    The order is padded to a multiple of ``world_size`` by repeating its first indices, so every
    rank takes the same number of steps (as ``DistributedSampler`` pads).

    Why not ``DistributedSampler``: its permutation is not the single-process one. Striding the
    same permutation makes step ``t``'s global batch (the union of the ranks' batches of ``b``)
    exactly batch ``t`` of a single process with batch ``world_size * b``, so a distributed run
    trains the model a single process would, up to the float rounding of the gradient
    all-reduce (and BatchNorm, whose batch statistics are per rank).
    """

    def __init__(self, length: int, seed: int, rank: int, world_size: int) -> None:
        super().__init__(length, seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        order = self.permutation()
        padded = order + order[: len(self) * self.world_size - self.length]
        return iter(padded[self.rank :: self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, without padding.

    Why not ``DistributedSampler`` for evaluation: it repeats samples so every rank gets the same
    count, which biases the metrics; evaluation sums counts across ranks, so shards may differ.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Loaders:
    """Train (shuffled), val (None when there is no val set) and test loaders."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader


def _loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler[int],
    workers: int,
    seed: int,
    drop_last: bool,
) -> DataLoader:
    # A private generator keeps the loader from drawing worker seeds from the global RNG (which
    # would couple data order to model code) and lets set_epoch() reseed workers per epoch.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(derive_seed(seed, _WORKER_STREAM)),
    )


def build_loaders(
    splits: DataSplits, batch_size: int, workers: int = 0, seed: int = 0, distributed: bool = False
) -> Loaders:
    """Wrap :class:`DataSplits` in loaders with reproducible, resume-exact shuffling.

    Args:
        splits: from ``build_datasets`` (or any sets with ``__len__``).
        batch_size: samples per batch and per process.
        workers: loader worker processes; 0 loads in the main process. Workers are restarted
            every epoch (not persistent) so their seeds follow :func:`set_epoch`.
        seed: fixes the shuffling order of every epoch.
        distributed: shard train with :class:`ShardedShuffleSampler` (the single-process
            order, padded so every rank takes the same number of steps) and val/test with
            :class:`ShardSampler`; needs an initialized process group.

    Returns:
        :class:`Loaders`. The last train batch is dropped only when it would hold one sample,
        because BatchNorm cannot train on a batch of one.

    Example:
        >>> loaders = build_loaders(splits, batch_size=128, seed=0)  # doctest: +SKIP
        >>> set_epoch(loaders.train, epoch=3)  # before iterating each epoch  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs an initialized process group")
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        train_sampler: EpochShuffleSampler = ShardedShuffleSampler(
            len(splits.train), seed, rank, world_size
        )
    else:
        rank, world_size = 0, 1
        train_sampler = EpochShuffleSampler(len(splits.train), seed)
    per_rank = len(train_sampler)

    def eval_loader(dataset: Dataset) -> DataLoader:
        sampler = ShardSampler(len(dataset), rank, world_size)
        return _loader(dataset, batch_size, sampler, workers, seed, drop_last=False)

    return Loaders(
        train=_loader(
            splits.train, batch_size, train_sampler, workers, seed, per_rank % batch_size == 1
        ),
        val=eval_loader(splits.val) if splits.val is not None else None,
        test=eval_loader(splits.test),
    )


def set_epoch(loader: Iterable[object], epoch: int) -> None:
    """Make ``loader``'s shuffling and worker seeds for ``epoch`` a function of ``(seed, epoch)``.

    Loaders from :func:`build_loaders` carry their seed on the sampler; other loaders (or plain
    iterables) are left alone, and their order is whatever their own sampler does.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    seed = getattr(sampler, "seed", None)
    generator = getattr(loader, "generator", None)
    if seed is not None and generator is not None:
        generator.manual_seed(derive_seed(seed, _WORKER_STREAM, epoch))
