"""One training phase (pretrain, sparsify or finetune): build the trainer, resume, fit.

The three training phases differ only in the model, the method and the settings, so they share
this function; what resuming means (continue from ``checkpoints/<phase>.pt`` when it exists) is
therefore the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from regprune.io import atomic_torch_save
from regprune.lifecycle import PruningMethod
from regprune.pipeline.config import TrainSection
from regprune.pipeline.context import RunContext, logger
from regprune.pipeline.rundir import METRICS_FILE
from regprune.train import MetricsLog, Trainer, is_main_process


def write_snapshot(method: PruningMethod, path: Path) -> None:
    """Save ``method.sparsity_snapshot()`` as ``{name: 1-D float tensor}`` (nothing if empty)."""
    snapshot = method.sparsity_snapshot()
    if snapshot:
        tensors = {k: v.detach().float().reshape(-1).cpu() for k, v in snapshot.items()}
        atomic_torch_save(tensors, path)


class SnapshotTrainer(Trainer):
    """A :class:`Trainer` that also saves the method's sparsity snapshot every epoch.

    Why through ``save_checkpoint``: it is the trainer's one end-of-epoch persistence step, so the
    snapshot of epoch k is written exactly when the checkpoint of epoch k is, and a resumed run
    rewrites the snapshots of the epochs it repeats.
    """

    def __init__(self, *args: Any, snapshot_path: Callable[[int], Path], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot_path = snapshot_path

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        if self.method is not None and is_main_process():
            write_snapshot(self.method, self.snapshot_path(self.epochs_done))
        super().save_checkpoint(path)


def train_phase(
    ctx: RunContext,
    phase: str,
    model: nn.Module,
    section: TrainSection,
    method: PruningMethod | None = None,
    snapshots: bool = False,
) -> float:
    """Train ``model`` for ``section.epochs``, continuing ``checkpoints/<phase>.pt`` if present.

    Args:
        ctx: the run.
        phase: ``"pretrain"``, ``"sparsify"`` or ``"finetune"`` (metrics and checkpoint label).
        model: the model, already on the device; the method (if any) was built on it, so the
            optimizer the trainer builds sees every parameter the method installed.
        section: the phase's settings; ``epochs == 0`` returns at once.
        method: its hooks run every iteration.
        snapshots: write ``sparsity/epoch_XXX.pt`` (epoch 0 before training on a fresh start).

    Returns:
        Seconds the already completed epochs took in an earlier process (0 on a fresh start),
        so the phase's wall time covers the whole phase across a resume.
    """
    if section.epochs == 0:
        return 0.0
    checkpoint = ctx.run_dir.checkpoint(phase)
    metrics_path = ctx.run_dir.path(METRICS_FILE)
    options: dict[str, Any] = {
        "config": section.train_config(ctx.config.device, ctx.config.progress),
        "method": method,
        "metrics_path": metrics_path,
        "checkpoint_path": checkpoint,
        "phase": phase,
        "run_config": ctx.config.to_dict(),
    }
    loaders = ctx.loaders
    trainer: Trainer
    if snapshots and method is not None:
        trainer = SnapshotTrainer(
            model, loaders.train, loaders.val, snapshot_path=ctx.run_dir.snapshot, **options
        )
    else:
        trainer = Trainer(model, loaders.train, loaders.val, **options)
    earlier_s = 0.0
    if checkpoint.is_file():
        trainer.resume(checkpoint)
        logger.info("[%s] resuming after epoch %d", phase, trainer.epochs_done)
        earlier_s = sum(
            float(record.get("time_s", 0.0))
            for record in MetricsLog(metrics_path).read()
            if record.get("phase") == phase and record.get("epoch", 0) <= trainer.epochs_done
        )
    elif snapshots and method is not None and ctx.main:
        write_snapshot(method, ctx.run_dir.snapshot(0))
    trainer.fit()
    return earlier_s
