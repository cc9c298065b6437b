"""HGSR (Mitsuno & Kurita, ICPR 2020): hierarchical group sparse regularization, then filters
selected by the increase of the loss on random training samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.importance.loss_increase import exact_loss_increase, fast_loss_increase
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.regularizers import HierarchicalGroupSparsity

SELECTIONS = ("fast", "exact")


@register_method("hgsr")
class HGSR(GraphMethod):
    """Loss ``CE + 0.5*lam*HGSR + 0.5*lam*L1`` on every weight that reads a
    prunable channel, then loss-increase selection.

    Args:
        lam: lambda (1e-3 in the paper).
        variant: ``"squared"`` (default), ``"sqrt"``, ``"l1_2"``, ``"exclusive"``.
        l1: add the L1 term.
        selection: ``"fast"`` (first-order estimate, one backward) or ``"exact"`` (one masked
            forward per channel). **Our choice**: fast by default, global ranking (losses are
            comparable across layers), on the calibration batches the pipeline passes (random
            training samples); see benchmarks/hgsr_rank.py for how closely fast ranks like exact.
    """

    name = "hgsr"
    silences_removal_set = True
    default_scope = "global"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        lam: float = 1e-3,
        variant: str = "squared",
        l1: bool = True,
        selection: str = "fast",
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.selection = selection
        self.regularizer = HierarchicalGroupSparsity(self.groups, lam=lam, variant=variant, l1=l1)

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        if not data:
            raise ValueError(
                "HGSR selects filters by the loss on training samples: call prune(data=batches) "
                "with a few (inputs, targets) batches from the training set"
            )
        select = exact_loss_increase if self.selection == "exact" else fast_loss_increase
        return select(self.model, self.graph, data), True

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        norms = self.regularizer.input_channel_norms(self.model)
        return {f"group{g}": v.float() for g, v in norms.items()}
