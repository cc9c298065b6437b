from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from regprune.data import (
    DataSplits,
    EpochShuffleSampler,
    ShardedShuffleSampler,
    ShardSampler,
    build_datasets,
    build_loaders,
    set_epoch,
)


def _splits(n: int = 40) -> DataSplits:
    data = TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 2)
    return DataSplits(data, data, data, num_classes=2, in_channels=1, image_size=1)


def _epoch_order(loader, epoch: int) -> list[int]:
    set_epoch(loader, epoch)
    return [int(v) for inputs, _ in loader for v in inputs.flatten()]


def test_shuffling_is_a_function_of_seed_and_epoch():
    loader = build_loaders(_splits(), batch_size=8, seed=0).train
    fresh = build_loaders(_splits(), batch_size=8, seed=0).train
    other_seed = build_loaders(_splits(), batch_size=8, seed=1).train

    epoch0, epoch1 = _epoch_order(loader, 0), _epoch_order(loader, 1)

    assert sorted(epoch0) == list(range(40))
    assert epoch0 != epoch1
    # A fresh loader (a resumed run) jumping straight to epoch 1 sees the same order.
    assert _epoch_order(fresh, 1) == epoch1
    assert _epoch_order(other_seed, 0) != epoch0


def test_worker_seeds_follow_the_epoch_too(idx_dir, cache_dir):
    splits = build_datasets("mnist", root=idx_dir, cache_dir=cache_dir, subset=20)

    def first_batch(epoch: int) -> torch.Tensor:
        loader = build_loaders(splits, batch_size=20, workers=1, seed=0).train
        set_epoch(loader, epoch)
        torch.manual_seed(epoch + 100)  # the global RNG must not matter with workers
        return next(iter(loader))[0]

    assert torch.equal(first_batch(2), first_batch(2))
    assert not torch.equal(first_batch(2), first_batch(3))


def test_eval_loaders_are_ordered_and_complete():
    loaders = build_loaders(_splits(10), batch_size=4)

    assert [int(v) for x, _ in loaders.test for v in x.flatten()] == list(range(10))
    assert loaders.val is not None


def test_last_batch_dropped_only_when_it_would_hold_one_sample():
    assert len(build_loaders(_splits(17), batch_size=8).train) == 2
    assert len(build_loaders(_splits(18), batch_size=8).train) == 3


def test_shard_sampler_partitions_without_padding():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]

    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(shard) for shard in shards] == [4, 3, 3]


@pytest.mark.parametrize(("length", "world_size"), [(24, 2), (24, 3), (23, 4)])
def test_ranks_together_take_the_single_process_batches(length, world_size):
    """Step t of the ranks (batch b each) is step t of one process with batch world_size * b."""
    per_rank_batch = 3
    single = EpochShuffleSampler(length, seed=5)
    ranks = [ShardedShuffleSampler(length, 5, rank, world_size) for rank in range(world_size)]
    for sampler in (single, *ranks):
        sampler.set_epoch(2)
    order = list(single)
    shards = [list(sampler) for sampler in ranks]

    steps = -(-length // (world_size * per_rank_batch))
    assert [len(shard) for shard in shards] == [-(-length // world_size)] * world_size
    for step in range(steps):
        window = slice(step * per_rank_batch, (step + 1) * per_rank_batch)
        together = sorted(i for shard in shards for i in shard[window])
        size = world_size * per_rank_batch
        expected = (order + order)[step * size : (step + 1) * size]  # padding repeats the start
        assert together == sorted(expected[: len(together)])
    padding = world_size * len(shards[0]) - length
    assert sorted(i for shard in shards for i in shard) == sorted(order + order[:padding])


def test_sharded_sampler_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        ShardedShuffleSampler(10, seed=0, rank=2, world_size=2)


def test_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError, match="initialized process group"):
        build_loaders(_splits(), batch_size=8, distributed=True)


def test_missing_val_split_gives_no_val_loader():
    data = _splits()
    splits = DataSplits(data.train, None, data.test, 2, 1, 1)

    assert build_loaders(splits, batch_size=8).val is None
