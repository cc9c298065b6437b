"""Torch-Pruning 1.6.1 pruners behind regprune's method life cycle, pruned to a MACs target.

Each peer is run the way its own docs and sources say: ``pruner.regularize(model)`` after
``loss.backward()`` (BNScalePruner, GroupNormPruner, GrowingRegPruner), plus
``pruner.update_reg()`` every ``update_every`` iterations for GrowingRegPruner. To compare at
the *same MACs* as ours, the pruner's global ``pruning_ratio`` (a channel fraction) is found by
bisection: each trial prunes a deep copy with a fresh pruner of the same class and measures the
result with ``regprune.count``; the smallest ratio whose MACs fall at or under the target wins.
The peer's own pruning code makes the final model.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from regprune.methods import PruningMethod
from regprune.metrics import count

PEERS = ("magnitude", "bn_scale", "group_norm", "growing_reg")
BISECTION_STEPS = 14
MAX_RATIO = 0.95


def _importance(name: str):
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name in ("group_norm", "growing_reg"):
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.MagnitudeImportance(p=2)


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last linear layer (its outputs are the classes): never pruned, as in TP's examples."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def make_pruner(
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    max_ratio: float | None = None,
    **kwargs: Any,
):
    """A TP pruner of kind ``name`` with global pruning at channel ratio ``ratio``.

    ``max_ratio`` is TP's ``max_pruning_ratio`` (the most of any one layer it may remove), the
    counterpart of our ``max_ratio``; ``None`` leaves TP's default (1.0).
    """
    if name not in PEERS:
        raise ValueError(f"unknown Torch-Pruning peer {name!r}; choose one of {PEERS}")
    common = dict(
        importance=_importance(name),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=_classifier(model),
    )
    if max_ratio is not None:
        common["max_pruning_ratio"] = max_ratio
    if name == "magnitude":
        return tp.pruner.MetaPruner(model, example, **common)
    if name == "bn_scale":
        return tp.pruner.BNScalePruner(model, example, reg=kwargs.get("reg", 1e-5), **common)
    if name == "group_norm":
        return tp.pruner.GroupNormPruner(model, example, reg=kwargs.get("reg", 1e-4), **common)
    return tp.pruner.GrowingRegPruner(
        model,
        example,
        reg=kwargs.get("reg", 1e-5),
        delta_reg=kwargs.get("delta_reg", 1e-5),
        **common,
    )


class TorchPruningRegularizer(PruningMethod):
    """Adapter: a TP pruner's regularization inside ``train_one_epoch``'s life cycle.

    Args:
        name: one of :data:`PEERS` (``magnitude`` adds nothing: it is one-shot).
        update_every: GrowingRegPruner only: iterations between ``update_reg()`` calls.
        **kwargs: the pruner's own ``reg`` / ``delta_reg``.
    """

    def __init__(
        self, model: nn.Module, example: torch.Tensor, name: str, update_every: int = 1, **kwargs
    ) -> None:
        super().__init__(model)
        was_training = model.training
        self.name = f"tp_{name}"
        self.pruner = make_pruner(name, model, example, 0.5, **kwargs)
        model.train(was_training)  # TP's constructor leaves the model in eval()
        self.peer = name
        self.update_every = update_every

    def after_backward(self) -> None:
        if self.peer != "magnitude":
            self.pruner.regularize(self.model)

    def step(self) -> None:
        super().step()
        if self.peer == "growing_reg" and self.iteration % self.update_every == 0:
            self.pruner.update_reg()


def prune_to_macs(
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    target_macs: float,
    max_ratio: float | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Prune a copy of ``model`` with TP to at most ``target_macs`` of its MACs.

    Returns the pruned copy and ``pruning_ratio`` (the channel ratio found), ``search_s`` (the
    bisection, ours) and ``prune_s`` (TP building its pruner and pruning once, the peer's cost).
    """
    total = count(model, example).macs
    budget = target_macs * total

    def trial(ratio: float) -> tuple[nn.Module, float, float]:
        candidate = copy.deepcopy(model)
        start = time.perf_counter()
        make_pruner(name, candidate, example, ratio, max_ratio).step()
        elapsed = time.perf_counter() - start
        return candidate, count(candidate, example).macs, elapsed

    search_start = time.perf_counter()
    low, high = 0.0, MAX_RATIO
    best: tuple[nn.Module, float, float, float] | None = None
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        result = trial(mid)
        if result[1] <= budget:
            best, high = (*result, mid), mid
        else:
            low = mid
    if best is None:
        raise RuntimeError(f"tp_{name}: no pruning_ratio <= {MAX_RATIO} meets {target_macs} MACs")
    search_s = time.perf_counter() - search_start
    pruned, _, prune_s, ratio = best
    pruned.train()
    return pruned, {"pruning_ratio": ratio, "search_s": search_s, "prune_s": prune_s}
