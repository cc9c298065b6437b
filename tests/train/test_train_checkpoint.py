from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import GrowingL1, tiny_model

from regprune.train import (
    FORMAT_VERSION,
    CheckpointError,
    build_optimizer,
    build_scheduler,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)


def _trained_state():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1)
    scheduler = build_scheduler(optimizer, "cosine", epochs=2, steps_per_epoch=3)
    method = GrowingL1(model)
    loss = model(torch.randn(4, 6)).sum() + method.penalty()
    loss.backward()
    optimizer.step()
    scheduler.step()
    method.step()
    return model, optimizer, scheduler, method


def test_round_trip_restores_every_part_and_loads_weights_only(tmp_path):
    model, optimizer, scheduler, method = _trained_state()
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        method=method,
        epoch=3,
        config={"lr": 0.1, "milestones": (1, 2)},
    )

    state = load_checkpoint(path)

    assert state["format_version"] == FORMAT_VERSION and state["epoch"] == 3
    assert state["config"] == {"lr": 0.1, "milestones": (1, 2)}
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    fresh_model, fresh_opt, fresh_sched, fresh_method = _fresh()
    load_model_state(fresh_model, state["model"])
    fresh_opt.load_state_dict(state["optimizer"])
    fresh_sched.load_state_dict(state["scheduler"])
    fresh_method.load_state_dict(state["method"])
    momentum = optimizer.state[model[0].weight]["momentum_buffer"]
    assert torch.equal(fresh_opt.state[fresh_model[0].weight]["momentum_buffer"], momentum)
    assert fresh_sched.last_epoch == 1
    assert (fresh_method.iteration, fresh_method.lam) == (1, method.lam)
    assert torch.load(path, weights_only=True)["epoch"] == 3


def _fresh():
    torch.manual_seed(1)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1)
    scheduler = build_scheduler(optimizer, "cosine", epochs=2, steps_per_epoch=3)
    return model, optimizer, scheduler, GrowingL1(model)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # populate Python's cached gaussian
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), epoch=0)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(2))

    restore_rng_state(load_checkpoint(path)["rng"])

    actual = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(2))
    assert actual[:3] == expected[:3]
    assert torch.equal(actual[3], expected[3])


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2), epoch=1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=nn.Linear(2, 2), epoch=2)

    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_unloadable_entries_are_rejected_at_save_time_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"'config'\['when'\].*weights_only"):
        save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), epoch=0, config={"when": Path()})
    with pytest.raises(TypeError, match="needs epoch"):
        save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1))
    assert not list(tmp_path.iterdir())


def test_truncated_file_is_a_checkpoint_error_naming_the_path(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=tiny_model(), epoch=1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(CheckpointError, match=rf"{path}: unreadable.*truncated or corrupt"):
        load_checkpoint(path)


def test_garbage_and_pickled_objects_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(1, 1), "epoch": 0}, pickled)

    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(pickled)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_missing_keys_and_newer_versions_are_explained(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"missing 'format_version', 'rng'"):
        load_checkpoint(path)

    torch.save({"model": {}, "epoch": 1, "rng": {}, "format_version": "2.0"}, path)
    with pytest.raises(
        CheckpointError, match=rf"format version 2.0 is newer.*\({FORMAT_VERSION}\)"
    ):
        load_checkpoint(path)


def test_other_architecture_names_the_first_mismatch_and_both_shapes():
    narrow = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    wide = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(8, 6\).*but \(16, 6\)"):
        load_model_state(wide, narrow.state_dict())
    with pytest.raises(CheckpointError, match=r"7 keys missing from the checkpoint \['1.weight'"):
        load_model_state(tiny_model(), narrow.state_dict())


def test_capture_holds_only_tensors_and_plain_values():
    state = capture_rng_state()

    assert isinstance(state["torch"], torch.Tensor)
    assert state["numpy"]["keys"].dtype == torch.int64
    assert state["python"]["state"].shape == (625,)
