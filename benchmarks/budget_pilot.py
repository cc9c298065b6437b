"""Pilot of budget mode (issue 14, open): a method given only ``total_steps``, no strength.

    python -m benchmarks.budget_pilot slimming masksparsity greg1 --steps 100

ResNet-20 trained 3 epochs on 2,000 Fashion-MNIST images (seed 0), then each method in budget
mode for ``--steps`` SGD steps (lr 0.05, momentum 0.9, batch 100), target 50 % of the MACs,
max_ratio 0.7, and pruned; ``oneshot`` is the same training without a penalty. Prints the test
accuracy (2,000 test images) of the baseline, before pruning and right after, and the removal
report: how many removed channel inputs were silent where they are read.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings

import torch
import torch.nn.functional as F

import regprune as rp
from regprune.data import build_datasets
from regprune.models import create_model
from regprune.report import describe_machine, markdown_table
from regprune.train import build_optimizer, train_one_epoch


def tensors(subset: int = 2000) -> tuple[torch.Tensor, ...]:
    splits = build_datasets("fashionmnist", subset=subset, seed=0, augment=False)

    def stack(dataset):
        xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        return torch.stack(xs), torch.tensor(ys)

    return (*stack(splits.train), *stack(splits.test))


def batches(x, y, seed: int, size: int = 100):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(x), size)]


def train(model, x, y, steps: int, method=None) -> None:
    """``steps`` SGD steps over reshuffled passes of the data, through the library's loop."""
    groups = method.optimizer_groups() if method is not None else ()
    optimizer = build_optimizer(model, lr=0.05, momentum=0.9, weight_decay=1e-4, groups=groups)
    order: list = []
    while len(order) < steps:
        order += batches(x, y, seed=len(order))
    train_one_epoch(
        model, order[:steps], optimizer, F.cross_entropy, method, device="cpu", progress=False
    )


def gate_summary(method) -> str:
    """For L0 in budget mode: the closed share of the gates and the expected MACs share the
    constraint saw last (does the Lagrangian meet the target by itself?)."""
    constraint = getattr(method.regularizer, "constraint", None)
    if constraint is None:
        return "-"
    stats = method.regularizer.stats(method.model)
    return (
        f"closed {stats['gates/closed']:.2f}, E[MACs] {stats['l0/expected_share']:.3f}, "
        f"lambda_1 {stats['l0/lambda_1']:.2g}"
    )


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--kwargs", type=json.loads, default={}, help='extra method arguments, JSON: {"lr": 1}'
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, x_test, y_test = tensors()
    torch.manual_seed(0)
    baseline = create_model("resnet20", num_classes=10, in_channels=1)
    train(baseline, x, y, steps=60)
    base = accuracy(baseline, x_test, y_test)
    rows = []
    for name in args.methods:
        model = copy.deepcopy(baseline)
        budget = {} if name == "oneshot" else {"total_steps": args.steps}
        method = rp.methods.get(
            name, model, x[:1], target_macs=0.5, max_ratio=0.7, **budget, **args.kwargs
        )
        train(model, x, y, args.steps, method)
        before = accuracy(model, x_test, y_test)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            small = method.prune(data=batches(x, y, seed=0)[:4])
        after = accuracy(small, x_test, y_test)
        report = method.removal_report()
        rows.append(
            [
                name,
                str(args.steps),
                f"{base:.3f}",
                f"{before:.3f}",
                f"{after:.3f}",
                f"{report['silent_inputs']}/{report['removed_inputs']}",
                str((report.get("budget") or {}).get("strength", "-")),
                f"{rp.count(small, x[:1]).macs / rp.count(model, x[:1]).macs:.3f}",
                gate_summary(method),
            ]
        )
        print(f"{name}: done", flush=True)
    header = [
        "method",
        "steps",
        "baseline acc",
        "before prune",
        "right after prune",
        "silent / removed inputs",
        "strength",
        "MACs kept",
        "L0 gates",
    ]
    print(f"Machine: {describe_machine()}\n\n{markdown_table(header, rows)}")


if __name__ == "__main__":
    main()
