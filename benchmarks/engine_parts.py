"""Time the engine's parts that session 15 sped up, each against its alternative in the same run.

    python -m benchmarks.engine_parts

One torch thread, minimum over interleaved repeats (the machine is shared). Prints, in ms:

- a batch-1 forward of torchvision's MobileNetV2: plain, under torch's ``FlopCounterMode``,
  under regprune's ``OpFlops`` and under ``MacsCounter`` (what ``rp.prune``'s first forward runs);
- slicing a 512x512x3x3 conv weight to about half its outputs and inputs: boolean indexing
  against ``index_select`` (``layers.rules._kept``);
- the distinct atoms of a 10 M-entry label shaped as MViT-v2-S's first attention scores (one
  atom everywhere but the class token's row and column): selecting the valid entries and
  marking them (the rule before) against ``graph.atoms.atoms_in`` (one ``bincount``);
- ``trace_graph`` and ``surgery.apply.cut_model`` (ratio 0.5) on MobileNetV2 and ResNet-50,
  for reference (no alternative in the code any more: the trace and cut phases of
  ``benchmarks.prune_time`` compare them across commits in docs/engine_speed.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import regprune as rp
from regprune.graph import trace_graph
from regprune.graph.atoms import atoms_in
from regprune.layers.rules import _kept
from regprune.metrics import MacsCounter
from regprune.metrics.count import OpFlops
from regprune.surgery.apply import cut_model


def fastest_ms(calls: dict[str, Callable[[], object]], repeats: int = 7) -> dict[str, float]:
    """Each call's fastest time over ``repeats`` interleaved rounds, in ms (one warm-up each)."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], (time.perf_counter() - start) * 1000)
    return best


def show(title: str, times: dict[str, float]) -> None:
    print(title + ": " + ", ".join(f"{name} {ms:.1f}" for name, ms in times.items()))


def marked_atoms(label: torch.Tensor) -> torch.Tensor:
    """The rule before ``atoms_in``'s bincount: select the valid entries, mark them."""
    atoms = label.reshape(-1)
    atoms = atoms[atoms >= 0]
    seen = torch.zeros(int(atoms.max()) + 1, dtype=torch.bool)
    seen[atoms] = True
    return seen.nonzero().reshape(-1)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    model = torchvision.models.mobilenet_v2(weights=None).eval()

    def forward(context: Callable[[], object] | None = None) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                if context is None:
                    return model(x)
                with context():  # type: ignore[attr-defined]
                    return model(x)

        return run

    show(
        "MobileNetV2 forward (ms)",
        fastest_ms(
            {
                "plain": forward(),
                "FlopCounterMode": forward(lambda: FlopCounterMode(display=False)),
                "OpFlops": forward(OpFlops),
                "MacsCounter": forward(lambda: MacsCounter(model)),
            }
        ),
    )

    weight = torch.randn(512, 512, 3, 3)
    keep_out, keep_in = torch.rand(512) > 0.5, torch.rand(512) > 0.5
    show(
        "slice a 512x512x3x3 weight (ms)",
        fastest_ms(
            {
                "boolean indexing": lambda: weight[keep_out][:, keep_in].clone(),
                "index_select": lambda: _kept(_kept(weight, keep_out), keep_in, 1),
            },
            repeats=20,
        ),
    )

    label = torch.full((1, 1, 25089, 393), 7)
    label[:, :, 0] = -1
    label[:, :, :, 0] = -1
    assert torch.equal(marked_atoms(label), atoms_in(label))
    show(
        "distinct atoms of a 10 M-entry label (ms)",
        fastest_ms(
            {"select and mark": lambda: marked_atoms(label), "bincount": lambda: atoms_in(label)}
        ),
    )

    for name in ("mobilenet_v2", "resnet50"):
        net = getattr(torchvision.models, name)(weights=None).eval()
        graph, plan = rp.make_plan(net, x, ratio=0.5)
        show(
            f"{name} (ms)",
            fastest_ms(
                {
                    "trace_graph": lambda net=net: trace_graph(net, x),
                    "cut_model": lambda net=net, graph=graph, plan=plan: cut_model(
                        net, graph, plan
                    ),
                },
                repeats=5,
            ),
        )


if __name__ == "__main__":
    main()
