"""Trainer options for several phases on one loader: a shuffle stream per phase, a fixed
number of epochs whatever the method says, and a per-epoch hook."""

from __future__ import annotations

import pytest
from train_fixtures import tiny_model, tiny_splits

from regprune.data import build_loaders
from regprune.lifecycle import PruningMethod
from regprune.train import TrainConfig, Trainer

CONFIG = TrainConfig(epochs=2, lr=0.05, progress=False)


class DoneAtOnce(PruningMethod):
    """Says after three iterations that it needs no more training."""

    name = "done_at_once"

    def wants_more_training(self) -> bool:
        return self.iteration < 3


def _orders(epoch_offset: int) -> list[list[int]]:
    """The sample order of each epoch the trainer ran, read from the loader's sampler."""
    model = tiny_model()
    loaders = build_loaders(tiny_splits(), batch_size=16, seed=0)
    sampler = loaders.train.sampler
    orders: list[list[int]] = []
    trainer = Trainer(model, loaders.train, config=CONFIG, epoch_offset=epoch_offset)
    trainer.fit(after_epoch=lambda record: orders.append(sampler.permutation()))
    return orders


def test_epoch_offset_shuffles_as_the_later_epochs_of_the_same_loader():
    plain = _orders(0)
    shifted = _orders(1)

    assert plain[0] != plain[1]
    assert shifted[0] == plain[1]  # a second phase starting at offset 1 does not replay epoch 0
    assert shifted[1] not in plain


def test_stop_when_done_false_trains_every_epoch_and_calls_the_hook_after_each():
    model = tiny_model()
    loaders = build_loaders(tiny_splits(), batch_size=16)
    method = DoneAtOnce(model)
    seen: list[int] = []

    history = Trainer(model, loaders.train, config=CONFIG, method=method, stop_when_done=False).fit(
        after_epoch=lambda record: seen.append(record["epoch"])
    )

    assert [r["epoch"] for r in history] == [1, 2] == seen
    assert method.iteration == 2 * len(loaders.train)


def test_negative_epoch_offset_is_refused():
    model = tiny_model()
    loaders = build_loaders(tiny_splits(), batch_size=16)
    with pytest.raises(ValueError, match="epoch_offset must be >= 0"):
        Trainer(model, loaders.train, config=CONFIG, epoch_offset=-1)
