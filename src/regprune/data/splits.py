"""Deterministic, class-aware index selection: train/val splits and small balanced subsets.

Why class-aware: a quick run on 500 samples of a 10-class set must still see every class about
equally often, or accuracy differences between methods measure the sampling, not the method. Why
index-based: the same underlying data set serves train (augmented) and val (not augmented) through
:class:`TransformedSubset`, so images are decoded once and never duplicated in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from regprune.data.seeds import derive_seed

_SPLIT_STREAM = 1
_SUBSET_STREAM = 2


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*values))


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Class index per sample, read from ``dataset.targets`` (every torchvision classifier set)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no `targets`; cannot split by class")
    return torch.as_tensor(targets, dtype=torch.long)


def stratified_split(
    targets: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into ``(keep, held_out)`` with ``fraction`` of every class held out.

    Args:
        targets: class index per sample, shape ``(N,)``.
        fraction: share of each class that goes to ``held_out``, in ``[0, 1)``.
        seed: the same seed always gives the same split.

    Returns:
        Two sorted index tensors that partition ``range(N)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    generator = _generator(seed, _SPLIT_STREAM)
    keep, held_out = [], []
    for label in torch.unique(targets).tolist():
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_out = round(len(members) * fraction)
        held_out.append(members[:n_out])
        keep.append(members[n_out:])
    return torch.cat(keep).sort().values, torch.cat(held_out).sort().values


def balanced_subset(
    targets: torch.Tensor, indices: torch.Tensor, size: int, seed: int
) -> torch.Tensor:
    """Pick ``size`` of ``indices`` so that class counts differ by at most one.

    Classes are taken round-robin from per-class random orders, so a class with fewer samples
    than its share gives all it has and the others fill the gap.

    Args:
        targets: class index per sample of the whole data set.
        indices: the pool to choose from (e.g. the train split).
        size: how many to pick, ``1 <= size <= len(indices)``.
        seed: the same seed always gives the same subset.

    Returns:
        Sorted index tensor of length ``size``.

    Example:
        >>> targets = torch.tensor([0, 0, 0, 0, 1, 1])
        >>> torch.bincount(targets[balanced_subset(targets, torch.arange(6), 4, seed=0)]).tolist()
        [2, 2]
    """
    if not 1 <= size <= len(indices):
        raise ValueError(f"subset size must be in [1, {len(indices)}], got {size}")
    generator = _generator(seed, _SUBSET_STREAM)
    pool_targets = targets[indices]
    chosen, rank_in_class, class_position = [], [], []
    for position, label in enumerate(torch.unique(pool_targets).tolist()):
        members = indices[pool_targets == label]
        chosen.append(members[torch.randperm(len(members), generator=generator)])
        rank_in_class.append(torch.arange(len(members)))
        class_position.append(torch.full((len(members),), position))
    n_classes = len(chosen)
    order = torch.argsort(torch.cat(rank_in_class) * n_classes + torch.cat(class_position))
    return torch.cat(chosen)[order[:size]].sort().values


class TransformedSubset(Dataset):
    """A view of ``base`` restricted to ``indices``, with its own transform.

    Why not ``torch.utils.data.Subset``: train and val share one base set but need different
    transforms, and downstream code wants ``targets`` without decoding images.
    """

    def __init__(
        self, base: Dataset, indices: torch.Tensor, transform: Callable[[object], object]
    ) -> None:
        self.base = base
        self.indices = indices.tolist()
        self.transform = transform
        self.targets = targets_of(base)[indices].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[object, int]:
        image, label = self.base[self.indices[item]]
        return self.transform(image), label
