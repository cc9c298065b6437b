"""AdaPruner (arXiv 2109.06397). Only the abstract is public; the steps it names are fixed,
every detail below is **our choice** and documented where it is made.

1. Block importance: the mean |BN scale| of each channel group (after optional slimming during
   training, ``s > 0``). Groups without a norm layer get the mean importance of the model.
2. Widths: one global variable ``alpha`` maps importance to a kept fraction per group,
   ``keep_g = clip(alpha * I_g / mean(I), min_keep, 1)``: more important blocks stay wider.
   Bisection on ``alpha`` (60 steps, no training in the loop, each step one vectorized MACs
   evaluation) finds the smallest widths that meet the MACs budget; a final per-group
   adjustment lands within 1% of it.
3. Weight inheritance: each candidate criterion (L1, L2, BN scale, FPGM, random) picks which
   channels of those widths to keep. Each candidate model has its BatchNorm statistics
   recalibrated on the first half of the calibration batches, then is scored by its loss on the
   second half (held out from the recalibration); the lowest loss wins, then fine-tune.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regprune.allocation import Plan
from regprune.importance import get_importance
from regprune.importance.criteria import mean_over_slices
from regprune.lifecycle import CalibrationData
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.modes import eval_mode
from regprune.regularizers import BNScaleL1
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
        s: float = 0.0,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        min_keep: float = 0.05,
        seed: int = 0,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        self.candidates = [get_importance(c, seed=seed) for c in candidates]
        if not self.candidates:
            raise ValueError("give at least one inheritance candidate")
        if not 0 < min_keep <= 1:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        self.min_keep = min_keep
        self.regularizer = BNScaleL1(self.groups, s=s) if s > 0 else None
        self.candidate_losses: dict[str, float] = {}
        self.chosen: str | None = None

    def block_importance(self) -> torch.Tensor:
        """Mean |BN scale| per group (groups without BN: the mean over groups that have one)."""
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

    def kept_widths(self) -> torch.Tensor:
        """Per-group kept widths meeting the target (bisection on alpha, then adjustment)."""
        importance = self.block_importance()
        relative = importance / importance.mean().clamp(min=1e-12)
        sizes = torch.tensor([g.size for g in self.groups], dtype=torch.float64)
        round_to = self.target.round_to
        floor = torch.clamp(
            torch.ceil(sizes * max(self.min_keep, 1.0 - self.target.max_ratio)), min=1
        )
        floor = torch.maximum(floor, torch.minimum(sizes, torch.tensor(float(round_to))))

        def widths(alpha: float) -> torch.Tensor:
            kept = torch.ceil(torch.clamp(alpha * relative, max=1.0) * sizes)
            kept = torch.maximum(kept, floor)
            if round_to > 1:
                kept = torch.minimum(torch.ceil(kept / round_to) * round_to, sizes)
            return kept

        cost = self._cost_fn()
        target = self._target_value()
        low, high = 0.0, float(1.0 / relative.min().clamp(min=1e-12))
        if cost(widths(low)) > target:
            raise ValueError(
                f"AdaPruner: the target cannot be met even with every group at min_keep="
                f"{self.min_keep}; lower min_keep or ask for a larger target"
            )
        for _ in range(60):
            mid = (low + high) / 2
            if cost(widths(mid)) <= target:
                low = mid
            else:
                high = mid
        kept = widths(low)
        return self._fill_towards_target(kept, sizes, cost, target)

    def _fill_towards_target(self, kept, sizes, cost, target) -> torch.Tensor:
        """Add channels one group at a time while the target still holds (most important first).

        Bisection stops at a step of the width function; single channels close the gap.
        """
        order = torch.argsort(self.block_importance(), descending=True)
        step = float(self.target.round_to)
        improved = True
        while improved:
            improved = False
            for gid in order.tolist():
                if kept[gid] + step <= sizes[gid]:
                    trial = kept.clone()
                    trial[gid] += step
                    if cost(trial) <= target:
                        kept = trial
                        improved = True
        return kept

    def _target_value(self) -> float:
        if self.target.target_macs is not None:
            return self.target.target_macs * self.macs_model.total
        total = sum(g.size for g in self.groups)
        return (1.0 - self.target.ratio) * total

    def _cost_fn(self):
        """MACs of given widths (MACs target) or the number of kept channels (ratio target)."""
        if self.target.target_macs is None:
            return lambda kept: float(kept.sum())
        reference = {g.id: torch.arange(g.size) for g in self.groups}

        def macs(kept: torch.Tensor) -> float:
            keep = torch.ones(self.graph.group_of_component.numel(), dtype=torch.bool)
            for group in self.groups:
                dropped = group.size - int(kept[group.id])
                if dropped:
                    keep[self.graph.group_components(group.id)[reference[group.id][:dropped]]] = (
                        False
                    )
            return self.macs_model.macs(keep)

        return macs

    def plan_for(self, widths: torch.Tensor, scores: dict[int, torch.Tensor]) -> Plan:
        drop = {}
        for group in self.groups:
            count = group.size - int(widths[group.id])
            if count:
                order = torch.argsort(scores[group.id].double().cpu(), stable=True)
                drop[group.id] = sorted(order[:count].tolist())
        return Plan(drop, {g.id: g.size for g in self.groups}, self.graph.model_type)

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        if not data or len(data) < 2:
            raise ValueError(
                "AdaPruner compares inheritance criteria on training batches: call "
                "prune(data=batches) with at least 2 (inputs, targets) batches"
            )
        widths = broadcast_object(self.kept_widths())
        half = len(data) // 2
        recalibration, held_out = list(data[:half]), list(data[half:])
        candidates: dict[str, tuple[Plan, nn.Module, Any]] = {}
        self.candidate_losses = {}
        for criterion in self.candidates:
            plan = self.plan_for(widths, criterion(self.model, self.graph))
            candidate = self.apply(plan, data)
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
