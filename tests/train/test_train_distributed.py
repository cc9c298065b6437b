"""Two real processes on the gloo backend: DDP steps agree and rank 0's objects reach everyone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One torchrun-like process: env vars in, two DDP steps, results written to a file."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",
    )
    torch.set_num_threads(1)
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


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    info = init_distributed()

    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert is_main_process()
    assert broadcast_object({"a": 1}) == {"a": 1}
