"""``report.md``: a run's results in one readable page, with its plots.

The report is rebuilt from files only (``summary.json``, ``metrics.jsonl``, ``sparsity/``), so it
can be regenerated on any machine after the run; the machine it names is the one stored in the
summary, where the latency was measured, not the one that renders the page.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from regprune._version import __version__
from regprune.metrics import format_count
from regprune.report import plots
from regprune.report.rundir import (
    PLOTS_DIR,
    REPORT_FILE,
    SPARSITY_DIR,
    atomic_write_text,
    load_snapshot,
    pooled_values,
    read_metrics,
    snapshot_paths,
)
from regprune.report.summary import RunSummary
from regprune.report.tables import markdown_table, percent, reduction


def accuracy_cell(values: Sequence[float]) -> str:
    """One seed: ``"91.23 %"``; several: ``"91.23 ± 0.20 % (n=3)"`` (mean ± sample std)."""
    if len(values) == 1:
        return percent(values[0])
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values)
    return f"{mean:.2f} ± {std:.2f} % (n={len(values)})"


def duration(seconds: float) -> str:
    """``42.0 s``, ``12.5 min`` or ``3.2 h``: the unit a reader would say out loud."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _header(summary: RunSummary) -> list[str]:
    if summary.ratio is not None:
        target = f"remove {percent(summary.ratio, 1)} of the channels (ratio {summary.ratio:g})"
        if summary.macs_after == summary.macs_before and summary.weight_sparsity > 0:
            target = f"zero {percent(summary.ratio, 1)} of the weights (ratio {summary.ratio:g})"
    elif summary.target_macs is not None:
        target = f"keep {percent(summary.target_macs, 1)} of the MACs"
    else:
        target = "none given; the regularizer decided what to remove (closed L0 gates)"
    phases = ", ".join(f"{phase} {duration(s)}" for phase, s in summary.phase_time_s.items())
    total = duration(sum(summary.phase_time_s.values()))
    return [
        f"# {summary.method} on {summary.model} ({summary.dataset})",
        "",
        "Command:",
        "",
        "```",
        summary.command,
        "```",
        "",
        f"- Machine: {summary.machine}",
        f"- Target: {target}",
        f"- Weight sparsity of the final model: {percent(summary.weight_sparsity, 2)} "
        "(exact zeros in conv / linear weights)",
        f"- Seeds: {', '.join(map(str, summary.seeds))}",
        f"- Wall time: {phases or 'not recorded'} (total {total})",
        f"- Report written by regprune {__version__}",
        "",
    ]


def _removal(summary: RunSummary) -> list[str]:
    """How silent the removed channels were, and what compensation folded (issue: lossless)."""
    removal = summary.removal or {}
    lines = []
    if "removed_inputs" in removal:
        lines.append(
            f"Removed channels, measured where they are read: {removal['constant_inputs']} of "
            f"{removal['removed_inputs']} were constant and {removal.get('silent_inputs', '?')} "
            "silent (range at most a tenth of the kept channels'; the largest was "
            f"{removal['max_relative_range']:.2e} times theirs); compensation `{removal['mode']}` "
            f"folded {removal['folded_inputs']} of them into the biases of "
            f"{removal['consumers']} layers."
        )
        lines.append("")
    lines += [f"**Warning:** {text}" for text in removal.get("warnings", [])]
    if removal.get("warnings"):
        lines.append("")
    return lines


def _results(summary: RunSummary) -> list[str]:
    headers = ["", "before pruning", "after pruning (no fine-tune)", "after fine-tune"]
    cells = [
        accuracy_cell(summary.acc_before_prune),
        accuracy_cell(summary.acc_after_prune),
        accuracy_cell(summary.acc_after_finetune),
    ]
    if summary.acc_baseline is not None:
        headers.insert(1, "baseline (pretrained)")
        cells.insert(0, accuracy_cell(summary.acc_baseline))
    accuracy = markdown_table(headers, [["accuracy", *cells]])
    cost_rows = [
        ("MACs", summary.macs_before, summary.macs_after),
        ("FLOPs (2 x MACs)", summary.flops_before, summary.flops_after),
        ("params", summary.params_before, summary.params_after),
    ]
    cost = markdown_table(
        ["", "before", "after", "reduction"],
        [[name, format_count(b), format_count(a), reduction(b, a)] for name, b, a in cost_rows],
    )
    lines = ["## Results", "", accuracy, "", *_removal(summary), cost, ""]
    lines += [
        "Accuracy after fine-tune is the final epoch's, not the best epoch's. MACs count one "
        "forward of one sample; FLOPs are 2 x MACs.",
        "",
    ]
    if summary.latency_ms_before:
        rows = []
        layouts = summary.latency_layouts
        for batch in sorted(summary.latency_ms_before):
            speedup = summary.speedup(batch)
            row = [
                str(batch),
                f"{summary.latency_ms_before[batch]:.3f}",
                f"{summary.latency_ms_after[batch]:.3f}",
                f"{speedup:.2f}x",
                f"{summary.macs_ratio:.2f}x",
                f"{speedup / summary.macs_ratio:.2f}",
            ]
            if layouts:
                row.append(f"{layouts['before'][batch]} / {layouts['after'][batch]}")
            rows.append(row)
        lines += [
            "### Latency (eager PyTorch on this machine, median per forward call)",
            "",
            markdown_table(
                [
                    "batch",
                    "before (ms)",
                    "after (ms)",
                    "measured speedup",
                    "MACs ratio",
                    "speedup / MACs ratio",
                    *(["layout before / after"] if layouts else []),
                ],
                rows,
            ),
            "",
            "The MACs ratio is the speedup the removed work allows; the speedup / MACs ratio "
            "column is the share of it the pruned model actually delivers on the machine above.",
            *(
                [
                    "Both models were timed in interleaved rounds, in both memory layouts "
                    "(contiguous NCHW and channels_last); each is shown in its faster one."
                ]
                if layouts
                else []
            ),
            "",
        ]
    return lines


def _sparsity(run_dir: Path) -> list[str]:
    lines = ["## Sparsity during regularized training", ""]
    snapshots = snapshot_paths(run_dir)
    if not snapshots:
        return [
            *lines,
            f"No sparsity snapshots in `{SPARSITY_DIR}/`: this run had no regularized "
            "training phase, or its method records none, so there is no trajectory to show.",
            "",
        ]
    (first_epoch, first_path), (last_epoch, last_path) = snapshots[0], snapshots[-1]
    first = pooled_values(load_snapshot(first_path))
    last = pooled_values(load_snapshot(last_path))
    plot = plots.sparsity_histograms(
        first.numpy(),
        last.numpy(),
        run_dir / PLOTS_DIR / "sparsity_histograms.png",
        first_label=f"epoch {first_epoch}",
        last_label=f"epoch {last_epoch}",
    )
    rows = [
        [f"epoch {epoch}", str(values.numel()), *_quantiles(values)]
        for epoch, values in ((first_epoch, first), (last_epoch, last))
    ]
    return [
        *lines,
        f"{len(snapshots)} snapshots; the first and last are compared (values pooled over "
        "layers and groups).",
        "",
        markdown_table(["snapshot", "values", "p10", "median", "p90", "max"], rows),
        "",
        f"![sparsity histograms]({PLOTS_DIR}/{plot.name})",
        "",
    ]


def _quantiles(values: torch.Tensor) -> list[str]:
    q = torch.quantile(values.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.double))
    return [f"{float(x):.3g}" for x in (*q, values.max())]


def _training(run_dir: Path, summary: RunSummary, records: list[dict[str, Any]]) -> list[str]:
    seeds = {r["seed"] for r in records if "seed" in r}
    note = ""
    if len(seeds) > 1:
        records = [r for r in records if r.get("seed") == summary.seeds[0]]
        note = f" Curves of seed {summary.seeds[0]} (of {len(seeds)})."
    lines = ["## Training", ""]
    if not records:
        return [*lines, f"`metrics.jsonl` holds no records.{note}", ""]
    phases: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        phases.setdefault(str(record.get("phase", "train")), []).append(record)
    rows = []
    for phase, rows_of_phase in phases.items():
        last = max(rows_of_phase, key=lambda r: r.get("epoch", 0))
        rows.append(
            [
                phase,
                str(len(rows_of_phase)),
                _number(last.get("train_loss")),
                _fraction(last.get("train_acc")),
                _number(last.get("val_loss")),
                _fraction(last.get("val_acc")),
                duration(summary.phase_time_s[phase]) if phase in summary.phase_time_s else "",
            ]
        )
    table = markdown_table(
        ["phase", "epochs", "train loss", "train acc", "val loss", "val acc", "wall time"],
        rows,
        ["l", "r", "r", "r", "r", "r", "r"],
    )
    plot = plots.training_curves(records, run_dir / PLOTS_DIR / "training_curves.png")
    return [
        *lines,
        f"Last epoch of each phase.{note}",
        "",
        table,
        "",
        f"![training curves]({PLOTS_DIR}/{plot.name})",
        "",
    ]


def _number(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"


def _fraction(value: Any) -> str:
    return "" if value is None else percent(float(value))


def _accuracy_vs_macs(run_dir: Path, summary: RunSummary) -> list[str]:
    plot = plots.accuracy_vs_macs(
        {
            "baseline": (summary.macs_before, summary.acc_baseline or summary.acc_before_prune),
            "pruned, before fine-tune": (summary.macs_after, summary.acc_after_prune),
            "pruned, after fine-tune": (summary.macs_after, summary.acc_after_finetune),
        },
        run_dir / PLOTS_DIR / "accuracy_vs_macs.png",
    )
    return ["## Accuracy vs MACs", "", f"![accuracy vs MACs]({PLOTS_DIR}/{plot.name})", ""]


def _widths(run_dir: Path, summary: RunSummary) -> list[str]:
    lines = ["## Per-layer widths", ""]
    if not summary.layer_widths:
        return [*lines, "No per-layer widths were recorded.", ""]
    rows = [
        [name, str(before), str(after), percent(after / before, 1) if before else "n/a"]
        for name, (before, after) in summary.layer_widths.items()
    ]
    plot = plots.width_bars(summary.layer_widths, run_dir / PLOTS_DIR / "layer_widths.png")
    return [
        *lines,
        markdown_table(["layer", "width before", "width after", "kept"], rows),
        "",
        f"![kept width per layer]({PLOTS_DIR}/{plot.name})",
        "",
    ]


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.md`` and its plots under ``run_dir/plots/``.

    Reads ``summary.json``, ``metrics.jsonl`` and, when present, the first and last snapshots in
    ``sparsity/``. Running it again overwrites the report and plots with fresh ones.

    Args:
        run_dir: a run directory written by the pipeline.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: ``summary.json`` or ``metrics.jsonl`` is missing (the path is named).
        ValueError: one of the files is malformed (the path is named).

    Example::

        write_report("runs/masksparsity-resnet56")  # -> runs/.../report.md, runs/.../plots/
    """
    run_dir = Path(run_dir)
    summary = RunSummary.load(run_dir)
    records = read_metrics(run_dir)
    lines = [
        *_header(summary),
        *_results(summary),
        *_accuracy_vs_macs(run_dir, summary),
        *_sparsity(run_dir),
        *_training(run_dir, summary, records),
        *_widths(run_dir, summary),
    ]
    return atomic_write_text(run_dir / REPORT_FILE, "\n".join(lines).rstrip() + "\n")
