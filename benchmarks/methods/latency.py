"""Latency pass: every saved model of a benchmark timed against its baseline, on a quiet machine.

    python -m benchmarks.methods.latency benchmarks/methods/configs/cpu.yaml

Why a separate pass: while the methods run, the cores are shared (two seeds in parallel, other
jobs), so a model timed during its run and the baseline timed an hour earlier differ by the load
as much as by the pruning. Here, per seed, the baseline and every structured model of that seed
are timed in interleaved rounds on the same input (``latency_speedup.time_cell``, which rotates
the order each round), so a change of load hits all of them alike. Per model and batch size:
the median latency, ``speedup`` = baseline median / model median, and ``efficiency`` =
speedup / (MACs before / MACs after): how much of the theoretical speedup the kernels deliver.

Writes ``<out>_latency.jsonl`` beside the config's ``out`` (one line per (label, seed)); the
report merges it. Unstructured models are left out: their zeros run through dense kernels.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from benchmarks.latency_speedup import Schedule, time_cell

import regprune
from regprune.io import atomic_write_text
from regprune.report import machine_info

from .config import BenchConfig, load_config
from .data import build_bench_data
from .phases import new_model
from .report import load_rows
from .runners import model_file


def schedule_for(batch: int, rounds: int) -> Schedule:
    """Batch 1: 5 timed calls per round (one call is ~1 ms); batch 64: 2 per round."""
    return Schedule(2, rounds, 1, 5) if batch == 1 else Schedule(1, rounds, 0, 2)


def time_seed(config: BenchConfig, seed: int, rows: list[dict], rounds: int) -> list[dict]:
    data = build_bench_data(config, seed)
    base_file = model_file(config, "baseline", seed)
    if not base_file.exists():
        raise SystemExit(
            f"{base_file} is missing: run benchmarks.methods.run for seed {seed} first"
        )
    variants = {"baseline": regprune.load_pruned(new_model(config, data), base_file).eval()}
    for row in rows:
        path = Path(row.get("model_file", ""))
        if path.is_file():
            variants[row["label"]] = regprune.load_pruned(new_model(config, data), path).eval()
    results = {label: {"label": label, "seed": seed} for label in variants if label != "baseline"}
    if config.multi_target:  # which target's models were timed (report.load_rows matches it)
        for record in results.values():
            record["target_macs"] = config.target_macs
    macs = {row["label"]: row["macs_before"] / row["macs_after"] for row in rows}
    for batch in config.latency_batches:
        load = round(os.getloadavg()[0], 2)
        with torch.no_grad():
            stats = time_cell(
                variants, data.example_input(batch), config.threads, schedule_for(batch, rounds)
            )
        base = stats["baseline"]["median_ms"]
        for label, record in results.items():
            ms = stats[label]["median_ms"]
            record |= {
                f"latency_b{batch}_ms_before": base,
                f"latency_b{batch}_ms_after": ms,
                f"speedup_b{batch}": base / ms,
                f"efficiency_b{batch}": base / ms / macs[label],
                f"load_b{batch}": load,
            }
        print(f"[seed {seed}] batch {batch}: baseline {base:.2f} ms, load {load}", flush=True)
    for record in results.values():
        record |= {"macs_ratio": macs[record["label"]], "rounds": rounds, "machine": machine_info()}
    return list(results.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="benchmarks/methods/configs/<name>.yaml")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds per batch size (default: the config's)"
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(config.threads)
    rows = [
        r
        for r in load_rows(Path(config.out))
        if r["family"] != "unstructured"
        # several targets or claim rows: the config's model at its first target is timed
        and r.get("model", config.model.name) == config.model.name
        and r.get("target_macs", config.target_macs) == config.target_macs
    ]
    records = []
    for seed in config.seeds:
        seed_rows = [r for r in rows if r["seed"] == seed]
        if seed_rows:
            records += time_seed(config, seed, seed_rows, args.rounds or config.latency_rounds)
    path = config.latency_out
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} records to {path}")


if __name__ == "__main__":
    main()
