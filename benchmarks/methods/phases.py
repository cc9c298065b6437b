"""Training phases with one life cycle for every method, and the cached baseline.

Every phase is the library's ``Trainer`` on the phase's ``TrainSection``: a fresh optimizer
(SGD unless the phase says otherwise) built *after* the method exists, with the method's own
parameter groups (L0 gates), a per-iteration schedule, and ``penalty / after_backward / step``
of whatever method it is given (ours, a Torch-Pruning adapter, or ``KeepSparsity`` while
fine-tuning unstructured models). Two settings differ from a pipeline run: every method trains
every epoch (``stop_when_done=False``: the same epochs for all), and each phase shuffles from its
own stream (``epoch_offset``), so fine-tuning does not replay the sparsify order.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regprune.io import atomic_torch_save, read_weights_only
from regprune.methods import PruningMethod
from regprune.models import create_model
from regprune.pipeline.sections import TrainSection
from regprune.train import Trainer, seed_everything
from regprune.train.checkpoint import load_checkpoint, load_model_state, restore_rng_state

from . import baselines
from .config import BenchConfig, Plateau, load_config
from .data import BenchData, build_bench_data
from .measure import test_accuracy

EPOCH_OFFSET = {"pretrain": 0, "sparsify": 1000, "finetune": 2000}
"""Distinct shuffling streams per phase, so fine-tuning does not replay the sparsify order."""


def train_phase(
    model: nn.Module,
    data: BenchData,
    phase: TrainSection,
    config: BenchConfig,
    name: str,
    method: PruningMethod | None = None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``phase``; the last epoch's ``loss`` / ``acc`` and ``time_s``.

    ``after_epoch(record)`` runs after each epoch with the trainer's record (``epoch`` is
    1-based): for studies that trace a quantity over training (``benchmarks/hgsr_sparsity.py``).
    """
    trainer = Trainer(
        model,
        data.train,
        config=phase.train_config(config.device, progress=False),
        method=method,
        phase=name,
        epoch_offset=EPOCH_OFFSET[name],
        stop_when_done=False,
    )
    start = time.perf_counter()
    last = trainer.fit(after_epoch)[-1]
    return {"loss": last["train_loss"], "acc": last["train_acc"]} | {
        "time_s": time.perf_counter() - start
    }


class _Plateaued(Exception):
    """Raised by the epoch callback to end a stage of ``train_until_plateau``."""


def train_until_plateau(
    model: nn.Module,
    data: BenchData,
    config: BenchConfig,
    rule: Plateau,
    progress: Path | None = None,
    label: str = "baseline",
) -> dict[str, Any]:
    """Train ``model`` in place from scratch until test accuracy stops rising (``Plateau``).

    Stages of constant lr (``pretrain.lr`` x ``factor`` ** stage), each a fresh ``Trainer`` that
    evaluates on the test set after every epoch and stops once the stage's best accuracy has
    not risen by ``min_delta`` for ``patience`` epochs; the epochs go on counting (and
    shuffling) across stages. Returns ``epochs`` (trained in all), ``test_acc`` (per epoch),
    ``stage_epochs``, the last epoch's ``loss`` / ``acc`` and ``time_s``.

    With ``progress`` (a file path), every epoch leaves the trainer's checkpoint there with
    the rule's counters inside it, in one atomic write, and a call that finds the file goes on
    from its last finished epoch: a converged baseline takes hours on a CPU, longer than a
    session, so a run killed at the end of one resumes in the next (on CPU, the same weights as
    an uninterrupted run). Each epoch prints one line (``label``, epoch, lr, test accuracy).
    """
    saved = _read_plateau_progress(progress)
    counters = saved["counters"] if saved is not None else _fresh_counters()
    history: list[float] = counters["history"]
    stage_epochs: list[int] = counters["stage_epochs"]
    resumed_stage = counters["stage"] if saved is not None else None
    start = time.perf_counter() - counters["time_s"]
    for stage in range(counters["stage"], rule.drops + 1):
        resuming = stage == resumed_stage
        if resuming and counters["stage_done"]:
            # killed between a stage's last epoch and the next one's first: the next stage
            # starts from the weights the finished one left
            load_model_state(model, saved["model"])
            restore_rng_state(saved["rng"])
            stage_epochs.append(counters["ran"])
            continue
        stage_begin = len(history) - (counters["ran"] if resuming else 0)
        left = rule.max_epochs - stage_begin
        if left < 1:
            break
        phase = replace(
            config.pretrain,
            lr=config.pretrain.lr * rule.factor**stage,
            schedule="constant",
            epochs=left,
        )
        trainer = Trainer(
            model,
            data.train,
            data.test,
            config=phase.train_config(config.device, progress=False),
            phase="pretrain",
            epoch_offset=EPOCH_OFFSET["pretrain"] + stage_begin,
        )
        if resuming:
            trainer.resume(progress)
        else:
            counters.update(stage=stage, ran=0, best=-1.0, since=0, stage_done=False)

        def after_epoch(
            record: dict[str, Any], lr: float = phase.lr, left: int = left, trainer=trainer
        ) -> None:
            counters["ran"] += 1
            counters["last"] = {k: record[k] for k in ("train_loss", "train_acc")}
            history.append(float(record["val_acc"]))
            if record["val_acc"] >= counters["best"] + rule.min_delta:
                counters["best"], counters["since"] = float(record["val_acc"]), 0
            else:
                counters["since"] += 1
            plateaued = counters["since"] >= rule.patience
            counters["stage_done"] = plateaued or counters["ran"] >= left
            counters["time_s"] = time.perf_counter() - start
            print(
                f"{label}: epoch {len(history)} (lr {lr:g}) test acc {record['val_acc']:.4f}",
                flush=True,
            )
            if progress is not None:
                trainer.run_config["plateau"] = copy.deepcopy(counters)
                trainer.save_checkpoint(progress)
            if plateaued:
                raise _Plateaued

        with suppress(_Plateaued):
            trainer.fit(after_epoch)
        stage_epochs.append(counters["ran"])
    last = counters["last"]
    return {
        "epochs": len(history),
        "test_acc": history,
        "stage_epochs": stage_epochs,
        "loss": last["train_loss"],
        "acc": last["train_acc"],
        "time_s": time.perf_counter() - start,
    }


def _fresh_counters() -> dict[str, Any]:
    return {
        "history": [],
        "stage_epochs": [],
        "stage": 0,
        "ran": 0,
        "best": -1.0,
        "since": 0,
        "stage_done": False,
        "last": {},
        "time_s": 0.0,
    }


def _read_plateau_progress(path: Path | None) -> dict[str, Any] | None:
    """The checkpoint ``train_until_plateau`` left at ``path`` (its counters under
    ``counters``), or None when there is none to go on from."""
    if path is None or not Path(path).exists():
        return None
    state = load_checkpoint(path)
    counters = state.get("config", {}).get("run", {}).get("plateau")
    if counters is None:
        raise ValueError(f"{path} is not a train_until_plateau progress file; delete it")
    return {"counters": counters, "model": state["model"], "rng": state["rng"]}


def new_model(config: BenchConfig, data: BenchData) -> nn.Module:
    model = create_model(
        config.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        **config.model.kwargs,
    )
    return model.to(config.device)


def cached(path: Path, build: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """``(state_dict, meta)`` from ``path``, or built by ``build()`` and saved there first.

    Written atomically (``regprune.io``: a unique temporary file, then a rename), so two seeds'
    processes sharing one cache, or a run killed mid-write, never leave half a baseline that a
    later run would load; read with ``weights_only=True`` and its checksums checked.
    """
    if path.exists():
        state = read_weights_only(path, "a cached benchmark model ({'model', 'meta'})")
        return state["model"], state["meta"]
    model, meta = build()
    atomic_torch_save({"model": model, "meta": meta}, path)
    return model, meta


def baseline_path(config: BenchConfig, seed: int) -> Path:
    return Path(config.cache_dir) / f"{config.model.name}-{config.baseline_key(seed)}-baseline.pt"


def pretrained_baseline(config: BenchConfig, data: BenchData, seed: int) -> tuple[nn.Module, dict]:
    """The one baseline per (model, seed), trained once and cached under ``cache_dir``.

    A baseline published in ``config.baselines_dir`` under this key is read from there (its
    sha256 checked first). ``meta``: ``time_s``, ``train_acc``, ``epochs`` (trained; the
    budgets' unit), and for ``until_plateau`` baselines ``test_acc`` (final epoch) and the
    per-epoch ``test_acc_history``. Processes sharing a cache train each baseline once: the
    others wait for the file (``baseline_claim``).
    """
    published = baselines.find(config, seed)
    if published is not None:
        state = baselines.load(config, published)
        model = new_model(config, data)
        model.load_state_dict(state["model"])
        return model, state["meta"]
    path = baseline_path(config, seed)
    progress = path.with_name(path.name + ".progress")  # a converged one resumes (hours)

    def build():
        seed_everything(seed)
        model = new_model(config, data)
        if config.plateau is not None:
            label = f"baseline seed {seed}"
            stats = train_until_plateau(model, data, config, config.plateau, progress, label)
            extra = {
                "test_acc": test_accuracy(model, data, config),
                "test_acc_history": stats["test_acc"],
                "stage_epochs": stats["stage_epochs"],
            }
        else:
            stats = train_phase(model, data, config.pretrain, config, "pretrain")
            extra = {}
            stats["epochs"] = config.pretrain.epochs
        meta = {"time_s": stats["time_s"], "train_acc": stats["acc"]}
        return model.state_dict(), meta | extra | {"epochs": stats["epochs"]}

    with baseline_claim(path):
        state, meta = cached(path, build)
        progress.unlink(missing_ok=True)
    meta.setdefault("epochs", config.pretrain.epochs)  # cached before epochs were recorded
    model = new_model(config, data)
    model.load_state_dict(state)
    return model, meta


@contextmanager
def baseline_claim(path: Path, poll_s: float = 1.0) -> Iterator[None]:
    """Hold ``path``'s claim file while it is built; wait while another live process holds it
    (workers sharing one cache then train each baseline once)."""
    from .run import claim  # the runs' claim files: one rule for both

    lock = path.with_name(path.name + ".claim")
    held = False
    while not path.exists() and not (held := claim(lock)):
        time.sleep(poll_s)
    try:
        yield
    finally:
        if held:
            lock.unlink(missing_ok=True)


def plain_continued(
    baseline: nn.Module, config: BenchConfig, data: BenchData, seed: int
) -> tuple[nn.Module, dict]:
    """The baseline trained ``sparsify.epochs`` more, no method (shared by one-shot runs)."""
    path = Path(config.cache_dir) / f"{config.model.name}-{config.plain_key(seed)}-plain.pt"

    def build():
        seed_everything(seed)
        model = copy.deepcopy(baseline)
        stats = train_phase(model, data, config.sparsify, config, "sparsify")
        return model.state_dict(), {"time_s": stats["time_s"]}

    state, meta = cached(path, build)
    model = copy.deepcopy(baseline)
    model.load_state_dict(state)
    return model, meta


def study_start(config_path: str, seed: int) -> tuple[BenchConfig, BenchData, nn.Module]:
    """Config, data and cached baseline for a study that starts where the benchmark does
    (``benchmarks/hgsr_rank.py``, ``benchmarks/hgsr_sparsity.py``), threads set as configured."""
    config = load_config(config_path)
    torch.set_num_threads(config.threads)
    data = build_bench_data(config, seed)
    model, _ = pretrained_baseline(config, data, seed)
    return config, data, model
