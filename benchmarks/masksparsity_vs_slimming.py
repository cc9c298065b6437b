"""MaskSparsity vs full-network slimming at the same MACs, from one baseline (issue 4's claim).

Every variant is one ``regprune run`` of ``configs/quickstart.yaml`` (ResNet-20, 12,000
Fashion-MNIST images) with overrides: the same pretrained baseline (trained once, seed 0), the
same sparsify and fine-tune epochs, the same MACs target and ``max_ratio``. Only the method and
its strength change:

* ``masksparsity``: masked L1 on the BN scales of the channels a short slimming stage selects.
* ``slimming-same-s``: L1 on *every* BN scale at MaskSparsity's strength (the papers' setting).
* ``slimming-own-s``: L1 on every BN scale at a 10x weaker strength (slimming's own config
  scaled to the schedule), so slimming is not judged only at a strength that hurts it.

The seed of a run changes the batch order of its sparsify and fine-tune phases. Finished runs
(``summary.json`` present) are skipped, so the script resumes. Results: mean +- std over seeds
of accuracy before pruning, right after, after fine-tune, and the kept MACs, written to
``--out`` (Markdown) and a JSON file beside it.

    python benchmarks/masksparsity_vs_slimming.py --seeds 0 1 --out docs/masksparsity_vs_slimming.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = "configs/quickstart.yaml"
VARIANTS: dict[str, list[str]] = {
    "masksparsity": [],
    "slimming-same-s": ["method.name=slimming", "method.scope=global", "method.kwargs={s: 5.0e-2}"],
    "slimming-own-s": ["method.name=slimming", "method.scope=global", "method.kwargs={s: 5.0e-3}"],
}
COLUMNS = ("acc_before_prune", "acc_after_prune", "acc_after_finetune")


def _regprune(args: list[str]) -> None:
    command = [sys.executable, "-m", "regprune", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _baseline(root: Path) -> Path:
    """Pretrain once (seed 0); every variant and seed starts from this checkpoint."""
    checkpoint = root / "baseline" / "checkpoints" / "pretrain.pt"
    if not checkpoint.is_file():
        _regprune(["train", CONFIG, "--run-dir", str(root / "baseline")])
    return checkpoint


def _run(root: Path, baseline: Path, variant: str, seed: int, extra: list[str]) -> dict:
    run_dir = root / f"{variant}-seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        overrides = [
            f"seed={seed}",
            f"pretrain.checkpoint={baseline}",
            "pretrain.epochs=0",
            *VARIANTS[variant],
            *extra,
        ]
        _regprune(["run", CONFIG, *overrides, "--run-dir", str(run_dir), "-q"])
    return json.loads(summary.read_text())


def _accuracy_percent(value: float | list[float]) -> float:
    """A run's summary stores accuracy as a list over its seeds (one here), as a fraction."""
    return 100.0 * (value[-1] if isinstance(value, list) else value)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _write(out: Path, records: dict[str, list[dict]], command: str, seeds: list[int]) -> None:
    lines = [
        "# MaskSparsity vs network slimming at the same MACs",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or 'CPU'}; Python {platform.python_version()}, "
        f"torch {torch.__version__}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Seeds: {', '.join(map(str, seeds))} (batch order of sparsify and fine-tune; one "
        "baseline, pretrained with seed 0)",
        "",
        f"Setup: `{CONFIG}` (ResNet-20, 12,000 Fashion-MNIST training images, pretrain 5 epochs, "
        "sparsify 4, fine-tune 3, `target_macs: 0.5`, `max_ratio: 0.5`); only the method and its "
        "strength differ. Test accuracy in %, final epoch.",
        "",
        "| variant | acc before prune | acc right after prune | acc after fine-tune "
        "| MACs kept | params after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, runs in records.items():
        cells = [_mean_std([_accuracy_percent(r[c]) for r in runs]) for c in COLUMNS]
        kept = _mean_std([r["macs_after"] / r["macs_before"] for r in runs])
        params = _mean_std([r["params_after"] / 1e3 for r in runs])
        lines.append(f"| {variant} | {' | '.join(cells)} | {kept} | {params} K |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(records, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--root", default="runs/masksparsity_vs_slimming", help="run dirs")
    parser.add_argument("--out", default="docs/masksparsity_vs_slimming.md")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every run")
    args = parser.parse_args(argv)
    root = Path(args.root)
    baseline = _baseline(root)
    records: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:  # seed-major: a cut-short run still has every variant once
        for variant in args.variants:
            records[variant].append(_run(root, baseline, variant, seed, args.overrides))
    command = "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])
    _write(Path(args.out), records, command, args.seeds)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
