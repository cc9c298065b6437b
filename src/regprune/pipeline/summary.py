"""The numbers of ``summary.json``: accuracies from the phases, cost and latency measured now.

Why measured in the report phase rather than during pruning: latency is the one number that
depends on the machine and its load, so it is taken once, at the end, for both models under the
same conditions; and a re-measurement is just a re-run of this phase.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from regprune.methods.unstructured import weight_sparsity
from regprune.metrics import count, measure_latency
from regprune.pipeline.context import PHASES, RunContext
from regprune.pipeline.rundir import FINETUNED_FILE, Progress
from regprune.report import RunSummary, width_changes

LATENCY_ROUNDS = 4
"""Interleaved rounds per batch size (our choice): the original and the pruned model take turns,
each round timing ``latency_repeats / LATENCY_ROUNDS`` calls of each, so a change of machine load
during the measurement hits both alike (timed one after the other, the README's quickstart once
read 0.89x at batch 64; interleaved, its re-measurements read 1.43-1.67x)."""


def compare_latency(
    ctx: RunContext, original: nn.Module, pruned: nn.Module
) -> tuple[dict[int, float], dict[int, float], dict[str, dict[int, str]]]:
    """Median latency of both models per configured batch size, and the layout each ran in.

    4-D image inputs are timed in both memory layouts (contiguous NCHW and channels_last), and
    each model is reported in its faster one (our choice): a deployment picks its layout, and
    narrow pruned layers often run faster in oneDNN's native NHWC at large batches while an
    unpruned model may not (the README's quickstart: both models faster in channels_last at
    batch 64); comparing each at its best is what a user would get.
    """
    section = ctx.config.report
    generator = torch.Generator().manual_seed(ctx.config.seed)  # leaves the global RNG alone
    models = {"before": original, "after": pruned}
    medians: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    layouts: dict[str, dict[int, str]] = {"before": {}, "after": {}}
    per_round = max(1, section.latency_repeats // LATENCY_ROUNDS)
    for batch_size in section.latency_batch_sizes:
        inputs = torch.randn(ctx.input_shape(batch_size), generator=generator).to(ctx.device)
        formats = {"contiguous": None}
        if inputs.dim() == 4:
            formats["channels_last"] = torch.channels_last
        times: dict[tuple[str, str], list[float]] = {
            (which, layout): [] for which in models for layout in formats
        }
        for _ in range(LATENCY_ROUNDS):
            for (which, layout), measured in times.items():
                measured.append(
                    measure_latency(
                        models[which],
                        inputs,
                        warmup=section.latency_warmup,
                        repeats=per_round,
                        threads=section.latency_threads,
                        memory_format=formats[layout],
                    ).median_ms
                )
        for which in models:
            best = min(formats, key=lambda layout: statistics.median(times[(which, layout)]))
            medians[which][batch_size] = statistics.median(times[(which, best)])
            layouts[which][batch_size] = best
    return medians["before"], medians["after"], layouts


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
    latency_before, latency_after, latency_layouts = compare_latency(ctx, original, final)
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
        latency_ms_before=latency_before,
        latency_ms_after=latency_after,
        latency_layouts=latency_layouts,
        layer_widths=width_changes(original, final),
        phase_time_s=phase_times(progress),
        ratio=config.method.ratio,
        target_macs=config.method.target_macs,
        weight_sparsity=weight_sparsity(final),
        acc_baseline=[baseline] if baseline is not None else None,
        removal=prune_result.get("removal"),
    )
