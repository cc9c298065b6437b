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
from torch import nn

from regprune.methods import PruningMethod
from regprune.metrics import count

PEERS = ("magnitude", "bn_scale", "group_norm", "growing_reg")
BISECTION_STEPS = 14
MAX_RATIO = 0.95


def _importance(name: str):
    import torch_pruning as tp  # here: budget_kwargs must import without the [bench] extra

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
    import torch_pruning as tp

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


BUDGET_UPDATES = 50
"""GrowingRegPruner under ``budget_kwargs``: ``update_reg()`` this many times in all."""


def budget_kwargs(name: str, total_steps: int, lr: float, momentum: float) -> dict[str, Any]:
    """A peer's strengths sized by the sparsify iterations, as our methods size themselves.

    Rule: each peer's penalty has travelled as far by the last iteration as the hand-sized
    rows of ``configs/cpu.yaml`` / ``gpu.yaml`` did, whatever the number of iterations; a step
    moves a parameter by about ``lr / (1 - momentum)`` times its gradient (``step``):

    - ``bn_scale`` (``reg * sign(gamma)``): a BN scale can lose 0.35 in all (trained scales
      are ~0.2-1): ``reg = 0.35 / (step * T)``;
    - ``group_norm`` (``reg * 16^rank * w``, its alpha): the least important channels shrink
      by ``exp(-step * 16 * reg * T) = exp(-3)``: ``reg = 3 / (16 * step * T)``;
    - ``growing_reg``: ``update_reg()`` every ``T // 50`` iterations; the least important
      channels' reg grows linearly to ``R`` with the same ``exp(-3)`` in all (mean ``R / 2``):
      ``R = 6 / (step * T)``, ``delta_reg = R / 50``, starting ``reg`` 1e-4 as shipped;
    - ``magnitude``: one-shot, nothing.

    At cpu.yaml's 94 steps (``step`` 0.5) this gives 7.4e-3 / 4.0e-3 / delta 2.6e-3 every
    iteration (hand-sized: 7.5e-3 / 4e-3 / 1e-3 to 1e-2 every 2).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    step = lr / (1.0 - momentum)
    if name == "bn_scale":
        return {"reg": 0.35 / (step * total_steps)}
    if name == "group_norm":
        return {"reg": 3.0 / (16.0 * step * total_steps)}
    if name == "growing_reg":
        final = 6.0 / (step * total_steps)
        return {
            "reg": 1e-4,
            "delta_reg": final / BUDGET_UPDATES,
            "update_every": max(1, total_steps // BUDGET_UPDATES),
        }
    return {}


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
