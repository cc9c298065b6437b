"""Prune torchvision models at several ratios; check they run; write docs/coverage.md.

    python benchmarks/coverage.py --ratios 0.3 0.5 --out docs/coverage.md       # classifiers
    python benchmarks/coverage.py --tasks detection segmentation video flow     # other tasks

Classifiers: for each model, trace + plan + surgery time (the engine), MACs and params before
and after, the output shape check, and how many layers were kept whole (with the first reason).

Other tasks (``--tasks``): detection, segmentation, video classification and optical flow models,
built with ``weights=None, weights_backbone=None`` and pruned with ``rp.prune_with_result``'s
defaults (no ignore list). Per model and ratio: whether the pruned model runs with outputs of
the original's structure, MACs before and after, the layers kept whole with their reasons, the
time of the call, and the exactness error (see :func:`exactness_error`); Torch-Pruning 1.6.1's
``MetaPruner`` runs beside it, as a user would call it (L1 importance, no ignored layers: its
default). Each side of each model runs in a fresh interpreter with one thread and a timeout, so a
hang or a crash costs one cell. These sections replace only their part of the page.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torchvision

if not __package__:  # run as a file (python benchmarks/x.py): the repo root holds benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.workers import emit, measure, run_worker
from torchvision.models import detection, optical_flow, segmentation, video

import regprune as rp
from regprune.allocation import Plan
from regprune.api import check_runs, make_plan
from regprune.inputs import call_model
from regprune.io import atomic_write_text
from regprune.metrics import format_count
from regprune.report import describe_machine, machine_info, markdown_table, write_generated_block
from regprune.structures import (
    flatten_with_paths,
    recorded_outputs,
    replayed_outputs,
    structure_mismatch,
)
from regprune.surgery import apply_plan, zero_channels

SPECIAL_INPUTS = {"inception_v3": 299}


def build(name: str) -> torch.nn.Module:
    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def run_one(name: str, ratios: list[float], size: int) -> list[dict]:
    rows = []
    model = build(name)
    x = torch.randn(1, 3, SPECIAL_INPUTS.get(name, size), SPECIAL_INPUTS.get(name, size))
    before = rp.count(model, x)
    with torch.no_grad():
        expected = model(x)
    for ratio in ratios:
        row = {
            "model": name,
            "ratio": ratio,
            "macs_before": before.macs,
            "params_before": before.params,
        }
        try:
            start = time.perf_counter()
            graph, plan = make_plan(model, x, ratio=ratio, importance="l1")
            pruned = apply_plan(model, graph, plan)
            row["engine_s"] = time.perf_counter() - start
            check_runs(pruned, x, expected)
            after = rp.count(pruned, x)
            row.update(
                status="ok",
                groups=len(graph.groups),
                kept_whole=len(graph.unprunable),
                first_reason=str(graph.unprunable[0]) if graph.unprunable else "",
                macs_after=after.macs,
                params_after=after.params,
            )
        except Exception as error:  # the table must show failures, not hide them
            row.update(status=f"FAIL: {type(error).__name__}: {error}"[:200])
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_markdown(rows: list[dict], path: Path, command: str, size: int) -> None:
    ok = sum(r["status"] == "ok" for r in rows)
    table = []
    for r in rows:
        cells = [r["model"], str(r["ratio"]), r["status"]]
        if r["status"] == "ok":
            cells += [
                str(r["groups"]),
                str(r["kept_whole"]),
                format_count(r["macs_before"]),
                format_count(r["macs_after"]),
                format_count(r["params_before"]),
                format_count(r["params_after"]),
                f"{r['engine_s']:.2f}",
            ]
        else:
            cells += [""] * 7
        table.append(cells)
    header = [
        "model",
        "ratio",
        "status",
        "groups",
        "layers kept whole",
        "MACs before",
        "MACs after",
        "params before",
        "params after",
        "engine s",
    ]
    lines = [
        "# Coverage: every torchvision classifier",
        "",
        f"Command: `{command}`  ",
        f"Machine: {describe_machine(machine_info(['torchvision']))}, "
        f"load average at the end {os.getloadavg()[0]:.1f} (shared).  ",
        f"Input: 1x3x{size}x{size} (inception_v3: 299). Importance: L1, local scope. "
        "`engine s` = trace + plan + surgery. A run passes when the pruned model runs and its "
        "output shape equals the original's.",
        "",
        f"**{ok} of {len(rows)} runs pass.**",
        "",
        markdown_table(header, table, ["l", "r", "l", "r", "r", "r", "r", "r", "r", "r"]),
    ]
    reasons = sorted({r["first_reason"] for r in rows if r.get("first_reason")})
    lines += ["", "## Why layers were kept whole (first reason per model)", ""]
    lines += [f"- {reason}" for reason in reasons]
    text = "\n".join(lines) + "\n"
    old = path.read_text() if path.exists() else ""
    if TASKS_START in old:  # the task sections have their own command: keep them
        text += "\n" + TASKS_START + old.split(TASKS_START, 1)[1]
    atomic_write_text(path, text)


# ---- detection, segmentation, video, optical flow ------------------------------------------

TASK_MODELS = {
    "detection": [
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "ssdlite320_mobilenet_v3_large",
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "keypointrcnn_resnet50_fpn",
    ],
    "segmentation": ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50"],
    "video": ["r3d_18", "swin3d_t", "mvit_v1_b", "mvit_v2_s"],
    "flow": ["raft_small"],
}
TASK_TITLES = {
    "detection": "Detection",
    "segmentation": "Segmentation",
    "video": "Video classification",
    "flow": "Optical flow",
}
TASK_INPUTS = {
    "detection": "one 3x320x320 image, `([img],)`; the R-CNN, RetinaNet and FCOS models are built "
    "with `min_size=320, max_size=320` so that their transform does not upscale it to 800",
    "segmentation": "1x3x224x224",
    "video": "1x3x8x112x112 (MViT: 1x3x16x224x224, the size its position embeddings fix)",
    "flow": "two 1x3x128x128 frames, `(frame1, frame2)`; RAFT returns a list of 12 flows",
}
EXACT_AT = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("rpn.head", "roi_heads.box_predictor"),
    "maskrcnn_resnet50_fpn": ("rpn.head", "roi_heads.box_predictor"),
    "keypointrcnn_resnet50_fpn": ("rpn.head", "roi_heads.box_predictor"),
    "ssdlite320_mobilenet_v3_large": ("head",),
    "retinanet_resnet50_fpn": ("head",),
    "fcos_resnet50_fpn": ("head",),
}
"""Where exactness is checked on a detector: the raw outputs of its heads (class logits and box
deltas per anchor; for the R-CNNs also per proposal), which come before score thresholds, top-k
and NMS. A detector's final boxes pass through those, so outputs equal up to rounding may still
select different boxes. Their widths are fixed by the task, so the pruned model's and the
zeroed reference's have the same shapes. Other tasks compare the whole output."""
REPLAY = {name: ("rpn",) for name, at in EXACT_AT.items() if "rpn.head" in at}
"""An R-CNN's box head runs on the proposals its RPN selects by top-k and NMS, which a change in
the last bit of a score may reorder: the pruned model is handed the reference's proposals."""
UPSCALING_DETECTORS = ("retinanet", "fcos", "maskrcnn", "keypointrcnn")


def task_of(name: str) -> str:
    return next(task for task, names in TASK_MODELS.items() if name in names)


def build_task_model(name: str) -> tuple[torch.nn.Module, Any]:
    """The model (random weights, eval mode) and its example inputs, as regprune takes them."""
    torch.manual_seed(0)
    task = task_of(name)
    if task == "detection":
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
        if name.startswith(UPSCALING_DETECTORS):
            kwargs.update(min_size=320, max_size=320)
        return detection.__dict__[name](**kwargs).eval(), ([torch.rand(3, 320, 320)],)
    if task == "segmentation":
        model = segmentation.__dict__[name](weights=None, weights_backbone=None)
        return model.eval(), torch.rand(1, 3, 224, 224)
    if task == "video":
        frames, size = (16, 224) if name.startswith("mvit") else (8, 112)
        return video.__dict__[name](weights=None).eval(), torch.rand(1, 3, frames, size, size)
    frames = (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    return optical_flow.__dict__[name](weights=None).eval(), frames


def exact_groups_only(graph: rp.DependencyGraph, plan: Plan) -> Plan:
    """The plan's removals in exact groups (LayerNorm-coupled ones change the statistics)."""
    exact = {g.id for g in graph.groups if g.exact}
    kept = {gid: channels for gid, channels in plan.drop.items() if gid in exact}
    return Plan(kept, plan.group_sizes, plan.model_type)


def exactness_error(
    model: torch.nn.Module, example: Any, graph: rp.DependencyGraph, plan: Plan, name: str
) -> float | str:
    """Largest difference between the pruned model and the model with the same channels zeroed,
    relative to the largest output value (0 = identical).

    The plan is restricted to exact groups and surgery runs without compensation, as in the
    exactness tests; detectors are compared at :data:`EXACT_AT`. Returns a message instead of a
    number when the compared outputs differ in structure.
    """
    plan = exact_groups_only(graph, plan)
    zeroed = zero_channels(model, graph, plan)
    pruned = apply_plan(model, graph, plan, compensate=None)
    replay = REPLAY.get(name, ())
    with torch.no_grad():
        if name in EXACT_AT:
            with recorded_outputs(zeroed, [*EXACT_AT[name], *replay]) as want:
                call_model(zeroed, example)
            proposals = {stage: want.pop(stage) for stage in replay}
            with (
                replayed_outputs(pruned, proposals),
                recorded_outputs(pruned, EXACT_AT[name]) as got,
            ):
                call_model(pruned, example)
        else:
            want, got = call_model(zeroed, example), call_model(pruned, example)
    problem = structure_mismatch(got, want)
    if problem is not None:
        return problem
    pairs = [
        (g, w)
        for (_, g), (_, w) in zip(flatten_with_paths(got), flatten_with_paths(want), strict=True)
        if isinstance(w, torch.Tensor) and w.numel()
    ]
    scale = max(float(w.abs().max()) for _, w in pairs)
    error = max(float((g.double() - w.double()).abs().max()) for g, w in pairs)
    return error / scale if scale > 0 else error


def _warm_up_ours() -> None:
    """One tiny prune, so lazy imports and first-call costs are not timed."""
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    rp.prune(tiny, torch.randn(1, 3, 8, 8), ratio=0.5)


def worker_ours(name: str, ratio: float) -> dict[str, Any]:
    model, example = build_task_model(name)
    start = time.perf_counter()
    result = rp.prune_with_result(model, example, ratio=ratio)
    total_s = time.perf_counter() - start
    engine_s = sum(result.phase_s[p] for p in ("trace", "plan", "surgery"))
    return {
        "status": "ok",
        "time_s": total_s,
        "engine_s": engine_s,
        "phase_s": result.phase_s,
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "groups": len(result.graph.groups),
        "exact_groups": sum(g.exact for g in result.graph.groups),
        "kept_whole": [str(entry) for entry in result.graph.unprunable],
        "exactness_error": exactness_error(model, example, result.graph, result.plan, name),
    }


def _warm_up_tp() -> None:
    import torch_pruning as tp

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    tp.pruner.MetaPruner(
        tiny, torch.randn(1, 3, 8, 8), importance=tp.importance.MagnitudeImportance(p=1)
    ).step()


def worker_tp(name: str, ratio: float) -> dict[str, Any]:
    """``MetaPruner(model, args, MagnitudeImportance(p=1), pruning_ratio=ratio).step()`` on a copy
    (Torch-Pruning prunes in place; the copy is not timed), then the same run check as ours."""
    import torch_pruning as tp

    pristine, example = build_task_model(name)
    args = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        expected = call_model(pristine, example)
    model = copy.deepcopy(pristine)
    start = time.perf_counter()
    tp.pruner.MetaPruner(
        model, args, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio
    ).step()
    row: dict[str, Any] = {"time_s": time.perf_counter() - start}
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, example)
    except Exception as error:
        return {**row, "status": f"FAIL (pruned model): {type(error).__name__}: {error}"[:300]}
    problem = structure_mismatch(output, expected, rows_may_vary=True)
    row["status"] = "ok" if problem is None else f"outputs changed: {problem}"[:300]
    row["macs_before"] = rp.count(pristine, example).macs
    row["macs_after"] = rp.count(model, example).macs
    return row


def worker_main(side: str, name: str, ratios: list[float]) -> None:
    """Print one result line per ratio as soon as it is done (the parent keeps what it got)."""
    torch.set_num_threads(1)
    (_warm_up_ours if side == "ours" else _warm_up_tp)()
    for ratio in ratios:
        row = measure(worker_ours if side == "ours" else worker_tp, name, ratio)
        emit({"ratio": ratio, **row})


def run_side(side: str, name: str, ratios: list[float], timeout_s: float) -> dict[float, dict]:
    command = [sys.executable, __file__, "--worker", side, "--models", name, "--ratios"]
    command += [str(r) for r in ratios]
    emitted, ended, stderr = run_worker(command, timeout_s)
    if ended.startswith("exit code"):
        ended += f": {stderr[-300:]}"
    rows = {row["ratio"]: row for row in emitted}
    for ratio in ratios:
        rows.setdefault(ratio, {"ratio": ratio, "status": f"FAIL: {ended}"})
    return rows


def run_tasks(
    names: list[str], ratios: list[float], timeout_s: float, tp_timeout_s: float
) -> list[dict]:
    rows = []
    for name in names:
        sides = {
            "ours": run_side("ours", name, ratios, timeout_s),
            "tp": run_side("tp", name, ratios, tp_timeout_s),
        }
        for ratio in ratios:
            row = {"task": task_of(name), "model": name, "ratio": ratio}
            row.update(ours=sides["ours"][ratio], tp=sides["tp"][ratio])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


TASKS_START = "<!-- coverage --tasks: generated, do not edit by hand -->"
TASKS_END = "<!-- coverage --tasks: end -->"


def _fmt_error(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else f"{value:.1e}"


def render_tasks(rows: list[dict], command: str, machine: str) -> str:
    lines = [
        "# Detection, segmentation, video, optical flow",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}.",
        "",
        "`rp.prune_with_result(model, example, ratio=r)` with its defaults (L1, local scope, no "
        "ignore list, constant compensation), models built with `weights=None, "
        "weights_backbone=None`. A run passes when the pruned model runs and its outputs have "
        "the original's structure: the same containers and keys, and the same shapes except "
        "the number of detections, which depends on the weights. `ours s` is the whole call "
        "(trace, one measuring forward, plan, surgery, compensation, one checking forward); "
        "`TP s` is Torch-Pruning 1.6.1's `MetaPruner(model, args, "
        "importance=MagnitudeImportance(p=1), pruning_ratio=r).step()` on a copy, with its "
        "default `ignored_layers=None`, as a user would call it; `TP / ours` > 1 means we are "
        "faster. A detector's MACs depend on how many proposals and detections its weights let "
        "through; MACs after are counted on the plan, with the original's proposals.",
        "",
        "**Exactness**: the plan restricted to exact groups (those not coupled to a LayerNorm, "
        "which renormalises over the channels), applied without compensation, against the same "
        "model with those channels zeroed: the largest difference relative to the largest value "
        "compared. Detectors are compared on their heads' raw outputs, which come before score "
        "thresholds, top-k and NMS (those may pick other boxes from values equal up to "
        "rounding): "
        + ", ".join(f"{name}: `{', '.join(at)}`" for name, at in EXACT_AT.items())
        + "; the R-CNNs' box predictors run on the reference's proposals (the RPN's output is "
        "replayed into the pruned model: its top-k and NMS may order near-equal proposals "
        "otherwise); the other tasks on the whole output.",
    ]
    for task, title in TASK_TITLES.items():
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        table = []
        for r in task_rows:
            ours, tp = r["ours"], r["tp"]
            ok = ours["status"] == "ok"
            tp_ok = "time_s" in tp and "macs_after" in tp
            cells = [r["model"], str(r["ratio"]), ours["status"]]
            cells += [
                format_count(ours["macs_before"]) if ok else "",
                format_count(ours["macs_after"]) if ok else "",
                str(len(ours["kept_whole"])) if ok else "",
                _fmt_error(ours.get("exactness_error")),
                f"{ours['time_s']:.2f}" if ok else "",
                tp["status"],
                format_count(tp["macs_after"]) if tp_ok else "",
                f"{tp['time_s']:.2f}" if "time_s" in tp else "",
                f"{tp['time_s'] / ours['time_s']:.2f}" if ok and "time_s" in tp else "",
            ]
            table.append(cells)
        header = [
            "model",
            "ratio",
            "status",
            "MACs before",
            "MACs after",
            "kept whole",
            "exactness error",
            "ours s",
            "TP status",
            "TP MACs after",
            "TP s",
            "TP / ours",
        ]
        align = ["l", "r", "l", "r", "r", "r", "r", "r", "l", "r", "r", "r"]
        lines += ["", f"## {title}", "", f"Input: {TASK_INPUTS[task]}.", ""]
        lines.append(markdown_table(header, table, align))
        lines += ["", "Layers kept whole, and why (the same at both ratios):", ""]
        for name in dict.fromkeys(r["model"] for r in task_rows):
            kept = next(
                (
                    r["ours"]["kept_whole"]
                    for r in task_rows
                    if r["model"] == name and "kept_whole" in r["ours"]
                ),
                None,
            )
            if kept is None:
                continue
            lines.append(f"- **{name}** ({len(kept)}):")
            lines += [f"  - {entry}" for entry in kept[:12]]
            if len(kept) > 12:
                lines.append(f"  - ... and {len(kept) - 12} more of the same kinds")
    return "\n".join(lines)


def write_tasks_block(path: Path, block: str) -> None:
    """Replace the page's generated task sections (appended if absent), leaving the rest."""
    write_generated_block(path, block, start=TASKS_START, end=TASKS_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    parser.add_argument(
        "--tasks", nargs="+", choices=list(TASK_MODELS), help="these tasks instead of classifiers"
    )
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per model, ours")
    parser.add_argument("--tp-timeout-s", type=float, default=300.0, help="per model, TP")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-json", type=Path, help="re-render the task sections from a run's results"
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.models[0], args.ratios)
        return
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        write_tasks_block(
            args.out, render_tasks(report["rows"], report["command"], report["machine"])
        )
        return
    if args.tasks:
        torch.set_num_threads(1)  # as the workers run, so that the machine line says so
        names = args.models or [name for task in args.tasks for name in TASK_MODELS[task]]
        rows = run_tasks(names, args.ratios, args.timeout_s, args.tp_timeout_s)
        command = "python benchmarks/coverage.py --tasks " + " ".join(args.tasks)
        command += " --ratios " + " ".join(map(str, args.ratios))
        command += f" --tp-timeout-s {args.tp_timeout_s:g}"
        if args.models:
            command += " --models " + " ".join(args.models)
        machine = describe_machine(machine_info(["torchvision", "torch_pruning"]))
        machine += f", load average at the end {os.getloadavg()[0]:.1f} (shared)"
        report = {"command": command, "machine": machine, "rows": rows}
        atomic_write_text(args.out.with_name("coverage_tasks.json"), json.dumps(report, indent=1))
        write_tasks_block(args.out, render_tasks(rows, command, machine))
        return
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        rows.extend(run_one(name, args.ratios, args.size))
        write_markdown(
            rows,
            args.out,
            "python benchmarks/coverage.py "
            + " ".join(f"--ratios {' '.join(map(str, args.ratios))}".split()),
            args.size,
        )
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
