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
    """

    name = "group_lasso"
    silences_removal_set = True
    default_scope = "global"

    def __init__(self, model: nn.Module, example_inputs: Any, *, lam: float = 1e-4, **target: Any):
        super().__init__(model, example_inputs, **target)
        self.regularizer = GroupLasso(self.groups, lam=lam)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        norms = self.regularizer.channel_norms(self.model)
        return {gid: n.detach().double().cpu() for gid, n in norms.items()}, True
