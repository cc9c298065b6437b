"""One call from a data set name to augmented train, clean val and test sets."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from regprune.data.sources import canonical_name, open_dataset
from regprune.data.splits import (
    TransformedSubset,
    balanced_subset,
    stratified_split,
    targets_of,
)
from regprune.data.transforms import build_transforms


@dataclass(frozen=True)
class DataSplits:
    """The three sets of a run and the input/output shape a model needs.

    ``val`` is None when ``val_fraction`` is 0 (train on the whole train set, report test only).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int


def _shrunk_size(pool: int, fraction: float, num_classes: int) -> int:
    """``fraction`` of ``pool``, but at least one sample per class when the pool allows it."""
    return min(pool, max(num_classes, round(pool * fraction)))


def build_datasets(
    name: str,
    root: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> DataSplits:
    """Build train/val/test sets for ``name``.

    The validation set is a class-stratified ``val_fraction`` of the official train set (by
    ``seed``) and uses the eval transform; the official test set is never used for selection.

    Args:
        name: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100`` or ``imagefolder``.
        root: the user's data folder; None looks in the system location (Fashion-MNIST's Debian
            package) and the cache.
        subset: take a class-balanced ``subset`` samples of the train split, and val and test
            shrunk by the same factor (at least one per class), for quick runs.
        val_fraction: share of the train set held out for validation, in ``[0, 1)``.
        seed: fixes the split and the subset.
        augment: random crop/flip on train; False gives train the eval transform.
        cache_dir: where decompressed files go (default ``~/.cache/regprune/data``).
        download: allow torchvision to download missing files.
        image_size: imagefolder only (see ``regprune.data.sources.open_dataset``).

    Returns:
        A :class:`DataSplits`.

    Raises:
        DatasetNotFoundError: the data is not on disk; the message says where we looked and how
            to provide it.

    Example:
        >>> splits = build_datasets("fashion-mnist", subset=600)  # doctest: +SKIP
        >>> len(splits.train), len(splits.val), len(splits.test)  # doctest: +SKIP
        (600, 67, 111)
    """
    key = canonical_name(name)
    raw = open_dataset(key, root, cache_dir=cache_dir, download=download, image_size=image_size)
    train_tf, eval_tf = build_transforms(key, raw.image_size, augment)
    train_targets = targets_of(raw.train)
    train_idx, val_idx = stratified_split(train_targets, val_fraction, seed)
    test_targets = targets_of(raw.test)
    test_idx = torch.arange(len(test_targets))
    if subset is not None:
        if not 1 <= subset <= len(train_idx):
            raise ValueError(
                f"subset must be in [1, {len(train_idx)}] (the train split of {name}), got {subset}"
            )
        factor = subset / len(train_idx)
        train_idx = balanced_subset(train_targets, train_idx, subset, seed)
        if len(val_idx):
            val_size = _shrunk_size(len(val_idx), factor, raw.num_classes)
            val_idx = balanced_subset(train_targets, val_idx, val_size, seed)
        test_size = _shrunk_size(len(test_idx), factor, raw.num_classes)
        test_idx = balanced_subset(test_targets, test_idx, test_size, seed)
    return DataSplits(
        train=TransformedSubset(raw.train, train_idx, train_tf),
        val=TransformedSubset(raw.train, val_idx, eval_tf) if len(val_idx) else None,
        test=TransformedSubset(raw.test, test_idx, eval_tf),
        num_classes=raw.num_classes,
        in_channels=raw.in_channels,
        image_size=raw.image_size,
    )
