"""The numbers of ``summary.json``: accuracies from the phases, cost and latency measured now.

Why measured in the report phase rather than during pruning: latency is the one number that
depends on the machine and its load, so it is taken once, at the end, for both models in a row
under the same conditions; and a re-measurement is just a re-run of this phase.
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.methods.unstructured import weight_sparsity
from regprune.metrics import count, measure_latency
from regprune.pipeline.context import PHASES, RunContext
from regprune.pipeline.rundir import FINETUNED_FILE, Progress
from regprune.report import RunSummary, width_changes


def latency_ms(ctx: RunContext, model: nn.Module) -> dict[int, float]:
    """Median latency per configured batch size, on random inputs of the data's shape."""
    section = ctx.config.report
    generator = torch.Generator().manual_seed(ctx.config.seed)  # leaves the global RNG alone
    result = {}
    for batch_size in section.latency_batch_sizes:
        inputs = torch.randn(ctx.input_shape(batch_size), generator=generator).to(ctx.device)
        measured = measure_latency(
            model,
            inputs,
            warmup=section.latency_warmup,
            repeats=section.latency_repeats,
            threads=section.latency_threads,
        )
        result[batch_size] = measured.median_ms
    return result


def phase_times(progress: Progress) -> dict[str, float]:
    """Wall seconds per completed phase, in phase order."""
    return {
        phase: float(progress.phases[phase]["time_s"])
        for phase in PHASES
        if phase in progress.phases and "time_s" in progress.phases[phase]
    }


def commands(progress: Progress) -> str:
    """The command(s) that produced the run: one, or the phase commands joined with ``&&``."""
    ran = [progress.phases[p].get("command", progress.command) for p in PHASES[:-1]]
    unique = list(dict.fromkeys(c for c in [progress.command, *ran] if c))
    return " && ".join(unique)


def build_summary(ctx: RunContext, progress: Progress) -> RunSummary:
    """Assemble the run's :class:`RunSummary` (MACs and params counted on one sample)."""
    config = ctx.config
    original = ctx.build_model().eval()
    final = ctx.load_saved_model(FINETUNED_FILE).eval()
    example = ctx.example_inputs()
    cost_before, cost_after = count(original, example), count(final, example)
    prune_result = progress.phases["prune"]
    baseline = progress.phases["pretrain"].get("acc_baseline")  # absent in runs before 0.2
    return RunSummary(
        method=config.method.name,
        model=config.model.name,
        dataset=config.data.name,
        seeds=[config.seed],
        command=commands(progress),
        acc_before_prune=[prune_result["acc_before_prune"]],
        acc_after_prune=[prune_result["acc_after_prune"]],
        acc_after_finetune=[progress.phases["finetune"]["acc_after_finetune"]],
        macs_before=cost_before.macs,
        macs_after=cost_after.macs,
        params_before=cost_before.params,
        params_after=cost_after.params,
        latency_ms_before=latency_ms(ctx, original),
        latency_ms_after=latency_ms(ctx, final),
        layer_widths=width_changes(original, final),
        phase_time_s=phase_times(progress),
        ratio=config.method.ratio,
        target_macs=config.method.target_macs,
        weight_sparsity=weight_sparsity(final),
        acc_baseline=[baseline] if baseline is not None else None,
        removal=prune_result.get("removal"),
    )
