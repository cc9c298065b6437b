"""Variants of one pipeline config from one shared baseline, over seeds: a claim in one table.

A spec (YAML) names a config, the variants (lists of ``KEY=VALUE`` overrides of that config)
and the seeds. The baseline is pretrained once (seed 0) and every (variant, seed) is one
``regprune run`` that starts from it, so variants differ only in what their overrides change;
the seed changes the train / test subsets the pipeline draws and the batch order. A run whose
``summary.json`` exists is skipped, so an interrupted benchmark resumes where it stopped.

Writes ``out`` (Markdown: the command, machine, seeds, and mean +- std per variant of test
accuracy at each stage, MACs kept, params and weight sparsity) and the raw summaries as JSON
beside it.

    python -m benchmarks.variants benchmarks/specs/masksparsity_vs_slimming.yaml
    python -m benchmarks.variants benchmarks/specs/l0_lenet5.yaml --seeds 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from regprune.io import atomic_write_text
from regprune.report import RunSummary, markdown_table

from .methods.report import mean_std

SPEC_KEYS = {"title", "config", "root", "out", "seeds", "setup", "reading", "variants"}


@dataclass
class Spec:
    """A benchmark: ``variants`` maps a label to the overrides that make it."""

    title: str
    config: str
    root: Path
    out: Path
    seeds: list[int]
    setup: str
    reading: str
    variants: dict[str, list[str]]


def load_spec(path: Path) -> Spec:
    """Read and check a spec; unknown keys are named with the allowed ones."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a spec is a mapping with keys {sorted(SPEC_KEYS)}")
    if unknown := sorted(set(data) - SPEC_KEYS):
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(SPEC_KEYS)}")
    variants = data.get("variants") or {}
    if not variants or not all(isinstance(v, list) for v in variants.values()):
        raise ValueError(f"{path}: 'variants' maps each label to a list of KEY=VALUE overrides")
    return Spec(
        title=data["title"],
        config=data["config"],
        root=Path(data["root"]),
        out=Path(data["out"]),
        seeds=[int(s) for s in data.get("seeds", [0])],
        setup=data.get("setup", "").strip(),
        reading=data.get("reading", "").strip(),
        variants={str(k): [str(o) for o in v] for k, v in variants.items()},
    )


def _regprune(args: list[str]) -> None:
    command = [sys.executable, "-m", "regprune", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def baseline_checkpoint(spec: Spec) -> Path:
    """Pretrain once (seed 0); every variant and seed starts from this checkpoint."""
    checkpoint = spec.root / "baseline" / "checkpoints" / "pretrain.pt"
    if not checkpoint.is_file():
        _regprune(["train", spec.config, "--run-dir", str(spec.root / "baseline")])
    return checkpoint


def run_variant(spec: Spec, baseline: Path, label: str, seed: int, extra: list[str]) -> RunSummary:
    """One ``regprune run`` (skipped when its summary exists); returns its summary."""
    run_dir = spec.root / f"{label}-seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        overrides = [
            f"seed={seed}",
            f"pretrain.checkpoint={baseline}",
            "pretrain.epochs=0",
            *spec.variants[label],
            *extra,
        ]
        _regprune(["run", spec.config, *overrides, "--run-dir", str(run_dir), "-q"])
    return RunSummary.load(run_dir)


def _only_seed(accuracies: list[float] | None) -> float | None:
    """A summary holds one accuracy per seed, and each run here has one; None if absent."""
    return None if accuracies is None else accuracies[0]


def table(records: dict[str, list[RunSummary]]) -> str:
    """Mean +- std per variant; accuracies in %, test set, final epoch."""
    rows = []
    for label, runs in records.items():
        if not runs:
            continue
        accuracy = [
            mean_std([_only_seed(getattr(r, key)) for r in runs], scale=100)
            for key in ("acc_baseline", "acc_before_prune", "acc_after_prune", "acc_after_finetune")
        ]
        rows.append(
            [
                label,
                str(len(runs)),
                *accuracy,
                mean_std([r.macs_after / r.macs_before for r in runs], digits=3),
                mean_std([r.params_after / 1e3 for r in runs], digits=1) + " K",
                mean_std([r.weight_sparsity for r in runs], scale=100),
                mean_std([r.phase_time_s.get("sparsify") for r in runs], digits=0),
            ]
        )
    header = [
        "variant",
        "seeds",
        "baseline",
        "before prune",
        "right after prune",
        "after fine-tune",
        "MACs kept",
        "params after",
        "weight sparsity (%)",
        "sparsify time (s)",
    ]
    return markdown_table(header, rows, ["l", "l", *["r"] * 8])


def write(spec: Spec, records: dict[str, list[RunSummary]], command: str) -> None:
    machine = next((r.machine for runs in records.values() for r in runs), "unknown")
    lines = [
        f"# {spec.title}",
        "",
        f"Command: `{command}`  ",
        f"Spec: `{spec.config}` with the overrides of each variant (see the spec file)  ",
        f"Machine: {machine}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Seeds: {', '.join(map(str, spec.seeds))} (each seed draws its own class-balanced "
        "train and test subsets of the config's size and its own batch order; every run starts "
        "from one baseline, pretrained with seed 0 on seed 0's subset)",
        "",
        spec.setup,
        "",
        table(records),
        "",
        "Test accuracy in %, final epoch. *baseline*: the pretrained model; *before prune*: after "
        "sparsity training; MACs kept: fraction of the baseline's. Sparsify time: wall "
        "seconds of the phase, as loaded as the machine was (a resumed phase counts its parts).",
        "",
    ]
    if spec.reading:
        lines += ["## Reading", "", spec.reading, ""]
    atomic_write_text(spec.out, "\n".join(lines))
    plain = {label: [asdict(r) for r in runs] for label, runs in records.items()}
    atomic_write_text(spec.out.with_suffix(".json"), json.dumps(plain, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="a YAML spec under benchmarks/specs/")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    parser.add_argument("--only", nargs="+", help="run these variants only")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every run")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.seeds:
        spec.seeds = args.seeds
    labels = args.only or list(spec.variants)
    if unknown := sorted(set(labels) - set(spec.variants)):
        parser.error(f"unknown variants {unknown}; the spec has {sorted(spec.variants)}")
    baseline = baseline_checkpoint(spec)
    records: dict[str, list[RunSummary]] = {label: [] for label in labels}
    for seed in spec.seeds:  # seed-major: a cut-short run still has every variant once
        for label in labels:
            records[label].append(run_variant(spec, baseline, label, seed, args.overrides))
    command = "python -m benchmarks.variants " + " ".join(argv or sys.argv[1:])
    write(spec, records, command)
    print(spec.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
