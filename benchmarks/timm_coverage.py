"""Prune timm models with default arguments; write the "## timm" section of docs/coverage.md.

    nice -n 10 python benchmarks/timm_coverage.py --side ours          # our engine
    nice -n 10 python benchmarks/timm_coverage.py --side tp --results docs/timm_coverage_tp.jsonl
    python benchmarks/timm_coverage.py --render \
        --results docs/timm_coverage.jsonl docs/timm_coverage_tp.jsonl  # the page section

Sample (``--sample families``, the default): one model per family, the one with the fewest
parameters. A family is the timm module that defines the model plus the leading letters of its
name (with a ``vN`` version suffix): ``resnet:resnet``, ``resnet:seresnext``,
``efficientnet:tf``, ``vision_transformer:vit``. Parameters are counted on the meta device, so
nothing is allocated or downloaded. ``--sample all`` is every name of ``timm.list_models()``,
smallest first.

Per model (``--side ours``): ``timm.create_model(name, pretrained=False).eval()``, one input of
batch 1 at its ``pretrained_cfg`` input size, capped at ``--max-size`` (a model whose default
size is larger is rebuilt with ``img_size=<cap>`` where it takes that argument, and run at its
own size otherwise), ``rp.prune_with_result(model, x, ratio=0.5)`` with every other argument at
its default. Recorded: whether it prunes (returns a model whose outputs have the original's
structure), the MACs kept, whether the classifier (``get_classifier()``) keeps its output width,
the layers kept whole, and exactness: the plan restricted to exact groups, applied without
compensation, against the same model with those channels zeroed (as tests/exactness.py).

``--side tp``: ``MetaPruner(model, x, importance=MagnitudeImportance(p=1), pruning_ratio=0.5,
ignored_layers=[model.get_classifier()]).step()``, then the same output-shape check and MACs.

Each model runs in its own interpreter with one thread and a timeout, and appends one JSON line
to ``--results``; models already there are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as a file (python benchmarks/x.py): the repo root holds benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.workers import emit, measure, run_worker

import regprune as rp
from regprune.allocation import Plan
from regprune.graph import DependencyGraph
from regprune.io import atomic_write_text
from regprune.metrics import format_count
from regprune.report import describe_machine, machine_info, markdown_table, write_generated_block
from regprune.structures import value_mismatch
from regprune.surgery import apply_plan, zero_channels

RATIO = 0.5
SHRINK_BELOW = 0.9
"""A model "shrinks" when it keeps less than this share of its MACs."""
EXACT_RTOL = 1e-4
"""Exactness tolerance, relative to the largest output value (as tests/exactness.py)."""
SECTION_START = "<!-- timm_coverage: generated, do not edit by hand -->"
SECTION_END = "<!-- timm_coverage: end -->"


# ---- the sample ------------------------------------------------------------------------------


def family_of(name: str, module: str) -> str:
    """``module:letters``, e.g. ``resnet:seresnext`` for ``seresnext26d_32x4d``."""
    match = re.match(r"[a-z]+(v\d)?", name)
    return f"{module}:{match.group(0) if match else name}"


def param_counts(names: list[str]) -> dict[str, int]:
    """Parameters of each model, built on the meta device (no memory, no download)."""
    import timm

    counts = {}
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        counts[name] = sum(p.numel() for p in model.parameters())
    return counts


def build_sample(kind: str, cache: Path) -> list[dict[str, Any]]:
    """The models to run, in order: ``[{"model", "family", "params"}]`` (cached in ``cache``)."""
    if cache.exists():
        sample = json.loads(cache.read_text())
        if sample["kind"] == kind:
            return sample["models"]
    import timm
    from timm.models import _registry

    names = timm.list_models()
    counts = param_counts(names)
    rows = [
        {"model": n, "family": family_of(n, _registry._model_to_module[n]), "params": counts[n]}
        for n in names
    ]
    rows.sort(key=lambda r: (r["params"], r["model"]))
    if kind == "families":
        smallest: dict[str, dict[str, Any]] = {}
        for row in rows:
            smallest.setdefault(row["family"], row)
        rows = list(smallest.values())
    atomic_write_text(
        cache,
        json.dumps(
            {"kind": kind, "timm": timm.__version__, "zoo": len(names), "models": rows}, indent=0
        ),
    )
    return rows


# ---- one model -------------------------------------------------------------------------------


def calibrate_norms(model: torch.nn.Module, x: torch.Tensor, batches: int = 2) -> None:
    """Set every BatchNorm's running statistics from random batches shaped like ``x``.

    Why: with freshly initialised statistics (mean 0, variance 1) activations shrink layer
    after layer in many random models, until the output hardly depends on the input (in
    YOLOv8n it varies by 1e-7 of its size): an exactness check on such a model proves little.
    Only the norms run in training mode, so dropout and auxiliary heads stay as in eval.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    with torch.no_grad():
        for _ in range(batches if norms else 0):
            model(torch.rand(2, *x.shape[1:]))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
        norm.eval()


def build_model(name: str, max_size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model (random weights, BatchNorm statistics from random batches, eval mode) and one
    input at its size, capped at ``max_size`` where the model can be built for a smaller
    size."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    channels, height, width = model.pretrained_cfg["input_size"]
    if max(height, width) > max_size:
        try:  # a model without img_size, or that cannot run at the cap, runs at its own size
            capped = timm.create_model(name, pretrained=False, img_size=max_size).eval()
            with torch.no_grad():
                capped(torch.rand(1, channels, max_size, max_size))
            model, height, width = capped, max_size, max_size
        except Exception:  # halo attention asserts sizes that divide its block size
            pass
    torch.manual_seed(0)  # the same input and calibration batches whatever was tried above
    x = torch.rand(1, channels, height, width)
    model.eval()
    calibrate_norms(model, x)
    return model, x


def classifier_widths(model: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) width of ``model.get_classifier()``; None where it has no weight (Identity)."""
    head = model.get_classifier()
    if isinstance(head, tuple | list):  # distilled models: (head, head_dist)
        head = head[0]
    weight = getattr(head, "weight", None)
    if weight is None:
        return None
    return int(weight.shape[1]), int(weight.shape[0])


def exact_only(graph: DependencyGraph, plan: Plan) -> Plan:
    exact = {g.id for g in graph.groups if g.exact}
    kept = {gid: channels for gid, channels in plan.drop.items() if gid in exact}
    return Plan(kept, plan.group_sizes, plan.model_type)


def exactness(
    model: torch.nn.Module, x: torch.Tensor, graph: DependencyGraph, plan: Plan
) -> dict[str, Any]:
    """Surgery against zeroing on the plan's exact groups: ``exact`` (bool, or None when no
    exact group loses a channel), ``exactness_error`` (relative to the largest output) and
    ``exactness_problem`` (the first leaf that differs)."""
    plan = exact_only(graph, plan)
    if plan.num_dropped() == 0:
        return {"exact": None, "exactness_problem": "no exact group loses a channel"}
    zeroed = zero_channels(model, graph, plan)
    pruned = apply_plan(model, graph, plan, compensate=None)
    with torch.no_grad():
        want, got = zeroed(x), pruned(x)
    scale = max(float(want.abs().max()), 1.0)
    problem = value_mismatch(got, want, atol=EXACT_RTOL * scale, rtol=EXACT_RTOL)
    error = float((got.double() - want.double()).abs().max()) / scale
    return {"exact": problem is None, "exactness_error": error, "exactness_problem": problem}


def worker_ours(name: str, max_size: int) -> dict[str, Any]:
    model, x = build_model(name, max_size)
    widths_before = classifier_widths(model)
    start = time.perf_counter()
    result = rp.prune_with_result(model, x, ratio=RATIO)
    row: dict[str, Any] = {
        "status": "ok",
        "input": list(x.shape),
        "time_s": time.perf_counter() - start,
        "engine_s": sum(result.phase_s[p] for p in ("trace", "plan", "surgery")),
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in result.model.parameters()),
        "groups": len(result.graph.groups),
        "kept_whole": [str(entry) for entry in result.graph.unprunable],
        "classifier_before": widths_before,
        "classifier_after": classifier_widths(result.model),
    }
    try:
        row.update(exactness(model, x, result.graph, result.plan))
    except Exception as error:  # a failing check is a result, not a crash of the row
        traceback.print_exc()
        row.update(exact=False, exactness_problem=f"{type(error).__name__}: {error}"[:300])
    return row


def worker_tp(name: str, max_size: int) -> dict[str, Any]:
    import torch_pruning as tp

    model, x = build_model(name, max_size)
    with torch.no_grad():
        expected = model(x)
    macs_before = _count_or_none(model, x)
    widths_before = classifier_widths(model)
    start = time.perf_counter()
    tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=[model.get_classifier()],
    ).step()
    row: dict[str, Any] = {"time_s": time.perf_counter() - start, "input": list(x.shape)}
    model.eval()
    try:
        with torch.no_grad():
            output = model(x)
    except Exception as error:
        return {**row, "status": f"FAIL (pruned model): {type(error).__name__}: {error}"[:300]}
    if output.shape != expected.shape:
        return {**row, "status": f"FAIL: output {tuple(output.shape)}, expected "
                f"{tuple(expected.shape)}"}  # fmt: skip
    return {
        **row,
        "status": "ok",
        "macs_before": macs_before,
        "macs_after": _count_or_none(model, x),
        "classifier_before": widths_before,
        "classifier_after": classifier_widths(model),
    }


def _count_or_none(model: torch.nn.Module, x: torch.Tensor) -> int | None:
    """Our MAC count, or None where it fails (torch's FlopCounterMode on PiT and CaiT under
    no_grad): a failure of our counter must not read as a failure of Torch-Pruning."""
    try:
        return rp.count(model, x).macs
    except Exception:
        traceback.print_exc()
        return None


def worker_main(side: str, name: str, max_size: int) -> None:
    torch.set_num_threads(1)
    emit(measure(worker_ours if side == "ours" else worker_tp, name, max_size, limit=400))


def run_model(side: str, name: str, max_size: int, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", side, "--model", name]
    command += ["--max-size", str(max_size)]
    start = time.perf_counter()
    rows, ended, stderr = run_worker(command, timeout_s)
    if ended.startswith("exit code"):
        ended += f": {stderr[-300:]}"
    row = rows[-1] if rows else {"status": f"FAIL: {ended}"}
    return {"side": side, "model": name, "wall_s": time.perf_counter() - start, **row}


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> None:
    sample = build_sample(args.sample, args.sample_cache)
    results = args.results[0]
    done = {(r["side"], r["model"]) for r in read_results(results)}
    deadline = time.monotonic() + args.budget_s
    for entry in sample:
        if (args.side, entry["model"]) in done or (
            args.models and entry["model"] not in args.models
        ):
            continue
        if time.monotonic() > deadline:
            print(f"budget of {args.budget_s:.0f} s spent; rerun to continue", flush=True)
            break
        row = run_model(args.side, entry["model"], args.max_size, args.timeout_s)
        row["family"] = entry["family"]
        with results.open("a") as appended:
            appended.write(json.dumps(row) + "\n")
        print(json.dumps({k: row.get(k) for k in ("model", "status", "wall_s")}), flush=True)


# ---- the page --------------------------------------------------------------------------------


def failure_reason(status: str) -> str:
    """A failure message with its model-specific parts (names, sizes, numbers) blanked, so
    failures of one cause fall in one group."""
    reason = status.removeprefix("FAIL: ")
    reason = re.sub(r"exit code (-?\d+):.*", r"exit code \1", reason, flags=re.S)
    reason = re.sub(r"'[^']*'", "'…'", reason)
    reason = re.sub(r"\d+", "N", reason)
    return reason[:160]


def _pct(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.0f}%)" if whole else "0 of 0"


def render(rows: list[dict], sample: dict[str, Any], command: str, machine: str) -> str:
    ours = [r for r in rows if r["side"] == "ours"]
    tp = {r["model"]: r for r in rows if r["side"] == "tp"}
    n = len(ours)
    ok = [r for r in ours if r["status"] == "ok"]
    shrinks = [r for r in ok if r["macs_after"] / r["macs_before"] < SHRINK_BELOW]
    exact = [r for r in ok if r.get("exact") is True]
    no_exact_group = [r for r in ok if r.get("exact") is None]
    inexact = [r for r in ok if r.get("exact") is False]
    head_kept = [r for r in ok if r["classifier_before"] is None or (
        r["classifier_after"] is not None
        and r["classifier_after"][1] == r["classifier_before"][1])]  # fmt: skip
    all_three = [r for r in shrinks if r.get("exact") is True]
    planned = len(sample["models"])
    lines = [
        "## timm",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}.",
        "",
        f"Sample: {n} of the {planned} models of the sample "
        + (
            f"(one per family, the one with the fewest parameters; {planned} families over "
            f"the {sample['zoo']} names of `timm.list_models()` in timm {sample['timm']}; a "
            "family is the defining timm module plus the leading letters of the name, e.g. "
            "`resnet:seresnext`, `efficientnet:tf`)"
            if sample["kind"] == "families"
            else f"(every name of `timm.list_models()`, {sample['zoo']}, smallest first)"
        )
        + (", in order of size: a partial run" if n < planned else "")
        + ". `timm.create_model(name, pretrained=False).eval()`, BatchNorm statistics set from "
        "two random batches (with the initial ones, many random models' outputs hardly depend "
        "on their input, and an exactness check would prove little), input 1x3 at the "
        "`pretrained_cfg` size, capped at 224 (models larger by default are built with "
        "`img_size=224` where they take it and run at that size; the others run at their own), "
        "`rp.prune_with_result(model, x, ratio=0.5)` with "
        "every other argument at its default. Each model in a fresh interpreter, one thread, "
        "60 s timeout.",
        "",
        f"- **prunes** (returns, outputs of the original's structure): {_pct(len(ok), n)}",
        f"- **shrinks** (MACs kept < {SHRINK_BELOW}): {_pct(len(shrinks), n)}",
        f"- **exact** (surgery equals zeroing on the exact groups, within {EXACT_RTOL:g} of the "
        f"largest output): {_pct(len(exact), n)}; {len(no_exact_group)} pruned only "
        f"LayerNorm-coupled (inexact by nature) or no groups, so there was nothing to compare; "
        f"{len(inexact)} differ",
        f"- **all three**: {_pct(len(all_three), n)}",
        f"- classifier (`get_classifier()`) keeps its output width: {_pct(len(head_kept), len(ok))}"
        " of those that prune",
    ]
    if ok:
        kept = sorted(r["macs_after"] / r["macs_before"] for r in ok)
        lines.append(f"- MACs kept, median over those that prune: {kept[len(kept) // 2]:.2f}")
    failures = collections.Counter(failure_reason(r["status"]) for r in ours if r not in ok)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for r in ours:
        if r not in ok:
            examples[failure_reason(r["status"])].append(r["model"])
    if failures:
        lines += ["", "Why models fail to prune (messages with names and numbers blanked):", ""]
        table = [
            [reason, str(count), ", ".join(examples[reason][:4])]
            for reason, count in failures.most_common()
        ]
        lines.append(markdown_table(["reason", "models", "e.g."], table, ["l", "r", "l"]))
    not_shrinking = [r for r in ok if r not in shrinks]
    if not_shrinking:
        lines += ["", "Prune but keep ≥ 0.9 of their MACs (first layer kept whole, why):", ""]
        table = [
            [
                r["model"],
                f"{r['macs_after'] / r['macs_before']:.2f}",
                str(len(r["kept_whole"])),
                (r["kept_whole"][0] if r["kept_whole"] else "")[:150],
            ]
            for r in not_shrinking
        ]
        header = ["model", "MACs kept", "kept whole", "first reason"]
        lines.append(markdown_table(header, table, ["l", "r", "r", "l"]))
    if inexact:
        lines += ["", "Not exact:", ""]
        table = [
            [r["model"], f"{r.get('exactness_error', float('nan')):.1e}",
             str(r.get("exactness_problem"))[:150]]
            for r in inexact
        ]  # fmt: skip
        lines.append(markdown_table(["model", "error", "first difference"], table))
    slowest = sorted(ok, key=lambda r: -r["engine_s"])[:10]
    lines += ["", "Slowest engine times (trace + plan + surgery):", ""]
    table = [
        [r["model"], "x".join(map(str, r["input"][2:])), format_count(r["macs_before"]),
         f"{r['engine_s']:.2f}", f"{r['time_s']:.2f}"]
        for r in slowest
    ]  # fmt: skip
    header = ["model", "input", "MACs before", "engine s", "whole call s"]
    lines.append(markdown_table(header, table, ["l", "l", "r", "r", "r"]))
    if tp:
        lines += _render_tp(ours, tp)
    return "\n".join(lines)


def _render_tp(ours: list[dict], tp: dict[str, dict]) -> list[str]:
    both = [r for r in ours if r["model"] in tp]
    tp_ok = [tp[r["model"]] for r in both if tp[r["model"]]["status"] == "ok"]
    counted = [t for t in tp_ok if t["macs_before"] and t["macs_after"]]
    tp_shrinks = [t for t in counted if t["macs_after"] / t["macs_before"] < SHRINK_BELOW]
    ours_ok = [r for r in both if r["status"] == "ok"]
    both_ok = [r for r in ours_ok if r["model"] in {t["model"] for t in counted}]
    lines = [
        "",
        "Torch-Pruning 1.6.1 on the same models: `MetaPruner(model, x, importance="
        "tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, "
        "ignored_layers=[model.get_classifier()]).step()`, then one forward whose output shape "
        "must equal the original's (TP has no exactness contract to check).",
        "",
        f"- run: {len(both)}; TP prunes: {_pct(len(tp_ok), len(both))} (ours: "
        f"{_pct(len(ours_ok), len(both))}); TP shrinks (MACs kept < {SHRINK_BELOW}): "
        f"{_pct(len(tp_shrinks), len(both))}"
        + (
            f" ({len(tp_ok) - len(counted)} not counted: our counter fails on them)"
            if len(counted) < len(tp_ok)
            else ""
        ),
    ]
    if both_ok:
        ours_kept = sorted(r["macs_after"] / r["macs_before"] for r in both_ok)
        tp_kept = sorted(
            tp[r["model"]]["macs_after"] / tp[r["model"]]["macs_before"] for r in both_ok
        )
        lines.append(
            f"- MACs kept, median over the {len(both_ok)} models both prune: ours "
            f"{ours_kept[len(ours_kept) // 2]:.2f}, TP {tp_kept[len(tp_kept) // 2]:.2f}"
        )
    failures = collections.Counter(
        failure_reason(tp[r["model"]]["status"]) for r in both if tp[r["model"]]["status"] != "ok"
    )
    if failures:
        lines += ["", "TP failures:", ""]
        table = [[reason, str(count)] for reason, count in failures.most_common(12)]
        lines.append(markdown_table(["reason", "models"], table, ["l", "r"]))
    return lines


def write_section(path: Path, block: str) -> None:
    """Replace the generated timm section (appended at the end if absent), leaving the rest."""
    write_generated_block(path, block, start=SECTION_START, end=SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=["ours", "tp"], default="ours")
    parser.add_argument("--sample", choices=["families", "all"], default="families")
    parser.add_argument("--max-size", type=int, default=224)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per model")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="stop after this")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        default=[Path("docs/timm_coverage.jsonl")],
        help="where rows are appended (the first file); --render reads them all",
    )
    parser.add_argument("--sample-cache", type=Path, default=Path("docs/timm_sample.json"))
    parser.add_argument("--models", nargs="+", help="only these models of the sample")
    parser.add_argument("--render", action="store_true", help="write the page section")
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    parser.add_argument("--command", default="", help="the command line to print on the page")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.model, args.max_size)
        return
    if args.render:
        sample = json.loads(args.sample_cache.read_text())
        torch.set_num_threads(1)  # as the workers ran, so that the machine line says so
        machine = describe_machine(machine_info(["timm", "torch-pruning"]))
        machine += f", load average at the end {os.getloadavg()[0]:.1f} (shared)"
        rows = [row for path in args.results for row in read_results(path)]
        block = render(rows, sample, args.command, machine)
        write_section(args.out, block)
        return
    run(args)


if __name__ == "__main__":
    main()
