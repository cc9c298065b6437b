"""Run N epochs of (regularized) training with checkpoints, exact resume and JSON-lines metrics.

Why a class: resume needs the model, optimizer, scheduler, method, scaler and epoch counter
restored together; holding them in one object makes "save everything" and "load everything"
two short methods that cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from regprune.data.loaders import set_epoch
from regprune.lifecycle import PruningMethod
from regprune.train import engine
from regprune.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from regprune.train.distributed import (
    barrier,
    get_world_size,
    is_main_process,
    resolve_device,
    sync_buffers,
)
from regprune.train.metrics_log import MetricsLog
from regprune.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from regprune.train.tensorboard import TENSORBOARD_DIR, TensorBoardLog

logger = logging.getLogger(__name__)

# Settings that change nothing about the trajectory; a resume may change them silently.
_RUNTIME_ONLY = {"device", "progress"}


@dataclass(kw_only=True)
class TrainSettings:
    """How one training phase optimizes: shared by :class:`TrainConfig` and the pipeline's phase
    sections, so the fields and their rules are written once.

    Attributes:
        epochs: run length (a pipeline phase with 0 epochs is skipped; the trainer needs >= 1).
        lr: peak learning rate.
        optimizer: ``sgd`` (default), ``adam`` or ``adamw``.
        momentum, nesterov: SGD settings (``nesterov`` needs ``sgd`` with momentum).
        weight_decay: L2 (decoupled for ``adamw``).
        schedule: ``cosine``, ``step`` or ``constant`` (per iteration).
        milestones, gamma: ``step`` schedule: drop epochs (default 1/2 and 3/4) and factor.
        label_smoothing: cross-entropy label smoothing (training loss only).
        amp: float16 mixed precision; CUDA only, ignored with a warning elsewhere.
        grad_clip: max global gradient norm, None for no clipping.
    """

    epochs: int = 0
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    amp: bool = False
    grad_clip: float | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid setting as ``(field, what is wrong)``; empty when all are valid."""
        found = []
        if not self.lr > 0:
            found.append(("lr", f"must be > 0, got {self.lr}"))
        if self.optimizer not in OPTIMIZERS:
            found.append(
                ("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
            )
        if self.schedule not in SCHEDULES:
            found.append(
                ("schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            found.append(("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"))
        if self.grad_clip is not None and not self.grad_clip > 0:
            found.append(("grad_clip", f"must be > 0 or None (null), got {self.grad_clip}"))
        if self.nesterov and not (self.momentum > 0 and self.optimizer == "sgd"):
            found.append(("nesterov", "needs optimizer sgd with momentum > 0"))
        return found


@dataclass(kw_only=True)
class TrainConfig(TrainSettings):
    """Plain training settings: :class:`TrainSettings` (``epochs`` required, >= 1) plus where
    it runs.

    Attributes:
        device: ``cuda``, ``cpu``, ``cuda:1``...; None picks CUDA when available.
        progress: tqdm bar on a TTY.
    """

    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name, problem in self.problems():
            raise ValueError(f"{name} {problem}")


def _format_epoch(record: Mapping[str, Any], epochs: int) -> str:
    line = (
        f"[{record['phase']}] epoch {record['epoch']}/{epochs}  "
        f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%}"
    )
    if record["val_loss"] is not None:
        line += f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.2%}"
    line += f"  lr {record['lr']:.4g}  {record['time_s']:.1f} s"
    if record["penalty"]:
        line += f"  penalty {record['penalty']:.4g}"
    line += "".join(f"  {key} {value:.4g}" for key, value in record["method"].items())
    return line


class Trainer:
    """SGD training of ``model`` for ``config.epochs`` epochs, with an optional pruning method.

    Each epoch: reseed the train loader for this epoch, run
    :func:`~regprune.train.engine.train_one_epoch`, evaluate on ``val_loader``, checkpoint
    (rank 0), append one JSON line to ``metrics_path`` (rank 0) and log one line on logger
    ``regprune.train.trainer`` at INFO. Training stops early
    when ``method.wants_more_training()`` turns False.

    Under ``torchrun`` (an initialized process group) the model is wrapped in DDP; the method
    was built on the plain model, whose parameters DDP shares, so its gradient edits act on the
    all-reduced gradients.

    Args:
        model: the model to train; moved to the config's device (build the method after that
            if it holds tensors of its own).
        train_loader: ideally from ``regprune.data.build_loaders`` (resume-exact shuffling).
        val_loader: evaluated after every epoch; None to skip.
        config: :class:`TrainConfig`.
        method: pruning method built on ``model``; its hooks run every iteration.
        metrics_path: JSON-lines file; records carry ``phase`` so phases can share one file.
        checkpoint_path: written after every epoch.
        phase: label of this stage (``"sparsity"``, ``"finetune"``...), in records and checkpoints.
        run_config: plain dict saved inside checkpoints (e.g. the whole YAML run config).
        epoch_offset: epoch ``e`` shuffles the train loader as epoch ``epoch_offset + e``: phases
            that share one loader (and seed) then do not replay each other's batch order. Give
            the same offset again when resuming.
        stop_when_done: stop early once ``method.wants_more_training()`` is False; False trains
            every epoch whatever the method says (a benchmark that gives every method the
            same epochs).

    Example:
        >>> trainer = Trainer(model, loaders.train, loaders.val, config=TrainConfig(epochs=30),
        ...                   method=method, checkpoint_path="run/last.pt")  # doctest: +SKIP
        >>> history = trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        config: TrainConfig,
        method: PruningMethod | None = None,
        metrics_path: str | os.PathLike[str] | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        phase: str = "train",
        run_config: Mapping[str, Any] | None = None,
        epoch_offset: int = 0,
        stop_when_done: bool = True,
    ) -> None:
        if method is not None and method.model is not model:
            raise ValueError("method was built on a different model than the one being trained")
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.train_model: nn.Module = model
        if get_world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(model, device_ids=device_ids)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.method = method
        self.phase = phase
        self.run_config = dict(run_config or {})
        if epoch_offset < 0:
            raise ValueError(f"epoch_offset must be >= 0, got {epoch_offset}")
        self.epoch_offset = epoch_offset
        self.stop_when_done = stop_when_done
        self.optimizer = build_optimizer(
            model,
            config.lr,
            config.momentum,
            config.nesterov,
            config.weight_decay,
            groups=method.optimizer_groups() if method is not None else (),
            kind=config.optimizer,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            config.schedule,
            epochs=config.epochs,
            steps_per_epoch=len(train_loader),
            milestones=config.milestones,
            gamma=config.gamma,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.use_amp = config.amp and self.device.type == "cuda"
        if config.amp and not self.use_amp:
            warnings.warn(
                f"amp=True needs CUDA; training in float32 on {self.device}", stacklevel=2
            )
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.metrics = MetricsLog(metrics_path) if metrics_path is not None else None
        self.tensorboard = (
            TensorBoardLog(Path(metrics_path).parent / TENSORBOARD_DIR)
            if metrics_path is not None and is_main_process()
            else None
        )
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.epochs_done = 0

    def fit(
        self, after_epoch: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Train from ``epochs_done`` (0, or the resumed epoch) to ``config.epochs``.

        Args:
            after_epoch: called with each epoch's record once it is logged and checkpointed,
                for a study that traces a quantity of the model or method over training.

        Returns:
            The records of the epochs run by this call (as written to the metrics file).
        """
        history: list[dict[str, Any]] = []
        if self.metrics is not None and is_main_process():
            self.metrics.drop_after(self.phase, self.epochs_done)
        for epoch in range(self.epochs_done, self.config.epochs):
            if (
                self.stop_when_done
                and self.method is not None
                and not self.method.wants_more_training()
            ):
                logger.info("[%s] %s needs no more training", self.phase, self.method.name)
                break
            start = time.perf_counter()
            set_epoch(self.train_loader, self.epoch_offset + epoch)
            train = engine.train_one_epoch(
                self.train_model,
                self.train_loader,
                self.optimizer,
                self.criterion,
                self.method,
                self.scheduler,
                device=self.device,
                amp=self.use_amp,
                scaler=self.scaler,
                grad_clip=self.config.grad_clip,
                progress=self.config.progress,
                epoch=epoch + 1,
            )
            sync_buffers(self.model)
            val = self.evaluate(self.val_loader) if self.val_loader is not None else None
            self.epochs_done = epoch + 1
            record = {
                "epoch": self.epochs_done,
                "phase": self.phase,
                "train_loss": train["loss"],
                "train_acc": train["acc"],
                "penalty": train["penalty"],
                "val_loss": val["loss"] if val else None,
                "val_acc": val["acc"] if val else None,
                "lr": train["lr"],
                "time_s": time.perf_counter() - start,
                "method": self.method.sparsity_stats() if self.method is not None else {},
            }
            if self.checkpoint_path is not None:
                self.save_checkpoint(self.checkpoint_path)
            if is_main_process():
                if self.metrics is not None:
                    self.metrics.append(record)
                if self.tensorboard is not None:
                    self.tensorboard.write(record)
                logger.info(_format_epoch(record, self.config.epochs))
            history.append(record)
            if after_epoch is not None:
                after_epoch(record)
        return history

    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Loss and accuracy of the model on ``loader`` (e.g. the test set after ``fit``)."""
        return engine.evaluate(self.model, loader, self.device)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write everything needed to resume (rank 0 only; every rank waits for it)."""
        if is_main_process():
            save_checkpoint(
                path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                method=self.method,
                method_name=self.method.name if self.method is not None else None,
                scaler=self.scaler,
                epoch=self.epochs_done,
                phase=self.phase,
                config={"train": asdict(self.config), "run": self.run_config},
            )
        barrier()

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Restore a checkpoint of this same setup; ``fit()`` then continues after its epoch.

        Resuming on CPU with ``workers=0`` loaders from ``build_loaders`` reproduces the
        uninterrupted run bit for bit. Under DDP every rank restores rank 0's RNG state.

        Raises:
            CheckpointError: unreadable file, another architecture, another phase, or a method
                present on one side only (or of another kind).
        """
        state = load_checkpoint(path, map_location=self.device)
        for key in ("optimizer", "scheduler", "method", "method_name", "phase", "config"):
            if key not in state:
                raise CheckpointError(f"{path}: missing {key!r} (not written by Trainer)")
        if state["phase"] != self.phase:
            raise CheckpointError(f"{path} is from phase {state['phase']!r}, not {self.phase!r}")
        own_method = self.method.name if self.method is not None else None
        if state["method_name"] != own_method:
            raise CheckpointError(
                f"{path} was trained with method {state['method_name']!r}, "
                f"this trainer has {own_method!r}"
            )
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.epochs_done = int(state["epoch"])
        self._warn_config_changes(path, state["config"].get("train", {}))

    def _warn_config_changes(self, path: str | os.PathLike[str], saved: Mapping[str, Any]) -> None:
        current = asdict(self.config)
        changed = sorted(
            key
            for key in current.keys() | saved.keys()
            if key not in _RUNTIME_ONLY and _plain(current.get(key)) != _plain(saved.get(key))
        )
        if changed:
            logger.warning(
                "resuming %s with changed settings %s; the run will differ from one that was "
                "never interrupted",
                path,
                ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed),
            )


def _plain(value: Any) -> Any:
    """Tuples come back from checkpoints as tuples or lists; compare them as lists."""
    return list(value) if isinstance(value, tuple | list) else value
