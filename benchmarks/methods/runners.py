"""One run: a method from the cached baseline through sparsify, prune and fine-tune.

Every family follows the same three timed phases with the same epochs and learning rates:

1. sparsify: ``config.sparsify`` epochs with the method's regularizer (one-shot methods train
   the same epochs without one; their runs share that plain model, see ``config.PLAIN``);
2. prune: ours call ``method.prune(data=calibration)``; Torch-Pruning peers are pruned by their
   own code at the same MACs (``tp_peers.prune_to_macs``); unstructured methods zero weights;
3. fine-tune: ``config.finetune`` epochs (unstructured runs keep their zeros).

Accuracy is measured on the test set at the end of each phase (final epoch, never the best);
right after pruning it is measured twice: as the pruned model comes out, and after re-estimating
its BatchNorm statistics on the calibration images (a copy; fine-tuning starts from the former).
The fine-tuned model is saved under ``cache_dir/models`` for the latency pass (``latency.py``),
which times every model against its baseline on a quiet machine after all runs are done.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from torch import nn

import regprune
from regprune.pipeline.methods import takes_budget
from regprune.train import recalibrate_batch_norm, seed_everything

from .config import PLAIN, BenchConfig, RunSpec
from .data import BenchData
from .measure import size_of, test_accuracy
from .phases import plain_continued, train_phase


def _peers():
    """The Torch-Pruning adapter, imported only for ``family: tp`` runs (an optional extra)."""
    try:
        from . import tp_peers
    except ImportError as error:
        raise ImportError(
            f"family: tp runs need Torch-Pruning 1.6.1 ({error}); install it with "
            "pip install -e '.[bench]'"
        ) from error
    return tp_peers


def _method_kwargs(
    spec: RunSpec, config: BenchConfig, data: BenchData, seed: int
) -> dict[str, Any]:
    kwargs = dict(spec.kwargs)
    if spec.method.startswith("l0_"):
        kwargs.setdefault("num_samples", len(data.train.dataset))  # N of the 1/N scaling
    if takes_budget(spec.method):
        # the budget, as the pipeline passes it: used when the run names no strength
        kwargs.setdefault("total_steps", config.sparsify.epochs * len(data.train))
    if spec.family == "unstructured":
        if spec.ratio is not None:
            kwargs["ratio"] = spec.ratio
        return kwargs
    kwargs["target_macs"] = config.target_macs
    if config.max_ratio is not None:
        kwargs.setdefault("max_ratio", config.max_ratio)
    if spec.method in ("oneshot", "adapruner"):
        kwargs.setdefault("seed", seed)
    return kwargs


def tp_kwargs(spec: RunSpec, config: BenchConfig, data: BenchData) -> dict[str, Any]:
    """A peer's own kwargs; with ``tp_reg_from_budget`` and no ``reg`` given, sized by the
    sparsify iterations (``tp_peers.budget_kwargs``)."""
    if not config.tp_reg_from_budget or "reg" in spec.kwargs:
        return dict(spec.kwargs)
    phase = spec.sparsify_phase or config.sparsify
    steps = phase.epochs * len(data.train)
    return _peers().budget_kwargs(spec.method, steps, phase.lr, phase.momentum) | spec.kwargs


def _make(spec: RunSpec, model: nn.Module, data: BenchData, config: BenchConfig, seed: int):
    if spec.family == "tp":
        return _peers().TorchPruningRegularizer(
            model, data.example_input(), spec.method, **tp_kwargs(spec, config, data)
        )
    return regprune.methods.get(
        spec.method, model, data.example_input(), **_method_kwargs(spec, config, data, seed)
    )


def _sparsify(spec, baseline, data, config, seed) -> tuple[nn.Module, Any, dict]:
    """The sparsify phase; returns the trained model, the method object and phase info."""
    if spec.sparsify == PLAIN:
        model, meta = plain_continued(baseline, config, data, seed)
        # Seeded as the training path is: the method's example input is random, and without
        # this it would depend on whether the plain model was just trained or read from cache.
        seed_everything(seed)
        method = _make(spec, model, data, config, seed)
        return model, method, {"time_sparsify_s": meta["time_s"], "sparsify_shared": True}
    seed_everything(seed)
    model = copy.deepcopy(baseline)
    method = _make(spec, model, data, config, seed)
    phase = spec.sparsify_phase or config.sparsify
    stats = train_phase(model, data, phase, config, "sparsify", method)
    info = {"time_sparsify_s": stats["time_s"], "sparsify_train_acc": stats["acc"]}
    info["wants_more_training"] = bool(method.wants_more_training())
    info["sparsify_stats"] = {k: float(v) for k, v in method.sparsity_stats().items()}
    return model, method, info


def _prune(spec, model, method, data, config) -> tuple[nn.Module, Any, dict]:
    """Returns the pruned model, the method to run while fine-tuning, and info."""
    if spec.family == "tp":
        pruned, info = _peers().prune_to_macs(
            spec.method, model, data.example_input(), config.target_macs, config.max_ratio
        )
        return (
            pruned,
            None,
            {
                "time_prune_s": info["prune_s"],
                "tp_search_s": info["search_s"],
                "tp_pruning_ratio": info["pruning_ratio"],
            },
        )
    start = time.perf_counter()
    pruned = method.prune(data=data.calibration)
    info: dict[str, Any] = {"time_prune_s": time.perf_counter() - start}
    info["removal"] = method.removal_report()
    if "inheritance" in info["removal"]:
        info["adapruner_chosen"] = info["removal"]["inheritance"]
    plan = method.last_plan
    if plan is not None:
        info["kept_widths"] = {str(g): w for g, w in plan.kept_widths().items()}
    pruned.train()
    return pruned, method.finetune_method(pruned), info


def model_file(
    config: BenchConfig, label: str, seed: int, target_macs: float | None = None
) -> Path:
    """Where a run's fine-tuned model (or a seed's baseline, ``label="baseline"``) is saved;
    ``target_macs`` is in the name when the config has several (``multi_target``)."""
    at = f"-t{target_macs:g}" if target_macs is not None else ""
    return Path(config.cache_dir) / "models" / f"{config.name}-{label}{at}-seed{seed}.pt"


def accuracy_with_recalibrated_bn(model: nn.Module, data: BenchData, config: BenchConfig) -> float:
    """Test accuracy of a copy whose BatchNorm statistics were re-estimated on calibration data."""
    recalibrated = copy.deepcopy(model)
    recalibrate_batch_norm(recalibrated, data.calibration)
    return test_accuracy(recalibrated, data, config)


def run_one(
    spec: RunSpec,
    baseline: nn.Module,
    baseline_info: dict,
    data: BenchData,
    config: BenchConfig,
    seed: int,
) -> dict[str, Any]:
    """Everything recorded for one (method, seed); see README.md for the field list."""
    model, method, record = _sparsify(spec, baseline, data, config, seed)
    record["acc_before_prune"] = test_accuracy(model, data, config)
    pruned, keep, info = _prune(spec, model, method, data, config)
    record |= info
    record["acc_after_prune"] = test_accuracy(pruned, data, config)
    record["acc_after_prune_bn"] = accuracy_with_recalibrated_bn(pruned, data, config)
    seed_everything(seed)
    stats = train_phase(pruned, data, config.finetune, config, "finetune", keep)
    record["time_finetune_s"] = stats["time_s"]
    record["sparsify_epochs"] = (spec.sparsify_phase or config.sparsify).epochs
    record["finetune_epochs"] = config.finetune.epochs
    record["acc_after_finetune"] = test_accuracy(pruned, data, config)
    after = size_of(pruned, data)
    record |= {f"{k}_after": v for k, v in after.items()}
    record["macs_kept"] = after["macs"] / baseline_info["macs_before"]
    record |= baseline_info
    path = model_file(config, spec.label, seed, config.target_macs if config.multi_target else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    regprune.save_pruned(pruned.eval(), path)
    record["model_file"] = str(path)
    return record
