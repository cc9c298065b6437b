"""Run the method benchmark of a config: ``python -m benchmarks.methods.run CONFIG [--seeds ..]``.

Appends one JSON line per (method, seed) to the config's ``out`` file as soon as the run ends,
and skips runs already there, so an interrupted benchmark resumes where it stopped. Several
processes can share one config: each takes a claim file per (run, seed) under
``cache_dir/claims`` and skips what another live process is running or has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

import regprune
from regprune.report import machine_info

from .config import BenchConfig, RunSpec, load_config
from .data import build_bench_data
from .measure import size_of, test_accuracy
from .phases import pretrained_baseline
from .runners import model_file, run_one


def done_runs(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("status") == "ok":
                done.add((row["label"], row["seed"]))
    return done


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one write per line: appends from two processes do not interleave
        f.write(json.dumps(row) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(path: Path) -> bool:
    """Take the claim file of one (run, seed); False while another live process holds it.

    Lets several processes share one config's runs (each skips what another is running or has
    finished); a claim left by a killed process is taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(path.read_text() or 0)
        except (OSError, ValueError):
            holder = 0
        if holder and holder != os.getpid() and _alive(holder):
            return False
        path.unlink(missing_ok=True)
        return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_seed(config: BenchConfig, seed: int, runs: list[RunSpec], out: Path) -> None:
    if all((r.label, seed) in done_runs(out) for r in runs):
        return
    data = build_bench_data(config, seed)
    baseline, meta = pretrained_baseline(config, data, seed)
    before = size_of(baseline, data)
    baseline_info = {f"{k}_before": v for k, v in before.items()}
    saved = model_file(config, "baseline", seed)
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        regprune.save_pruned(baseline.eval(), saved)  # the latency pass times against it
    baseline_info["acc_baseline"] = test_accuracy(baseline, data, config)
    baseline_info["time_pretrain_s"] = meta["time_s"]
    claims = Path(config.cache_dir) / "claims"
    for spec in runs:
        lock = claims / f"{config.name}-{spec.label}-seed{seed}"
        if (spec.label, seed) in done_runs(out) or not claim(lock):
            continue
        row = {
            "config": config.name,
            "label": spec.label,
            "family": spec.family,
            "method": spec.method,
            "kwargs": spec.kwargs,
            "ratio": spec.ratio,
            "seed": seed,
            "target_macs": config.target_macs,
            "model": config.model.name,
            "model_kwargs": config.model.kwargs,
            "dataset": config.data.name,
            "machine": machine_info(),
        }
        start = time.perf_counter()
        try:
            row |= run_one(spec, baseline, baseline_info, data, config, seed)
            row["status"] = "ok"
        except Exception as error:  # record the failure and go on with the other methods
            row |= {
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=4),
            }
        row["time_total_s"] = time.perf_counter() - start
        append(out, row)
        lock.unlink(missing_ok=True)
        acc = row.get("acc_after_finetune")
        print(
            f"[seed {seed}] {spec.label}: {row['status']} acc_ft={acc} "
            f"({row['time_total_s']:.0f}s)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="benchmarks/methods/configs/<name>.yaml")
    parser.add_argument("--seeds", type=int, nargs="*", help="subset of the config's seeds")
    parser.add_argument("--only", nargs="*", help="labels to run, in this order (default: all)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(config.threads)
    by_label = {r.label: r for r in config.runs}
    runs = [by_label[x] for x in args.only if x in by_label] if args.only else config.runs
    unknown = set(args.only or ()) - {r.label for r in config.runs}
    if unknown:
        raise SystemExit(
            f"unknown labels {sorted(unknown)}; the config has {[r.label for r in config.runs]}"
        )
    print(
        f"regprune {getattr(regprune, '__version__', '?')}, {len(runs)} runs per seed", flush=True
    )
    for seed in args.seeds if args.seeds is not None else config.seeds:
        run_seed(config, seed, runs, Path(config.out))


if __name__ == "__main__":
    main()
