"""Issue 16's real-data study: a small ViT on Fashion-MNIST pruned to half its MACs by heads and
MLP widths: L0 head gates and group lasso against magnitude and Torch-Pruning's head pruning.

    python -m benchmarks.vit_heads_study --seeds 0 1
    python -m benchmarks.vit_heads_study --report docs/transformers.md

Model: timm ``VisionTransformer`` (28 px, patch 7: 16 tokens and a class token, width 64, 4
heads of 16, depth 4, MLP 128; 0.20 M parameters), built from code. Data: 10,000 Fashion-MNIST
training images, 2,000 test images, no augmentation. Per seed: a baseline trained 900 AdamW
steps (batch 64, lr 1e-3, weight decay 0.05), shared by every row; then per method a copy
trained ``--steps`` steps (AdamW, lr 5e-4) with the method in budget mode (no strength; target
50 % of the MACs, whole heads: ``attention="heads"``), pruned, and fine-tuned ``--finetune-steps``
steps (lr 2e-4). ``magnitude``: the same training without a penalty, pruned by L1.
``tp_magnitude``: Torch-Pruning 1.6.1's ``MetaPruner`` (``MagnitudeImportance(p=1)``,
``prune_num_heads=True``, ``head_pruning_ratio`` = ``pruning_ratio``) on the same plainly
trained copy, its ratio bisected to the same MACs, the head attributes set as its examples do.
Final-step accuracies; every finished row is appended to ``--out`` and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks.budget_study import accuracy, batches, tensors
from benchmarks.methods.report import mean_std

import regprune as rp
from regprune.report import describe_machine, markdown_table, write_generated_block
from regprune.train import build_optimizer, train_one_epoch

METHODS = ("magnitude", "tp_magnitude", "group_lasso", "l0_channel", "greg1")
BATCH = 64


def build_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=28,
        patch_size=7,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
    )


def train(model, x, y, steps: int, lr: float, seed: int, method=None) -> None:
    groups = method.optimizer_groups() if method is not None else ()
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.05, groups=groups, kind="adamw")
    order: list = []
    while len(order) < steps:
        order += batches(x, y, seed=seed + len(order), size=BATCH)
    train_one_epoch(
        model, order[:steps], optimizer, F.cross_entropy, method, device="cpu", progress=False
    )


def tp_prune(model, example, target: float) -> torch.nn.Module:
    """Torch-Pruning's head pruning, its ratio bisected to ``target`` of the MACs."""
    import torch_pruning as tp
    from benchmarks.transformers_coverage import _head_modules, _set_head_attributes

    total = rp.count(model, example).macs

    def pruned_at(ratio: float) -> torch.nn.Module:
        candidate = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            candidate,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[candidate.head],
            num_heads=_head_modules(candidate),
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
        pruner.step()
        _set_head_attributes(candidate, pruner.num_heads)
        return candidate

    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        middle = (low + high) / 2
        candidate = pruned_at(middle)
        if rp.count(candidate, example).macs <= target * total:
            best, high = candidate, middle
        else:
            low = middle
    if best is None:
        raise RuntimeError("Torch-Pruning did not reach the MACs target")
    return best


def run_one(base, name: str, seed: int, data, args) -> dict:
    x, y, x_test, y_test = data
    example = x[:1]
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    start = time.perf_counter()
    method = None
    if name not in ("magnitude", "tp_magnitude"):
        method = rp.methods.get(
            name, model, example, target_macs=0.5, total_steps=args.steps, attention="heads"
        )
    train(model, x, y, args.steps, lr=5e-4, seed=100 + seed, method=method)
    before = accuracy(model, x_test, y_test)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        if name == "magnitude":
            small = rp.prune(model, example, target_macs=0.5, importance="l1", attention="heads")
        elif name == "tp_magnitude":
            small = tp_prune(model, example, 0.5)
        else:
            small = method.prune()
    right_after = accuracy(small, x_test, y_test)
    train(small, x, y, args.finetune_steps, lr=2e-4, seed=200 + seed)
    heads = [m.num_heads for m in small.modules() if type(m).__name__ == "Attention"]
    return {
        "method": name,
        "seed": seed,
        "before": before,
        "right_after": right_after,
        "finetuned": accuracy(small, x_test, y_test),
        "macs_kept": rp.count(small, example).macs / rp.count(base, example).macs,
        "heads": heads,
        "seconds": time.perf_counter() - start,
    }


def study(args) -> None:
    data = tensors(10000)
    x, y, x_test, y_test = data
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    for seed in args.seeds:
        torch.manual_seed(seed)
        base = build_vit()
        train(base, x, y, 900, lr=1e-3, seed=seed)
        base_acc = accuracy(base, x_test, y_test)
        print(f"seed {seed}: baseline {base_acc:.3f}", flush=True)
        for name in args.methods:
            if (name, seed) in done:
                continue
            row = run_one(base, name, seed, data, args) | {"baseline": base_acc}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"{name} seed {seed}: {row['before']:.3f} -> {row['right_after']:.3f} -> "
                f"{row['finetuned']:.3f}, MACs {row['macs_kept']:.3f}, heads {row['heads']}",
                flush=True,
            )


def report(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]

    table = []
    for name in METHODS:
        group = [r for r in rows if r["method"] == name]
        if not group:
            continue
        table.append(
            [
                name,
                ",".join(str(r["seed"]) for r in group),
                mean_std([r["baseline"] for r in group], scale=100.0),
                mean_std([r["before"] for r in group], scale=100.0),
                mean_std([r["right_after"] for r in group], scale=100.0),
                f"**{mean_std([r['finetuned'] for r in group], scale=100.0)}**",
                f"{statistics.fmean(r['macs_kept'] for r in group):.3f}",
                " / ".join(str(r["heads"]) for r in group),
            ]
        )
    header = [
        "method",
        "seeds",
        "baseline (%)",
        "before prune (%)",
        "right after prune (%)",
        "after fine-tune (%)",
        "MACs kept",
        "heads per block (per seed)",
    ]
    text = f"Machine: {describe_machine()}\n\n{markdown_table(header, table)}\n"
    write_generated_block(
        Path(args.report),
        text,
        start="<!-- vit_heads_study: start -->",
        end="<!-- vit_heads_study: end -->",
        heading="## A small ViT on Fashion-MNIST: heads pruned by each method",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--out", default="docs/vit_heads_study.jsonl")
    parser.add_argument("--report", help="write the table into this markdown page and stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.report:
        report(args)
    else:
        study(args)


if __name__ == "__main__":
    main()
