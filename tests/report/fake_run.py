"""A small but real run directory: the files the pipeline writes, with known numbers in them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from regprune.report import RunSummary

PHASE_EPOCHS = {"pretrain": 3, "sparsify": 4, "finetune": 3}
SNAPSHOT_EPOCHS = (1, 2, 3, 4)


def make_summary(**overrides: Any) -> RunSummary:
    """A summary with distinctive numbers, so the report's text can be searched for them."""
    fields: dict[str, Any] = {
        "method": "masksparsity",
        "model": "resnet20",
        "dataset": "fashion-mnist",
        "seeds": [0],
        "command": "regprune run configs/masksparsity_resnet20.yaml --seed 0",
        "acc_before_prune": [0.9123],
        "acc_after_prune": [0.4567],
        "acc_after_finetune": [0.9087],
        "macs_before": 40_812_544,
        "macs_after": 20_406_272,
        "params_before": 269_722,
        "params_after": 70_138,
        "latency_ms_before": {1: 2.5, 64: 80.0},
        "latency_ms_after": {1: 1.25, 64: 50.0},
        "layer_widths": {"conv1": (16, 8), "layer1.0.conv1": (16, 4), "fc": (10, 10)},
        "phase_time_s": {"pretrain": 30.0, "sparsify": 400.0, "finetune": 9000.0},
        "ratio": 0.5,
        "machine": "testhost: x86_64, 2 CPUs, 1 torch threads, no GPU",
    }
    fields.update(overrides)
    return RunSummary(**fields)


def metrics_records() -> list[dict[str, Any]]:
    """Per-epoch records as the trainer writes them; epochs restart in every phase."""
    records = []
    step = 0
    for phase, epochs in PHASE_EPOCHS.items():
        for epoch in range(1, epochs + 1):
            step += 1
            acc = 0.5 + 0.04 * step
            records.append(
                {
                    "phase": phase,
                    "epoch": epoch,
                    "train_loss": 2.0 / step,
                    "train_acc": acc,
                    "val_loss": 2.2 / step,
                    "val_acc": acc - 0.02,
                    "lr": 0.1,
                    "time_s": 1.5,
                    "sparsity/mean_gamma": 1.0 / step,
                }
            )
    records[0]["val_loss"] = records[0]["val_acc"] = None  # a phase without validation epoch
    return records


def snapshot(epoch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """|gamma| per BN layer and group norms: half the channels shrink by 10x per epoch."""
    shrink = torch.ones(16)
    shrink[:8] = 10.0 ** -(epoch - 1)
    return {
        "bn1": torch.rand(16, generator=generator).add(0.5).mul(shrink),
        "layer1.0.bn1": torch.rand(16, generator=generator).add(0.5).mul(shrink),
        "group:3": torch.rand(8, generator=generator).add(1.0),
    }


def write_run(run_dir: Path, summary: RunSummary | None = None, snapshots: bool = True) -> Path:
    """Write config, metrics, snapshots and the summary into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("model: resnet20\nmethod: masksparsity\n")
    lines = [json.dumps(record) + "\n" for record in metrics_records()]
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    if snapshots:
        (run_dir / "sparsity").mkdir()
        generator = torch.Generator().manual_seed(0)
        for epoch in SNAPSHOT_EPOCHS:
            torch.save(snapshot(epoch, generator), run_dir / "sparsity" / f"epoch_{epoch:03d}.pt")
    (summary or make_summary()).save(run_dir)
    return run_dir
