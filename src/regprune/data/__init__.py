"""Data sets from local folders, standard transforms, balanced subsets and seeded loaders.

Example:
    >>> from regprune.data import build_datasets, build_loaders
    >>> splits = build_datasets("fashion-mnist", subset=600)  # doctest: +SKIP
    >>> loaders = build_loaders(splits, batch_size=128, seed=0)  # doctest: +SKIP
"""

from regprune.data.datasets import DataSplits, build_datasets
from regprune.data.loaders import (
    EpochShuffleSampler,
    Loaders,
    ShardedShuffleSampler,
    ShardSampler,
    build_loaders,
    set_epoch,
)
from regprune.data.sources import (
    DatasetNotFoundError,
    available_datasets,
    default_cache_dir,
    open_dataset,
)

__all__ = [
    "DataSplits",
    "DatasetNotFoundError",
    "EpochShuffleSampler",
    "Loaders",
    "ShardSampler",
    "ShardedShuffleSampler",
    "available_datasets",
    "build_datasets",
    "build_loaders",
    "default_cache_dir",
    "open_dataset",
    "set_epoch",
]
