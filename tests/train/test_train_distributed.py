"""Two real processes on the gloo backend: DDP steps agree and rank 0's objects reach everyone."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_fixtures import GrowingL1, tiny_model, tiny_splits

from regprune.data import build_loaders
from regprune.train import (
    TrainConfig,
    Trainer,
    broadcast_object,
    cleanup,
    init_distributed,
    is_main_process,
    load_checkpoint,
)

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_rank(rank: int, port: int) -> None:
    """What torchrun gives a process: its rank and the rendezvous in env vars, one thread."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",
    )
    torch.set_num_threads(1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One torchrun-like process: env vars in, two DDP steps, results written to a file."""
    _as_rank(rank, port)
    info = init_distributed()
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # 32 samples / 2 ranks / batch 8 = 2 steps per rank, each on different data.
    loaders = build_loaders(tiny_splits(32), batch_size=8, seed=0, distributed=True)
    trainer = Trainer(
        model,
        loaders.train,
        loaders.val,
        config=TrainConfig(epochs=1, lr=0.1, device="cpu", progress=False),
        method=GrowingL1(model),
        checkpoint_path=Path(out_dir) / "last.pt",
    )
    history = trainer.fit()
    plan = broadcast_object({"drop": [3, 1], "from": rank} if rank == 0 else None)
    torch.save(
        {
            "info": (info.rank, info.world_size, info.backend),
            "main": is_main_process(),
            "initial": initial,
            "final": model.state_dict(),
            "train_samples": len(loaders.train.sampler),
            "history": history,
            "plan": plan,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    cleanup()


def test_two_gloo_ranks_take_identical_steps_and_share_rank0_objects(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert [r["info"] for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert [r["main"] for r in ranks] == [True, False]
    assert [r["plan"] for r in ranks] == [{"drop": [3, 1], "from": 0}] * 2
    assert [r["train_samples"] for r in ranks] == [16, 16]
    first, second = ranks
    assert not torch.equal(first["initial"]["0.weight"], second["initial"]["0.weight"])
    # Parameters agree because both ranks stepped on the same all-reduced (and method-edited)
    # gradients; buffers agree because the trainer syncs them from rank 0 before evaluating.
    for key, value in first["final"].items():
        assert torch.equal(value, second["final"][key]), key
    assert not torch.equal(first["final"]["0.weight"], first["initial"]["0.weight"])
    # Metrics are reduced over ranks, so both report the same numbers.
    assert first["history"][0]["train_loss"] == second["history"][0]["train_loss"]
    assert first["history"][0]["val_acc"] == second["history"][0]["val_acc"]
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["epoch"] == 1
    assert torch.equal(checkpoint["model"]["0.weight"], first["final"]["0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "rank0.pt", "rank1.pt"]


# 64 samples / 2 ranks / batch 8 = 4 steps per epoch.
CRASH_SAMPLES, STEPS_PER_EPOCH, EPOCHS = 64, 4, 3


class DiesMidEpoch(GrowingL1):
    """Rank ``victim`` is SIGKILLed (no cleanup, like the OOM killer) after iteration ``dies_at``.

    Rank 0 also saves its weights right after the last step of epoch 1, which is what the
    epoch-1 checkpoint must hold: the trainer syncs buffers from rank 0 before saving.
    """

    def __init__(self, model: torch.nn.Module, victim: int, dies_at: int, out_dir: str) -> None:
        super().__init__(model)
        self.victim, self.dies_at, self.out_dir = victim, dies_at, Path(out_dir)

    def step(self) -> None:
        super().step()
        rank = torch.distributed.get_rank()
        if rank == 0 and self.iteration == STEPS_PER_EPOCH:
            torch.save(self.model.state_dict(), self.out_dir / "after_epoch1.pt")
        if rank == self.victim and self.iteration == self.dies_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _crash_worker(rank: int, port: int, out_dir: str, victim: int | None) -> None:
    """Train EPOCHS epochs on two ranks; with a ``victim``, it dies half-way through epoch 2."""
    _as_rank(rank, port)
    init_distributed()
    torch.manual_seed(0)
    model = tiny_model()
    loaders = build_loaders(tiny_splits(CRASH_SAMPLES), batch_size=8, seed=0, distributed=True)
    dies_at = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2
    trainer = Trainer(
        model,
        loaders.train,
        config=TrainConfig(epochs=EPOCHS, lr=0.1, device="cpu", progress=False),
        method=DiesMidEpoch(model, victim, dies_at, out_dir)
        if victim is not None
        else GrowingL1(model),
        checkpoint_path=Path(out_dir) / "last.pt",
    )
    if victim is None:  # the restarted job: resume from what the crashed one left
        trainer.resume(Path(out_dir) / "last.pt")
        resumed_from = trainer.epochs_done
        history = trainer.fit()
        if rank == 0:
            epochs = [r["epoch"] for r in history]
            torch.save(
                {"resumed_from": resumed_from, "epochs": epochs}, Path(out_dir) / "resumed.pt"
            )
    else:
        trainer.fit()
    cleanup()


@pytest.mark.parametrize("victim", [0, 1], ids=["writer-rank-0", "rank-1"])
def test_a_rank_killed_mid_epoch_leaves_the_last_epochs_checkpoint_to_resume_from(tmp_path, victim):
    with pytest.raises(mp.ProcessExitedException) as crashed:
        mp.spawn(
            _crash_worker,
            args=(_free_port(), str(tmp_path), victim),
            nprocs=WORLD_SIZE,
            join=True,
        )

    assert (crashed.value.error_index, crashed.value.signal_name) == (victim, "SIGKILL")
    # only the checkpoint and the test's own snapshot: no temp file of a write cut short
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after_epoch1.pt", "last.pt"]
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["epoch"] == 1
    assert checkpoint["method"]["iteration"] == STEPS_PER_EPOCH
    expected = torch.load(tmp_path / "after_epoch1.pt", weights_only=True)
    assert checkpoint["model"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(checkpoint["model"][key], value), key

    mp.spawn(_crash_worker, args=(_free_port(), str(tmp_path), None), nprocs=WORLD_SIZE)

    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert resumed == {"resumed_from": 1, "epochs": list(range(2, EPOCHS + 1))}
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == EPOCHS


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    info = init_distributed()

    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert is_main_process()
    assert broadcast_object({"a": 1}) == {"a": 1}
