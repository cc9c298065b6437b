"""The five phases of a run. Each reads its inputs from the run directory (or the context's
memory), writes its outputs there, and returns the results ``progress.json`` records for it.

pretrain  -> checkpoints/pretrain.pt                        (baseline weights)
sparsify  -> checkpoints/sparsify.pt, sparsity/epoch_XXX.pt (regularized weights, method state)
prune     -> pruned.pt, plan.json, checkpoints/prune.pt     (accuracy before and after surgery)
finetune  -> finetuned.pt, checkpoints/finetune.pt          (accuracy after fine-tuning)
report    -> summary.json, report.md, plots/

Every phase reseeds from (seed, phase) first, which is what makes a resumed run end exactly where
an uninterrupted one does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from regprune.io import read_weights_only
from regprune.pipeline.context import RunContext, logger
from regprune.pipeline.rundir import FINETUNED_FILE, PLAN_FILE, PRUNED_FILE, Progress
from regprune.pipeline.summary import build_summary
from regprune.pipeline.training import train_phase
from regprune.report import write_report
from regprune.surgery import save_pruned
from regprune.train import CheckpointError, evaluate, load_model_state, save_checkpoint

PhaseResult = dict[str, Any]

FELL_BELOW_BASELINE = 0.05
"""Accuracy lost during sparsify (fraction) above which the run warns before pruning."""
Phase = Callable[[RunContext, Progress], PhaseResult]


def _load_baseline(model: torch.nn.Module, source: str) -> Path:
    """Load a trained baseline: a regprune checkpoint (its ``model``) or a plain state_dict."""
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"pretrain.checkpoint: no file at {path}")
    try:
        state = read_weights_only(path, "a checkpoint or a state_dict")
    except ValueError as error:
        raise CheckpointError(f"pretrain.checkpoint: {error}") from error
    if isinstance(state, dict) and "format_version" in state and "model" in state:
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"pretrain.checkpoint {path} holds no state_dict")
    load_model_state(model, state)
    return path


def pretrain(ctx: RunContext, progress: Progress) -> PhaseResult:
    """Train the baseline, or take it from ``pretrain.checkpoint``; always leave its weights in
    ``checkpoints/pretrain.pt`` so the run directory is self-contained."""
    ctx.reseed("pretrain")
    model = ctx.build_model()
    section = ctx.config.pretrain
    result: PhaseResult = {}
    if section.checkpoint is not None or section.epochs == 0:
        if section.checkpoint is not None:
            result["baseline"] = str(_load_baseline(model, section.checkpoint))
        if ctx.main:
            save_checkpoint(ctx.run_dir.checkpoint("pretrain"), model=model, epoch=0)
        ctx.wait_for_main()
    else:
        result["earlier_s"] = train_phase(ctx, "pretrain", model, section)
    # the reference every later accuracy is read against (sparsity training changes the model)
    result["acc_baseline"] = evaluate(model, ctx.loaders.test, ctx.device)["acc"]
    logger.info("[pretrain] baseline test acc %.2f %%", 100 * result["acc_baseline"])
    return result


def sparsify(ctx: RunContext, progress: Progress) -> PhaseResult:
    """Build the method on the baseline and train with its regularizer (snapshots per epoch)."""
    method = ctx.fresh_method()
    earlier_s = train_phase(
        ctx, "sparsify", method.model, ctx.config.sparsify, method=method, snapshots=True
    )
    ctx.method = method
    return {"earlier_s": earlier_s}


def prune(ctx: RunContext, progress: Progress) -> PhaseResult:
    """Surgery: test accuracy before, ``method.prune(calibration data)``, accuracy after.

    "Before" is the accuracy of the network the method cuts (:meth:`model_to_prune`: after a
    penalty, BN statistics re-estimated on the calibration batches); the model as trained,
    when it differs, is logged and kept as ``acc_as_trained``.
    """
    method = ctx.method if ctx.method is not None else ctx.restore_method("sparsify")
    ctx.reseed("prune")
    test = ctx.loaders.test
    calibration = ctx.calibration_batches()
    to_prune = method.model_to_prune(calibration)
    acc_before = evaluate(to_prune, test, ctx.device)["acc"]
    acc_as_trained = acc_before
    if to_prune is not method.model:
        acc_as_trained = evaluate(method.model, test, ctx.device)["acc"]
        logger.info(
            "[prune] test acc %.2f %% as trained, %.2f %% with BN statistics re-estimated on "
            "the calibration batches (the network pruning cuts)",
            100 * acc_as_trained,
            100 * acc_before,
        )
    del to_prune
    baseline = progress.phases.get("pretrain", {}).get("acc_baseline")
    fell = ""
    if baseline is not None and acc_before < baseline - FELL_BELOW_BASELINE:
        fell = (
            f"{method.name}: the regularized model fell to {100 * acc_before:.2f} % during "
            f"sparsify, {100 * (baseline - acc_before):.1f} points below its baseline "
            f"({100 * baseline:.2f} %): the penalty was too strong for this schedule and "
            "fine-tuning may not recover it; lower the strength, or give the budget instead"
        )
        logger.warning("[prune] %s", fell)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = method.prune(calibration)
    removal = dict(method.removal_report())
    if caught:
        removal["warnings"] = [str(w.message) for w in caught]
    for text in removal.get("warnings", []):
        logger.warning("[prune] %s", text)
    if fell:
        removal["warnings"] = [fell, *removal.get("warnings", [])]
    acc_after = evaluate(pruned, test, ctx.device)["acc"]
    logger.info(
        "[prune] test acc %.2f %% before pruning, %.2f %% right after",
        100 * acc_before,
        100 * acc_after,
    )
    if "removed_inputs" in removal:
        logger.info(
            "[prune] removed channels: %d of %d constant and %d silent where read (largest "
            "relative range %.2e); compensate=%s folded %d",
            removal["constant_inputs"],
            removal["removed_inputs"],
            removal["silent_inputs"],
            removal["max_relative_range"],
            removal["mode"],
            removal["folded_inputs"],
        )
    if ctx.main:
        save_pruned(pruned, ctx.run_dir.path(PRUNED_FILE))
        plan = method.last_plan
        if plan is not None:
            ctx.run_dir.write_text(PLAN_FILE, plan.to_json() + "\n")
        # The method's state after surgery: what a resumed fine-tune asks finetune_method().
        save_checkpoint(
            ctx.run_dir.checkpoint("prune"),
            model=method.model,
            method=method,
            method_name=method.name,
            epoch=0,
            phase="prune",
        )
    ctx.wait_for_main()
    ctx.method = method
    return {
        "acc_before_prune": acc_before,
        "acc_as_trained": acc_as_trained,
        "acc_after_prune": acc_after,
        "removal": removal,
    }


def finetune(ctx: RunContext, progress: Progress) -> PhaseResult:
    """Fine-tune ``pruned.pt`` (with ``method.finetune_method``), save ``finetuned.pt``."""
    method = ctx.method if ctx.method is not None else ctx.restore_method("prune")
    ctx.reseed("finetune")
    # Always from the file, in an uninterrupted run too: both paths then train the same object.
    model = ctx.load_saved_model(PRUNED_FILE)
    earlier_s = train_phase(
        ctx, "finetune", model, ctx.config.finetune, method=method.finetune_method(model)
    )
    acc = evaluate(model, ctx.loaders.test, ctx.device)["acc"]
    logger.info("[finetune] test acc %.2f %%", 100 * acc)
    if ctx.main:
        save_pruned(model, ctx.run_dir.path(FINETUNED_FILE))
    ctx.wait_for_main()
    return {"acc_after_finetune": acc, "earlier_s": earlier_s}


def report(ctx: RunContext, progress: Progress) -> PhaseResult:
    """Measure cost and latency, write ``summary.json``, render ``report.md`` and plots."""
    ctx.reseed("report")
    result: PhaseResult = {}
    if ctx.main:
        summary = build_summary(ctx, progress)
        summary.save(ctx.run_dir.root)
        result["report"] = str(write_report(ctx.run_dir.root))
    ctx.wait_for_main()
    return result


PHASE_FUNCTIONS: dict[str, Phase] = {
    "pretrain": pretrain,
    "sparsify": sparsify,
    "prune": prune,
    "finetune": finetune,
    "report": report,
}
