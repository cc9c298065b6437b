"""Network slimming (Liu et al., ICCV 2017): L1 on BN scales, one global threshold."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance import BNScaleImportance
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.regularizers import BNScaleL1


@register_method("slimming")
class NetworkSlimming(GraphMethod):
    """``grad_gamma += s * sign(gamma)`` on every prunable BN scale, then prune by |gamma|.

    Channels without a BN scale are not regularized (they are listed in
    ``regularizer.unscaled_group_ids``) and are ranked by the BN-scale criterion's fallback.
    """

    name = "slimming"
    silences_removal_set = True
    default_scope = "global"

    def __init__(self, model: nn.Module, example_inputs: Any, *, s: float = 1e-4, **target: Any):
        super().__init__(model, example_inputs, **target)
        self.regularizer = BNScaleL1(self.groups, s=s)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        criterion = BNScaleImportance()
        return criterion(self.model, self.graph), criterion.comparable
