"""Group lasso over channel groups (Wen et al., NeurIPS 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.regularizers import GroupLasso


@register_method("group_lasso")
class GroupLassoMethod(GraphMethod):
    """Penalty ``lam * sum_c ||W_c||_2`` over every parameter of each channel; prune small norms.

    A channel's norm spans all its coupled parameters (producer filters, BN, consumer inputs),
    so coupled layers shrink together. Norms are compared globally as they are: the penalty
    drives unneeded channels to zero whatever their layer.

    Args:
        lam: the strength (1e-4). Leave it out and give ``total_steps`` for budget mode: the
            lasso selects under the budget controller, then growing L2 silences what it
            selected by ``silence_at`` of the budget (:mod:`regprune.regularizers.staged`).
        **target: ratio / target_macs, scope, round_to, max_ratio, ignore.
    """

    name = "group_lasso"
    silences_removal_set = True
    default_scope = "global"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        lam: float | None = None,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.lasso = GroupLasso(self.groups, lam=1e-4)
        self.regularizer = self.select_then_silence(
            self.lasso,
            lam,
            paper=1e-4,
            initial=1e-4,
            total_steps=total_steps,
            silence_at=silence_at,
        )

    def silence_scores(self) -> dict[int, torch.Tensor]:
        return self.lasso.channel_norms(self.model)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        return self._silence_scores(), True
