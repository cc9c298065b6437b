"""Training phases with one life cycle for every method, and the cached baseline.

Every phase builds a fresh optimizer (SGD unless the phase says otherwise) *after* the method
exists, with the method's own parameter groups (L0 gates) and a per-iteration schedule, and
runs ``regprune.train.train_one_epoch``, which calls ``penalty / after_backward / step`` of
whatever method it is given (ours, a Torch-Pruning adapter, or ``KeepSparsity`` while
fine-tuning unstructured models).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regprune.data import set_epoch
from regprune.methods import PruningMethod
from regprune.models import create_model
from regprune.train import build_optimizer, build_scheduler, seed_everything, train_one_epoch

from .config import BenchConfig, Phase, load_config
from .data import BenchData, build_bench_data

EPOCH_OFFSET = {"pretrain": 0, "sparsify": 1000, "finetune": 2000}
"""Distinct shuffling streams per phase, so fine-tuning does not replay the sparsify order."""


def train_phase(
    model: nn.Module,
    data: BenchData,
    phase: Phase,
    config: BenchConfig,
    name: str,
    method: PruningMethod | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``phase``; returns the last epoch's stats and ``time_s``.

    ``after_epoch(epoch)`` (1-based) runs after each epoch, outside the timed total's meaning:
    for studies that trace a quantity over training (``benchmarks/hgsr_sparsity.py``)."""
    optimizer = build_optimizer(
        model,
        lr=phase.lr,
        weight_decay=config.weight_decay if phase.weight_decay is None else phase.weight_decay,
        groups=method.optimizer_groups() if method is not None else (),
        kind=phase.optimizer,
    )
    scheduler = build_scheduler(
        optimizer, phase.schedule, epochs=phase.epochs, steps_per_epoch=len(data.train)
    )
    start = time.perf_counter()
    stats: dict[str, float] = {}
    for epoch in range(phase.epochs):
        set_epoch(data.train, EPOCH_OFFSET[name] + epoch)
        stats = train_one_epoch(
            model,
            data.train,
            optimizer,
            F.cross_entropy,
            method,
            scheduler,
            device=config.device,
            progress=False,
            epoch=epoch + 1,
        )
        if after_epoch is not None:
            after_epoch(epoch + 1)
    return stats | {"time_s": time.perf_counter() - start}


def new_model(config: BenchConfig, data: BenchData) -> nn.Module:
    model = create_model(
        config.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        **config.model_kwargs,
    )
    return model.to(config.device)


def _cached(path: Path, build) -> tuple[nn.Module, dict]:
    """Load ``path`` (weights_only) or build, save and return; the meta dict travels along."""
    if path.exists():
        state = torch.load(path, weights_only=True, map_location="cpu")
        return state["model"], state["meta"]
    model, meta = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model, "meta": meta}, tmp)
    tmp.replace(path)
    return model, meta


def pretrained_baseline(config: BenchConfig, data: BenchData, seed: int) -> tuple[nn.Module, dict]:
    """The one baseline per (model, seed), trained once and cached under ``cache_dir``."""
    path = Path(config.cache_dir) / f"{config.model}-{config.baseline_key(seed)}-baseline.pt"

    def build():
        seed_everything(seed)
        model = new_model(config, data)
        stats = train_phase(model, data, config.pretrain, config, "pretrain")
        return model.state_dict(), {"time_s": stats["time_s"], "train_acc": stats["acc"]}

    state, meta = _cached(path, build)
    model = new_model(config, data)
    model.load_state_dict(state)
    return model, meta


def plain_continued(
    baseline: nn.Module, config: BenchConfig, data: BenchData, seed: int
) -> tuple[nn.Module, dict]:
    """The baseline trained ``sparsify.epochs`` more, no method (shared by one-shot runs)."""
    path = Path(config.cache_dir) / f"{config.model}-{config.plain_key(seed)}-plain.pt"

    def build():
        seed_everything(seed)
        model = copy.deepcopy(baseline)
        stats = train_phase(model, data, config.sparsify, config, "sparsify")
        return model.state_dict(), {"time_s": stats["time_s"]}

    state, meta = _cached(path, build)
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
