"""One-shot pruning by a fixed criterion: the L1-norm / magnitude / FPGM / random baselines."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance import Importance, get_importance
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method


@register_method("oneshot")
class OneShot(GraphMethod):
    """No regularization: score once with ``importance``, prune, fine-tune (Li et al. 2017).

    Example:
        >>> method = OneShot(model, x, target_macs=0.5, importance="l1")
        >>> small = method.prune()
    """

    name = "oneshot"
    default_scope = "local"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        importance: str | Importance = "l1",
        seed: int = 0,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.importance = get_importance(importance, seed=seed)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        return self.importance(self.model, self.graph), self.importance.comparable

    def wants_more_training(self) -> bool:
        return False
