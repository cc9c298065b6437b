"""Prune every torchvision classifier at several ratios; check it runs; write docs/coverage.md.

    python benchmarks/coverage.py --ratios 0.3 0.5 --out docs/coverage.md

For each model: trace + plan + surgery time (the engine), MACs and params before and after,
the output shape check, and how many layers were kept whole (with the first reason).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch
import torchvision

import regprune as rp
from regprune.api import check_runs, make_plan
from regprune.io import atomic_write_text
from regprune.metrics import format_count
from regprune.report import describe_machine, machine_info, markdown_table
from regprune.surgery import apply_plan

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
    atomic_write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/coverage.md"))
    args = parser.parse_args()
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
