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
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

import regprune
from regprune.report import machine_info

from .config import BenchConfig, RunSpec, load_config
from .data import build_bench_data
from .measure import size_of, test_accuracy
from .phases import pretrained_baseline
from .runners import model_file, run_one


def done_runs(path: Path, session: str | None = None) -> set[tuple[str, float | None, int]]:
    """``(label, target_macs, seed)`` of every ``ok`` record (a run at several targets is a
    record per target; older records carry their config's one target), and of the records of
    ``session`` whatever their status (one invocation and its workers: a run that failed in
    it is not retried by another of its workers; a later invocation retries it)."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("status") == "ok" or (session and row.get("session") == session):
                done.add((row["label"], row.get("target_macs"), row["seed"]))
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


def _by_model(config: BenchConfig, runs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    """Runs grouped by the architecture they prune (the config's first, then claim rows')."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in runs:
        model = spec.model or config.model
        groups.setdefault(json.dumps([model.name, model.kwargs], sort_keys=True), []).append(spec)
    return groups


def run_seed(
    config: BenchConfig, seed: int, runs: list[RunSpec], out: Path, session: str | None = None
) -> None:
    """Every (run, target) of ``runs`` not yet recorded for ``seed``, baseline by baseline."""
    for group in _by_model(config, runs).values():
        own = config.for_model(group[0].model)
        jobs = [(spec, t) for spec in group for t in config.targets_of(spec)]
        if all((spec.label, t, seed) in done_runs(out, session) for spec, t in jobs):
            continue
        _run_jobs(own, seed, jobs, out, own.model == config.model, session)


def _run_jobs(
    config: BenchConfig,
    seed: int,
    jobs: list[tuple[RunSpec, float]],
    out: Path,
    main_model: bool,
    session: str | None,
) -> None:
    data = build_bench_data(config, seed)
    baseline, meta = pretrained_baseline(config, data, seed)
    before = size_of(baseline, data)
    baseline_info = {f"{k}_before": v for k, v in before.items()}
    saved = model_file(config, "baseline" if main_model else f"baseline-{config.model.name}", seed)
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        regprune.save_pruned(baseline.eval(), saved)  # the latency pass times against it
    baseline_info["acc_baseline"] = test_accuracy(baseline, data, config)
    baseline_info["time_pretrain_s"] = meta["time_s"]
    if config.plateau is not None or config.budget_mode:
        baseline_info["baseline_epochs"] = meta["epochs"]
    resolved = config.resolved(meta["epochs"])
    resolved_runs = {r.label: r for r in resolved.runs}
    claims = Path(config.cache_dir) / "claims"
    for spec, target in jobs:
        spec = resolved_runs.get(spec.label, spec)
        at = f"-t{target:g}" if config.multi_target else ""
        lock = claims / f"{config.name}-{spec.label}{at}-seed{seed}"
        if (spec.label, target, seed) in done_runs(out, session) or not claim(lock):
            continue
        row = {
            "config": config.name,
            "label": spec.label,
            "family": spec.family,
            "method": spec.method,
            "kwargs": spec.kwargs,
            "ratio": spec.ratio,
            "seed": seed,
            "target_macs": target,
            "model": config.model.name,
            "model_kwargs": config.model.kwargs,
            "dataset": config.data.name,
            "machine": machine_info(),
            "session": session,
        }
        if spec.claim is not None:
            row["claim"] = asdict(spec.claim)
        start = time.perf_counter()
        try:
            row |= run_one(spec, baseline, baseline_info, data, resolved.at_target(target), seed)
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
            f"[seed {seed}] {spec.label}{at}: {row['status']} acc_ft={acc} "
            f"({row['time_total_s']:.0f}s)",
            flush=True,
        )


def start_workers(argv: list[str], workers: int, session: str) -> list[subprocess.Popen]:
    """``workers - 1`` more processes on the same config (this one is worker 0); each takes
    the runs nobody holds (claim files) and starts at another seed."""
    command = [sys.executable, "-m", "benchmarks.methods.run", *argv, "--workers", "1"]
    command += ["--session", session]
    return [subprocess.Popen([*command, "--worker-index", str(i)]) for i in range(1, workers)]


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """``--out`` / ``--cache-dir``: the config's ``out`` and ``cache_dir``, replaced."""
    parser.add_argument("--out", help="JSON lines file instead of the config's out")
    parser.add_argument("--cache-dir", help="cache folder instead of the config's cache_dir")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="benchmarks/methods/configs/<name>.yaml")
    parser.add_argument("--seeds", type=int, nargs="*", help="subset of the config's seeds")
    parser.add_argument("--only", nargs="*", help="labels to run, in this order (default: all)")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes sharing the runs through claim files (default: the config's workers)",
    )
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--session", help=argparse.SUPPRESS)
    add_location_options(parser)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.out, args.cache_dir)
    session = args.session or f"{os.getpid()}-{time.time_ns()}"
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
    workers = args.workers if args.workers is not None else config.workers
    children = start_workers(_without_workers(argv), workers, session) if workers > 1 else []
    seeds = list(args.seeds if args.seeds is not None else config.seeds)
    shift = args.worker_index % max(len(seeds), 1)
    for seed in seeds[shift:] + seeds[:shift]:
        run_seed(config, seed, runs, Path(config.out), session)
    failed = [child.args for child in children if child.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed: {failed}")


def _without_workers(argv: list[str] | None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--workers" in argv:
        i = argv.index("--workers")
        del argv[i : i + 2]
    return argv


if __name__ == "__main__":
    main()
