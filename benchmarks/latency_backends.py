"""Measured CPU speedup of pruned models through three backends: eager, torch.compile, onnxruntime.

    python -m benchmarks.latency_backends --out docs/latency_backends.md

A pruned model's speedup depends on the kernels that run it, so issue 18 asks for it through
eager PyTorch, ``torch.compile`` and ONNX Runtime. Per model: the original and
``regprune.prune(model, x, target_macs=0.5, importance="l1", round_to=r)`` for each ``r`` in
``--round-to``; per backend and batch size, every variant is timed with
``regprune.measure_latency(..., backend=b, threads=1)`` in ``--rounds`` interleaved rounds
(original, pruned..., then again: a change of machine load hits all of them alike); speedup =
median over rounds of the original's median / the pruned model's, efficiency = speedup / MACs
ratio. Each variant is compiled once per batch size (in the first call's untimed warm-up);
onnxruntime exports it in each call's warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

import regprune as rp
from regprune.metrics.latency import BACKENDS
from regprune.models import create_model
from regprune.report import describe_machine, markdown_table, write_generated_block

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "resnet20 (quickstart, 1x28x28)": (
        lambda: create_model("resnet20", num_classes=10, in_channels=1),
        (1, 28, 28),
    ),
    "resnet56 (CIFAR, 3x32x32)": (lambda: create_model("resnet56"), (3, 32, 32)),
    "resnet18 (ImageNet, 3x224x224)": (
        lambda: torchvision.models.get_model("resnet18", weights=None),
        (3, 224, 224),
    ),
    "mobilenet_v2 (ImageNet, 3x224x224)": (
        lambda: torchvision.models.get_model("mobilenet_v2", weights=None),
        (3, 224, 224),
    ),
}


EFFICIENCY_TARGET_B1, EFFICIENCY_TARGET = 0.8, 0.85
"""Issue 18's targets for speedup / MACs ratio on the CPU: at batch 1, and at batch 64."""


def _round_to(text: str) -> int | str:
    return text if text == "auto" else int(text)


def measure(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    original = build().eval()
    x1 = torch.randn(1, *shape)
    before = rp.count(original, x1).macs
    variants = {"original": original}
    ratios = {}
    for round_to in args.round_to:
        small = rp.prune(original, x1, target_macs=0.5, importance="l1", round_to=round_to)
        variants[f"r{round_to}"] = small.eval()
        ratios[f"r{round_to}"] = before / rp.count(small, x1).macs
    rows = []
    for backend in args.backends:
        # compiled once per variant (measure_latency(backend="compile") compiles per call);
        # the variants share one forward, so dynamo keeps a graph per variant and batch size:
        # more than its default limit of 8, past which it runs eager (ResNet-56 did).
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 64
        runners = (
            {key: torch.compile(model) for key, model in variants.items()}
            if backend == "compile"
            else variants
        )
        timed_as = "eager" if backend == "compile" else backend
        for batch in args.batches:
            x = torch.randn(batch, *shape)
            medians: dict[str, list[float]] = {key: [] for key in variants}
            start = time.perf_counter()
            for _ in range(args.rounds):
                for key, model in runners.items():
                    latency = rp.measure_latency(
                        model, x, warmup=2, repeats=args.repeats, threads=1, backend=timed_as
                    )
                    medians[key].append(latency.median_ms)
            original_ms = statistics.median(medians["original"])
            for key, ratio in ratios.items():
                pruned_ms = statistics.median(medians[key])
                rows.append(
                    {
                        "model": name,
                        "backend": backend,
                        "batch": batch,
                        "variant": key,
                        "macs_ratio": ratio,
                        "original_ms": original_ms,
                        "pruned_ms": pruned_ms,
                        "speedup": original_ms / pruned_ms,
                        "efficiency": original_ms / pruned_ms / ratio,
                    }
                )
            print(
                f"{name} {backend} b{batch}: original {original_ms:.2f} ms, "
                + ", ".join(
                    f"{r['variant']} eff {r['efficiency']:.2f}"
                    for r in rows
                    if (r["backend"], r["batch"]) == (backend, batch)
                )
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return rows


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    header = ["model", "round_to", "MACs ratio", "backend", "batch", "original ms", "pruned ms"]
    header += ["speedup", "efficiency"]
    table = [
        [
            r["model"],
            r["variant"][1:],
            f"{r['macs_ratio']:.2f}",
            r["backend"],
            str(r["batch"]),
            f"{r['original_ms']:.2f}",
            f"{r['pruned_ms']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['efficiency']:.2f}",
        ]
        for r in rows
    ]
    summary = []
    for backend in report["args"]["backends"]:
        for batch in report["args"]["batches"]:
            cell = (backend, batch)
            values = [r["efficiency"] for r in rows if (r["backend"], r["batch"]) == cell]
            target = EFFICIENCY_TARGET_B1 if batch == 1 else EFFICIENCY_TARGET
            if values:
                met = sum(v >= target for v in values)
                summary.append(
                    [
                        backend,
                        str(batch),
                        f"{statistics.median(values):.2f}",
                        f"{min(values):.2f}",
                        f"{met} of {len(values)}",
                    ]
                )
    return (
        f"Command: `{report['command']}`  \n"
        f"Date: {report['date']}  \n"
        f"Machine: {report['machine']}; every call at 1 torch / onnxruntime thread.\n\n"
        + markdown_table(
            ["backend", "batch", "median efficiency", "min", "at the target (b1 0.8, b64 0.85)"],
            summary,
        )
        + "\n\n"
        + markdown_table(header, table)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--round-to", type=_round_to, nargs="+", default=[1, "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/latency_backends.md"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--from-json", type=Path, help="re-render the page from a JSON")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        torch.set_num_threads(1)
        rows = [row for name in args.models for row in measure(name, args)]
        report = {
            "command": " ".join(["python -m benchmarks.latency_backends", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": describe_machine(),
            "args": {"backends": args.backends, "batches": args.batches},
            "rows": rows,
        }
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    write_generated_block(
        args.out,
        render(report),
        start="<!-- latency_backends: start -->",
        end="<!-- latency_backends: end -->",
        heading="# Pruned-model speedup through eager PyTorch, torch.compile and onnxruntime",
    )


if __name__ == "__main__":
    main()
