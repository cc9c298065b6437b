"""Prune ultralytics YOLO models built from their yaml (random weights, nothing downloaded).

    YOLO_OFFLINE=1 python -m benchmarks.yolo_coverage --variants --out docs/yolo_coverage.json
    python -m benchmarks.yolo_coverage --render    # the "YOLO (ultralytics)" section of coverage.md

Per model (BatchNorm statistics set from two random batches first: with the initial ones,
YOLOv8n's outputs hardly depend on its input, see ``calibrate_norms``):
``rp.prune_with_result(yolo.model, torch.rand(1, 3, 320, 320), ratio=0.3)`` with no
ignore list; MACs before and after; the layers kept whole and why; exactness (the plan
restricted to exact groups, applied without compensation, against the same model with those
channels zeroed, every leaf of the eval-mode outputs compared on its own scale); whether the
pruned model runs at 256x256 with outputs of the original's structure; whether ultralytics'
own ``YOLO.predict`` runs it; and the two ways to save it: ultralytics' (the whole module
pickled, ``torch.save({"model": ...})``, loaded by ``YOLO(path)``, and with
``weights_only=True`` through ultralytics' allow-list) and regprune's (``rp.save_pruned``,
weights only, then ``rp.load_pruned`` into a model rebuilt from the yaml).

Two variants show what the defaults leave whole (``--variants``): ``export head`` prunes with
the Detect head's ``export = True`` (it then returns only the decoded predictions, not the
neck's feature maps as well, so those can shrink) and sets it back; ``split C2f`` first
replaces every C2f / C3k2 block by :class:`C2fSplit` (its first conv split in two, so no
``chunk``: same outputs), then prunes with ``export = True``. docs/yolo.md shows both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no online checks

import copy

import numpy as np
import torch
from benchmarks.timm_coverage import calibrate_norms, exact_only
from torch import nn

import regprune as rp
from regprune.graph import DependencyGraph
from regprune.io import atomic_write_text
from regprune.metrics import format_count
from regprune.report import describe_machine, machine_info, markdown_table, write_generated_block
from regprune.structures import flatten_with_paths, structure_mismatch
from regprune.surgery import apply_plan, zero_channels

MODELS = [
    "yolov8n.yaml",
    "yolov8n-seg.yaml",
    "yolov8n-pose.yaml",
    "yolo11n.yaml",
    "yolo11n-seg.yaml",
    "yolo11n-pose.yaml",
]
RATIO = 0.3
SIZE = 320
EXACT_RTOL = 1e-4


def leaf_errors(got: Any, want: Any) -> dict[str, float]:
    """Per output leaf (``[1]['scores']``), the largest difference relative to the leaf's
    largest value: decoded boxes are in pixels, scores in [0, 1], so one scale would hide one."""
    errors = {}
    for (path, g), (_, w) in zip(flatten_with_paths(got), flatten_with_paths(want), strict=True):
        if isinstance(w, torch.Tensor) and w.numel():
            scale = max(float(w.abs().max()), 1e-12)
            errors[path] = float((g.double() - w.double()).abs().max()) / scale
    return errors


def exactness(model: torch.nn.Module, x: torch.Tensor, graph: DependencyGraph, plan: Any) -> dict:
    plan = exact_only(graph, plan)
    zeroed = zero_channels(model, graph, plan).eval()
    pruned = apply_plan(model, graph, plan, compensate=None).eval()
    with torch.no_grad():
        want, got = zeroed(x), pruned(x)
    problem = structure_mismatch(got, want)
    if problem is not None:
        return {"exact": False, "exactness_problem": problem}
    errors = leaf_errors(got, want)
    return {
        "exact": max(errors.values()) <= EXACT_RTOL,
        "exactness_error": max(errors.values()),
        "exactness_by_leaf": errors,
        "exact_channels_dropped": plan.num_dropped(),
    }


class C2fSplit(nn.Module):
    """A C2f (or C3k2) block whose first conv is two convs, one per half of its output.

    C2f splits its first conv's output with ``chunk(2, 1)``, which needs two equal halves at
    fixed positions, so the tracer keeps that conv whole, and with it the last conv of each
    bottleneck (their residual adds chain to the second half). Two convs compute the same two
    halves (the same weights, the same BatchNorm entries), and each can lose channels on its
    own.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.cv0 = self._half(block.cv1, slice(0, half))
        self.cv1 = self._half(block.cv1, slice(half, 2 * half))
        self.m, self.cv2 = block.m, block.cv2
        for attr in ("f", "i", "type", "np"):  # what ultralytics' forward and summary read
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    @staticmethod
    def _half(conv: nn.Module, keep: slice) -> nn.Module:
        part = copy.deepcopy(conv)
        with torch.no_grad():
            part.conv.weight = nn.Parameter(conv.conv.weight[keep].clone())
            part.conv.out_channels = part.conv.weight.shape[0]
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(conv.bn, name)
                value = tensor[keep].clone()
                setattr(part.bn, name, nn.Parameter(value) if name in ("weight", "bias") else value)
            part.bn.num_features = part.conv.out_channels
        return part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def split_c2f(model: nn.Module) -> nn.Module:
    """Replace, in place, every C2f / C3k2 block of an ultralytics model by :class:`C2fSplit`;
    returns the model."""
    from ultralytics.nn.modules.block import C2f

    for i, layer in enumerate(model.model):
        if isinstance(layer, C2f):
            model.model[i] = C2fSplit(layer)
    return model


def check_predict(yolo: Any, pruned: torch.nn.Module) -> dict:
    """``yolo.model = pruned; yolo.predict(image)`` on a 320x320 numpy image (HWC, BGR)."""
    yolo.model = pruned
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    results = yolo.predict(image, imgsz=SIZE, conf=0.0, verbose=False)
    return {"predict": "ok", "predict_boxes": len(results[0].boxes)}


def check_saving(yaml: str, pruned: torch.nn.Module, x: torch.Tensor) -> dict:
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    row: dict[str, Any] = {}
    with torch.no_grad():
        want = pruned(x)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pruned.pt"
        torch.save({"model": pruned, "train_args": {}}, path)  # as ultralytics pickles modules
        try:  # first: ultralytics' safe load below registers its allow-list process-wide
            torch.load(path, weights_only=True)
            row["torch_weights_only"] = "ok"
        except Exception as error:
            row["torch_weights_only"] = f"FAIL: {type(error).__name__}: {str(error)[:150]}"
        try:
            loaded = YOLO(str(path)).model.eval()
            with torch.no_grad():
                got = loaded(x)
            row["ultralytics_load"] = _same(got, want)
        except Exception as error:
            row["ultralytics_load"] = f"FAIL: {type(error).__name__}: {error}"[:300]
        try:
            torch_safe_load(str(path), safe_only=True)
            row["ultralytics_weights_only"] = "ok"
        except Exception as error:
            row["ultralytics_weights_only"] = f"FAIL: {type(error).__name__}: {error}"[:300]
        path = Path(folder) / "pruned_state.pt"
        rp.save_pruned(pruned, path)
        try:
            rebuilt = rp.load_pruned(YOLO(yaml).model, path).eval()
            with torch.no_grad():
                got = rebuilt(x)
            row["regprune_state_dict"] = _same(got, want)
        except Exception as error:
            row["regprune_state_dict"] = f"FAIL: {type(error).__name__}: {error}"[:300]
    return row


def _same(got: Any, want: Any) -> str:
    problem = structure_mismatch(got, want)
    if problem is not None:
        return f"outputs differ: {problem}"
    worst = max(leaf_errors(got, want).values())
    return "ok" if worst == 0 else f"outputs differ by {worst:.1e}"


def run_one(yaml: str) -> dict[str, Any]:
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(yaml)
    model = yolo.model.eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    calibrate_norms(model, x)
    row: dict[str, Any] = {"model": yaml, "task": yolo.task}
    start = time.perf_counter()
    result = rp.prune_with_result(model, x, ratio=RATIO)
    row.update(
        status="ok",
        time_s=time.perf_counter() - start,
        engine_s=sum(result.phase_s[p] for p in ("trace", "plan", "surgery")),
        macs_before=result.macs_before,
        macs_after=result.macs_after,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in result.model.parameters()),
        groups=len(result.graph.groups),
        kept_whole=[str(entry) for entry in result.graph.unprunable],
    )
    pruned = result.model.eval()
    steps = [
        ("exactness", lambda: exactness(model, x, result.graph, result.plan)),
        ("other_size", lambda: _other_size(model, pruned)),
        ("saving", lambda: check_saving(yaml, pruned, x)),
        ("predict", lambda: check_predict(yolo, pruned)),
    ]
    for name, step in steps:
        try:
            row.update(step())
        except Exception as error:  # each check is a result; one failing does not hide the rest
            traceback.print_exc()
            row[name] = f"FAIL: {type(error).__name__}: {error}"[:300]
    return row


def run_variant(yaml: str, variant: str) -> dict[str, Any]:
    """MACs kept, layers kept whole, exactness and predict with the head in export mode while
    pruning (``export head``), and after :func:`split_c2f` too (``split C2f``)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(yaml)
    model = yolo.model.eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    calibrate_norms(model, x)
    if variant == "split C2f":
        with torch.no_grad():
            want = model(x)
        model = split_c2f(model)
        with torch.no_grad():
            got = model(x)
        problem = structure_mismatch(got, want)
        if problem is not None or max(leaf_errors(got, want).values()) > 0:
            changed = problem or leaf_errors(got, want)
            raise RuntimeError(f"split_c2f changed the outputs: {changed}")
    head = model.model[-1]
    head.export = True
    try:
        result = rp.prune_with_result(model, x, ratio=RATIO)
        report = exactness(model, x, result.graph, result.plan)
    finally:
        head.export = False
    result.model.model[-1].export = False
    row: dict[str, Any] = {
        "model": yaml,
        "variant": variant,
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "kept_whole": [str(entry) for entry in result.graph.unprunable],
        **report,
    }
    row.update(check_predict(yolo, result.model.eval()))
    return row


def _other_size(model: torch.nn.Module, pruned: torch.nn.Module, size: int = 256) -> dict:
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        want, got = model(x), pruned(x)
    problem = structure_mismatch(got, want)
    return {f"runs_at_{size}": "ok" if problem is None else problem}


SECTION_START = "<!-- yolo_coverage: generated, do not edit by hand -->"
SECTION_END = "<!-- yolo_coverage: end -->"


def _short(value: Any) -> str:
    text = str(value)
    if text.startswith("FAIL: UnpicklingError: Weights only load failed"):
        return "refused (pickled classes)"
    return text[:80]


def kept_whole_by_reason(entries: list[str]) -> dict[str, list[str]]:
    """``"layer: 32/32 channels kept whole (why, at place)"`` entries grouped by ``why`` with
    its numbers blanked: reason -> layers."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        layer, _, rest = entry.partition(": ")
        why = rest.partition("(")[2].rpartition(", at ")[0]
        groups.setdefault(re.sub(r"(?<![-\w])\d+", "N", why), []).append(layer)
    return groups


def render(report: dict[str, Any]) -> str:
    rows, variants = report["rows"], report.get("variants", [])
    lines = [
        "## YOLO (ultralytics)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}.",
        "",
        f"ultralytics {report['ultralytics']}, models built from their yaml (`YOLO(name)`, random "
        "weights, nothing downloaded, `YOLO_OFFLINE=1`), BatchNorm statistics set from two random "
        f"batches, eval mode; `rp.prune_with_result(yolo.model, torch.rand(1, 3, {SIZE}, {SIZE}), "
        f"ratio={RATIO})` with no ignore list. **exact**: the plan restricted to exact groups, "
        "applied without compensation, against the same model with those channels zeroed; every "
        "leaf of the eval outputs (decoded predictions, and the raw `boxes`, `scores`, `feats`, "
        "`mask_coefficient`, `proto`, `kpts`) compared on its own scale, the largest difference "
        "relative to the leaf's largest value. **s**: the whole `prune_with_result` call. "
        "**256**: the pruned model at 256x256 returns "
        "outputs of the original's structure. **predict**: `yolo.model = pruned; "
        "yolo.predict(numpy_image, imgsz=320)`. **YOLO(path)**: `torch.save({'model': pruned})` "
        "loaded by `YOLO(path)`, outputs identical; **safe load**: ultralytics' "
        "`torch_safe_load(path, safe_only=True)` (`weights_only=True` with its allow-list); "
        "**torch weights_only**: `torch.load(path, weights_only=True)` (refused while the process "
        "has not run ultralytics' safe load, which registers its allow-list for the process: so "
        "the later rows pass); **save_pruned**: `rp.save_pruned` then `rp.load_pruned` into a "
        "model rebuilt from the yaml, outputs identical. Guide: [yolo.md](yolo.md).",
        "",
    ]
    table = []
    for r in rows:
        if r["status"] != "ok":
            table.append([r["model"], r["status"][:120]] + [""] * 12)
            continue
        table.append(
            [
                r["model"],
                "ok",
                format_count(r["macs_before"]),
                format_count(r["macs_after"]),
                f"{r['macs_after'] / r['macs_before']:.2f}",
                str(len(r["kept_whole"])),
                f"{'yes' if r.get('exact') else 'NO'} ({r.get('exactness_error', 0):.1e})",
                _short(r.get("runs_at_256")),
                _short(r.get("predict")),
                _short(r.get("ultralytics_load")),
                _short(r.get("ultralytics_weights_only")),
                _short(r.get("torch_weights_only")),
                _short(r.get("regprune_state_dict")),
                f"{r['time_s']:.1f}",
            ]
        )
    header = ["model", "prunes", "MACs before", "MACs after", "kept", "kept whole", "exact"]
    header += ["256", "predict", "YOLO(path)", "safe load", "torch weights_only", "save_pruned"]
    header.append("s")
    lines.append(markdown_table(header, table, ["l", "l"] + ["r"] * 4 + ["l"] * 7 + ["r"]))
    if variants:
        lines += [
            "",
            "Pruning more (yolo.md): **export head** prunes with the Detect head's `export = "
            "True` (it returns only the decoded predictions, so the neck's maps are no longer "
            "outputs) and sets it back; **split C2f** also replaces every C2f / C3k2 block by "
            "`C2fSplit` first (its `chunk(2, 1)` replaced by two convs, outputs identical). "
            "Exactness on the export-mode output; predict as above.",
            "",
        ]
        by_model = {r["model"]: r for r in rows if r["status"] == "ok"}
        table = []
        for v in variants:
            if "macs_after" not in v:
                table.append([v["model"], v["variant"], v.get("status", "")[:100], "", "", ""])
                continue
            table.append(
                [
                    v["model"],
                    v["variant"],
                    f"{by_model[v['model']]['macs_after'] / v['macs_before']:.2f}"
                    if v["model"] in by_model
                    else "",
                    f"{v['macs_after'] / v['macs_before']:.2f}",
                    f"{'yes' if v.get('exact') else 'NO'} ({v.get('exactness_error', 0):.1e})",
                    _short(v.get("predict")),
                ]
            )
        header = ["model", "variant", "MACs kept (defaults)", "MACs kept", "exact", "predict"]
        lines.append(markdown_table(header, table, ["l", "l", "r", "r", "l", "l"]))
    lines += ["", "Layers kept whole with the defaults, by reason (sizes and places blanked):", ""]
    for r in rows:
        if r["status"] != "ok":
            continue
        lines.append(f"- **{r['model']}** ({len(r['kept_whole'])}):")
        for reason, layers in kept_whole_by_reason(r["kept_whole"]).items():
            lines.append(f"  - {reason}: {', '.join(layers)}")
    return "\n".join(lines)


def write_section(path: Path, block: str) -> None:
    """Replace the generated YOLO section (appended at the end if absent), leaving the rest."""
    write_generated_block(path, block, start=SECTION_START, end=SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", type=Path, default=Path("docs/yolo_coverage.json"))
    parser.add_argument("--variants", action="store_true", help="also the two variants")
    parser.add_argument("--page", type=Path, default=Path("docs/coverage.md"))
    parser.add_argument("--render", action="store_true", help="write the page section from --out")
    args = parser.parse_args()
    if args.render:
        write_section(args.page, render(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(1)
    import ultralytics

    rows = []
    for yaml in args.models:
        try:
            row = run_one(yaml)
        except Exception as error:  # the page must show failures, not hide them
            traceback.print_exc()
            row = {"model": yaml, "status": f"FAIL: {type(error).__name__}: {error}"[:400]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    variants = []
    for yaml in args.models if args.variants else []:
        for variant in ("export head", "split C2f"):
            try:
                row = run_variant(yaml, variant)
            except Exception as error:
                traceback.print_exc()
                row = {"model": yaml, "variant": variant, "status": f"FAIL: {error}"[:300]}
            variants.append(row)
            print(json.dumps(row), flush=True)
    machine = describe_machine(machine_info(["ultralytics"]))
    machine += f", load average at the end {os.getloadavg()[0]:.1f} (shared)"
    report = {
        "command": "YOLO_OFFLINE=1 python -m benchmarks.yolo_coverage --variants",
        "machine": machine,
        "ultralytics": ultralytics.__version__,
        "rows": rows,
        "variants": variants,
    }
    atomic_write_text(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
