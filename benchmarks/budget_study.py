"""Issue 14's study: every regularization method with default arguments, at three budgets.

    python -m benchmarks.budget_study --model resnet20 --steps 50 250 1000
    python -m benchmarks.budget_study --model vgg11 --steps 50 250 1000
    python -m benchmarks.budget_study --report docs/budget_study.md
    python -m benchmarks.budget_study --model resnet20 --trajectory group_lasso --steps 1000 \
        --recalibrate

Per model: a baseline trained ``--baseline-steps`` SGD steps on 4,000 Fashion-MNIST training
images (seed 0, cached under runs/budget_study/), then per method and budget a copy trained
``steps`` steps with the method given **only** ``total_steps`` and the target (50 % of the
MACs; default ``max_ratio``, default strengths), pruned, and fine-tuned ``--finetune-steps``
steps. Test accuracy on 2,000 test images: the baseline, as trained, before pruning (the
network the method cuts, ``model_to_prune``: after a penalty, BN statistics re-estimated on the
4 calibration batches), right after (with the default compensation), after fine-tuning; the
removal report says how many removed channel inputs were silent where they are read.
``oneshot`` is the same training without a penalty, pruned by L1 (what removal costs when
nothing was silenced). ``cut_early`` spends the same budget the other way: no penalty, pruned
by L1 (compensated) at ``silence_at`` (0.8) of the steps and trained the rest at the same lr;
its "before prune" is the pruned model at the end of the budget, what a penalty's silenced
network is measured against (both had the last fifth of the budget to adapt without the set).

Every finished row is appended to ``--out`` (JSON lines) at once; a rerun skips the rows it
has, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks.budget_pilot import accuracy, batches

import regprune as rp
from regprune.data import build_datasets
from regprune.io import atomic_torch_save, read_weights_only
from regprune.models import create_model
from regprune.report import describe_machine, markdown_table, write_generated_block
from regprune.train import (
    build_optimizer,
    build_scheduler,
    recalibrate_batch_norm,
    train_one_epoch,
)

METHODS = (
    "oneshot",
    "slimming",
    "group_lasso",
    "masksparsity",
    "greg1",
    "greg2",
    "hgsr",
    "l0_channel",
    "adapruner",
    "cut_early",
)
CUT_AT = 0.8
"""``cut_early`` prunes at this share of the budget: the methods' default ``silence_at``."""
MODELS = {"resnet20": {}, "vgg11": {"width": 0.5}}
CACHE = Path("runs/budget_study")
BATCH = 64


def tensors(train_images: int) -> tuple[torch.Tensor, ...]:
    splits = build_datasets("fashionmnist", subset=train_images, seed=0, augment=False)

    def stack(dataset, limit):
        xs, ys = zip(*(dataset[i] for i in range(min(limit, len(dataset)))), strict=True)
        return torch.stack(xs), torch.tensor(ys)

    return (*stack(splits.train, train_images), *stack(splits.test, 2000))


def train(
    model,
    x,
    y,
    steps: int,
    method=None,
    lr: float = 0.05,
    seed: int = 0,
    schedule: str = "constant",
    span: tuple[int, int] | None = None,
) -> None:
    """``steps`` SGD steps (momentum 0.9) over reshuffled passes, the library's loop; the
    method's own parameters (L0 gates) in their optimizer group. ``schedule``: ``constant`` or
    ``cosine`` (to 0 at the end of the schedule, as the pipeline's phases run by default);
    ``span = (first, length)`` places these steps inside a longer cosine schedule."""
    groups = method.optimizer_groups() if method is not None else ()
    optimizer = build_optimizer(model, lr=lr, momentum=0.9, weight_decay=1e-4, groups=groups)
    first, length = span if span is not None else (0, steps)
    scheduler = build_scheduler(
        optimizer, schedule, epochs=1, steps_per_epoch=length, start_step=first
    )
    order: list = []
    while len(order) < steps:
        order += batches(x, y, seed=seed + len(order), size=BATCH)
    train_one_epoch(
        model,
        order[:steps],
        optimizer,
        F.cross_entropy,
        method,
        scheduler,
        device="cpu",
        progress=False,
    )


def baseline(name: str, x, y, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, **MODELS[name])
    path = CACHE / f"{name}_{steps}.pt"
    if path.exists():
        model.load_state_dict(read_weights_only(path, "the cached baseline"))
        return model
    train(model, x, y, steps, lr=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), path)
    return model


def run_one(
    base, name: str, steps: int, data, finetune_steps: int, schedule: str = "constant"
) -> dict:
    if name == "cut_early":
        return cut_early(base, steps, data, finetune_steps, schedule)
    x, y, x_test, y_test = data
    model = copy.deepcopy(base)
    budget = {} if name == "oneshot" else {"total_steps": steps}
    torch.manual_seed(0)
    method = rp.methods.get(name, model, x[:1], target_macs=0.5, **budget)
    start = time.perf_counter()
    train(model, x, y, steps, method, seed=1, schedule=schedule)
    calibration = batches(x, y, seed=0, size=BATCH)[:4]
    as_trained = accuracy(model, x_test, y_test)
    before = accuracy(method.model_to_prune(calibration), x_test, y_test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = method.prune(data=calibration)
    right_after = accuracy(small, x_test, y_test)
    finetune = method.finetune_method(small)
    train(small, x, y, finetune_steps, finetune, lr=0.01, seed=2)
    return {
        "method": name,
        "steps": steps,
        "strength_mode": getattr(method, "strength_mode", "-"),
        "as_trained": as_trained,
        "before": before,
        "right_after": right_after,
    } | _outcome(method, small, base, data, caught, start)


def _outcome(method, small, base, data, caught, start: float) -> dict:
    """The fields every row ends with: the fine-tuned accuracy, the removal report's silence,
    the MACs kept, the warnings and the wall time."""
    x, _, x_test, y_test = data
    report = method.removal_report()
    return {
        "finetuned": accuracy(small, x_test, y_test),
        "silent": report.get("silent_inputs", 0),
        "removed": report.get("removed_inputs", 0),
        "macs_kept": rp.count(small, x[:1]).macs / rp.count(base, x[:1]).macs,
        "warnings": [str(w.message)[:160] for w in caught],
        "seconds": time.perf_counter() - start,
    }


def cut_early(base, steps: int, data, finetune_steps: int, schedule: str = "constant") -> dict:
    """The budget without a penalty: prune at :data:`CUT_AT` of it, train the rest (on the
    same lr schedule, continued)."""
    x, y, x_test, y_test = data
    model = copy.deepcopy(base)
    torch.manual_seed(0)
    method = rp.methods.get("oneshot", model, x[:1], target_macs=0.5)
    start = time.perf_counter()
    first = round(CUT_AT * steps)
    train(model, x, y, first, method, seed=1, schedule=schedule, span=(0, steps))
    as_trained = accuracy(model, x_test, y_test)
    calibration = batches(x, y, seed=0, size=BATCH)[:4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = method.prune(data=calibration)
    finetune = method.finetune_method(small)
    train(  # the rest of the budget, the schedule continued
        small, x, y, steps - first, finetune, seed=1 + first, schedule=schedule, span=(first, steps)
    )
    end_of_budget = accuracy(small, x_test, y_test)
    train(small, x, y, finetune_steps, finetune, lr=0.01, seed=2)
    return {
        "method": "cut_early",
        "steps": steps,
        "strength_mode": "explicit",
        "as_trained": as_trained,
        "before": end_of_budget,
        "right_after": end_of_budget,
    } | _outcome(method, small, base, data, caught, start)


def trajectory(args) -> None:
    """One method's run of ``study``, its test accuracy printed every ``--eval-every`` steps
    (how much one evaluation at a constant lr moves); nothing is written."""
    data = tensors(args.train_images)
    x, y, x_test, y_test = data
    base = baseline(args.model, x, y, args.baseline_steps)
    steps = args.steps[0]
    model = copy.deepcopy(base)
    torch.manual_seed(0)
    method = rp.methods.get(args.trajectory, model, x[:1], target_macs=0.5, total_steps=steps)
    groups = method.optimizer_groups()
    optimizer = build_optimizer(model, lr=0.05, momentum=0.9, weight_decay=1e-4, groups=groups)
    order: list = []
    while len(order) < steps:  # the batches train() draws for seed=1
        order += batches(x, y, seed=1 + len(order), size=BATCH)
    for start in range(0, steps, args.eval_every):
        chunk = order[start : min(start + args.eval_every, steps)]
        train_one_epoch(
            model, chunk, optimizer, F.cross_entropy, method, device="cpu", progress=False
        )
        phase = getattr(method.regularizer, "phase", "")
        line = f"step {start + len(chunk)}: {accuracy(model, x_test, y_test):.4f}"
        budget = getattr(method, "budget", None)
        if budget is not None and budget.last_ratio is not None:  # the controller's view
            line += f", strength {budget.strength:.3g}, removal set at {budget.last_ratio:.3f}"
        if args.recalibrate:
            twin = copy.deepcopy(model)
            recalibrate_batch_norm(twin, batches(x, y, seed=7, size=BATCH)[:16])
            line += f", BN statistics re-estimated {accuracy(twin, x_test, y_test):.4f}"
        print(f"{line} {phase}", flush=True)


def study(args) -> None:
    data = tensors(args.train_images)
    x, y, x_test, y_test = data
    base = baseline(args.model, x, y, args.baseline_steps)
    base_acc = accuracy(base, x_test, y_test)
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["model"], row["method"], row["steps"], _schedule(row)))
    for steps in args.steps:
        for name in args.methods:
            if (args.model, name, steps, args.schedule) in done:
                continue
            row = run_one(base, name, steps, data, args.finetune_steps, args.schedule)
            row |= {"model": args.model, "baseline": base_acc, "seed": 0}
            row |= {"schedule": args.schedule}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"{args.model} {name} {steps}: {row['before']:.3f} -> {row['right_after']:.3f} "
                f"-> {row['finetuned']:.3f} (baseline {base_acc:.3f}), silent "
                f"{row['silent']}/{row['removed']}, {row['seconds']:.0f} s",
                flush=True,
            )


def _schedule(row: dict) -> str:
    """The sparsify phase's lr schedule (rows from before the option: constant)."""
    return row.get("schedule", "constant")


def report(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    header = [
        "model",
        "method",
        "steps",
        "lr",
        "mode",
        "baseline",
        "as trained",
        "before prune (vs baseline)",
        "vs no penalty",
        "vs cut early",
        "right after prune (vs before)",
        "after fine-tune",
        "silent / removed inputs",
        "MACs kept",
    ]
    order = {m: i for i, m in enumerate(METHODS)}

    # the same training without a penalty: one evaluation at a constant lr moves by points, so
    # this is what the penalty itself cost before pruning
    def key(r: dict) -> tuple:
        return r["model"], _schedule(r), r["steps"]

    unpenalized = {key(r): r["before"] for r in rows if r["method"] == "oneshot"}
    # the same budget spent without a penalty, pruned at CUT_AT: the network a penalty's
    # silenced one competes with
    cut = {key(r): r["before"] for r in rows if r["method"] == "cut_early"}
    table = []
    for r in sorted(rows, key=lambda r: (*key(r), order.get(r["method"], 99))):
        reference = unpenalized.get(key(r))
        against = "-" if reference is None else f"{100 * (r['before'] - reference):+.1f}"
        early = cut.get(key(r))
        against_cut = "-" if early is None else f"{100 * (r['before'] - early):+.1f}"
        table.append(
            [
                r["model"],
                r["method"],
                str(r["steps"]),
                _schedule(r),
                r["strength_mode"],
                f"{100 * r['baseline']:.1f}",
                f"{100 * r['as_trained']:.1f}",
                f"{100 * r['before']:.1f} ({100 * (r['before'] - r['baseline']):+.1f})",
                against,
                against_cut,
                f"{100 * r['right_after']:.1f} ({100 * (r['right_after'] - r['before']):+.1f})",
                f"{100 * r['finetuned']:.1f}",
                f"{r['silent']}/{r['removed']}",
                f"{r['macs_kept']:.3f}",
            ]
        )
    text = f"Machine: {describe_machine()}\n\n{markdown_table(header, table)}\n"
    write_generated_block(
        Path(args.report),
        text,
        start="<!-- budget_study: start -->",
        end="<!-- budget_study: end -->",
        heading="## Results",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--steps", nargs="+", type=int, default=[50, 250, 1000])
    parser.add_argument("--baseline-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--out", default="docs/budget_study.jsonl")
    parser.add_argument("--report", help="write the table into this markdown file and stop")
    parser.add_argument(
        "--trajectory", metavar="METHOD", help="print one method's accuracy along its run"
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="the sparsify phase's lr schedule (cosine: the pipeline's default)",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --trajectory: also the accuracy of a copy whose BatchNorm statistics are "
        "re-estimated on 16 training batches (not for L0: its gates live in the model)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # one run per core: two models side by side on 2 cores
    if args.report:
        report(args)
    elif args.trajectory:
        trajectory(args)
    else:
        study(args)


if __name__ == "__main__":
    main()
