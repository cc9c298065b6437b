"""A complete pruning method in one file: L2 on the BN scales, channels ranked by |gamma|."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance import BNScaleImportance
from regprune.methods import GraphMethod, register_method


@register_method("bn_l2")
class BNScaleL2(GraphMethod):
    """``lam * sum(gamma^2)`` over every prunable BN scale; prune the smallest |gamma|.

    Everything else comes from GraphMethod: the trace, the target (ratio or MACs, scope,
    round_to, max_ratio, ignore), the shared allocation, surgery with compensation, DDP
    broadcast of the plan and the removal report.
    """

    default_scope = "global"

    def __init__(
        self, model: nn.Module, example_inputs: Any, *, lam: float = 1e-3, **target: Any
    ) -> None:
        super().__init__(model, example_inputs, **target)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        self.lam = float(lam)
        scales = {id(s.tensor(model)): s for g in self.groups for s in g.norm_scales()}
        self.scale_slices = list(scales.values())  # each BN scale once

    def penalty(self) -> torch.Tensor:
        total = super().penalty()
        for scale in self.scale_slices:
            total = total + scale.tensor(self.model).square().sum()
        return self.lam * total

    def scores(self, data: Any = None) -> tuple[dict[int, torch.Tensor], bool]:
        criterion = BNScaleImportance()
        return criterion(self.model, self.graph), criterion.comparable

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam = float(state["lam"])
