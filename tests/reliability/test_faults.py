"""Fault injection in the training engine: interrupted checkpoint writes, a killed writer,
damaged checkpoint files, and a non-finite loss. Recorded in docs/reliability.md."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import regprune as rp
from regprune.lifecycle import PruningMethod
from regprune.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    save_checkpoint,
    train_one_epoch,
)

_real_save = torch.save


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def batches(n: int = 4, poison: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 8 points; batch number ``poison`` (1-based) holds a NaN input."""
    generator = torch.Generator().manual_seed(0)
    data = []
    for i in range(1, n + 1):
        x = torch.randn(8, 6, generator=generator)
        if i == poison:
            x[3, 2] = float("nan")
        data.append((x, torch.arange(8) % 2))
    return data


def half_write_then(error: BaseException) -> Callable[..., None]:
    """A torch.save that writes the first half of the real bytes, then fails."""

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        _real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        raise error

    return save


def write_checkpoint(path: Path, epoch: int) -> None:
    save_checkpoint(path, model=tiny_model(), epoch=epoch)


def write_pruned(path: Path, epoch: int) -> None:
    model = tiny_model()
    rp.save_pruned(rp.prune(model, torch.randn(1, 6), ratio=0.25 * epoch), path)


def read_epoch(path: Path) -> int:
    return int(load_checkpoint(path)["epoch"])


def read_width(path: Path) -> int:
    return int(rp.load_pruned(tiny_model(), path)[0].out_features)


WRITERS = {
    "save_checkpoint": (write_checkpoint, read_epoch, 1),
    "save_pruned": (write_pruned, read_width, 6),
}
FAULTS = {
    "torch.save-half-then-OSError": ("torch", "save", half_write_then(OSError("disk full"))),
    "torch.save-half-then-Ctrl-C": ("torch", "save", half_write_then(KeyboardInterrupt())),
    "os.replace-fails": ("os", "replace", None),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, fault: str
) -> None:
    write, read, first_value = WRITERS[writer]
    path = tmp_path / "last.pt"
    write(path, 1)
    before = path.read_bytes()
    module, name, replacement = FAULTS[fault]
    if replacement is None:

        def replacement(*args: object) -> None:
            raise OSError("rename failed")

    monkeypatch.setattr(torch if module == "torch" else os, name, replacement)

    with pytest.raises((OSError, KeyboardInterrupt)):
        write(path, 2)

    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read(path) == first_value
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _write_and_hang(path: Path, ready: multiprocessing.synchronize.Event) -> None:
    """Child process: start writing epoch 2, signal once half of it is on disk, then hang."""

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        _real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        ready.set()
        time.sleep(120)

    torch.save = save
    write_checkpoint(path, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to kill a writer cheaply")
def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    write_checkpoint(path, 1)
    before = path.read_bytes()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    writer = context.Process(target=_write_and_hang, args=(path, ready))
    writer.start()
    try:
        assert ready.wait(60), "the writer never started writing"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.join(30)
    assert writer.exitcode == -signal.SIGKILL
    assert path.read_bytes() == before and read_epoch(path) == 1
    # SIGKILL runs no cleanup: the half-written temp file stays, hidden, never under the real name.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".last.pt.") and leftovers[0].endswith(".tmp")


def test_a_failed_epoch_checkpoint_leaves_the_last_good_one_to_resume_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    saved_models: list[dict[str, torch.Tensor]] = []

    def fail_after_first(obj: dict, f: object, *args: object, **kwargs: object) -> None:
        saved_models.append({k: v.clone() for k, v in obj["model"].items()})
        if len(saved_models) == 1:
            _real_save(obj, f, *args, **kwargs)
        else:
            half_write_then(OSError("disk full"))(obj, f, *args, **kwargs)

    config = TrainConfig(epochs=2, lr=0.05, device="cpu", progress=False)
    monkeypatch.setattr(torch, "save", fail_after_first)
    with pytest.raises(OSError, match="disk full"):
        Trainer(tiny_model(), batches(), config=config, checkpoint_path=path).fit()
    monkeypatch.undo()

    assert len(saved_models) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    fresh = Trainer(tiny_model(), batches(), config=config, checkpoint_path=path)
    fresh.resume(path)
    assert fresh.epochs_done == 1
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, saved_models[0][key]), key


# ---- damaged checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 1, 64, 0.5, -1], ids=["empty", "1B", "64B", "half", "-1B"])
def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(
    tmp_path: Path, keep: float
) -> None:
    path = tmp_path / "last.pt"
    write_checkpoint(path, 1)
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=rf"{path}: unreadable, the file is truncated"):
        load_checkpoint(path)


def test_resuming_from_a_truncated_checkpoint_fails_before_touching_the_model(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.pt"
    config = TrainConfig(epochs=1, lr=0.05, device="cpu", progress=False)
    Trainer(tiny_model(), batches(), config=config, checkpoint_path=path).fit()
    path.write_bytes(path.read_bytes()[:-100])
    fresh = Trainer(tiny_model(), batches(), config=config)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fresh.resume(path)
    assert fresh.epochs_done == 0
    assert all(torch.equal(v, before[k]) for k, v in fresh.model.state_dict().items())


def write_wide_checkpoint(path: Path) -> nn.Module:
    """A checkpoint whose largest stored tensor is the model's weight (16 KiB)."""
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    save_checkpoint(path, model=model, epoch=1)
    return model


def flip_a_byte_of_the_weights(path: Path) -> None:
    """Flip one byte inside the largest stored tensor, leaving the archive structure intact."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    data = bytearray(path.read_bytes())
    start = info.header_offset
    name_length = int.from_bytes(data[start + 26 : start + 28], "little")
    extra_length = int.from_bytes(data[start + 28 : start + 30], "little")
    data[start + 30 + name_length + extra_length + info.file_size // 2] ^= 0xFF
    path.write_bytes(data)


def test_the_byte_flip_helper_damages_only_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    model = write_wide_checkpoint(path)
    flip_a_byte_of_the_weights(path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is not None  # the stored CRC no longer matches
    damaged = torch.load(path, weights_only=True)["model"]
    assert torch.equal(damaged["bias"], model.bias)
    assert (damaged["weight"] != model.weight).sum() == 1


def test_a_checkpoint_with_a_flipped_byte_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    write_wide_checkpoint(path)
    flip_a_byte_of_the_weights(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


# ---- non-finite loss -----------------------------------------------------------------------


class CountingMethod(PruningMethod):
    name = "counting"


@pytest.mark.parametrize("kind", ["nan-input", "inf-loss"])
def test_a_non_finite_loss_stops_before_the_optimizer_steps(kind: str) -> None:
    model = tiny_model().eval()
    method = CountingMethod(model)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9)
    scheduler = build_scheduler(optimizer, "cosine", epochs=1, steps_per_epoch=4)
    snapshots: list[dict[str, torch.Tensor]] = []

    def snapshot(*_: object) -> None:
        state = {f"param.{k}": v.detach().clone() for k, v in model.named_parameters()}
        for i, p in enumerate(model.parameters()):
            state[f"momentum.{i}"] = optimizer.state[p]["momentum_buffer"].clone()
        snapshots.append(state)

    optimizer.register_step_post_hook(snapshot)
    cross_entropy = nn.CrossEntropyLoss()
    calls = 0

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = cross_entropy(logits, targets)
        return loss * float("inf") if kind == "inf-loss" and calls == 3 else loss

    loader = batches(poison=3 if kind == "nan-input" else None)
    with pytest.raises(NonFiniteLossError, match=r"epoch 4, iteration 3: task loss (nan|inf)"):
        train_one_epoch(
            model,
            loader,
            optimizer,
            criterion,
            method,
            scheduler,
            device="cpu",
            epoch=4,
            progress=False,
        )

    assert len(snapshots) == 2  # iterations 1 and 2 stepped, iteration 3 did not
    assert method.iteration == 2 and scheduler.last_epoch == 2
    assert not model.training  # the caller's mode is back
    for key, value in snapshots[-1].items():
        kind_, name = key.split(".", 1)
        live = (
            dict(model.named_parameters())[name]
            if kind_ == "param"
            else optimizer.state[list(model.parameters())[int(name)]]["momentum_buffer"]
        )
        assert torch.equal(live, value), key
        assert torch.isfinite(live).all(), key


class DivergingPenalty(PruningMethod):
    """A regularizer whose penalty becomes NaN at its third iteration."""

    name = "diverging"

    def penalty(self) -> torch.Tensor:
        return torch.tensor(float("nan") if self.iteration == 2 else 0.0)


def test_a_diverging_penalty_is_blamed_and_the_error_says_what_to_do() -> None:
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9)
    loader = batches()

    with pytest.raises(NonFiniteLossError) as stopped:
        train_one_epoch(
            model,
            loader,
            optimizer,
            nn.CrossEntropyLoss(),
            DivergingPenalty(model),
            device="cpu",
            epoch=2,
            progress=False,
        )

    error = stopped.value
    assert (error.epoch, error.iteration) == (2, 3)
    assert error.penalty != error.penalty  # NaN
    # the task loss it reports is the real one of batch 3, on the weights that did not step
    inputs, targets = loader[2]
    with torch.no_grad():
        task_loss = nn.functional.cross_entropy(model(inputs), targets).item()
    assert error.task_loss == pytest.approx(task_loss, rel=1e-6)
    message = str(error)
    assert message.startswith(
        f"non-finite loss at epoch 2, iteration 3: task loss {error.task_loss}, penalty nan "
        "(the method's penalty diverged). The optimizer did not step."
    )
    assert "Lower the learning rate or the regularization strength" in message
