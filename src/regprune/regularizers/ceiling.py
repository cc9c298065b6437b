"""A planned ceiling on the removal set: silent by the planned step whatever the learning rate.

Why (issue 14; our choice): every budget-mode silencer but L0's gates is a gradient term, so it
moves weights at the optimizer's learning rate. Under a cosine schedule that rate is a tenth of
its peak by 0.8 of the budget, where the set is due silent, and at 50 steps six of eight
methods left most of their removal set alive (docs/budget_study.md, "Under the pipeline's cosine
schedule"); MaskSparsity's controller, which only sees the set after its checks, lagged and then
silenced the whole set in about fifteen steps. The penalty stays what it was; once the method
has fixed its removal set, this ceiling bounds every removed channel's magnitude by a planned
fraction of its magnitude when the set was fixed, falling from 1 to ``end_ratio`` at the
silence step along the budget controller's own geometric path
(:func:`regprune.regularizers.budget.geometric_share`) and held there. Where the penalty runs
ahead of the plan the ceiling does nothing.

A channel is scaled as a whole: every producer filter and bias of it (role ``"out"``) and every
per-channel affine parameter (``"norm"``: BN scale *and* shift) by the same factor, so its output
shrinks by that factor whether or not a normalization follows (a BN in train mode would undo a
shrink of the filter alone), and its constant part shrinks with it. The channel's magnitude is
the Euclidean norm over those slices. Consumers' input slices are left alone: they multiply a
channel that is going quiet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers._slices import along, sum_except
from regprune.regularizers.budget import geometric_share


class SilenceCeiling:
    """Bound the removal set's magnitudes by a planned path (see the module docstring).

    Args:
        groups: the channel groups.
        masks: ``{group id: BoolTensor}``, True on the channels that will be removed.
        start_step: the iteration the set was fixed (the path starts at 1 there).
        silence_step: the iteration by which the set is at ``end_ratio`` of its start.
        end_ratio: where the path ends, relative to each channel's start magnitude.
    """

    def __init__(
        self,
        groups: Sequence[ChannelGroup],
        masks: Mapping[int, torch.Tensor],
        *,
        start_step: int,
        silence_step: int,
        end_ratio: float,
    ) -> None:
        if not 0 < end_ratio < 1:
            raise ValueError(f"end_ratio must be in (0, 1), got {end_ratio!r}")
        self.start_step = int(start_step)
        self.silence_step = max(int(silence_step), self.start_step + 1)
        self.end_ratio = float(end_ratio)
        self.masks = {int(g): m.bool().cpu() for g, m in masks.items() if bool(m.any())}
        self._slices: dict[int, list[ParamSlice]] = {
            g.id: g.slices_with_role("out", "norm") for g in groups if g.id in self.masks
        }
        self.start: dict[int, torch.Tensor] | None = None
        """Every group's per-channel magnitude when the set was fixed (taken at the first
        :meth:`apply`)."""

    def fraction(self, step: int) -> float:
        """The ceiling after ``step`` iterations, as a share of the start magnitudes."""
        return geometric_share(step, self.start_step, self.silence_step, self.end_ratio)

    def magnitudes(self, model: nn.Module, group_id: int) -> torch.Tensor:
        """Per channel of the group, the norm over its out and norm slices (float64)."""
        size = len(self.masks[group_id])
        total = torch.zeros(size, dtype=torch.float64)
        for index in self._slices[group_id]:
            param = index.weight_in(model)
            if param is None:
                continue
            squares = sum_except(param.detach().double().square(), index.axis(param))
            total = total.to(param.device) + index.per_channel_sum(squares, size)
        return total.sqrt()

    @torch.no_grad()
    def apply(self, model: nn.Module, step: int) -> None:
        """Scale every removed channel above the ceiling down to it (in place)."""
        if self.start is None:
            self.start = {g: self.magnitudes(model, g).cpu() for g in self.masks}
        cap = self.fraction(step)
        for group_id, mask in self.masks.items():
            now = self.magnitudes(model, group_id)
            limit = cap * self.start[group_id].to(now.device)
            factor = torch.where(
                mask.to(now.device) & (now > limit), limit / now.clamp_min(1e-300), 1.0
            )
            if bool((factor < 1).any()):
                self._scale(model, group_id, factor)

    def _scale(self, model: nn.Module, group_id: int, factor: torch.Tensor) -> None:
        for index in self._slices[group_id]:
            param = index.weight_in(model)
            if param is None:
                continue
            dim = index.axis(param)
            positions, channels = index.positions_on(param.device)
            full = torch.ones(param.shape[dim], dtype=param.dtype, device=param.device)
            full[positions] = factor.to(param.device, param.dtype)[channels]
            param.mul_(along(full, dim, param.dim()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "start_step": self.start_step,
            "silence_step": self.silence_step,
            "end_ratio": self.end_ratio,
            "masks": dict(self.masks),
            "start": None if self.start is None else dict(self.start),
        }

    @classmethod
    def from_state(cls, groups: Sequence[ChannelGroup], state: Mapping[str, Any]) -> SilenceCeiling:
        ceiling = cls(
            groups,
            {int(g): m for g, m in state["masks"].items()},
            start_step=int(state["start_step"]),
            silence_step=int(state["silence_step"]),
            end_ratio=float(state["end_ratio"]),
        )
        if state["start"] is not None:
            ceiling.start = {int(g): v.double() for g, v in state["start"].items()}
        return ceiling
