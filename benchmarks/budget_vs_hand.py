"""Budget mode against the hand-sized strengths, paired by seed (issue 14).

    python -m benchmarks.budget_vs_hand --doc docs/benchmarks.md

Reads ``docs/benchmarks/cpu_budget.jsonl`` (every method given only ``total_steps``) and
``docs/benchmarks/cpu_lossless.jsonl`` (the same protocol, baselines and seeds, strengths sized
by hand in ``cpu.yaml``; Torch-Pruning's magnitude pruner, its best there) and writes one table:
per method, accuracy before pruning, right after, the share of removed inputs that were silent,
after fine-tuning, and the paired differences after fine-tuning against the hand-sized row and
against TP magnitude (final epoch, seeds 0, 1, 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.methods.report import mean_std

from regprune.report import markdown_table, write_generated_block

BUDGET = Path("docs/benchmarks/cpu_budget.jsonl")
HAND = Path("docs/benchmarks/cpu_lossless.jsonl")


def load(path: Path) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["label"], r["seed"]): r for r in rows if r.get("status", "ok") == "ok"}


def paired(rows: list[dict], other: dict[tuple[str, int], dict], label: str) -> str:
    diffs = [
        (r["seed"], r["acc_after_finetune"] - other[(label, r["seed"])]["acc_after_finetune"])
        for r in rows
        if (label, r["seed"]) in other
    ]
    if not diffs:
        return "-"
    per_seed = ", ".join(f"{100 * d:+.2f}" for _, d in sorted(diffs))
    return f"{mean_std([d for _, d in diffs], scale=100.0)} ({per_seed})"


def table() -> str:
    budget, hand = load(BUDGET), load(HAND)
    labels = sorted({label for label, _ in budget}, key=lambda s: s)
    out = []
    for label in labels:
        rows = sorted(
            (r for (lab, _), r in budget.items() if lab == label), key=lambda r: r["seed"]
        )
        if rows[0].get("family") == "unstructured":
            continue
        removal = [r.get("removal") or {} for r in rows]
        out.append(
            [
                label,
                ",".join(str(r["seed"]) for r in rows),
                mean_std([r["acc_before_prune"] for r in rows], scale=100.0),
                mean_std([r["acc_after_prune"] for r in rows], scale=100.0),
                mean_std([m.get("silent_share", 0.0) for m in removal], scale=100.0),
                f"**{mean_std([r['acc_after_finetune'] for r in rows], scale=100.0)}**",
                paired(rows, hand, label.removesuffix("_budget")),
                paired(rows, hand, "tp_magnitude"),
            ]
        )
    header = [
        "run",
        "seeds",
        "acc as trained, before prune (%)",
        "right after prune (%)",
        "removed inputs silent (%)",
        "after fine-tune (%)",
        "minus the hand-sized row (points)",
        "minus TP magnitude (points)",
    ]
    return markdown_table(header, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", help="write the table into this page (else print it)")
    args = parser.parse_args()
    text = table()
    if args.doc:
        write_generated_block(
            Path(args.doc),
            text,
            start="<!-- budget_vs_hand: start -->",
            end="<!-- budget_vs_hand: end -->",
        )
    else:
        print(text)


if __name__ == "__main__":
    main()
