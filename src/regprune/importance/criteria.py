"""Importance criteria: one score per channel of every group (higher = keep).

Every criterion aggregates over the whole channel: the producers of a residual stream are
averaged, so a channel is judged by all the layers that would lose it, not by one of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from regprune.graph.dependency import DependencyGraph
from regprune.graph.groups import ChannelGroup, ParamSlice


class Importance:
    """Base class. ``comparable``: scores can be ranked across groups without rescaling."""

    name = "base"
    comparable = False
    reads_weights = True
    """False for criteria that never look at values (random): they also score meta models."""

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> dict[int, torch.Tensor]:
        self.check_values(model)
        return {group.id: self.group_scores(model, group) for group in graph.groups}

    def check_values(self, model: nn.Module) -> None:
        """Refuse a meta model (shapes, no values) when the criterion reads the weights."""
        if self.reads_weights and any(p.is_meta for p in model.parameters()):
            raise ValueError(
                f"importance {self.name!r} reads the weights, but the model is on the meta "
                "device (shapes, no values): load real weights first (model.to_empty(device="
                "'cpu') then load_state_dict), or use importance='random'"
            )

    def group_scores(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        raise NotImplementedError


IMPORTANCES: dict[str, Callable[..., Importance]] = {}
"""Name -> factory taking ``seed`` (only criteria whose constructor has one use it)."""


def register_importance(name: str, **fixed: Any) -> Callable[[type], type]:
    """Class decorator: make a criterion available by name (``importance="name"``), with
    ``fixed`` constructor keywords for this name (``l1`` and ``l2`` are one class)."""

    def decorate(cls: type) -> type:
        if name in IMPORTANCES:
            raise ValueError(f"an importance named {name!r} is already registered")
        takes_seed = "seed" in inspect.signature(cls).parameters

        def make(seed: int = 0, **_: Any) -> Importance:
            return cls(**fixed, **({"seed": seed} if takes_seed else {}))

        IMPORTANCES[name] = make
        return cls

    return decorate


def _per_index(weight: torch.Tensor, dim: int, reduce: Callable[[torch.Tensor], torch.Tensor]):
    """Reduce every slice of ``weight`` along ``dim`` to one number."""
    flat = weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1)
    return reduce(flat.float())


def mean_over_slices(
    model: nn.Module,
    group: ChannelGroup,
    slices: list[ParamSlice],
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Mean over the given slices of a per-index statistic, per group channel."""
    total = torch.zeros(group.size, dtype=torch.float64)
    count = torch.zeros(group.size, dtype=torch.float64)
    for s in slices:
        values = _per_index(s.tensor(model), s.dim, reduce).double().cpu()
        total += s.per_channel_sum(values, group.size)
        count += s.per_channel_sum(torch.ones_like(values), group.size)
    return total / count.clamp(min=1)


def producer_weights(group: ChannelGroup) -> list[ParamSlice]:
    return [s for s in group.slices if s.role == "out" and s.param == "weight"]


@register_importance("l1", p=1)
@register_importance("l2", p=2)
class MagnitudeImportance(Importance):
    """L1 (Li et al., ICLR 2017) or L2 norm of each output filter, averaged over producers."""

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p}")
        self.p = p
        self.name = f"l{p}"

    def group_scores(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        def norm(rows: torch.Tensor) -> torch.Tensor:
            return rows.abs().sum(1) if self.p == 1 else rows.pow(2).sum(1).sqrt()

        return mean_over_slices(model, group, producer_weights(group), norm)


@register_importance("bn_scale")
class BNScaleImportance(Importance):
    """|gamma| of the normalization layers of the channel (network slimming).

    Groups without a normalization layer fall back to the L1 criterion rescaled to the mean
    BN-scale magnitude of the model, **our choice**, so that a global ranking stays meaningful.
    """

    name = "bn_scale"
    comparable = True

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> dict[int, torch.Tensor]:
        self.check_values(model)
        scores, fallback = {}, []
        for group in graph.groups:
            scales = group.norm_scales()
            if scales:
                scores[group.id] = mean_over_slices(model, group, scales, lambda r: r.abs()[:, 0])
            else:
                fallback.append(group)
        reference = (
            torch.cat(list(scores.values())).mean()
            if scores
            else torch.tensor(1.0, dtype=torch.float64)
        )
        l1 = MagnitudeImportance(1)
        for group in fallback:
            raw = l1.group_scores(model, group)
            scores[group.id] = raw / (raw.mean() + 1e-12) * reference
        return scores


@register_importance("fpgm")
class FPGMImportance(Importance):
    """Filter pruning via geometric median (He et al., CVPR 2019).

    A filter close to all the others of its layer (small sum of distances) is replaceable by
    them; the sum of Euclidean distances to the layer's filters approximates the distance to
    the geometric median.
    """

    name = "fpgm"

    def group_scores(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        def distance_sum(rows: torch.Tensor) -> torch.Tensor:
            return torch.cdist(rows[None], rows[None])[0].sum(1)

        return mean_over_slices(model, group, producer_weights(group), distance_sum)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores: the sanity floor every benchmark must show."""

    name = "random"
    comparable = True
    reads_weights = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> dict[int, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return {
            g.id: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in graph.groups
        }


def get_importance(name: str | Importance, **kwargs) -> Importance:
    """An importance criterion by name (``l1``, ``l2``, ``bn_scale``, ``fpgm``, ``random``)."""
    if isinstance(name, Importance):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"importance must be a name ({sorted(IMPORTANCES)}) or an Importance, "
            f"got {type(name).__name__}"
        )
    if name not in IMPORTANCES:
        raise ValueError(f"unknown importance {name!r}; choose one of {sorted(IMPORTANCES)}")
    return IMPORTANCES[name](**kwargs)
