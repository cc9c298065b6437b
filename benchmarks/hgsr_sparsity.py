"""Does HGSR drive whole input-channel groups to zero? Traced over training on real data.

    python -m benchmarks.hgsr_sparsity --lams 1e-3 3e-3 --epochs 10 --out docs/hgsr_sparsity.md

From the method benchmark's cached ResNet-20 / Fashion-MNIST baseline (``--config``, seed
``--seed``), train with HGSR's loss (``CE + 0.5 lam HGSR + 0.5 lam L1``, squared variant) at a
constant lr for ``--epochs``, and after every epoch record the norms of every input-channel
group ``||W[:, i]||`` of every conv (HGSR's outer groups): the share that *vanished* (below
``1e-3``, the method's own ``input_norm/vanished`` statistic, against a median of ~0.5-1 in
the baseline), the median, and test accuracy. Then prune at the benchmark's MACs target with
HGSR's loss-increase selection and report accuracy before / right after pruning (as the model
comes out and with BN re-estimated). Writes the Markdown report, the raw numbers as JSON and a
histogram of log10 group norms, baseline vs end of training.

Why subgradient training gets "near zero", not exact zeros: an SGD step on a norm oscillates
around 0 with an amplitude of about lr x lam x (the group's gradient scale); the threshold is
three orders of magnitude under the baseline's median, where a group is zero for every purpose
of pruning (its removal changes nothing: see the accuracy right after pruning).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from benchmarks.methods.config import load_config
from benchmarks.methods.measure import test_accuracy
from benchmarks.methods.phases import study_start, train_phase
from benchmarks.methods.runners import accuracy_with_recalibrated_bn

import regprune
from regprune.io import atomic_write_text
from regprune.pipeline.sections import TrainSection
from regprune.report import describe_machine, machine_info, markdown_table
from regprune.train import seed_everything

VANISHED = 1e-3


def group_norms(method) -> torch.Tensor:
    with torch.no_grad():
        norms = method.regularizer.input_channel_norms(method.model).values()
        return torch.cat([n.reshape(-1) for n in norms]).double()


def sparsify_phase(args: argparse.Namespace, config) -> TrainSection:
    """The benchmark's sparsify phase at this study's length and constant lr."""
    return TrainSection(
        epochs=args.epochs,
        lr=args.lr,
        schedule="constant",
        weight_decay=config.sparsify.weight_decay,
    )


def trace_one(lam: float, args: argparse.Namespace, config, data, baseline) -> dict:
    # Seeded per lam: augmentation draws from the global RNG, so without it a lam's result would
    # depend on which lams ran before it in the same process.
    seed_everything(args.seed)
    model = copy.deepcopy(baseline)
    method = regprune.methods.get(
        "hgsr",
        model,
        data.example_input(),
        target_macs=config.target_macs,
        max_ratio=config.max_ratio,
        lam=lam,
        variant=args.variant,
    )
    start_norms = group_norms(method)
    epochs: list[dict] = []

    def record(trained: dict) -> None:
        norms = group_norms(method)
        epochs.append(
            {
                "epoch": trained["epoch"],
                "vanished": float((norms < VANISHED).double().mean()),
                "median_norm": float(norms.median()),
                "test_acc": test_accuracy(model, data, config),
            }
        )
        model.train()
        print(f"lam {lam:g} epoch {trained['epoch']}: {epochs[-1]}", flush=True)

    phase = sparsify_phase(args, config)
    begin = time.perf_counter()
    train_phase(model, data, phase, config, "sparsify", method, after_epoch=record)
    train_s = time.perf_counter() - begin
    end_norms = group_norms(method)
    pruned = method.prune(data=data.calibration)
    return {
        "lam": lam,
        "groups": int(end_norms.numel()),
        "epochs": epochs,
        "train_s": train_s,
        "acc_before_prune": epochs[-1]["test_acc"],
        "acc_after_prune": test_accuracy(pruned, data, config),
        "acc_after_prune_bn": accuracy_with_recalibrated_bn(pruned, data, config),
        "macs_kept": regprune.count(pruned, data.example_input()).macs
        / regprune.count(model, data.example_input()).macs,
        "log10_norms_start": torch.log10(start_norms.clamp_min(1e-8)).tolist(),
        "log10_norms_end": torch.log10(end_norms.clamp_min(1e-8)).tolist(),
    }


def plot(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        bins = torch.linspace(-8, 1, 46).tolist()
        ax.hist(result["log10_norms_start"], bins=bins, alpha=0.5, label="baseline")
        ax.hist(result["log10_norms_end"], bins=bins, alpha=0.7, label="after HGSR training")
        ax.axvline(torch.log10(torch.tensor(VANISHED)).item(), color="k", ls="--", lw=1)
        ax.set_xlabel("log10 of an input-channel group's L2 norm (all convs)")
        ax.set_ylabel("groups")
        ax.set_title(
            f"lam {result['lam']:g}: {100 * result['epochs'][-1]['vanished']:.1f}% under 1e-3",
            fontsize=9,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(
    results: list[dict], args, config, baseline_acc: float, command: str, saved: dict
) -> str:
    phase = sparsify_phase(args, config)
    # The machine the runs were measured on, stored with them (older JSON files lack it).
    machine = describe_machine(saved["machine"]) if "machine" in saved else "not recorded"
    lines = [
        "# Does HGSR drive input-channel groups to zero?",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {saved['date']}  ",
        f"Setup: {config.model.name} / {config.data.name}, the method benchmark's cached "
        f"baseline (`{args.config}`, seed {args.seed}, {config.data.subset} training images, "
        f"test accuracy {100 * baseline_acc:.2f}% on {config.test_subset} test images); HGSR "
        f"({args.variant} variant, with the L1 term) for {args.epochs} epochs at a constant lr "
        f"{args.lr} (SGD, momentum {phase.momentum}, weight decay {phase.weight_decay}); then "
        f"pruned at {config.target_macs} of the MACs by the fast loss-increase selection on "
        f"{config.calibration_batches * config.data.batch_size} random training images. "
        "One seed.",
        "",
        "*vanished*: share of all input-channel groups `||W[:, i]||` of every conv under 1e-3.",
        "",
    ]
    rows = []
    for r in results:
        start = 10 ** torch.tensor(r["log10_norms_start"])
        vanished = 100 * float((start < VANISHED).double().mean())
        rows.append(
            [
                f"{r['lam']:g}",
                "0",
                f"{vanished:.1f}",
                f"{float(start.median()):.3f}",
                f"{100 * baseline_acc:.2f}",
            ]
        )
        rows += [
            [
                f"{r['lam']:g}",
                str(e["epoch"]),
                f"{100 * e['vanished']:.1f}",
                f"{e['median_norm']:.3f}",
                f"{100 * e['test_acc']:.2f}",
            ]
            for e in r["epochs"]
        ]
    header = ["lam", "epoch", "vanished (%)", "median group norm", "test accuracy (%)"]
    lines += [markdown_table(header, rows), "", "Pruned at the MACs target:", ""]
    rows = [
        [
            f"{r['lam']:g}",
            str(r["groups"]),
            f"{r['macs_kept']:.3f}",
            f"{100 * r['acc_before_prune']:.2f}",
            f"{100 * r['acc_after_prune']:.2f}",
            f"{100 * r['acc_after_prune_bn']:.2f}",
            f"{r['train_s']:.0f}",
        ]
        for r in results
    ]
    header = [
        "lam",
        "groups",
        "MACs kept",
        "before prune (%)",
        "right after prune (%)",
        "with BN re-estimated (%)",
        "training (s)",
    ]
    lines += [
        markdown_table(header, rows),
        "",
        "Spread of the group norms (all convs): the 5th, 50th and 95th percentile, and how many "
        "groups sit under 1/100 of the median of their own distribution.",
        "",
    ]
    rows = []
    for r in results:
        for when in ("start", "end"):
            norms = 10 ** torch.tensor(r[f"log10_norms_{when}"], dtype=torch.float64)
            p5, p50, p95 = (float(torch.quantile(norms, q)) for q in (0.05, 0.5, 0.95))
            tiny = 100 * float((norms < p50 / 100).double().mean())
            rows.append(
                [
                    f"{r['lam']:g}",
                    "baseline" if when == "start" else "after training",
                    f"{p5:.3g}",
                    f"{p50:.3g}",
                    f"{p95:.3g}",
                    f"{p95 / p5:.1f}",
                    f"{tiny:.1f}",
                ]
            )
    header = ["lam", "when", "p5", "median", "p95", "p95 / p5", "under median / 100 (%)"]
    lines += [
        markdown_table(header, rows, ["l", "l", "r", "r", "r", "r", "r"]),
        "",
        f"![log10 group norms]({Path(args.png).name})",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/methods/configs/cpu.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lams", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--variant", default="squared")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="docs/hgsr_sparsity.md")
    parser.add_argument("--png", type=Path, help="the histogram (default: --out as .png)")
    parser.add_argument(
        "--from-json",
        nargs="+",
        type=Path,
        help="render from saved runs instead of training (several files: their lams side by side)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    args.png = args.png or out.with_suffix(".png")
    command = "python -m benchmarks.hgsr_sparsity " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.from_json:
        saves = [json.loads(path.read_text()) for path in args.from_json]
        config = load_config(args.config)
        torch.set_num_threads(config.threads)
        baseline_acc = saves[0]["baseline_acc"]
        if any(saved["baseline_acc"] != baseline_acc for saved in saves):
            raise SystemExit("--from-json: the runs started from different baselines")
        results = [run for saved in saves for run in saved["runs"]]
        command = " ; ".join(saved["command"] for saved in saves) + f" ; {command}"
        saved = saves[0]
    else:
        config, data, baseline = study_start(args.config, args.seed)
        baseline_acc = test_accuracy(baseline, data, config)
        results = [trace_one(lam, args, config, data, baseline) for lam in args.lams]
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        saved = {
            "command": command,
            "date": date,
            "machine": machine_info(),
            "baseline_acc": baseline_acc,
            "runs": results,
        }
        atomic_write_text(out.with_suffix(".json"), json.dumps(saved) + "\n")
    plot(results, Path(args.png))
    atomic_write_text(out, markdown(results, args, config, baseline_acc, command, saved))
    print(out.read_text())


if __name__ == "__main__":
    main()
