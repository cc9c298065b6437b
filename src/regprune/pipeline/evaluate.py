"""Evaluate the most advanced model a run directory holds (``regprune eval``)."""

from __future__ import annotations

from torch import nn

from regprune.pipeline.context import RunContext
from regprune.pipeline.rundir import FINETUNED_FILE, PRUNED_FILE, RunDirError
from regprune.train import evaluate

STAGES = ("finetuned", "pruned", "sparsified", "pretrained")


def latest_model(ctx: RunContext) -> tuple[str, nn.Module]:
    """``(stage, model)`` of the latest stage present: fine-tuned, pruned, sparsified, pretrained.

    Raises:
        RunDirError: the run directory holds no model yet.
    """
    run_dir = ctx.run_dir
    if run_dir.path(FINETUNED_FILE).is_file():
        return "finetuned", ctx.load_saved_model(FINETUNED_FILE)
    if run_dir.path(PRUNED_FILE).is_file():
        return "pruned", ctx.load_saved_model(PRUNED_FILE)
    if run_dir.checkpoint("sparsify").is_file():
        # Through the method: its model may carry parameters the method installed (L0 gates).
        return "sparsified", ctx.restore_method("sparsify").model
    if run_dir.checkpoint("pretrain").is_file():
        model = ctx.build_model()
        ctx.load_phase_weights(model, "pretrain")
        return "pretrained", model
    raise RunDirError(f"{run_dir.root} holds no model yet; run at least the pretrain phase")


def evaluate_run(ctx: RunContext, split: str = "test") -> tuple[str, dict[str, float]]:
    """Loss and accuracy of the latest model on ``split`` (``test`` or ``val``)."""
    loaders = ctx.loaders
    loader = loaders.test if split == "test" else loaders.val
    if loader is None:
        raise RunDirError("the run has no validation set (data.val_fraction is 0); use test")
    stage, model = latest_model(ctx)
    return stage, evaluate(model, loader, ctx.device)
