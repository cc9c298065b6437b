"""A complete pruning method in one file: L2 on the BN scales, channels ranked by |gamma|."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.graph import ChannelGroup
from regprune.importance import BNScaleImportance
from regprune.methods import GraphMethod, register_method
from regprune.regularizers import Regularizer


class BNScaleSquares(Regularizer):
    """``lam * sum(gamma^2)`` over the BN scales of the groups, each scale once (a loss term).

    The protocol gives the rest: ``lam`` is the strength (saved in ``state_dict()``), and the
    other hooks (gradient edit, schedule step, own parameters) do nothing.
    """

    def __init__(self, groups: list[ChannelGroup], lam: float) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        self.lam = float(lam)
        scales = {(s.module, s.param): s for g in groups for s in g.norm_scales()}
        self.scales = list(scales.values())

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = super().penalty(model)
        for scale in self.scales:
            total = total + scale.tensor(model).square().sum()
        return self.lam * total


@register_method("bn_l2")
class BNScaleL2(GraphMethod):
    """Regularize with :class:`BNScaleSquares`; prune the smallest |gamma|.

    Everything else comes from GraphMethod: the trace, the target (ratio or MACs, scope,
    round_to, max_ratio, ignore), forwarding to the regularizer (its loss term, its state in
    ``state_dict()``), the shared allocation, surgery with compensation, DDP broadcast of the
    plan and the removal report.
    """

    default_scope = "global"

    def __init__(
        self, model: nn.Module, example_inputs: Any, *, lam: float = 1e-3, **target: Any
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.regularizer = BNScaleSquares(self.groups, lam)

    def scores(self, data: Any = None) -> tuple[dict[int, torch.Tensor], bool]:
        criterion = BNScaleImportance()
        return criterion(self.model, self.graph), criterion.comparable
