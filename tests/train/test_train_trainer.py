from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace

import pytest
import torch
from train_fixtures import GrowingL1, tiny_model, tiny_splits

from regprune.data import build_loaders
from regprune.lifecycle import PruningMethod
from regprune.train import CheckpointError, TrainConfig, Trainer, seed_everything

CONFIG = TrainConfig(epochs=3, lr=0.05, nesterov=True, label_smoothing=0.1, progress=False)
STEPS_PER_EPOCH = 6  # 96 samples, batch 16
REQUIRED_KEYS = ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")


def _trainer(tmp_path, seed=0, interrupt_at=None, method=True, config=CONFIG, phase="train"):
    seed_everything(seed)
    model = tiny_model()
    loaders = build_loaders(tiny_splits(), batch_size=16, seed=0)
    return Trainer(
        model,
        loaders.train,
        loaders.val,
        config=config,
        method=GrowingL1(model, interrupt_at) if method else None,
        metrics_path=tmp_path / "metrics.jsonl",
        checkpoint_path=tmp_path / "last.pt",
        phase=phase,
    )


def _records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_ends_bit_identical_to_the_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "straight")
    straight.fit()

    crashed = _trainer(tmp_path / "resumed", interrupt_at=STEPS_PER_EPOCH + 2)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()  # dies inside epoch 2, after epoch 1's checkpoint
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"epoch": 2, "phase": "train", "stale": True}) + "\n")
    resumed = _trainer(tmp_path / "resumed", seed=123)  # other init: everything must come back
    resumed.resume(tmp_path / "resumed" / "last.pt")
    assert resumed.epochs_done == 1
    resumed.fit()

    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.method.state_dict() == straight.method.state_dict()
    expected = [
        {k: v for k, v in r.items() if k != "time_s"} for r in _records(tmp_path / "straight")
    ]
    actual = [{k: v for k, v in r.items() if k != "time_s"} for r in _records(tmp_path / "resumed")]
    assert actual == expected


def test_metrics_lines_and_one_log_line_per_epoch(tmp_path, caplog):
    trainer = _trainer(tmp_path)

    with caplog.at_level(logging.INFO, logger="regprune.train"):
        history = trainer.fit()

    records = _records(tmp_path)
    assert records == history
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(REQUIRED_KEYS) <= record.keys()
        assert record["phase"] == "train" and record["method"]["lam"] > 1e-3
    assert records[0]["lr"] > records[1]["lr"] > records[2]["lr"]  # cosine
    assert trainer.train_loader.sampler.epoch == 2  # reshuffled for every epoch
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert len(lines) == 3
    assert lines[0].startswith("[train] epoch 1/3  train loss") and "val loss" in lines[0]


def test_reproducible_from_the_seed_alone(tmp_path):
    first = _trainer(tmp_path / "a")
    first.fit()
    second = _trainer(tmp_path / "b")
    second.fit()

    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


class StopsAfterTwelveSteps(PruningMethod):
    name = "stops"

    def wants_more_training(self) -> bool:
        return self.iteration < 12


def test_training_stops_when_the_method_needs_no_more():
    model = tiny_model()
    loaders = build_loaders(tiny_splits(), batch_size=16)
    config = TrainConfig(epochs=5, progress=False)
    trainer = Trainer(model, loaders.train, config=config, method=StopsAfterTwelveSteps(model))

    history = trainer.fit()

    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["val_loss"] is None


def test_resume_refuses_a_checkpoint_of_another_setup(tmp_path):
    _trainer(tmp_path, config=TrainConfig(epochs=1, progress=False)).fit()
    checkpoint = tmp_path / "last.pt"

    with pytest.raises(CheckpointError, match="method 'growing_l1', this trainer has None"):
        _trainer(tmp_path, method=False).resume(checkpoint)
    with pytest.raises(CheckpointError, match="phase 'train', not 'finetune'"):
        _trainer(tmp_path, phase="finetune").resume(checkpoint)


def test_resume_with_changed_settings_warns(tmp_path, caplog):
    _trainer(tmp_path, config=TrainConfig(epochs=1, progress=False)).fit()

    with caplog.at_level(logging.WARNING, logger="regprune.train"):
        _trainer(tmp_path, config=TrainConfig(epochs=2, progress=False)).resume(
            tmp_path / "last.pt"
        )

    assert "epochs: 1 -> 2" in caplog.text


def test_method_must_belong_to_the_trained_model():
    loaders = build_loaders(tiny_splits(), batch_size=16)

    with pytest.raises(ValueError, match="different model"):
        Trainer(tiny_model(), loaders.train, config=CONFIG, method=GrowingL1(tiny_model()))


def test_amp_on_cpu_warns_once_and_trains_as_float32(tmp_path):
    config = TrainConfig(epochs=2, progress=False)
    plain = _trainer(tmp_path / "plain", config=config)
    plain_history = plain.fit()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning must show, not be deduplicated
        trainer = _trainer(tmp_path / "amp", config=replace(config, amp=True))
        history = trainer.fit()

    amp_warnings = [w for w in caught if "needs CUDA" in str(w.message)]
    assert [str(w.message) for w in amp_warnings] == [
        "amp=True needs CUDA; training in float32 on cpu"
    ]
    assert amp_warnings[0].category is UserWarning
    assert trainer.device == torch.device("cpu") and trainer.scaler is None
    # the fallback is plain float32 training: the same run, step for step
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in plain_history]
    for key, value in plain.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
        assert trainer.model.state_dict()[key].dtype == value.dtype


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": 1, "schedule": "poly"}, "schedule must be one of"),
        ({"epochs": 1, "label_smoothing": 1.0}, "label_smoothing"),
        ({"epochs": 1, "grad_clip": 0.0}, "grad_clip"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
