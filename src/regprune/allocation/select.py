"""Turn per-channel scores and a target (ratio or MACs budget) into a Plan.

Two scopes, as in the literature: ``local`` removes the same fraction from every group (Li et
al.'s per-layer ratios); ``global`` ranks all channels together (network slimming's global
threshold), after dividing each group's scores by their mean unless the criterion says its
scores are comparable across layers (BN scales are).

A MACs target is met by a binary search over how many channels to drop along one fixed order
(uniform interleaving for local scope, global rank for global scope): MACs only shrink as more
channels go, so the search finds the fewest drops that meet the target, which lands within one
channel's MACs of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from regprune.allocation.macs_model import MacsModel
from regprune.allocation.plan import Plan
from regprune.graph.dependency import DependencyGraph

SCOPES = ("local", "global")


class BudgetError(ValueError):
    """A target that no plan can meet."""


@dataclass
class _Order:
    """All prunable channels in drop order, with their group, rank in group and component."""

    group: torch.Tensor
    rank: torch.Tensor
    component: torch.Tensor


def _ranks(scores: dict[int, torch.Tensor], graph: DependencyGraph) -> dict[int, torch.Tensor]:
    """Per group: channel indices from least to most important."""
    ranked = {}
    for group in graph.groups:
        score = scores[group.id].detach().double().cpu()
        if score.numel() != group.size:
            raise ValueError(
                f"importance gave {score.numel()} scores for group {group.id} of size {group.size}"
            )
        ranked[group.id] = torch.argsort(score, stable=True)
    return ranked


def _min_keep(size: int, round_to: int) -> int:
    return min(size, round_to)


def _round_kept(kept: torch.Tensor, sizes: torch.Tensor, round_to: int) -> torch.Tensor:
    """Round kept widths up to a multiple of ``round_to`` (never above the group size)."""
    if round_to <= 1:
        return kept
    return torch.minimum(torch.ceil(kept / round_to) * round_to, sizes)


def _plan_from_counts(
    graph: DependencyGraph, ranked: dict[int, torch.Tensor], drop_counts: torch.Tensor
) -> Plan:
    drop = {}
    for group in graph.groups:
        count = int(drop_counts[group.id])
        if count:
            drop[group.id] = sorted(ranked[group.id][:count].tolist())
    return Plan(drop, {g.id: g.size for g in graph.groups}, graph.model_type)


def _build_order(
    graph: DependencyGraph,
    scores: dict[int, torch.Tensor],
    ranked: dict[int, torch.Tensor],
    scope: str,
    comparable: bool,
    round_to: int,
) -> _Order:
    groups, ranks, keys, tiebreak, components = [], [], [], [], []
    for group in graph.groups:
        droppable = group.size - _min_keep(group.size, round_to)
        if droppable <= 0:
            continue
        order = ranked[group.id][:droppable]
        score = scores[group.id].detach().double().cpu()
        if not comparable:
            score = score / (score.abs().mean() + 1e-12)
        rank = torch.arange(droppable, dtype=torch.long)
        groups.append(torch.full((droppable,), group.id, dtype=torch.long))
        ranks.append(rank)
        keys.append((rank + 1).double() / group.size if scope == "local" else score[order])
        tiebreak.append(score[order])
        components.append(graph.group_components(group.id)[order])
    if not groups:
        empty = torch.zeros(0, dtype=torch.long)
        return _Order(empty, empty, empty)
    key, tie = torch.cat(keys), torch.cat(tiebreak)
    order = torch.argsort(tie, stable=True)
    order = order[torch.argsort(key[order], stable=True)]
    return _Order(torch.cat(groups)[order], torch.cat(ranks)[order], torch.cat(components)[order])


def _drop_counts(graph: DependencyGraph, order: _Order, k: int, round_to: int) -> torch.Tensor:
    sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
    counts = torch.zeros(len(graph.groups), dtype=torch.float64)
    counts.index_add_(0, order.group[:k], torch.ones(k, dtype=torch.float64))
    kept = _round_kept(sizes - counts, sizes, round_to)
    return (sizes - kept).long()


def _keep_mask(
    graph: DependencyGraph, ranked: dict[int, torch.Tensor], drop_counts: torch.Tensor
) -> torch.Tensor:
    keep = torch.ones(graph.group_of_component.numel(), dtype=torch.bool)
    for group in graph.groups:
        count = int(drop_counts[group.id])
        if count:
            keep[graph.group_components(group.id)[ranked[group.id][:count]]] = False
    return keep


def allocate(
    graph: DependencyGraph,
    scores: dict[int, torch.Tensor],
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    scope: str = "local",
    round_to: int = 1,
    comparable: bool = False,
    macs_model: MacsModel | None = None,
) -> Plan:
    """Choose the channels to drop.

    Args:
        graph: the traced model's graph.
        scores: per group, one importance per channel (higher = more important).
        ratio: fraction of channels to remove (per group for local scope, overall for global).
        target_macs: fraction of the model's MACs to keep (0 < target_macs <= 1).
        scope: ``"local"`` or ``"global"``.
        round_to: kept widths are multiples of this (kernels run faster on aligned widths).
        comparable: scores are comparable across groups as they are (no per-group scaling).
        macs_model: required with ``target_macs``.

    Raises:
        ValueError: bad arguments. BudgetError: a target that cannot be met.
    """
    validate_target(ratio, target_macs, scope, round_to)
    ranked = _ranks(scores, graph)
    sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
    order = _build_order(graph, scores, ranked, scope, comparable, round_to)
    if ratio is not None:
        if scope == "local":
            floor_keep = torch.tensor([_min_keep(g.size, round_to) for g in graph.groups])
            dropped = torch.minimum(torch.floor(sizes * ratio), sizes - floor_keep)
            kept = _round_kept(sizes - dropped, sizes, round_to)
            counts = (sizes - kept).long()
        else:
            k = min(int(math.floor(ratio * float(sizes.sum()))), order.group.numel())
            counts = _drop_counts(graph, order, k, round_to)
        return _plan_from_counts(graph, ranked, counts)

    if macs_model is None:
        raise ValueError("a MACs target needs a MacsModel of the graph")
    target = target_macs * macs_model.total

    def macs_after(k: int) -> float:
        counts = _drop_counts(graph, order, k, round_to)
        return macs_model.macs(_keep_mask(graph, ranked, counts))

    n = order.group.numel()
    floor_macs = macs_after(n)
    if floor_macs > target:
        raise BudgetError(
            f"target_macs={target_macs} cannot be met: removing every removable channel leaves "
            f"{floor_macs / macs_model.total:.3f} of the MACs (the rest is in layers kept whole; "
            "see graph.unprunable). Ask for a larger target_macs or ignore fewer layers."
        )
    low, high = 0, n
    while low < high:
        mid = (low + high) // 2
        if macs_after(mid) <= target:
            high = mid
        else:
            low = mid + 1
    counts = _drop_counts(graph, order, low, round_to)
    if low > 0 and round_to == 1:
        counts = _closest_below(graph, ranked, macs_model, order, low, target, counts)
    return _plan_from_counts(graph, ranked, counts)


def _closest_below(
    graph: DependencyGraph,
    ranked: dict[int, torch.Tensor],
    macs_model: MacsModel,
    order: _Order,
    k: int,
    target: float,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Land closer to the target than the drop order alone can.

    The k-th channel of the order may carry a lot of MACs (one channel of a residual stream
    touches many layers) and overshoot the target. Starting from the first k-1 drops, which are
    still above the target, try one more channel from each group instead and keep the choice
    that lands closest below the target. Importance order is kept within every group.
    """
    base = _drop_counts(graph, order, k - 1, round_to=1)
    best, best_macs = counts, macs_model.macs(_keep_mask(graph, ranked, counts))
    droppable = torch.zeros(len(graph.groups), dtype=torch.long)
    droppable.index_add_(0, order.group, torch.ones_like(order.group))
    for gid in range(len(graph.groups)):
        if int(base[gid]) >= int(droppable[gid]):
            continue
        candidate = base.clone()
        candidate[gid] += 1
        macs = macs_model.macs(_keep_mask(graph, ranked, candidate))
        if best_macs < macs <= target:
            best, best_macs = candidate, macs
    return best


def validate_target(
    ratio: float | None, target_macs: float | None, scope: str, round_to: int
) -> None:
    """Reject bad targets at the door, saying what is allowed."""
    if (ratio is None) == (target_macs is None):
        raise ValueError("give exactly one of ratio= (fraction of channels to remove) or "
                         "target_macs= (fraction of MACs to keep)")
    if ratio is not None and not (0.0 <= float(ratio) < 1.0):
        raise ValueError(f"ratio must be in [0, 1) (fraction of channels removed), got {ratio}")
    if target_macs is not None and not (0.0 < float(target_macs) <= 1.0):
        raise ValueError(
            f"target_macs must be in (0, 1] (fraction of the MACs kept), got {target_macs}"
        )
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
