"""Network slimming (Liu et al., ICCV 2017): L1 on BN scales, one global threshold."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance import BNScaleImportance
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.regularizers import BNScaleL1


class NetworkSlimming(GraphMethod):
    """``grad_gamma += s * sign(gamma)`` on every prunable BN scale, then prune by |gamma|.

    Args:
        s: the strength (paper: 1e-4 over 160 epochs). Leave it out and give ``total_steps``
            (the sparsify iterations) for budget mode: the strength is then driven so that the
            channels the target removes are silent by ``silence_at`` of the budget
            (:mod:`regprune.regularizers.budget`), and scales that cross zero are held there.
        **target: ratio / target_macs, scope, round_to, max_ratio, ignore, compensate.

    Channels without a BN scale are not regularized (they are listed in
    ``regularizer.unscaled_group_ids``) and are ranked by the BN-scale criterion's fallback.
    """

    name = "slimming"
    silences_removal_set = True
    default_scope = "global"

    budget_attr = "s"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        s: float | None = None,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **target: Any,
    ):
        super().__init__(model, example_inputs, **target)
        s = self.choose_strength(
            s, paper=1e-4, initial=1e-4, total_steps=total_steps, silence_at=silence_at
        )
        self.regularizer = BNScaleL1(self.groups, s=s)

    def after_backward(self) -> None:
        self.regularizer.apply_to_grads(self.model)
        if self.budget is not None:
            self.regularizer.remember_signs(self.model)

    def step(self) -> None:
        if self.budget is not None:
            self.regularizer.zero_the_crossed(self.model)
        super().step()

    def silence_scores(self) -> dict[int, torch.Tensor]:
        return BNScaleImportance()(self.model, self.graph)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        criterion = BNScaleImportance()
        return criterion(self.model, self.graph), criterion.comparable

    def sparsity_stats(self) -> dict[str, float]:
        return self.regularizer.stats(self.model)
