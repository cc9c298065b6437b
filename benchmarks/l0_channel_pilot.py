"""How many channel gates does L0 close in the benchmark's sparsify phase, per lam? A pilot.

    python -m benchmarks.l0_channel_pilot --lams 0.02 0.05 0.1 0.5

From the method benchmark's cached baseline (``--config``, seed ``--seed``), run ``l0_channel``'s
sparsify phase exactly as the config's ``l0_channel`` run does (its kwargs, its Adam phase,
its epochs) at each ``lam``, and print the share of closed gates, the eval-mode test accuracy
of the gated model, and how many channels the MACs target would keep with a closed gate (the
case ``l0_channel`` warns about). Under Adam ``lam`` sets the direction a gate moves, not its
speed, so it is chosen by this share (about what the target removes), not by accuracy: that is
how ``cpu.yaml``'s lam was set (docs/methods.md).
"""

from __future__ import annotations

import argparse
import copy
import warnings

from benchmarks.methods.measure import test_accuracy
from benchmarks.methods.phases import study_start, train_phase

import regprune
from regprune.train import seed_everything


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/methods/configs/cpu.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.5])
    args = parser.parse_args(argv)
    config, data, baseline = study_start(args.config, args.seed)
    spec = next(r for r in config.runs if r.label == "l0_channel")
    print(f"baseline test accuracy {100 * test_accuracy(baseline, data, config):.2f} %")
    for lam in args.lams:
        seed_everything(args.seed)
        model = copy.deepcopy(baseline)
        method = regprune.methods.get(
            "l0_channel",
            model,
            data.example_input(),
            **(spec.kwargs | {"lam": lam}),
            num_samples=len(data.train.dataset),
            target_macs=config.target_macs,
            max_ratio=config.max_ratio,
        )
        train_phase(model, data, spec.sparsify_phase or config.sparsify, config, "sparsify", method)
        closed = method.sparsity_stats()["gates/closed"]
        accuracy = test_accuracy(model, data, config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.prune()
        warned = "; ".join(str(w.message).split(" (")[0] for w in caught) or "no warning"
        print(
            f"lam {lam:g}: {100 * closed:.1f} % of the gates closed, gated model "
            f"{100 * accuracy:.1f} % (eval mode), prune at {config.target_macs}: {warned}",
            flush=True,
        )


if __name__ == "__main__":
    main()
