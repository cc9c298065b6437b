"""Network slimming (Liu et al., ICCV 2017): L1 on BN scales, one global threshold."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance import BNScaleImportance
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.regularizers import BNScaleL1, Regularizer


def slimming_regularizer(
    method: GraphMethod, s: float | None, total_steps: int | None, silence_at: float
) -> Regularizer:
    """Slimming's L1 on BN scales at ``s``, the paper's 1e-4, or in budget mode selecting from
    1e-3 under the controller then silenced (shared with AdaPruner's slimming stage)."""
    return method.select_then_silence(
        BNScaleL1(method.groups, s=1e-4),
        s,
        paper=1e-4,
        initial=1e-3,
        total_steps=total_steps,
        silence_at=silence_at,
    )


@register_method("slimming")
class NetworkSlimming(GraphMethod):
    """``grad_gamma += s * sign(gamma)`` on every prunable BN scale, then prune by |gamma|.

    Channels without a BN scale are not regularized (they are listed in
    ``regularizer.unscaled_group_ids``) and are ranked by the BN-scale criterion's fallback.

    Args:
        s: the strength (1e-4, the paper's CIFAR setting). Leave it out and give
            ``total_steps`` (the sparsify iterations) for budget mode: the L1 selects under the
            budget controller, then growing L2 silences what it selected by ``silence_at``
            of the budget (:mod:`regprune.regularizers.staged`; our choice).
        **target: ratio / target_macs, scope, round_to, max_ratio, ignore.
    """

    name = "slimming"
    silences_removal_set = True
    default_scope = "global"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        s: float | None = None,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.regularizer = slimming_regularizer(self, s, total_steps, silence_at)

    def silence_scores(self) -> dict[int, torch.Tensor]:
        return BNScaleImportance()(self.model, self.graph)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        criterion = BNScaleImportance()
        return criterion(self.model, self.graph), criterion.comparable
