"""Tables and the accuracy-vs-MACs plot from a benchmark's JSON lines.

    python -m benchmarks.methods.report benchmarks/methods/configs/cpu.yaml

Writes ``docs/benchmarks/<name>_tables.md`` (mean +- std over seeds, per method; the hand-written
``docs/benchmarks.md`` includes its numbers) and ``docs/benchmarks/<name>_acc_vs_macs.png``.
Only rows with ``status: ok`` count; the seeds each mean is over are listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from regprune.io import atomic_write_text
from regprune.report import markdown_table

from .config import BenchConfig, load_config


def load_rows(path: Path, latency: Path | None = None) -> list[dict]:
    """The ``ok`` rows, the first one per (label, seed) if a run was recorded twice, with the
    latency pass's figures (``latency`` JSON lines, see ``latency.py``) merged in when given."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first: dict[tuple[str, float | None, int], dict] = {}
    for row in rows:
        if row.get("status") == "ok":
            first.setdefault((row["label"], row.get("target_macs"), row["seed"]), row)
    if latency is not None and latency.exists():
        # older timings name no target: their config had one
        one_target = {(label, seed): key for key in first for label, _, seed in [key]}
        for line in latency.read_text().splitlines():
            if line.strip():
                timing = json.loads(line)
                label, seed = timing.pop("label"), timing.pop("seed")
                if "target_macs" in timing:
                    key = (label, timing.pop("target_macs"), seed)
                else:
                    key = one_target.get((label, seed))
                if key in first:
                    first[key] |= {k: v for k, v in timing.items() if k != "machine"}
    return list(first.values())


def failures(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("status") == "error"]  # not "superseded" (see its note)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def by_label(rows: list[dict], config: BenchConfig) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row["label"]].append(row)
    order = [r.label for r in config.runs]
    return {label: grouped[label] for label in order if label in grouped}


def structured_table(groups: dict[str, list[dict]]) -> str:
    header = [
        "method",
        "seeds",
        "acc as trained, before prune (%)",
        "acc right after prune (%)",
        "... with BN re-estimated (%)",
        "acc after fine-tune (%)",
        "MACs kept",
        "MFLOPs",
        "params (K)",
        "speedup b1",
        "speedup b64",
        "speedup b64 / MACs ratio",
        "sparsify (s)",
        "prune (s)",
        "fine-tune (s)",
    ]
    rows = []
    for label, runs in groups.items():
        if runs[0]["family"] == "unstructured":
            continue

        def col(key, scale=1.0, digits=2, runs=runs):
            return mean_std([r.get(key) for r in runs], scale, digits)

        rows.append(
            [
                label,
                ",".join(str(r["seed"]) for r in runs),
                col("acc_before_prune", 100),
                col("acc_after_prune", 100),
                col("acc_after_prune_bn", 100),
                f"**{col('acc_after_finetune', 100)}**",
                col("macs_kept", 1, 3),
                col("flops_after", 1e-6, 1),
                col("params_after", 1e-3, 1),
                col("speedup_b1"),
                col("speedup_b64"),
                col("efficiency_b64"),
                col("time_sparsify_s", 1, 0),
                col("time_prune_s", 1, 2),
                col("time_finetune_s", 1, 0),
            ]
        )
    return markdown_table(header, rows)


BEST_TP = "best_tp"
"""``--reference best_tp``: per seed, the Torch-Pruning pruner that did best on that seed."""


def paired_table(groups: dict[str, list[dict]], reference: str) -> str:
    """Accuracy after fine-tune minus the reference's, per seed (same baseline, same data).

    Why: a seed's baseline moves every method alike (here by ~1 point), so differences on the
    same seed are far less noisy than the difference of two means. ``best_tp``: the reference
    of a seed is the best of the Torch-Pruning rows on that seed (a maximum of four: a bar
    that favours the peers, so a method above it is above every one of them)."""
    if reference == BEST_TP:
        ref: dict[int, float] = {}
        for runs in groups.values():
            for r in runs:
                if r["family"] == "tp":
                    ref[r["seed"]] = max(ref.get(r["seed"], 0.0), r["acc_after_finetune"])
        reference = "the best Torch-Pruning pruner of the seed"
    else:
        ref = {r["seed"]: r["acc_after_finetune"] for r in groups.get(reference, [])}
    rows = []
    for label, runs in groups.items():
        if label == reference or runs[0]["family"] == "unstructured":
            continue
        pairs = sorted(
            (r["seed"], 100 * (r["acc_after_finetune"] - ref[r["seed"]]))
            for r in runs
            if r["seed"] in ref
        )
        if not pairs:
            continue
        diffs = [d for _, d in pairs]
        per_seed = ", ".join(f"{d:+.2f}" for _, d in pairs)
        rows.append([label, str(len(pairs)), mean_std(diffs), per_seed])
    header = ["method", "seeds paired", f"after fine-tune minus {reference} (points)", "per seed"]
    return markdown_table(header, rows)


def removal_table(groups: dict[str, list[dict]]) -> str | None:
    """How silent each method's removed set was where it is read, and what removal cost.

    From the ``removal`` report every regprune run records (``method.removal_report()``):
    constant = range at most 1e-3 of the kept channels' (folded into the consumers' biases),
    largest relative range over the removed inputs (median over seeds). None when no run
    recorded one (Torch-Pruning peers and unstructured runs do not)."""
    rows = []
    for label, runs in groups.items():
        with_report = [r for r in runs if r.get("removal")]
        if not with_report or runs[0]["family"] == "unstructured":
            continue
        drops = [100 * (r["acc_after_prune"] - r["acc_before_prune"]) for r in with_report]
        constant = [
            100 * r["removal"]["constant_inputs"] / max(r["removal"]["removed_inputs"], 1)
            for r in with_report
        ]
        largest = statistics.median(r["removal"]["max_relative_range"] for r in with_report)
        rows.append(
            [
                label,
                ",".join(str(r["seed"]) for r in with_report),
                mean_std(drops),
                mean_std(constant, 1, 0),
                f"{largest:.2g}",
                with_report[0]["removal"]["mode"],
            ]
        )
    if not rows:
        return None
    header = [
        "method",
        "seeds",
        "right after prune minus as trained (points)",
        "removed inputs constant (%)",
        "largest relative range (median over seeds)",
        "compensation",
    ]
    return markdown_table(header, rows, ["l", "l", "r", "r", "r", "l"])


def unstructured_table(groups: dict[str, list[dict]]) -> str:
    header = [
        "method",
        "seeds",
        "weight sparsity (%)",
        "acc as trained, before prune (%)",
        "acc right after prune (%)",
        "... with BN re-estimated (%)",
        "acc after fine-tune (%)",
        "sparsify (s)",
        "fine-tune (s)",
    ]
    rows = []
    for label, runs in groups.items():
        if runs[0]["family"] != "unstructured":
            continue

        def col(key, scale=1.0, digits=2, runs=runs):
            return mean_std([r.get(key) for r in runs], scale, digits)

        rows.append(
            [
                label,
                ",".join(str(r["seed"]) for r in runs),
                col("weight_sparsity_after", 100, 1),
                col("acc_before_prune", 100),
                col("acc_after_prune", 100),
                col("acc_after_prune_bn", 100),
                f"**{col('acc_after_finetune', 100)}**",
                col("time_sparsify_s", 1, 0),
                col("time_finetune_s", 1, 0),
            ]
        )
    return markdown_table(header, rows)


def baseline_table(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    first = {s: next(r for r in rows if r["seed"] == s) for s in seeds}
    cells = []
    for s in seeds:
        r = first[s]
        timed = next((t for t in rows if t["seed"] == s and "latency_b1_ms_before" in t), {})
        cells.append(
            [
                str(s),
                f"{100 * r['acc_baseline']:.2f}",
                f"{r['macs_before'] / 1e6:.2f} M",
                f"{r['flops_before'] / 1e6:.2f} M",
                f"{r['params_before'] / 1e3:.1f} K",
                _ms(timed.get("latency_b1_ms_before"), 2),
                _ms(timed.get("latency_b64_ms_before"), 1),
                f"{r['time_pretrain_s']:.0f}",
            ]
        )
    header = [
        "seed",
        "baseline acc (%)",
        "MACs",
        "FLOPs",
        "params",
        "latency b1 (ms)",
        "latency b64 (ms)",
        "pretrain (s)",
    ]
    return markdown_table(header, cells)


def _ms(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_err(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot(groups: dict[str, list[dict]], path: Path, title: str) -> None:
    """Left: accuracy after fine-tune vs MACs kept (baseline at 1). Right: per method, the
    accuracy right after pruning and after fine-tune (mean, std over seeds as error bars)."""
    structured = {k: v for k, v in groups.items() if v[0]["family"] != "unstructured"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), width_ratios=[1, 1.3])
    colors = plt.get_cmap("tab20").colors
    base = [100 * r["acc_baseline"] for rows in groups.values() for r in rows]
    if base:
        left.errorbar(1.0, *_mean_err(base), fmt="*", ms=12, color="black", label="baseline")
    for i, (label, rows) in enumerate(structured.items()):
        marker = "s" if rows[0]["family"] == "tp" else "o"
        x = statistics.fmean(r["macs_kept"] for r in rows)
        y, err = _mean_err([100 * r["acc_after_finetune"] for r in rows])
        left.errorbar(
            x, y, yerr=err, fmt=marker, capsize=3, color=colors[i % len(colors)], label=label
        )
    left.set_xlim(0.4, 1.05)
    left.set_xlabel("MACs kept (fraction of the baseline)")
    left.set_ylabel("test accuracy after fine-tune (%)")
    left.set_title(title, fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2, loc="lower right")
    labels = list(structured)
    ys = range(len(labels))
    for offset, key, name, alpha in (
        (-0.2, "acc_after_prune", "right after pruning", 0.45),
        (0.2, "acc_after_finetune", "after fine-tune", 0.9),
    ):
        stats = [_mean_err([100 * r[key] for r in structured[k]]) for k in labels]
        right.barh(
            [y + offset for y in ys],
            [m for m, _ in stats],
            xerr=[e for _, e in stats],
            height=0.4,
            alpha=alpha,
            color="tab:blue",
            label=name,
        )
    right.set_yticks(list(ys), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("test accuracy (%), mean ± std over seeds")
    right.grid(alpha=0.3, axis="x")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(configs: list[BenchConfig]) -> tuple[dict[str, list[tuple]], list[float]]:
    """Per label, ``(macs_kept, acc, acc_std, n_seeds)`` at each target it ran at, sorted by
    MACs; and the baseline accuracies. Only rows of each config's own ``out`` count."""
    points: dict[str, list[tuple]] = defaultdict(list)
    base: list[float] = []
    for config in configs:
        rows = load_rows(Path(config.out))
        base += [r["acc_baseline"] * 100 for r in rows if r["family"] != "unstructured"]
        for label, group in by_label(rows, config).items():
            if group[0]["family"] == "unstructured":
                continue
            acc, err = _mean_err([100 * r["acc_after_finetune"] for r in group])
            macs = statistics.fmean(r["macs_kept"] for r in group)
            points[label].append((macs, acc, err, len(group)))
    return {k: sorted(v) for k, v in points.items()}, base


def pareto_table(points: dict[str, list[tuple]], targets: list[float]) -> str:
    rows = []
    for label, series in points.items():
        cells = []
        for target in targets:
            hit = [p for p in series if abs(p[0] - target) < 0.02]
            cells.append(f"{hit[0][1]:.2f} ± {hit[0][2]:.2f} ({hit[0][3]})" if hit else "-")
        rows.append([label, *cells])
    return markdown_table(["method", *(f"MACs {t:g}" for t in targets)], rows)


def pareto_plot(points: dict[str, list[tuple]], base: list[float], path: Path, title: str) -> None:
    """Accuracy after fine-tune against MACs kept, one line per method over the targets."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab20").colors
    if base:
        ax.errorbar(1.0, *_mean_err(base), fmt="*", ms=12, color="black", label="baseline")
    for i, (label, series) in enumerate(points.items()):
        if len(series) < 2:
            continue
        xs, ys, errs, _ = zip(*series, strict=True)
        style = "--s" if label.startswith("tp_") else "-o"
        ax.errorbar(xs, ys, yerr=errs, fmt=style, capsize=3, color=colors[i % 20], label=label)
    ax.set_xlabel("MACs kept (fraction of the baseline)")
    ax.set_ylabel("test accuracy after fine-tune (%), mean ± std over seeds")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def at_target(rows: list[dict], config: BenchConfig, target: float) -> dict[str, list[dict]]:
    """The rows of the config's own runs (not claim rows) at ``target``, by label."""
    own = {r.label for r in config.runs if r.target_macs is None}
    return by_label([r for r in rows if r["label"] in own and r["target_macs"] == target], config)


def target_points(rows: list[dict], config: BenchConfig) -> dict[str, list[tuple]]:
    """Per structured label, ``(target, macs_kept, acc, acc_std, n_seeds)`` at each target."""
    points: dict[str, list[tuple]] = defaultdict(list)
    for target in config.targets:
        for label, group in at_target(rows, config, target).items():
            if group[0]["family"] == "unstructured":
                continue
            acc, err = _mean_err([100 * r["acc_after_finetune"] for r in group])
            macs = statistics.fmean(r["macs_kept"] for r in group)
            points[label].append((target, macs, acc, err, len(group)))
    return dict(points)


def target_table(points: dict[str, list[tuple]], targets: tuple[float, ...]) -> str:
    rows = []
    for label, series in points.items():
        found = {p[0]: p for p in series}
        cells = [
            f"{found[t][2]:.2f} ± {found[t][3]:.2f} ({found[t][4]})" if t in found else "-"
            for t in targets
        ]
        rows.append([label, *cells])
    return markdown_table(["method", *(f"MACs {t:g}" for t in targets)], rows)


def reduction(row: dict, metric: str) -> float:
    """What a claim is about: the share of MACs or params removed, or of weights zeroed."""
    if metric == "weight_sparsity":
        return row["weight_sparsity_after"]
    return 1.0 - row[f"{metric}_after"] / row[f"{metric}_before"]


def verdict(reductions: list[float], drops: list[float], at_least: float, max_drop: float) -> str:
    """The claims table's rule (stated in the report, ``CLAIM_RULE``)."""
    if statistics.fmean(reductions) < at_least - 0.01:
        return "no (reduction short)"
    mean = statistics.fmean(drops)
    if mean >= -max_drop:
        return "yes"
    error = statistics.stdev(drops) / len(drops) ** 0.5 if len(drops) > 1 else 0.0
    return "within noise" if mean + 2 * error >= -max_drop else "no"


CLAIM_RULE = (
    "A claim **holds** (yes) when the mean reduction over seeds reaches the claimed one "
    "(1 point of slack) and the mean accuracy change after fine-tune, each run against its own "
    "seed's baseline (final epoch), is no worse than the drop the claim allows; **within noise** "
    "when it is worse, but not by more than two standard errors of that mean; **no** otherwise. "
    "One seed gives no standard error."
)


def claims_table(rows: list[dict], config: BenchConfig) -> str | None:
    """``claim | setting here | result | holds?``, one line per claim row of the config."""
    lines = []
    for spec in config.runs:
        if spec.claim is None:
            continue
        claim = spec.claim
        runs = [r for r in rows if r["label"] == spec.label]
        setting = (
            f"{spec.method} on {(spec.model or config.model).name} / {config.data.name}, "
            + (f"MACs {spec.target_macs:g}" if spec.target_macs is not None else "")
            + (f"ratio {spec.ratio:g}" if spec.ratio is not None else "")
        )
        if not runs:
            lines.append([f"{claim.paper}: {claim.text}", setting, "not run", "-"])
            continue
        reductions = [reduction(r, claim.metric) for r in runs]
        drops = [100 * (r["acc_after_finetune"] - r["acc_baseline"]) for r in runs]
        base = statistics.fmean(100 * r["acc_baseline"] for r in runs)
        share = 100 * statistics.fmean(reductions)
        reached = (
            f"weight sparsity {share:.1f} %"
            if claim.metric == "weight_sparsity"
            else f"{claim.metric} -{share:.1f} %"
        )
        result = (
            f"{reached}, accuracy "
            f"{mean_std(drops)} points vs its baseline ({base:.2f} %; per seed "
            f"{', '.join(f'{d:+.2f}' for d in drops)})"
        )
        needs = f" (needs {100 * claim.at_least:g} %, at most -{claim.max_drop:g} points)"
        lines.append(
            [
                f"{claim.paper}: {claim.text}",
                setting + needs,
                result,
                verdict(reductions, drops, claim.at_least, claim.max_drop),
            ]
        )
    if not lines:
        return None
    return markdown_table(["claim", "setting here", "result", "holds?"], lines, ["l"] * 4)


def decisive_report(config: BenchConfig, rows: list[dict], reference: str | None) -> list[str]:
    """The report of a config with several targets or claim rows: per target the tables and
    the paired differences (default: against the best Torch-Pruning pruner of each seed), the
    accuracy by target and its plot, the unstructured rows once, and the claims."""
    folder = Path(config.out).parent
    main_rows = [r for r in rows if r.get("model", config.model.name) == config.model.name]
    text = [f"# {config.name}: tables (generated by benchmarks/methods/report.py)", ""]
    text += ["## Baseline", "", baseline_table(main_rows), ""]
    epochs = sorted({r["baseline_epochs"] for r in main_rows if r.get("baseline_epochs")})
    if epochs:
        text += [f"Baselines trained {', '.join(map(str, epochs))} epochs (until_plateau).", ""]
    for target in config.targets:
        groups = at_target(rows, config, target)
        if not any(g[0]["family"] != "unstructured" for g in groups.values()):
            continue
        text += [f"## MACs target {target:g}", "", structured_table(groups), ""]
        text += [f"### Paired by seed, against {reference or BEST_TP}", ""]
        text += [paired_table(groups, reference or BEST_TP), ""]
    points = target_points(rows, config)
    text += ["## Accuracy after fine-tune by MACs target (mean ± std (seeds))", ""]
    text += [target_table(points, config.targets), ""]
    plot_points = {k: [p[1:] for p in v] for k, v in points.items()}
    base = [100 * r["acc_baseline"] for r in main_rows]
    pareto_title = (
        f"{config.model.name} / {config.data.name}, MACs targets "
        f"{' / '.join(f'{t:g}' for t in config.targets)} (final epoch)"
    )
    pareto_plot(plot_points, base, folder / f"{config.name}_pareto.png", pareto_title)
    unstructured = {
        k: v for k, v in by_label(rows, config).items() if v[0]["family"] == "unstructured"
    }
    unstructured = {k: v for k, v in unstructured.items() if "claim" not in v[0]}
    text += ["## Unstructured", "", unstructured_table(unstructured), ""]
    claims = claims_table(rows, config)
    if claims is not None:
        text += ["## Claims, transposed to this data", "", CLAIM_RULE, "", claims, ""]
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument(
        "--with",
        dest="others",
        nargs="*",
        default=[],
        help="configs of the same model at other MACs targets: adds the accuracy-vs-MACs plot",
    )
    parser.add_argument(
        "--reference",
        help="label to compare every structured method with, seed by seed (paired differences); "
        "best_tp: the best Torch-Pruning pruner of each seed (the default with several targets)",
    )
    parser.add_argument("--out", help="JSON lines file instead of the config's out")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.out)
    out = Path(config.out)
    rows = load_rows(out, config.latency_out)
    if config.multi_target:
        text = decisive_report(config, rows, args.reference)
        have = {(r["label"], r["target_macs"], r["seed"]) for r in rows}
        missing = sorted(
            f"{r.label}@MACs {t:g} seed {s}"
            for r in config.runs
            for t in config.targets_of(r)
            for s in config.seeds
            if (r.label, t, s) not in have
        )
        text += [f"Not finished: {', '.join(missing) if missing else 'none'}."]
        for row in failures(out):
            text.append(f"- failed: {row['label']} seed {row['seed']}: {row.get('error')}")
        atomic_write_text(out.parent / f"{config.name}_tables.md", "\n".join(text) + "\n")
        print("\n".join(text))
        return
    groups = by_label(rows, config)
    folder = out.parent
    title = (
        f"{config.model.name} / {config.data.name}, target {config.target_macs} MACs (final epoch)"
    )
    plot(groups, folder / f"{config.name}_acc_vs_macs.png", title)
    have = {(r["label"], r["seed"]) for r in rows}
    missing = [
        f"{r.label} (seed {', '.join(str(s) for s in config.seeds if (r.label, s) not in have)})"
        for r in config.runs
        if any((r.label, s) not in have for s in config.seeds)
    ]
    text = [f"# {config.name}: tables (generated by benchmarks/methods/report.py)", ""]
    text += ["## Baseline", "", baseline_table(rows), "", "## Structured", ""]
    text += [structured_table(groups), ""]
    removal = removal_table(groups)
    if removal is not None:
        text += ["## How silent the removed channels were", "", removal, ""]
    if args.reference:
        text += [f"## Paired by seed, against {args.reference}", ""]
        text += [paired_table(groups, args.reference), ""]
    text += ["## Unstructured", "", unstructured_table(groups)]
    text += ["", f"Not finished: {', '.join(missing) if missing else 'none'}."]
    for row in failures(out):
        text.append(f"- failed: {row['label']} seed {row['seed']}: {row.get('error')}")
    if args.others:
        configs = [config, *map(load_config, args.others)]
        points, base = pareto(configs)
        targets = sorted({c.target_macs for c in configs})
        text += ["", "## Accuracy after fine-tune by MACs target (mean ± std (seeds))", ""]
        text.append(pareto_table(points, targets))
        pareto_title = (
            f"{config.model.name} / {config.data.name}, MACs targets "
            f"{' / '.join(f'{t:g}' for t in targets)} (final epoch)"
        )
        pareto_plot(points, base, folder / f"{config.name}_pareto.png", pareto_title)
    atomic_write_text(folder / f"{config.name}_tables.md", "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
