from __future__ import annotations

import numpy as np
import pytest
import torch

from regprune.data import build_datasets


def _targets(dataset) -> list[int]:
    return list(dataset.targets)


def test_splits_partition_the_train_set_and_keep_test_whole(idx_dir, cache_dir):
    splits = build_datasets("fashion-mnist", root=idx_dir, cache_dir=cache_dir, val_fraction=0.1)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 60)
    assert set(splits.train.indices).isdisjoint(splits.val.indices)
    assert torch.bincount(torch.tensor(_targets(splits.val))).tolist() == [2] * 10
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)


def test_train_is_augmented_and_val_test_are_not(idx_dir, cache_dir):
    splits = build_datasets("fashion-mnist", root=idx_dir, cache_dir=cache_dir)
    torch.manual_seed(0)

    train_views = [splits.train[0][0] for _ in range(8)]
    val_views = [splits.val[0][0] for _ in range(3)]

    assert train_views[0].shape == (1, 28, 28)
    assert any(not torch.equal(train_views[0], view) for view in train_views[1:])
    assert all(torch.equal(val_views[0], view) for view in val_views[1:])


def test_augment_false_gives_train_the_eval_transform(idx_dir, cache_dir):
    splits = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, augment=False)

    assert torch.equal(splits.train[3][0], splits.train[3][0])


def test_subset_is_class_balanced_and_deterministic(idx_dir, cache_dir):
    def build(seed: int):
        return build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, subset=50, seed=seed)

    first, again, other = build(0), build(0), build(1)

    assert len(first.train) == 50
    assert torch.bincount(torch.tensor(_targets(first.train))).tolist() == [5] * 10
    assert first.train.indices == again.train.indices
    assert first.test.indices == again.test.indices
    assert first.train.indices != other.train.indices


def test_subset_shrinks_val_and_test_proportionally_with_every_class(idx_dir, cache_dir):
    splits = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, subset=90)

    # 90 of the 180-sample train split: val 20 -> 10, test 60 -> 30, one per class at least.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 30)
    assert torch.bincount(torch.tensor(_targets(splits.test))).tolist() == [3] * 10

    tiny = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, subset=10)
    assert len(tiny.val) == 10 and len(tiny.test) == 10


def test_val_fraction_zero_means_no_val_set(idx_dir, cache_dir):
    splits = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, val_fraction=0.0)

    assert splits.val is None
    assert len(splits.train) == 200


def test_subset_larger_than_the_train_split_is_rejected(idx_dir, cache_dir):
    with pytest.raises(ValueError, match=r"subset must be in \[1, 180\]"):
        build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, subset=181)


def test_normalization_uses_the_data_set_statistics(idx_dir, cache_dir):
    splits = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, augment=False)
    image, _ = splits.test[0]
    raw_image, _ = splits.test.base[splits.test.indices[0]]

    expected = (torch.from_numpy(np.asarray(raw_image, dtype=np.float32)) / 255 - 0.1307) / 0.3081
    assert torch.allclose(image[0], expected, atol=1e-5)
