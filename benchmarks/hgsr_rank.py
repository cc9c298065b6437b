"""How closely HGSR's fast (first-order) loss-increase ranks channels like the exact one.

    python -m benchmarks.hgsr_rank --samples 512 --seed 0 --out docs/hgsr_rank.md

On a briefly trained ResNet-20 / Fashion-MNIST (the cached baseline of the method benchmark's
config, trained here if it is not cached), score every channel of every group with
``exact_loss_increase`` (one masked forward per channel) and ``fast_loss_increase`` (one
backward), on ``--samples`` random training images, and report Spearman and Kendall tau
overall and per group, the overlap of the 50% lowest-scored sets (global and per group), and
the time of each mode. Writes the Markdown report and ``--json`` (the raw numbers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from benchmarks.methods.data import random_batches
from benchmarks.methods.measure import test_accuracy
from benchmarks.methods.phases import study_start
from scipy.stats import kendalltau, spearmanr

from regprune.graph import trace_graph
from regprune.importance.loss_increase import exact_loss_increase, fast_loss_increase
from regprune.io import atomic_write_text
from regprune.report import describe_machine, machine_info, markdown_table


def lowest_half_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|L_a & L_b| / |L_a| where L is the set of the floor(n/2) lowest scores."""
    k = max(1, a.numel() // 2)
    low_a = set(torch.argsort(a, stable=True)[:k].tolist())
    low_b = set(torch.argsort(b, stable=True)[:k].tolist())
    return len(low_a & low_b) / k


def agreement(exact: torch.Tensor, fast: torch.Tensor) -> dict[str, float]:
    return {
        "spearman": float(spearmanr(exact.numpy(), fast.numpy()).statistic),
        "kendall": float(kendalltau(exact.numpy(), fast.numpy()).statistic),
        "low50_overlap": lowest_half_overlap(exact, fast),
    }


def markdown(result: dict, command: str) -> str:
    overall, per_group = result["overall"], result["per_group_mean"]
    timing = markdown_table(
        ["", "exact", "fast"],
        [
            ["time (s)", f"{result['time_exact_s']:.1f}", f"{result['time_fast_s']:.2f}"],
            ["speedup", "1x", f"{result['time_exact_s'] / result['time_fast_s']:.0f}x"],
        ],
    )
    scopes = [
        ("all channels (global ranking, what HGSR uses)", overall),
        ("per group, mean", per_group),
    ]
    agreement_table = markdown_table(
        ["scope", "Spearman", "Kendall tau", "overlap of the 50% lowest"],
        [
            [scope, f"{v['spearman']:.3f}", f"{v['kendall']:.3f}", f"{v['low50_overlap']:.3f}"]
            for scope, v in scopes
        ],
    )
    groups_table = markdown_table(
        [
            "group",
            "producers",
            "size",
            "Spearman",
            "Kendall tau",
            "low-50% overlap",
            "exact mean",
            "fast mean",
        ],
        [
            [
                str(row["group"]),
                row["producers"],
                str(row["size"]),
                f"{row['spearman']:.3f}",
                f"{row['kendall']:.3f}",
                f"{row['low50_overlap']:.3f}",
                f"{row['exact_mean']:.2e}",
                f"{row['fast_mean']:.2e}",
            ]
            for row in result["per_group"]
        ],
        ["l", "l", "r", "r", "r", "r", "r", "r"],
    )
    lines = [
        "# HGSR filter selection: fast vs exact loss increase",
        "",
        "HGSR ranks channels by how much the loss grows when a channel is removed "
        "(docs/specs/METHODS.md). `exact` runs one masked forward per channel; `fast` is the "
        "first-order estimate from one backward pass (`regprune.importance.loss_increase`). "
        "The question: does the cheap mode choose the same channels?",
        "",
        f"- Command: `{command}`",
        f"- Model: {result['model']} on {result['dataset']}, the method benchmark's cached "
        f"baseline for seed {result['seed']} (test accuracy {result['baseline_acc']:.4f}); "
        f"{result['samples']} random training images; {result['channels']} channels in "
        f"{result['groups']} groups.",
        f"- Machine: {describe_machine(result['machine'])}, shared with other jobs.",
        "",
        timing,
        "",
        "## Agreement",
        "",
        agreement_table,
        "",
        "### Per group",
        "",
        groups_table,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/methods/configs/cpu.yaml")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/hgsr_rank.md")
    parser.add_argument("--json", default="docs/benchmarks/hgsr_rank.json")
    args = parser.parse_args(argv)
    config, data, model = study_start(args.config, args.seed)
    # One batch of random training images (the train transform, as HGSR samples them).
    batches = random_batches(data.train.dataset, args.samples, args.samples, args.seed)
    graph = trace_graph(model, data.example_input())

    start = time.perf_counter()
    fast = fast_loss_increase(model, graph, batches)
    time_fast = time.perf_counter() - start
    start = time.perf_counter()
    exact = exact_loss_increase(model, graph, batches)
    time_exact = time.perf_counter() - start

    per_group = []
    for group in graph.groups:
        e, f = exact[group.id], fast[group.id]
        producers = ", ".join(group.producers[:3]) + (" ..." if len(group.producers) > 3 else "")
        row = {"group": group.id, "producers": producers, "size": group.size}
        row |= {"exact_mean": float(e.mean())}
        row |= {"fast_mean": float(f.mean())} | agreement(e, f)
        per_group.append(row)
    keys = ("spearman", "kendall", "low50_overlap")
    gids = [g.id for g in graph.groups]
    result = {
        "model": config.model.name,
        "dataset": config.data.name,
        "seed": args.seed,
        "samples": args.samples,
        "channels": sum(g.size for g in graph.groups),
        "groups": len(graph.groups),
        "baseline_acc": test_accuracy(model, data, config),
        "time_exact_s": time_exact,
        "time_fast_s": time_fast,
        "overall": agreement(
            torch.cat([exact[g] for g in gids]), torch.cat([fast[g] for g in gids])
        ),
        "per_group_mean": {k: sum(r[k] for r in per_group) / len(per_group) for k in keys},
        "per_group": per_group,
        "machine": machine_info(["scipy"]),
    }
    out = Path(args.out)
    command = f"python -m benchmarks.hgsr_rank --samples {args.samples} --seed {args.seed}"
    atomic_write_text(out, markdown(result, command))
    atomic_write_text(args.json, json.dumps(result, indent=1))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
