"""AdaPruner (arXiv 2109.06397). Only the abstract is public; the steps it names are fixed,
every detail below is **our choice** and documented where it is made.

1. Block importance: the mean |BN scale| of each channel group (after optional slimming during
   training, ``s > 0``). Groups without a norm layer get the mean importance of the model.
   Budget mode (``total_steps``, no ``s``): the slimming selects, growing L2 silences what
   the widths then remove (:mod:`regprune.regularizers.staged`), and the block importance is
   frozen when the set is chosen (silencing it would otherwise lower it further).
2. Widths: one global variable ``alpha`` maps importance to a kept fraction per group,
   ``keep_g = clip(alpha * I_g / mean(I), min_keep, 1)``: more important blocks stay wider.
   The largest ``alpha`` that meets the budget is found by the shared allocation (a global
   threshold on scores built so that it is exactly this rule, see
   :meth:`AdaPruner.width_scores`; no training in the loop), which lands within 1 % of the
   MACs target like every other method.
3. Weight inheritance: each candidate criterion (L1, L2, BN scale, FPGM, random) picks which
   channels of those widths to keep. Each candidate model has its BatchNorm statistics
   recalibrated on the first half of the calibration batches, then is scored by its loss on the
   second half (held out from the recalibration); the lowest loss wins, then fine-tune.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regprune.allocation import Plan, allocate
from regprune.importance import BNScaleImportance, get_importance
from regprune.importance.criteria import mean_over_slices
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.methods.slimming import slimming_regularizer
from regprune.modes import eval_mode
from regprune.regularizers.staged import SelectThenSilence
from regprune.train.batchnorm import recalibrate_batch_norm
from regprune.train.distributed import broadcast_object

DEFAULT_CANDIDATES = ("l1", "l2", "bn_scale", "fpgm", "random")


def proxy_loss(model: nn.Module, batches: CalibrationData) -> float:
    """Mean cross-entropy on held-out batches, eval mode."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            logits = model(x.to(device))
            total += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            count += y.numel()
    return total / max(count, 1)


@register_method("adapruner")
class AdaPruner(GraphMethod):
    """Budget-driven widths from block importance; adaptive weight-inheritance criterion.

    Args:
        s: slimming strength during training (0 = no sparsity training).
        candidates: inheritance criteria to try.
        min_keep: smallest kept fraction of any group.
        **target: ``target_macs`` (the paper's setting) or ``ratio`` (fraction of all channels).
    """

    name = "adapruner"
    default_scope = "global"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        s: float | None = None,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        min_keep: float = 0.05,
        seed: int = 0,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.frozen_importance: torch.Tensor | None = None
        self.candidates = [get_importance(c, seed=seed) for c in candidates]
        if not self.candidates:
            raise ValueError("give at least one inheritance candidate")
        if not 0 < min_keep < 1:
            raise ValueError(f"min_keep must be in (0, 1), got {min_keep}")
        self.min_keep = min_keep
        if s is None and total_steps is None:
            s = 0.0  # the paper's default: no sparsity training
        if s is None or s > 0:
            self.regularizer = slimming_regularizer(self, s, total_steps, silence_at)
        self.candidate_losses: dict[str, float] = {}
        self.chosen: str | None = None

    def silence_scores(self) -> dict[int, torch.Tensor]:
        return BNScaleImportance()(self.model, self.graph)

    def removal_masks(self, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return self.plan_for(scores).drop_masks()

    def select(self, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        masks = self.removal_masks(scores)
        self.frozen_importance = self.block_importance()
        return masks

    def block_importance(self) -> torch.Tensor:
        """Mean |BN scale| per group (groups without BN: the mean over groups that have one);
        in budget mode, as it was when the removal set was chosen."""
        if self.frozen_importance is not None:
            return self.frozen_importance
        values = []
        for group in self.groups:
            scales = group.norm_scales()
            if scales:
                per_channel = mean_over_slices(self.model, group, scales, lambda r: r.abs()[:, 0])
                values.append(float(per_channel.mean()))
            else:
                values.append(float("nan"))
        importance = torch.tensor(values, dtype=torch.float64)
        known = importance[~importance.isnan()]
        fill = float(known.mean()) if known.numel() else 1.0
        return torch.nan_to_num(importance, nan=fill)

    def width_scores(self, order: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Channel scores whose global threshold gives AdaPruner's widths.

        The channel a criterion ranks ``r``-th (1-based) in group ``g`` scores
        ``I_g / mean(I) * size_g / r``; a threshold ``1 / alpha`` keeps
        ``floor(alpha * I_g / mean(I) * size_g)`` channels of each group, which is the width
        rule above. So the widths come from the shared allocation (its MACs search,
        ``max_ratio``, ``round_to`` and final fill, the same as every other method) and the
        criterion only decides which channels of those widths stay. Every criterion yields the
        same multiset of scores per group, hence the same widths.
        """
        importance = self.block_importance()
        relative = importance / importance.mean().clamp(min=1e-12)
        scores = {}
        for group in self.groups:
            ranking = torch.argsort(order[group.id].double().cpu(), descending=True, stable=True)
            rank = torch.empty(group.size, dtype=torch.float64)
            rank[ranking] = torch.arange(1, group.size + 1, dtype=torch.float64)
            scores[group.id] = float(relative[group.id]) * group.size / rank
        return scores

    def plan_for(self, order: dict[int, torch.Tensor]) -> Plan:
        """The plan for one inheritance criterion's channel order (see :meth:`width_scores`).

        **Our choice**: ``min_keep`` is a ``max_ratio`` of ``1 - min_keep`` for the shared
        allocation, and the ranking is global (block importances compare across blocks).
        """
        assert self.target is not None
        target = dataclasses.replace(
            self.target, scope="global", max_ratio=min(self.target.max_ratio, 1 - self.min_keep)
        )
        plan = allocate(
            self.graph,
            self.width_scores(order),
            target,
            comparable=True,
            macs_model=self.macs_model if target.is_macs else None,
        )
        return broadcast_object(plan)

    def kept_widths(self) -> torch.Tensor:
        """Per-group kept widths meeting the target (the same for every criterion)."""
        order = {g.id: torch.zeros(g.size) for g in self.groups}
        widths = self.plan_for(order).kept_widths()
        return torch.tensor([widths[g.id] for g in self.groups], dtype=torch.float64)

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        if isinstance(self.regularizer, SelectThenSilence) and self.regularizer.masks is not None:
            # budget mode: the widths' removal set is silent; any other inheritance would keep
            # zeros and remove live channels, so there is nothing left to compare (our choice)
            self.chosen = "silenced"
            return super().prune(data)
        if not data or len(data) < 2:
            raise ValueError(
                "AdaPruner compares inheritance criteria on training batches: call "
                "prune(data=batches) with at least 2 (inputs, targets) batches"
            )
        half = len(data) // 2
        recalibration, held_out = list(data[:half]), list(data[half:])
        candidates: dict[str, tuple[Plan, nn.Module, Any]] = {}
        self.candidate_losses = {}
        source = self.model_to_prune(data)
        for criterion in self.candidates:
            plan = self.plan_for(criterion(self.model, self.graph))
            candidate = self.apply(plan, data, source=source)
            recalibrate_batch_norm(candidate, recalibration)
            self.candidate_losses[criterion.name] = proxy_loss(candidate, held_out)
            candidates[criterion.name] = (plan, candidate, self.last_compensation)
        local_best = min(self.candidate_losses, key=self.candidate_losses.__getitem__)
        self.chosen = broadcast_object(local_best)  # every DDP rank inherits the same way
        plan, model, self.last_compensation = candidates[self.chosen]
        self.last_plan = plan
        return model

    def removal_report(self) -> dict[str, Any]:
        report = super().removal_report()
        if self.chosen is not None:
            report["inheritance"] = self.chosen
            report["candidate_losses"] = dict(self.candidate_losses)
        return report

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"frozen_importance": self.frozen_importance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.frozen_importance = state.get("frozen_importance")
