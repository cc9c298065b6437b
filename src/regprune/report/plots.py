"""The report's figures, as PNG files.

Every function takes plain data (numbers, arrays, dicts) and an output path and returns the path.
Figures are built on a bare ``matplotlib.figure.Figure`` rendered by the Agg canvas, never through
``pyplot``: no global backend switch, no figure registry that leaks memory over many runs, and safe
to call from a headless training job or a thread.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from regprune.metrics import format_count

DPI = 120
LOG_SCALE_SPAN = 100.0
"""Use a log x axis when the positive values span more than this factor (two decades)."""


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _by_phase(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records grouped by phase, phases in order of first appearance, epochs sorted."""
    phases: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        phases.setdefault(str(record.get("phase", "train")), []).append(record)
    return {phase: sorted(rows, key=lambda r: r["epoch"]) for phase, rows in phases.items()}


Series = dict[str, tuple[list[float], list[float]]]
"""``{"phase/key": (xs, ys)}``; accuracies in percent."""


def _lay_end_to_end(
    records: Sequence[Mapping[str, Any]],
) -> tuple[Series, list[tuple[float, float, str]]]:
    """Curves on one epoch axis (each phase after the previous one), and each phase's span."""
    series: Series = {}
    phases: list[tuple[float, float, str]] = []
    offset = 0
    for phase, rows in _by_phase(records).items():
        for row in rows:
            for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
                value = row.get(key)
                if value is not None:
                    xs, ys = series.setdefault(f"{phase}/{key}", ([], []))
                    xs.append(offset + row["epoch"])
                    ys.append((100.0 if key.endswith("acc") else 1.0) * float(value))
        start, offset = offset, offset + max(row["epoch"] for row in rows)
        phases.append((start + 0.5, offset + 0.5, phase))
    return series, phases


def _mark_phases(axes: Axes, phases: list[tuple[float, float, str]]) -> None:
    """Shade every other phase, draw the boundaries, name each phase above the axes."""
    for index, (left, right, phase) in enumerate(phases):
        if index % 2:
            axes.axvspan(left, right, color="0.93", zorder=0)
        if index:
            axes.axvline(left, color="0.4", linestyle=":", linewidth=1)
        axes.text(
            (left + right) / 2,
            1.01,
            phase,
            transform=axes.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
        )


def training_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss and accuracy against epoch, all phases on one axis, phase boundaries marked.

    Epochs restart at 1 in every phase of ``metrics.jsonl``; here they are laid end to end so the
    drop at pruning and the recovery during fine-tuning read as one story.

    Args:
        records: ``metrics.jsonl`` records with ``phase``, ``epoch``, ``train_loss``,
            ``train_acc`` and optionally ``val_loss`` / ``val_acc`` (``None`` or absent: skipped).
        path: PNG file to write.

    Returns:
        ``path``.

    Raises:
        ValueError: no records, or a record without ``epoch``.
    """
    if not records:
        raise ValueError("no metrics records to plot")
    if missing := [i for i, r in enumerate(records) if "epoch" not in r]:
        raise ValueError(f"metrics records {missing[:5]} have no 'epoch'")
    series, phases = _lay_end_to_end(records)
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    for axes, quantity in zip(figure.subplots(1, 2), ("loss", "acc"), strict=True):
        for split, style, color in (("train", "-", "C0"), ("val", "--", "C1")):
            label: str | None = split
            for _, _, phase in phases:
                xs, ys = series.get(f"{phase}/{split}_{quantity}", ([], []))
                if xs:
                    # One line per phase: a line across a boundary would fake a smooth transition.
                    axes.plot(
                        xs,
                        ys,
                        style,
                        color=color,
                        marker="o" if len(xs) < 30 else None,
                        markersize=3,
                        label=label,
                    )
                    label = None
        _mark_phases(axes, phases)
        axes.set_xlabel("epoch (phases laid end to end)")
        axes.set_ylabel("accuracy (%)" if quantity == "acc" else "loss")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[1]:
            axes.legend(loc="best", fontsize=8)
    figure.suptitle("Training curves")
    return _save(figure, path)


def _log_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, float] | None:
    """Log-spaced bins and the floor zeros are drawn at, or None when a linear axis is right."""
    positive = values[values > 0]
    if positive.size == 0 or positive.max() / positive.min() <= LOG_SCALE_SPAN:
        return None
    floor = float(positive.min()) / 2
    return np.geomspace(floor, float(positive.max()) * 1.01, bins + 1), floor


def sparsity_histograms(
    first: np.ndarray,
    last: np.ndarray,
    path: str | os.PathLike[str],
    first_label: str = "first snapshot",
    last_label: str = "last snapshot",
    quantity: str = "|gamma| or group norm",
    bins: int = 50,
) -> Path:
    """Distribution of the regularized quantity at the start and end of sparsity training.

    This is the evidence that sparsity emerged: a bimodal "last" histogram with a heap near zero,
    well separated from the survivors. The x axis turns logarithmic when the values span more than
    two decades, since that heap would otherwise be a single bar at 0; exact zeros are then drawn
    in the leftmost bin and counted in the legend.

    Args:
        first: values (pooled over layers) at the first snapshot; non-negative.
        last: values at the last snapshot; non-negative.
        path: PNG file to write.
        first_label: legend label of ``first`` (e.g. ``"epoch 1"``).
        last_label: legend label of ``last``.
        quantity: x-axis label.
        bins: number of bins.

    Raises:
        ValueError: an empty array, or negative or non-finite values (magnitudes are expected).
    """
    arrays = {
        first_label: np.asarray(first, dtype=float).ravel(),
        last_label: np.asarray(last, dtype=float).ravel(),
    }
    for label, values in arrays.items():
        if values.size == 0:
            raise ValueError(f"{label}: no values to plot")
        if not np.all(np.isfinite(values)) or values.min() < 0:
            raise ValueError(f"{label}: values must be finite and >= 0 (magnitudes)")
    pooled = np.concatenate(list(arrays.values()))
    log = _log_bins(pooled, bins)
    edges = log[0] if log else np.linspace(0.0, float(pooled.max()) or 1.0, bins + 1)

    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.subplots()
    for (label, values), color in zip(arrays.items(), ("C0", "C3"), strict=True):
        zeros = int((values == 0).sum())
        shown = np.where(values > 0, values, log[1]) if log else values
        legend = f"{label}: n={values.size}, median={float(np.median(values)):.3g}"
        if log and zeros:
            legend += f", {zeros} zeros at left edge"
        axes.hist(shown, bins=edges, histtype="stepfilled", alpha=0.35, color=color)
        axes.hist(shown, bins=edges, histtype="step", linewidth=1.5, color=color, label=legend)
    if log:
        axes.set_xscale("log")
    axes.set_xlabel(quantity + (" (log scale)" if log else ""))
    axes.set_ylabel("channels / groups")
    axes.set_title("Regularized quantity: first vs last sparsity snapshot")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def width_bars(layer_widths: Mapping[str, tuple[int, int]], path: str | os.PathLike[str]) -> Path:
    """Kept width per layer: the original width behind, the pruned width in front.

    Horizontal bars so layer names stay readable for deep models (ResNet-110 has 100+ rows);
    the figure grows with the number of layers.

    Args:
        layer_widths: ``{layer: (width before, width after)}`` in network order.
        path: PNG file to write.

    Raises:
        ValueError: no layers.
    """
    if not layer_widths:
        raise ValueError("no layer widths to plot")
    names = list(layer_widths)
    before = np.array([layer_widths[n][0] for n in names])
    after = np.array([layer_widths[n][1] for n in names])
    positions = np.arange(len(names))
    figure = Figure(figsize=(7.5, max(3.5, 1.2 + 0.22 * len(names))), layout="constrained")
    axes = figure.subplots()
    axes.barh(positions, before, color="0.8", label="before")
    axes.barh(positions, after, height=0.55, color="C0", label="after")
    for y, (b, a) in enumerate(zip(before, after, strict=True)):
        axes.text(b, y, f" {a}/{b}", va="center", fontsize=7)
    axes.set_yticks(positions, names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlim(0, before.max() * 1.18)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("output channels")
    axes.set_title(f"Kept width per layer ({after.sum()}/{before.sum()} channels)")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def accuracy_vs_macs(
    points: Mapping[str, tuple[int, Sequence[float]]], path: str | os.PathLike[str]
) -> Path:
    """Accuracy against MACs for a run and its baseline, consecutive points joined by arrows.

    Args:
        points: ``{label: (MACs, accuracies as fractions, one per seed)}`` in the order of the
            story, e.g. baseline, pruned before fine-tune, pruned after fine-tune. With several
            seeds the point is the mean and the error bar one standard deviation.
        path: PNG file to write.

    Raises:
        ValueError: no points, or a point without accuracies.
    """
    if not points:
        raise ValueError("no points to plot")
    figure = Figure(figsize=(6.5, 5.2), layout="constrained")
    axes = figure.subplots()
    centers: list[tuple[float, float]] = []
    for index, (label, (macs, accuracies)) in enumerate(points.items()):
        if not accuracies:
            raise ValueError(f"point {label!r} has no accuracies")
        percents = [100.0 * a for a in accuracies]
        mean = statistics.fmean(percents)
        spread = statistics.stdev(percents) if len(percents) > 1 else 0.0
        axes.errorbar(
            macs,
            mean,
            yerr=spread or None,
            fmt="os^Dv"[index % 5],
            markersize=8,
            capsize=4,
            color=f"C{index}",
            label=f"{label}: {mean:.2f} % at {format_count(macs)} MACs",
        )
        centers.append((float(macs), mean))
    for (x0, y0), (x1, y1) in itertools.pairwise(centers):
        axes.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "->", "color": "0.5", "shrinkA": 6, "shrinkB": 6},
        )
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: format_count(value)))
    xs = [x for x, _ in centers]
    axes.set_xlim(0, max(xs) * 1.1)
    axes.set_xlabel("MACs per sample")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy vs MACs")
    axes.grid(alpha=0.3)
    # Below the axes: inside, it would cover the arrows whatever corner it took.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=1)
    return _save(figure, path)
