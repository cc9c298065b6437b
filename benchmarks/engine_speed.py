"""Engine speed against Torch-Pruning 1.6.1: same models, same ratio, same inputs, one run.

    python benchmarks/engine_speed.py --out docs/engine_speed.md
    python benchmarks/engine_speed.py --quick                      # resnet18 only (smoke run)
    python benchmarks/engine_speed.py --from-json docs/engine_speed.json  # re-render the page

Ours is ``make_plan`` + ``apply_plan`` (trace + group + L1 importance + local allocation +
surgery). Torch-Pruning is ``MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5,
ignored_layers=[final classifier])`` followed by ``pruner.step()`` (graph building happens in the
constructor, so both sides are timed from the raw model to the pruned one).

Every side of every model runs in its own fresh interpreter (1 thread, wall-clock timeout), so a
hang or a crash of one side costs only that cell, and peak-memory readings start from a clean
process. The workers import regprune from a snapshot of one commit (``git archive``, HEAD by
default), so edits to the working tree during the run cannot mix two versions of the engine.

Memory is the kernel's resident-set high-water mark (``VmHWM`` in /proc/self/status, reset
through /proc/self/clear_refs before each measured section): torch's CPU tensors are not
allocated through Python's allocator, so ``tracemalloc`` would not see them.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

if not __package__:  # run as a file (python benchmarks/x.py): the repo root holds benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.workers import emit, measure, run_worker

from regprune.report import describe_machine
from regprune.report import machine_info as shared_machine_info

MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "efficientnet_b0",
    "vgg16_bn",
    "densenet121",
    "densenet201",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_b_16",
]
MIB = 1024 * 1024
PRUNE_SECTION = "## rp.prune end to end"
"""The page's last section, written by benchmarks/prune_time.py; kept when this page is redone."""


# ---------------------------------------------------------------- measurement helpers (worker)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> None:
    """Make the resident-set high-water mark equal to the current resident set."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def build(name: str) -> torch.nn.Module:
    return torchvision.models.get_model(name, weights=None).eval()


def final_classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The last ``nn.Linear`` in registration order: the classifier of every model here."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1]


def example_input(size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


def forward_footprint(model: torch.nn.Module, x: torch.Tensor, rss_empty: int) -> dict[str, Any]:
    """Peak memory and time of one inference forward pass (weights + activations)."""
    with torch.no_grad():
        model(x)  # lazy kernel initialisation is not the forward's memory
    reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    forward_s = time.perf_counter() - start
    return {"forward_s": forward_s, "forward_peak_mib": (peak_bytes() - rss_empty) / MIB}


def worker_ours(name: str, ratio: float, size: int, repeats: int) -> dict[str, Any]:
    import regprune as rp
    from regprune.api import check_runs, make_plan
    from regprune.graph import trace_graph
    from regprune.surgery import apply_plan

    # One run on a tiny model first: lazily imported libraries are not the engine's cost.
    tiny = _tiny()
    apply_plan(tiny, *make_plan(tiny, torch.randn(1, 3, 16, 16), ratio=0.5))
    gc.collect()
    rss_empty = rss_bytes()
    model = build(name)
    x = example_input(size)
    row: dict[str, Any] = forward_footprint(model, x, rss_empty)
    with torch.no_grad():
        expected = model(x)
    times, trace_s, plan_s, surgery_s, peaks_mib = [], [], [], [], []
    pruned = None
    for _ in range(repeats):
        pruned = None
        reset_peak()
        start = time.perf_counter()
        graph = trace_graph(model, x)
        traced = time.perf_counter()
        graph, plan = make_plan(model, x, ratio=ratio, importance="l1", scope="local", graph=graph)
        planned = time.perf_counter()
        pruned = apply_plan(model, graph, plan)
        end = time.perf_counter()
        peaks_mib.append((peak_bytes() - rss_empty) / MIB)
        times.append(end - start)
        trace_s.append(traced - start)
        plan_s.append(planned - traced)
        surgery_s.append(end - planned)
        del graph, plan
    check_runs(pruned, x, expected)
    start = time.perf_counter()
    copy.deepcopy(model)
    deepcopy_s = time.perf_counter() - start
    row.update(
        status="ok",
        times_s=times,
        time_s=statistics.median(times),
        trace_s=statistics.median(trace_s),
        plan_s=statistics.median(plan_s),
        surgery_s=statistics.median(surgery_s),
        deepcopy_s=deepcopy_s,
        regprune_file=rp.__file__,
        peak_mib=statistics.median(peaks_mib),
        macs_before=rp.count(model, x).macs,
        macs_after=rp.count(pruned, x).macs,
        params_after=rp.count(pruned, x).params,
    )
    return row


def worker_tp(name: str, ratio: float, size: int, repeats: int, slow_s: float) -> dict[str, Any]:
    import torch_pruning as tp

    import regprune as rp

    def run_tp(model: torch.nn.Module, x: torch.Tensor) -> None:
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[final_classifier(model)],
        )
        pruner.step()

    run_tp(_tiny(), torch.randn(1, 3, 16, 16))
    gc.collect()
    rss_empty = rss_bytes()
    pristine = build(name)
    x = example_input(size)
    row: dict[str, Any] = forward_footprint(pristine, x, rss_empty)
    times, peaks_mib = [], []
    model = None
    for _ in range(repeats):
        model = None
        model = copy.deepcopy(pristine)  # Torch-Pruning prunes in place
        reset_peak()
        start = time.perf_counter()
        run_tp(model, x)
        times.append(time.perf_counter() - start)
        peaks_mib.append((peak_bytes() - rss_empty) / MIB)
        if times[-1] > slow_s:
            break
    model.eval()
    try:
        with torch.no_grad():
            output = model(x)
        runs = tuple(output.shape) == (1, 1000)
        run_error = "" if runs else f"output shape {tuple(output.shape)}"
        macs_after = rp.count(model, x).macs
    except Exception as error:
        runs, run_error, macs_after = False, f"{type(error).__name__}: {error}"[:300], None
    row.update(
        status="ok" if runs else f"FAIL (pruned model): {run_error}",
        times_s=times,
        time_s=statistics.median(times),
        peak_mib=statistics.median(peaks_mib),
        macs_before=rp.count(pristine, x).macs,
        macs_after=macs_after,
    )
    return row


def worker_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.worker == "ours":
        emit(measure(lambda: worker_ours(args.model, args.ratio, args.size, args.repeats)))
    else:
        emit(
            measure(
                lambda: worker_tp(args.model, args.ratio, args.size, args.repeats, args.tp_slow_s)
            )
        )


# ---------------------------------------------------------------- orchestration (parent)


def coverage_job_running() -> bool:
    found = subprocess.run(
        ["pgrep", "-f", "benchmarks/coverage.py"], capture_output=True, text=True
    )
    return bool(found.stdout.strip())


def snapshot_source(ref: str, folder: Path) -> tuple[str, str, bool]:
    """Extract ``src/`` at ``ref`` into ``folder``: (commit, source folder, worktree differs)."""
    commit = subprocess.run(
        ["git", "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True
    ).stdout.strip()
    return commit, str(folder / "src"), bool(changed)


def run_side(side: str, name: str, args: argparse.Namespace, source: str | None) -> dict[str, Any]:
    repeats = args.repeats if side == "ours" else args.tp_repeats
    command = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--model",
        name,
        "--ratio",
        str(args.ratio),
        "--size",
        str(args.size),
        "--repeats",
        str(repeats),
        "--tp-slow-s",
        str(args.tp_slow_s),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if source:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    rows, ended, stderr = run_worker(command, args.timeout_s, env=env)
    if not rows:
        status = "TIMEOUT" if ended.startswith("timed out") else "FAIL: no result"
        return {"status": f"{status} ({ended})", "stderr_tail": stderr}
    row = rows[0] | {"process_s": time.perf_counter() - start}
    if row["status"] != "ok" and stderr:
        row["stderr_tail"] = stderr
    return row


def machine_info() -> dict[str, Any]:
    """The shared machine description; ``threads`` is the workers' (one torch thread each)."""
    info = shared_machine_info(["torchvision", "torch-pruning"])
    info["threads"] = 1
    return info


def summarize_coverage(
    path: Path, ours: list[dict[str, Any]], ratio: float
) -> dict[str, Any] | None:
    """Max / median engine time in the coverage job's JSON, and how its times compare with
    this run's on the models both timed at the same ratio (the two ran at different loads)."""
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    timed = [r for r in rows if r.get("status") == "ok" and "engine_s" in r]
    if not timed:
        return None
    slowest = max(timed, key=lambda r: r["engine_s"])
    here = {r["model"]: r["ours"]["time_s"] for r in ours if r["ours"].get("status") == "ok"}
    same = [
        (r["model"], r["engine_s"], here[r["model"]])
        for r in timed
        if r["ratio"] == ratio and r["model"] in here
    ]
    return {
        "written": datetime.datetime.fromtimestamp(path.stat().st_mtime)
        .astimezone()
        .isoformat(timespec="seconds"),
        "same_models": same,
        "median_factor": statistics.median(c / h for _, c, h in same) if same else None,
        "path": str(path),
        "runs": len(rows),
        "timed_runs": len(timed),
        "models": len({r["model"] for r in rows}),
        "median_s": statistics.median(r["engine_s"] for r in timed),
        "max_s": slowest["engine_s"],
        "max_model": f"{slowest['model']} (ratio {slowest['ratio']})",
        "over_10s": sorted({r["model"] for r in timed if r["engine_s"] >= 10}),
    }


def ratio_tp_over_ours(row: dict[str, Any]) -> float | None:
    ours, theirs = row["ours"], row["tp"]
    if ours.get("status") == "ok" and "time_s" in theirs:
        return theirs["time_s"] / ours["time_s"]
    return None


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_macs(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.3f} G"


def render(report: dict[str, Any]) -> str:
    machine, rows = report["machine"], report["rows"]
    ratios = {r["model"]: ratio_tp_over_ours(r) for r in rows}
    both = [v for v in ratios.values() if v is not None]
    # The target is judged where both sides produced a working model; a TP run whose pruned
    # model crashes was still timed, and the median including it is given next to it.
    working = [
        ratios[r["model"]]
        for r in rows
        if ratios[r["model"]] is not None and r["tp"].get("status") == "ok"
    ]
    ours_ok = [r for r in rows if r["ours"].get("status") == "ok"]
    max_ours = max(ours_ok, key=lambda r: r["ours"]["time_s"]) if ours_ok else None
    mem_ratios = [r["ours"]["peak_mib"] / r["ours"]["forward_peak_mib"] for r in ours_ok]
    lines = [
        "# Engine speed: regprune vs Torch-Pruning 1.6.1",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"regprune: commit `{report.get('commit', 'not recorded')}`"
        + (
            " (the working tree's `src/` differed; HEAD was measured)"
            if report.get("worktree_src_differs")
            else ""
        )
        + "  ",
        f"Machine: {describe_machine(machine)} (cores shared with other jobs; one torch "
        "thread per worker process).  ",
        f"Load average (1/5/15 min) at start: {report['load_start']}, at end: "
        f"{report['load_end']}; per model below. Coverage job running during the run: "
        f"{report['coverage_job_running']}.",
        "",
        "Setup: torchvision models built with `weights=None`, input 1x3x224x224 (seeded), "
        f"pruning ratio {report['ratio']} (fraction of channels removed per group, local "
        "scope), L1 magnitude importance on both sides, the final classifier left whole on "
        "both sides (Torch-Pruning: `ignored_layers=[last nn.Linear]`; regprune keeps model "
        "outputs whole by construction).",
        "",
        f"- **ours** = `make_plan(model, x, ratio={report['ratio']}, importance='l1')` + "
        "`apply_plan(...)` (trace + group + importance + allocation + surgery, returning a new "
        f"model). Median of {report['repeats']} repeats in one process.",
        "- **TP** = `MetaPruner(model, x, importance=MagnitudeImportance(p=1), "
        f"pruning_ratio={report['ratio']}, ignored_layers=[classifier])` + `pruner.step()`, on "
        f"a `copy.deepcopy` of the model (copy not timed). Up to {report['tp_repeats']} repeats; "
        f"after a repeat slower than {report['tp_slow_s']:.0f} s it stops (median of what ran; "
        "the `TP runs` column says how many).",
        f"- Each side of each model runs in a fresh subprocess with a {report['timeout_s']:.0f} s "
        "timeout. Both sides are first run once on a tiny model so lazy imports are not timed.",
        "- MACs after: both pruned models counted with `regprune.count` (convs, linears, "
        "attention matmuls), so the columns are comparable.",
        "- `(copy)`: time of one `copy.deepcopy` of the model, measured separately: "
        "`apply_plan` returns a new model and leaves its input untouched, so that copy is part "
        "of ours, while TP prunes in place.",
        "- Memory: resident-set high-water mark (`VmHWM`, reset through "
        "`/proc/self/clear_refs`), minus the process's resident set just before the model was "
        "built (interpreter + libraries). So *forward* = weights + activations of one "
        "`torch.no_grad()` forward at batch 1, and *ours* = original weights + everything the "
        "engine allocates, including the pruned copy. `tracemalloc` is not used: torch's tensor "
        "memory bypasses Python's allocator.",
        "",
        "## Results",
        "",
        "| model | ours s | trace / plan / surgery (copy) s | TP s | TP runs | TP / ours | "
        "MACs before | MACs after ours | MACs after TP | forward MiB | ours peak MiB | "
        "ours / forward | TP peak MiB | load 1-min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for r in rows:
        ours, tp = r["ours"], r["tp"]
        ours_ok_row = ours.get("status") == "ok"
        tp_ok_row = tp.get("status") == "ok"
        if not ours_ok_row:
            failures.append(f"- {r['model']}, ours: {ours['status']}")
        if not tp_ok_row:
            failures.append(f"- {r['model']}, TP: {tp['status']}")
        ratio = ratios[r["model"]]
        breakdown = (
            f"{ours['trace_s']:.2f} / {ours['plan_s']:.2f} / {ours['surgery_s']:.2f} "
            f"({ours.get('deepcopy_s', float('nan')):.2f})"
            if ours_ok_row
            else "-"
        )
        tp_time = tp.get("time_s")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    fmt_s(ours.get("time_s")) if ours_ok_row else "FAIL",
                    breakdown,
                    (fmt_s(tp_time) + ("" if tp_ok_row else " (broken)"))
                    if tp_time is not None
                    else tp["status"].split(":")[0],
                    str(len(tp.get("times_s", []))),
                    "-" if ratio is None else f"{ratio:.1f}x",
                    fmt_macs(ours.get("macs_before") or tp.get("macs_before")),
                    fmt_macs(ours.get("macs_after")),
                    fmt_macs(tp.get("macs_after")),
                    f"{ours['forward_peak_mib']:.0f}" if ours_ok_row else "-",
                    f"{ours['peak_mib']:.0f}" if ours_ok_row else "-",
                    f"{ours['peak_mib'] / ours['forward_peak_mib']:.1f}x" if ours_ok_row else "-",
                    f"{tp['peak_mib']:.0f}" if "peak_mib" in tp else "-",
                    f"{r['load_before'][0]:.2f}",
                ]
            )
            + " |"
        )
    median_ratio = statistics.median(working) if working else None
    median_all = statistics.median(both) if both else None
    densenet = ratios.get("densenet201")
    lines += ["", "## Targets (docs/specs/DESIGN.md)", ""]
    lines.append(
        "| target | measured | met |\n|---|---|---|\n"
        + (
            f"| median TP / ours >= 3x | {median_ratio:.1f}x over the {len(working)} models "
            f"where both sides produced a working model ({median_all:.1f}x over the "
            f"{len(both)} where both were timed) | {'yes' if median_ratio >= 3 else 'NO'} |\n"
            if median_ratio is not None
            else "| median TP / ours >= 3x | no model with both sides | NO |\n"
        )
        + (
            f"| DenseNet-201 TP / ours >= 10x | {densenet:.1f}x | "
            f"{'yes' if densenet >= 10 else 'NO'} |\n"
            if densenet is not None
            else "| DenseNet-201 TP / ours >= 10x | not measured | - |\n"
        )
        + (
            f"| every model < 10 s (ours, this run) | max {max_ours['ours']['time_s']:.2f} s "
            f"({max_ours['model']}) | {'yes' if max_ours['ours']['time_s'] < 10 else 'NO'} |\n"
            if max_ours
            else ""
        )
        + (
            f"| peak memory < 2x one forward pass | max {max(mem_ratios):.1f}x, median "
            f"{statistics.median(mem_ratios):.1f}x | "
            f"{'yes' if max(mem_ratios) < 2 else 'NO'} |"
            if mem_ratios
            else ""
        )
    )
    coverage = report.get("coverage")
    lines += ["", "## Every torchvision classifier (from docs/coverage.json)", ""]
    if coverage:
        lines.append(
            f"Not re-run here: summarised from `{coverage['path']}` (written "
            f"{coverage.get('written', '?')} by `benchmarks/coverage.py`: trace + plan + surgery, "
            "a single run per model and ratio with no warm-up, torch's default thread count, "
            f"at a different time and load). {coverage['timed_runs']} timed runs over "
            f"{coverage['models']} models: median {coverage['median_s']:.2f} s, max "
            f"{coverage['max_s']:.2f} s ({coverage['max_model']}). Runs at or over 10 s: "
            + (", ".join(coverage["over_10s"]) if coverage["over_10s"] else "none")
            + "."
        )
        if coverage.get("median_factor"):
            lines.append(
                f"\nOn the {len(coverage['same_models'])} models timed both there and here (ratio "
                f"{report['ratio']}), the coverage job's time is {coverage['median_factor']:.1f}x "
                "this run's (median; "
                + ", ".join(f"{m} {c:.2f} vs {h:.2f} s" for m, c, h in coverage["same_models"])
                + "), so its absolute times say more about the machine's load than about the "
                "engine."
            )
    else:
        lines.append("docs/coverage.json did not exist when this run ended; nothing summarised.")
    lines += ["", "## Failures", ""]
    lines += failures or ["None."]
    return "\n".join(lines) + "\n"


def write_page(path: Path, text: str) -> None:
    """Write the page, keeping the rp.prune section another benchmark wrote at its end."""
    old = path.read_text() if path.exists() else ""
    if PRUNE_SECTION in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(PRUNE_SECTION) :]
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--quick", action="store_true", help="resnet18 only, a smoke run")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of ours (median)")
    parser.add_argument("--tp-repeats", type=int, default=3)
    parser.add_argument(
        "--tp-slow-s", type=float, default=20.0, help="no more TP repeats after one this slow"
    )
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per model and side")
    parser.add_argument("--out", type=Path, default=Path("docs/engine_speed.md"))
    parser.add_argument("--coverage-json", type=Path, default=Path("docs/coverage.json"))
    parser.add_argument(
        "--source",
        choices=["head", "worktree"],
        default="head",
        help="time regprune as committed at HEAD (default) or the working tree as it is",
    )
    parser.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        report["coverage"] = summarize_coverage(
            args.coverage_json, report["rows"], report["ratio"]
        ) or report.get("coverage")
        write_page(args.out, render(report))
        return
    names = ["resnet18"] if args.quick else args.models
    snapshot = tempfile.TemporaryDirectory(prefix="engine_speed_src_")
    if args.source == "head":
        commit, source, worktree_differs = snapshot_source("HEAD", Path(snapshot.name))
    else:
        commit, source = "working tree", None
        worktree_differs = False
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "commit": commit,
        "worktree_src_differs": worktree_differs,
        "ratio": args.ratio,
        "repeats": args.repeats,
        "tp_repeats": args.tp_repeats,
        "tp_slow_s": args.tp_slow_s,
        "timeout_s": args.timeout_s,
        "load_start": [round(v, 2) for v in os.getloadavg()],
        "coverage_job_running": coverage_job_running(),
        "rows": [],
    }
    for name in names:
        row = {"model": name, "load_before": [round(v, 2) for v in os.getloadavg()]}
        row["ours"] = run_side("ours", name, args, source)
        row["tp"] = run_side("tp", name, args, source)
        row["coverage_job_running"] = coverage_job_running()
        report["rows"].append(row)
        ratio = ratio_tp_over_ours(row)
        print(
            f"{name}: ours {row['ours'].get('time_s', row['ours']['status'])} "
            f"TP {row['tp'].get('time_s', row['tp']['status'])} "
            f"ratio {'-' if ratio is None else f'{ratio:.1f}x'}",
            flush=True,
        )
    snapshot.cleanup()
    report["load_end"] = [round(v, 2) for v in os.getloadavg()]
    report["coverage_job_running"] = report["coverage_job_running"] or any(
        r["coverage_job_running"] for r in report["rows"]
    )
    report["coverage"] = summarize_coverage(args.coverage_json, report["rows"], args.ratio)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    write_page(args.out, render(report))


if __name__ == "__main__":
    main()
