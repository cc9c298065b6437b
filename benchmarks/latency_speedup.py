"""Measured CPU speedup of pruned models against their MACs ratio.

    python benchmarks/latency_speedup.py --out docs/latency.md
    python benchmarks/latency_speedup.py --quick                 # resnet56 only (smoke run)
    python benchmarks/latency_speedup.py --from-json docs/latency.json   # re-render the page

Every model is pruned with ``regprune.prune(model, x, target_macs=t, importance="l1",
round_to=r)`` for t in (0.5, 0.3) and r in (1, 8); the original and its four pruned variants are
then timed in the same process with ``regprune.measure_latency`` at batch 1 and 64, with 1 and 2
threads. Within a (batch, threads) cell the variants are timed in interleaved rounds (original,
pruned, pruned, ..., then again), so a change of machine load during the cell hits all of them
alike; speedup = median latency of the original / median latency of the pruned model,
efficiency = speedup / (MACs before / MACs after).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

import regprune as rp
from regprune.io import atomic_write_text
from regprune.models import create_model
from regprune.report import describe_machine, machine_info, markdown_table


@dataclass(frozen=True)
class Bench:
    name: str
    build: Callable[[], torch.nn.Module]
    size: int
    big: bool  # ImageNet-size: fewer timed calls at batch 64 to keep the run short


def _torchvision(name: str) -> Callable[[], torch.nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None)


def _cifar(name: str) -> Callable[[], torch.nn.Module]:
    return lambda: create_model(name)


BENCHES = [
    Bench("resnet18", _torchvision("resnet18"), 224, True),
    Bench("resnet50", _torchvision("resnet50"), 224, True),
    Bench("mobilenet_v2", _torchvision("mobilenet_v2"), 224, True),
    Bench("vgg16_bn", _torchvision("vgg16_bn"), 224, True),
    Bench("resnet56", _cifar("resnet56"), 32, False),
    Bench("vgg16", _cifar("vgg16"), 32, False),
    Bench("mobilenetv2", _cifar("mobilenetv2"), 32, False),
]


@dataclass(frozen=True)
class Schedule:
    """How one (batch, threads) cell is timed.

    ``first_warmup`` untimed calls of every variant, then ``rounds`` rounds in which every variant
    gets ``chunk_warmup`` untimed and ``chunk_repeats`` timed calls. The reported median is the
    median of the per-round medians; the mean is the mean over all timed calls.
    """

    first_warmup: int
    rounds: int
    chunk_warmup: int
    chunk_repeats: int

    @property
    def timed_calls(self) -> int:
        return self.rounds * self.chunk_repeats


def schedule_for(bench: Bench, batch: int, args: argparse.Namespace) -> Schedule:
    if batch == 1:
        return Schedule(2, args.rounds_b1, 1, 3)
    if bench.big:
        return Schedule(1, args.big_b64_repeats, 0, 1)
    return Schedule(1, args.small_b64_repeats, 0, 1)


def widths_multiple_of_8(model: torch.nn.Module) -> float:
    """Share of conv / linear layers whose input and output widths are both multiples of 8."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    aligned = 0
    for layer in layers:
        widths = (
            (layer.in_channels, layer.out_channels)
            if isinstance(layer, torch.nn.Conv2d)
            else (layer.in_features, layer.out_features)
        )
        aligned += all(w % 8 == 0 for w in widths)
    return aligned / len(layers)


def time_cell(
    variants: dict[str, torch.nn.Module], x: torch.Tensor, threads: int, schedule: Schedule
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every variant on the same input; returns per-variant statistics."""
    round_medians: dict[str, list[float]] = {key: [] for key in variants}
    round_means: dict[str, list[float]] = {key: [] for key in variants}
    for model in variants.values():
        if schedule.first_warmup:
            rp.measure_latency(
                model, x, warmup=schedule.first_warmup - 1, repeats=1, threads=threads
            )
    keys = list(variants)
    for index in range(schedule.rounds):
        # Rotate the order so no variant always runs right after the same neighbour.
        shift = index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            latency = rp.measure_latency(
                variants[key],
                x,
                warmup=schedule.chunk_warmup,
                repeats=schedule.chunk_repeats,
                threads=threads,
            )
            round_medians[key].append(latency.median_ms)
            round_means[key].append(latency.mean_ms)
    return {
        key: {
            "median_ms": statistics.median(round_medians[key]),
            "mean_ms": statistics.fmean(round_means[key]),
            "round_medians_ms": round_medians[key],
        }
        for key in variants
    }


def run_bench(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    original = bench.build().eval()
    x1 = torch.randn(1, 3, bench.size, bench.size)
    before = rp.count(original, x1)
    variants: dict[str, torch.nn.Module] = {"original": original}
    pruned_info: dict[str, dict[str, Any]] = {}
    for target in args.targets:
        for round_to in args.round_to:
            key = f"t{target}_r{round_to}"
            start = time.perf_counter()
            small = rp.prune(original, x1, target_macs=target, importance="l1", round_to=round_to)
            prune_s = time.perf_counter() - start
            after = rp.count(small, x1)
            variants[key] = small.eval()
            pruned_info[key] = {
                "target_macs": target,
                "round_to": round_to,
                "macs_after": after.macs,
                "params_after": after.params,
                "macs_ratio": before.macs / after.macs,
                "aligned_8": widths_multiple_of_8(small),
                "prune_s": prune_s,
            }
    cells = []
    for batch in args.batches:
        x = torch.randn(batch, 3, bench.size, bench.size)
        schedule = schedule_for(bench, batch, args)
        for threads in args.threads:
            load_before = [round(v, 2) for v in os.getloadavg()]
            start = time.perf_counter()
            stats = time_cell(variants, x, threads, schedule)
            cell = {
                "batch": batch,
                "threads": threads,
                "schedule": schedule.__dict__,
                "timed_calls": schedule.timed_calls,
                "load_before": load_before,
                "cell_s": time.perf_counter() - start,
                "original": stats["original"],
                "pruned": {},
            }
            for key, info in pruned_info.items():
                speedup = stats["original"]["median_ms"] / stats[key]["median_ms"]
                cell["pruned"][key] = {
                    **stats[key],
                    "speedup": speedup,
                    "efficiency": speedup / info["macs_ratio"],
                }
            cells.append(cell)
            print(
                f"{bench.name} batch {batch} threads {threads}: original "
                f"{stats['original']['median_ms']:.1f} ms, efficiency "
                + ", ".join(f"{k} {v['efficiency']:.2f}" for k, v in cell["pruned"].items())
                + f" ({cell['cell_s']:.0f} s, load {load_before[0]})",
                flush=True,
            )
    return {
        "model": bench.name,
        "input": f"{'ImageNet' if bench.big else 'CIFAR'} {bench.size}x{bench.size}",
        "macs_before": before.macs,
        "params_before": before.params,
        "aligned_8_original": widths_multiple_of_8(original),
        "pruned": pruned_info,
        "cells": cells,
    }


def git_commit() -> str:
    """HEAD, marked ``+dirty`` when the working tree's ``src/`` differs from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def efficiency_rows(report: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    rows = []
    for result in report["results"]:
        for cell in result["cells"]:
            if cell["batch"] != batch:
                continue
            for key, stats in cell["pruned"].items():
                rows.append(
                    {
                        "model": result["model"],
                        "variant": key,
                        "threads": cell["threads"],
                        "round_to": result["pruned"][key]["round_to"],
                        "efficiency": stats["efficiency"],
                    }
                )
    return rows


def summary_cells(label: str, values: list[float], threshold: float) -> list[str]:
    """Mean, median, min, max of the efficiencies and how many reach ``threshold``."""
    if not values:
        return [label, "-", "-", "-", "-", "0"]
    met = sum(v >= threshold for v in values)
    return [
        label,
        f"{statistics.fmean(values):.2f}",
        f"{statistics.median(values):.2f}",
        f"{min(values):.2f}",
        f"{max(values):.2f}",
        f"{met} of {len(values)}",
    ]


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Real CPU speedup vs MACs ratio",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']} (run took {report.get('total_s', 0) / 60:.1f} min)  ",
        f"regprune: commit `{report['commit']}`  ",
        f"Machine: {describe_machine(report['machine'])}, cores shared with other jobs. Timed "
        "at 1 and 2 threads (`measure_latency(threads=...)`), flush-denormal on.  ",
        f"Load average (1/5/15 min) at start: {report['load_start']}, at end: "
        f"{report['load_end']}; the 1-minute load before every cell is in the JSON.",
        "",
        "Backend: eager PyTorch (`measure_latency(backend='eager')`, oneDNN kernels); the "
        "same comparison through `torch.compile` and onnxruntime: "
        "[latency_backends.md](latency_backends.md).",
        "",
        "Setup: models with random weights (`weights=None` / `create_model`), eval mode, "
        "`torch.inference_mode()`. Pruned with `regprune.prune(model, x, target_macs=t, "
        "importance='l1', round_to=r)`, t in (0.5, 0.3) = fraction of MACs kept, r in (1, 8). "
        "MACs ratio = MACs before / MACs after (`regprune.count`, batch 1). Speedup = median "
        "latency original / median latency pruned, both timed in the same process and the "
        "same cell, in interleaved rounds. Efficiency = speedup / MACs ratio (1.0 = the "
        "pruned model is as much faster as it has fewer MACs).",
        "",
        "Timed calls per variant and cell (after untimed warm-up):",
        f"- batch 1: {report['args']['rounds_b1']} rounds x (1 warm-up + 3 timed calls) = "
        f"{3 * report['args']['rounds_b1']} timed calls, 2 warm-up calls first;",
        f"- batch 64, CIFAR models: {report['args']['small_b64_repeats']} timed calls, "
        "1 warm-up call first;",
        f"- batch 64, ImageNet-size models: **{report['args']['big_b64_repeats']} timed calls** "
        "(1 warm-up call first), reduced from >= 10 to keep the run near 20 minutes on 2 "
        "shared cores (one ResNet-50 call at batch 64 takes seconds; the original VGG-16-BN "
        "tens of seconds).",
        "",
    ]
    summary = []
    for batch in report["args"]["batches"]:
        rows = efficiency_rows(report, batch)
        summary.append(summary_cells(f"batch {batch}, all", [r["efficiency"] for r in rows], 0.8))
        for threads in report["args"]["threads"]:
            summary.append(
                summary_cells(
                    f"batch {batch}, {threads} thread(s)",
                    [r["efficiency"] for r in rows if r["threads"] == threads],
                    0.8,
                )
            )
        for round_to in report["args"]["round_to"]:
            summary.append(
                summary_cells(
                    f"batch {batch}, round_to {round_to}",
                    [r["efficiency"] for r in rows if r["round_to"] == round_to],
                    0.8,
                )
            )
    lines += ["## Efficiency summary", ""]
    lines += [markdown_table(["cells", "mean", "median", "min", "max", ">= 0.8"], summary)]
    lines += ["", "## Per model: speedup (efficiency)", ""]
    cell_keys = [(b, t) for b in report["args"]["batches"] for t in report["args"]["threads"]]
    per_model = []
    for result in report["results"]:
        cells = {(c["batch"], c["threads"]): c for c in result["cells"]}
        per_model.append(
            [
                f"{result['model']}, {result['input']}",
                "original",
                "-",
                f"{result['macs_before'] / 1e6:.0f} M",
                f"{result['aligned_8_original']:.0%}",
                *(
                    f"{cells[k]['original']['median_ms']:.1f} ms" if k in cells else "-"
                    for k in cell_keys
                ),
            ]
        )
        for key, info in result["pruned"].items():
            values = []
            for k in cell_keys:
                if k not in cells:
                    values.append("-")
                    continue
                stats = cells[k]["pruned"][key]
                values.append(f"{stats['speedup']:.2f}x ({stats['efficiency']:.2f})")
            per_model.append(
                [
                    "",
                    f"{info['target_macs']} / {1 / info['macs_ratio']:.3f}",
                    str(info["round_to"]),
                    f"{info['macs_ratio']:.2f}",
                    f"{info['aligned_8']:.0%}",
                    *values,
                ]
            )
    header = [
        "model",
        "MACs kept: target / actual",
        "round_to",
        "MACs ratio",
        "widths %8",
        *(f"b{b} t{t}" for b, t in cell_keys),
    ]
    lines.append(markdown_table(header, per_model))
    lines += [
        "",
        "`widths %8`: share of conv / linear layers whose input and output widths are both "
        "multiples of 8. `original` rows give the original's MACs (batch 1) and median latency "
        "per call in each cell; `bB tT` = batch B, T threads.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=[b.name for b in BENCHES],
        help="names from: " + ", ".join(b.name for b in BENCHES),
    )
    parser.add_argument(
        "--quick", action="store_true", help="resnet56 only, fewer calls: a smoke run"
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument(
        "--round-to",
        type=lambda text: text if text == "auto" else int(text),
        nargs="+",
        default=[1, 8],
        help="integers or 'auto' (regprune.allocation.target.AUTO_MULTIPLE)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds-b1", type=int, default=4, help="batch 1: rounds of 3 calls")
    parser.add_argument("--small-b64-repeats", type=int, default=10)
    parser.add_argument("--big-b64-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/latency.md"))
    parser.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON")
    args = parser.parse_args()
    if args.from_json:
        atomic_write_text(args.out, render(json.loads(args.from_json.read_text())))
        return
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    names = ["resnet56"] if args.quick else args.models
    if args.quick:
        args.rounds_b1, args.small_b64_repeats, args.big_b64_repeats = 2, 3, 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    benches = [b for b in BENCHES if b.name in names]
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(["torchvision"]),
        "commit": git_commit(),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "from_json")},
        "load_start": [round(v, 2) for v in os.getloadavg()],
        "results": [],
    }
    start = time.perf_counter()
    for bench in benches:
        report["results"].append(run_bench(bench, args))
        report["load_end"] = [round(v, 2) for v in os.getloadavg()]
        report["total_s"] = time.perf_counter() - start
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1))
        atomic_write_text(args.out, render(report))


if __name__ == "__main__":
    main()
