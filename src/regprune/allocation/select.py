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

import itertools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from regprune.allocation.macs_model import MacsModel
from regprune.allocation.plan import Plan
from regprune.allocation.target import AUTO_MIN_GROUP, Target
from regprune.graph.dependency import DependencyGraph


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


def _min_keep(size: int, multiple: int, max_ratio: float = 1.0) -> int:
    """The fewest channels a group may keep: ``multiple`` (one aligned block) and, with
    ``max_ratio`` < 1, the share of the group that the cap protects."""
    capped = math.ceil(size * (1.0 - max_ratio) - 1e-9)
    return min(size, max(multiple, capped))


def _multiples(
    graph: DependencyGraph, target: Target, min_group: int | None = AUTO_MIN_GROUP
) -> torch.Tensor:
    """Per group, the multiple its kept width is rounded to (``Target.multiple_for``)."""
    widths = [target.multiple_for(g.size, min_group) for g in graph.groups]
    return torch.tensor(widths, dtype=torch.float64)


def _round_kept(kept: torch.Tensor, sizes: torch.Tensor, multiples: torch.Tensor) -> torch.Tensor:
    """Round kept widths up to their group's multiple (never above the group size)."""
    if bool((multiples <= 1).all()):
        return kept
    return torch.minimum(torch.ceil(kept / multiples) * multiples, sizes)


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
    multiples: torch.Tensor,
    max_ratio: float,
) -> _Order:
    groups, ranks, keys, tiebreak, components = [], [], [], [], []
    for group in graph.groups:
        droppable = group.size - _min_keep(group.size, int(multiples[group.id]), max_ratio)
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


def _drop_counts(
    graph: DependencyGraph, order: _Order, k: int, multiples: torch.Tensor | None = None
) -> torch.Tensor:
    """Channels each group loses when the first ``k`` of the order go, kept widths rounded up
    to ``multiples`` (None: no rounding)."""
    sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
    counts = torch.zeros(len(graph.groups), dtype=torch.float64)
    counts.index_add_(0, order.group[:k], torch.ones(k, dtype=torch.float64))
    if multiples is None:
        return counts.long()
    kept = _round_kept(sizes - counts, sizes, multiples)
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
    target: Target,
    *,
    comparable: bool = False,
    macs_model: MacsModel | None = None,
) -> Plan:
    """Choose the channels to drop.

    Args:
        graph: the traced model's graph.
        scores: per group, one importance per channel (higher = more important).
        target: the validated target (:class:`regprune.allocation.Target`). Its ``max_ratio``
            matters here: a global ranking of raw scores can otherwise empty a whole group,
            typically a residual stream whose last-BN scales are small in every block; that
            many channels rarely come back in fine-tuning (Torch-Pruning's
            ``max_pruning_ratio`` plays the same role). ``round_to``: kernels run faster on
            aligned widths.
        comparable: scores are comparable across groups as they are (no per-group scaling).
        macs_model: required with a MACs target.

    Raises:
        BudgetError: a target that cannot be met.
    """
    ratio, target_macs, scope = target.ratio, target.target_macs, target.scope
    max_ratio, round_to = target.max_ratio, target.round_to
    ranked = _ranks(scores, graph)
    if ratio is not None:
        multiples = _multiples(graph, target)
        sizes = torch.tensor([g.size for g in graph.groups], dtype=torch.float64)
        order = _build_order(graph, scores, ranked, scope, comparable, multiples, max_ratio)
        if scope == "local":
            floor_keep = torch.tensor(
                [_min_keep(g.size, int(multiples[g.id]), max_ratio) for g in graph.groups]
            )
            dropped = torch.minimum(torch.floor(sizes * ratio), sizes - floor_keep)
            kept = _round_kept(sizes - dropped, sizes, multiples)
            counts = (sizes - kept).long()
        else:
            k = min(math.floor(ratio * float(sizes.sum())), order.group.numel())
            counts = _drop_counts(graph, order, k, multiples)
        return _plan_from_counts(graph, ranked, counts)

    if macs_model is None:
        raise ValueError("a MACs target needs a MacsModel of the graph")
    goal = target_macs * macs_model.total
    for rung in target.rounding_rungs():
        multiples = _multiples(graph, target, rung)
        order = _build_order(graph, scores, ranked, scope, comparable, multiples, max_ratio)
        counts = _counts_for_macs(graph, ranked, macs_model, order, goal, multiples)
        achieved = None if counts is None else macs_model.macs(_keep_mask(graph, ranked, counts))
        if achieved is not None and goal - achieved <= BUDGET_TOLERANCE * goal:
            return _plan_from_counts(graph, ranked, counts)
    exact = bool((multiples <= 1).all())  # no group rounds: a miss is the model's granularity
    if counts is None:
        every = _drop_counts(graph, order, order.group.numel(), multiples)
        floor_macs = macs_model.macs(_keep_mask(graph, ranked, every))
        raise BudgetError(
            f"target_macs={target_macs} cannot be met: removing every removable channel leaves "
            f"{floor_macs / macs_model.total:.3f} of the MACs (the rest is in layers kept whole; "
            "see graph.unprunable). Ask for a larger target_macs or ignore fewer layers"
            + ("." if exact else f", or a smaller round_to (now {round_to!r}).")
        )
    message = (
        f"target_macs={target_macs} cannot be met within {BUDGET_TOLERANCE:.0%}: the closest "
        f"plan below it keeps {achieved / macs_model.total:.4f} of the MACs (channels are "
        "removed whole; small groups make coarse steps)"
    )
    if exact:
        raise BudgetError(message + "; ask for a target the model's granularity allows")
    warnings.warn(message + f" with round_to={round_to!r}", stacklevel=2)
    return _plan_from_counts(graph, ranked, counts)


def _counts_for_macs(
    graph: DependencyGraph,
    ranked: dict[int, torch.Tensor],
    macs_model: MacsModel,
    order: _Order,
    goal: float,
    multiples: torch.Tensor,
) -> torch.Tensor | None:
    """Drop counts per group that land closest below ``goal`` MACs (None: even dropping every
    channel of the order stays above it): the fewest drops along the order that meet the goal
    (MACs only shrink as more go), then the count search."""

    def macs_after(k: int) -> float:
        return macs_model.macs(_keep_mask(graph, ranked, _drop_counts(graph, order, k, multiples)))

    n = order.group.numel()
    if macs_after(n) > goal:
        return None
    low, high = 0, n
    while low < high:
        mid = (low + high) // 2
        if macs_after(mid) <= goal:
            high = mid
        else:
            low = mid + 1
    counts = _drop_counts(graph, order, low, multiples)
    if low > 0:
        search = _CountSearch(graph, ranked, macs_model, order, goal, multiples)
        counts = search.refine(counts, low)
    return counts


BUDGET_TOLERANCE = 0.01
"""A MACs target is met within this fraction of itself, or refused."""


EXHAUSTIVE_LIMIT = 4096
"""Small models (few, narrow groups) are searched over every combination of drop counts."""


@dataclass
class _CountSearch:
    """The refinement of a MACs allocation: how many channels each group loses.

    Why a class: every stage reads the same graph, within-group ranking, MACs model, drop order
    and target; holding them once keeps each stage about its own rule. Within a group the
    importance order is always kept; the stages only move *how many* channels go, one step at
    a time: one channel, or with ``round_to`` one aligned block (a group's kept width stays a
    multiple of its ``multiples`` entry, or the whole group), so that rounded widths land as
    close below the target as unrounded ones instead of one coarse block below it.
    """

    graph: DependencyGraph
    ranked: dict[int, torch.Tensor]
    macs_model: MacsModel
    order: _Order
    target: float
    multiples: torch.Tensor

    def __post_init__(self) -> None:
        self.droppable = torch.zeros(len(self.graph.groups), dtype=torch.long)
        self.droppable.index_add_(0, self.order.group, torch.ones_like(self.order.group))
        self.sizes = [g.size for g in self.graph.groups]

    def valid_counts(self, gid: int) -> list[int]:
        """The drop counts group ``gid`` may take: its kept width whole or on its multiple."""
        size, multiple = self.sizes[gid], int(self.multiples[gid])
        return [
            c for c in range(int(self.droppable[gid]) + 1) if c == 0 or (size - c) % multiple == 0
        ]

    def macs(self, counts: torch.Tensor) -> float:
        return self.macs_model.macs(_keep_mask(self.graph, self.ranked, counts))

    def within_tolerance(self, macs: float) -> bool:
        return self.target - macs <= BUDGET_TOLERANCE * self.target

    def refine(self, counts: torch.Tensor, k: int) -> torch.Tensor:
        """All stages in order, from the plan that drops the first ``k`` of the order."""
        counts = self.closest_below(counts, k)
        counts = self.fill_back(counts)
        counts = self.exhaustive_if_small(counts)
        return self.swap_search(counts)

    def closest(
        self, candidates: Iterable[torch.Tensor], best: torch.Tensor | None, best_macs: float
    ) -> tuple[torch.Tensor | None, float]:
        """Of the incumbent ``best`` and ``candidates``, the plan closest below the target
        (the first of equals wins); every stage below makes its choice this way."""
        for candidate in candidates:
            macs = self.macs(candidate)
            if best_macs < macs <= self.target:
                best, best_macs = candidate, macs
        return best, best_macs

    def _changed(self, counts: torch.Tensor, gid: int, step: int) -> torch.Tensor | None:
        """``counts`` with group ``gid`` one step further (+1: drop more, -1: restore), the
        kept width snapped to the group's multiple; None where no such step exists."""
        size, multiple = self.sizes[gid], int(self.multiples[gid])
        kept = size - int(counts[gid]) - step
        if multiple > 1:
            kept = (
                (kept // multiple) * multiple
                if step > 0
                else min(size, -(-kept // multiple) * multiple)
            )
        count = size - kept
        if not 0 <= count <= int(self.droppable[gid]):
            return None
        candidate = counts.clone()
        candidate[gid] = count
        return candidate

    def closest_below(self, counts: torch.Tensor, k: int) -> torch.Tensor:
        """Land closer to the target than the drop order alone can.

        The k-th channel of the order may carry a lot of MACs (one channel of a residual stream
        touches many layers) and overshoot the target. Starting from the first k-1 drops, which
        are still above the target, try one more channel from each group instead and keep the
        choice that lands closest below the target.
        """
        base = _drop_counts(self.graph, self.order, k - 1, self.multiples)
        one_more = (
            candidate
            for gid in range(len(self.graph.groups))
            if (candidate := self._changed(base, gid, 1)) is not None
        )
        best, _ = self.closest(one_more, counts, self.macs(counts))
        assert best is not None
        return best

    def fill_back(self, counts: torch.Tensor) -> torch.Tensor:
        """Give channels back while the target still holds, largest gain first.

        From a plan below the target, restoring the most important dropped channel of one
        group at a time climbs back towards the target; each step takes the restore that lands
        closest below it. Stops within a tenth of the tolerance, or when no restore fits.
        """
        current = self.macs(counts)
        while self.target - current > 0.1 * BUDGET_TOLERANCE * self.target:
            restores = (
                candidate
                for gid in torch.nonzero(counts > 0).reshape(-1).tolist()
                if (candidate := self._changed(counts, gid, -1)) is not None
            )
            best, best_macs = self.closest(restores, None, current)
            if best is None:
                break
            counts, current = best, best_macs
        return counts

    def exhaustive_if_small(self, counts: torch.Tensor) -> torch.Tensor:
        """Where greedy steps are too coarse (a 4-channel residual stream), try every count
        vector; only when the greedy plan misses the tolerance and the space is small."""
        current = self.macs(counts)
        if self.within_tolerance(current):
            return counts
        choices = [self.valid_counts(gid) for gid in range(len(self.graph.groups))]
        if math.prod(len(c) for c in choices) > EXHAUSTIVE_LIMIT:
            return counts
        every = (
            torch.tensor(combination, dtype=torch.long)
            for combination in itertools.product(*choices)
        )
        best, _ = self.closest(every, counts, current)
        assert best is not None
        return best

    def swap_search(self, counts: torch.Tensor, rounds: int = 8) -> torch.Tensor:
        """Trade one costly channel for several cheap ones when single steps cannot get closer.

        From a plan still short of the tolerance, drop one more channel of some group and fill
        back greedily; keep the best result. Bounded (``rounds`` x groups fill-backs) and only
        run when the plan misses the tolerance, which happens on small models with uneven
        groups.
        """
        current = self.macs(counts)
        for _ in range(rounds):
            if self.within_tolerance(current) or len(self.graph.groups) > 64:
                break
            best, best_macs = None, current
            for gid in range(len(self.graph.groups)):
                moves = []
                more = self._changed(counts, gid, 1)  # one more here, then give back elsewhere
                if more is not None:
                    moves.append(self.fill_back(more))
                fewer = self._changed(counts, gid, -1)  # one back here, then trim elsewhere
                if fewer is not None:
                    trimmed = self.trim_down(fewer)
                    if trimmed is not None:
                        moves.append(trimmed)
                best, best_macs = self.closest(moves, best, best_macs)
            if best is None:
                break
            counts, current = best, best_macs
        return counts

    def trim_down(self, counts: torch.Tensor, max_steps: int = 512) -> torch.Tensor | None:
        """Drop channels until the target holds, always taking the smallest step, so the plan
        lands just below the target rather than one coarse step below it."""
        for _ in range(max_steps):
            if self.macs(counts) <= self.target:
                return counts
            options = [
                (self.macs(candidate), candidate)
                for gid in torch.nonzero(counts < self.droppable).reshape(-1).tolist()
                if (candidate := self._changed(counts, gid, 1)) is not None
            ]
            if not options:
                return None
            counts = max(options, key=lambda o: o[0])[1]
        return None
