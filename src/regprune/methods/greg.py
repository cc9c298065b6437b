"""GReg-1 / GReg-2 (Wang et al., ICLR 2021; code mingsuntse/regularization-pruning).

Growing L2: ``grad_w += lambda * w`` on the units to prune, with ``lambda`` rising every
``update_every`` iterations until they carry nothing; then they are removed. The state machine
(interval, increment, ceiling, magnitude-ratio stop, stabilization, GReg-2's picking) lives in
:class:`regprune.regularizers.GrowingL2`; this file chooses *what* to regularize:

* structured: channels of the engine's groups. GReg-1 fixes the prune set at the start with the
  L1-norm criterion and the method's target (ratio or MACs, local or global); GReg-2 takes the
  per-group counts of that allocation and lets its picking phase choose which channels.
* unstructured: single weights of every conv / linear weight (see :mod:`.unstructured`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.allocation import Plan
from regprune.importance import MagnitudeImportance
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.regularizers.budget import warn_if_too_short
from regprune.regularizers.growing_l2 import budget_schedule, greg_for
from regprune.train.distributed import broadcast_object

SCHEDULE_KEYS = (
    "update_every",
    "delta",
    "tau",
    "ratio_stop",
    "ema_momentum",
    "stabilize_iters",
    "kept_lambda",
    "pick_delta",
    "pick_ceiling",
)


@register_method("greg1", variant=1)
@register_method("greg2", variant=2)
class GReg(GraphMethod):
    """Structured growing regularization over channel groups.

    Args:
        variant: 1 (GReg-1: fixed prune set) or 2 (GReg-2: picking then pushing).
        total_steps: the sparsify iterations; given without any schedule key, the schedule is
            sized to it (:func:`budget_schedule`). Any schedule key given: the schedule as
            given, with the paper's defaults for the rest.
        **kwargs: the schedule (``update_every`` K_u=10, ``delta`` 1e-4, ``tau`` 1.0,
            ``ratio_stop`` 1000, ``stabilize_iters`` K_s=10000, ``kept_lambda``, ``pick_delta``
            1e-5, ``pick_ceiling`` 1e-2) and the target (ratio / target_macs, scope, round_to,
            ignore). The paper's per-layer setting is ``scope="local"``.
    """

    name = "greg"
    silences_removal_set = True
    default_scope = "local"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        variant: int = 1,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **kwargs: Any,
    ):
        schedule = {k: kwargs.pop(k) for k in SCHEDULE_KEYS if k in kwargs}
        super().__init__(model, example_inputs, **kwargs)
        if total_steps is not None and not schedule:
            schedule = budget_schedule(total_steps, silence_at, variant)
            warn_if_too_short(total_steps, f"greg{variant}")
            self.strength_mode = "budget"
            self.plan_silence(total_steps, silence_at)
        elif schedule:
            self.strength_mode = "explicit"
        else:
            self.strength_mode = "paper"
        if variant not in (1, 2):
            raise ValueError(f"variant must be 1 (GReg-1) or 2 (GReg-2), got {variant!r}")
        self.variant = variant
        self.name = f"greg{variant}"
        criterion = MagnitudeImportance(1)
        allocation = self.plan_from_scores(criterion(model, self.graph), criterion.comparable)
        self.regularizer = greg_for(self.groups, allocation.drop_masks(), variant, **schedule)

    @property
    def phase(self) -> str:
        return self.regularizer.phase

    def fixed_removal_masks(self) -> dict[int, torch.Tensor] | None:
        if self.regularizer.phase == "picking":
            return None
        return {int(k): v for k, v in self.regularizer.prune_set().items()}

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        if self.regularizer.phase == "picking":
            raise RuntimeError(
                "GReg-2 is still picking its prune set; train longer (about pick_ceiling / "
                "pick_delta x update_every iterations) before pruning"
            )
        masks = {int(k): v for k, v in self.regularizer.prune_set().items()}
        return self.apply(broadcast_object(self.plan_from_masks(masks)), data)

    def schedule_warnings(self, plan: Plan) -> list[str]:
        if self.regularizer.done:
            return []
        return [
            f"{self.name}: pruned while its penalty is still {self.regularizer.phase} (lambda "
            f"has not reached tau={self.regularizer.tau} or the stabilization is not over): "
            "the prune set may still carry signal; train until wants_more_training() is False"
        ]

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        criterion = MagnitudeImportance(1)
        return {f"group{g}": v.float() for g, v in criterion(self.model, self.graph).items()}
