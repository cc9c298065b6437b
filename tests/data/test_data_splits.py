from __future__ import annotations

import pytest
import torch

from regprune.data.splits import balanced_subset, stratified_split


def test_stratified_split_holds_out_the_fraction_of_every_class():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)

    keep, held_out = stratified_split(targets, 0.2, seed=0)

    assert torch.bincount(targets[held_out]).tolist() == [10, 6, 4]
    assert sorted(torch.cat([keep, held_out]).tolist()) == list(range(100))


def test_stratified_split_is_deterministic_per_seed():
    targets = torch.arange(100) % 4

    first = stratified_split(targets, 0.25, seed=3)
    again = stratified_split(targets, 0.25, seed=3)
    other = stratified_split(targets, 0.25, seed=4)

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def test_balanced_subset_counts_differ_by_at_most_one():
    targets = torch.arange(1000) % 7

    chosen = balanced_subset(targets, torch.arange(1000), 100, seed=0)

    counts = torch.bincount(targets[chosen])
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100
    assert counts.max() - counts.min() <= 1


def test_balanced_subset_lets_other_classes_fill_a_small_class_gap():
    targets = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)

    chosen = balanced_subset(targets, torch.arange(102), 30, seed=0)

    assert torch.bincount(targets[chosen]).tolist() == [2, 14, 14]


def test_balanced_subset_draws_only_from_the_pool_and_is_deterministic():
    targets = torch.arange(200) % 10
    pool = torch.arange(50, 150)

    chosen = balanced_subset(targets, pool, 40, seed=1)

    assert torch.equal(chosen, balanced_subset(targets, pool, 40, seed=1))
    assert not torch.equal(chosen, balanced_subset(targets, pool, 40, seed=2))
    assert chosen.min() >= 50 and chosen.max() < 150


@pytest.mark.parametrize("size", [0, 101])
def test_balanced_subset_rejects_impossible_sizes(size):
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        balanced_subset(torch.arange(100) % 2, torch.arange(100), size, seed=0)


def test_split_fraction_is_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stratified_split(torch.zeros(10, dtype=torch.long), 1.0, seed=0)
