"""MaskSparsity (Jiang et al., Machine Intelligence Research 2023; CASIA-IVA-Lab/MaskSparsity).

1. A pruning mask: by default from a short global network-slimming stage thresholded at the
   target (``mask_from="slimming"``), or at once from any importance criterion.
2. Sparsity training with ``grad_gamma += s * sign(gamma) * m``: only the masked channels are
   pushed to zero; the kept ones are left alone (the paper's point: slimming everything also
   damages the channels that stay).
3. Prune exactly the masked channels (their gamma is ~0, so accuracy barely moves), fine-tune.

Residual groups: by default a channel's BN scales are averaged over the whole group
(``mask_rule="aggregate"``); ``mask_rule="vote"`` is the code's rule, where each coupled BN votes
with the global threshold and a channel goes when at least ``vote_fraction`` of them agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.allocation import Plan
from regprune.importance import BNScaleImportance, get_importance
from regprune.methods.base import CalibrationData
from regprune.methods.graph_method import GraphMethod, broadcast_from_main
from regprune.regularizers import BNScaleL1

MASK_RULES = ("aggregate", "vote")


class MaskSparsity(GraphMethod):
    """Masked L1 on BN scales.

    Args:
        s: strength of the masked penalty (code default 5e-4 on ImageNet; 1e-4 suits CIFAR).
        mask_from: ``"slimming"`` (a slimming stage of ``mask_iters`` iterations with strength
            ``mask_s`` first) or an importance name (``"bn_scale"``, ``"l1"`` ...) for a mask now.
        mask_iters: iterations of the slimming stage.
        mask_s: slimming strength during that stage.
        mask_rule: ``"aggregate"`` or ``"vote"`` (see module docstring).
        vote_fraction: share of coupled BNs that must agree under ``"vote"``.
        norm: ``"l1"`` (paper), ``"l2"`` or ``"smooth_l1"`` (variants in the code).
        **target: ratio / target_macs, scope, round_to, ignore.
    """

    name = "masksparsity"
    default_scope = "global"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        s: float = 1e-4,
        mask_from: str = "slimming",
        mask_iters: int = 200,
        mask_s: float = 1e-4,
        mask_rule: str = "aggregate",
        vote_fraction: float = 0.5,
        norm: str = "l1",
        smooth_l1_beta: float | None = None,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        if mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {mask_rule!r}")
        if not 0 < vote_fraction <= 1:
            raise ValueError(f"vote_fraction must be in (0, 1], got {vote_fraction}")
        if mask_from != "slimming":
            get_importance(mask_from)  # fail now on a bad name, not after the slimming stage
        if not isinstance(mask_iters, int) or mask_iters < 0:
            raise ValueError(f"mask_iters must be an integer >= 0, got {mask_iters!r}")
        self.s = s
        self.mask_from = mask_from
        self.mask_iters = mask_iters if mask_from == "slimming" else 0
        self.mask_rule = mask_rule
        self.vote_fraction = vote_fraction
        self.mask_plan: Plan | None = None
        self.regularizer = BNScaleL1(
            self.groups, s=mask_s, norm=norm, smooth_l1_beta=smooth_l1_beta
        )
        self._masked_strength = s
        if self.mask_iters == 0:
            self._make_mask()

    @property
    def phase(self) -> str:
        return "mask" if self.mask_plan is None else "sparsify"

    def _make_mask(self) -> None:
        if self.mask_from == "slimming":
            criterion = BNScaleImportance()
        else:
            criterion = get_importance(self.mask_from)
        scores = criterion(self.model, self.graph)
        plan = self.plan_from_scores(scores, criterion.comparable)
        if self.mask_rule == "vote":
            plan = self._vote(plan, scores)
        self.mask_plan = broadcast_from_main(plan)
        self.regularizer.s = self._masked_strength
        self.regularizer.set_mask(self.mask_plan.drop_masks())

    def _vote(self, plan: Plan, scores: dict[int, torch.Tensor]) -> Plan:
        """Each coupled BN votes with the global threshold; a channel goes on enough votes."""
        dropped = [scores[g][torch.tensor(c)] for g, c in plan.drop.items() if c]
        if not dropped:
            return plan
        threshold = float(torch.cat(dropped).max())
        masks = {}
        for group in self.groups:
            scales = group.norm_scales()
            if not scales:
                masks[group.id] = plan.drop_masks()[group.id]
                continue
            votes = torch.zeros(group.size, dtype=torch.float64)
            voters = torch.zeros(group.size, dtype=torch.float64)
            for s in scales:
                below = (s.tensor(self.model).detach().abs() <= threshold).double().cpu()
                votes += s.per_channel_sum(below, group.size)
                voters += s.per_channel_sum(torch.ones_like(below), group.size)
            mask = votes / voters.clamp(min=1) >= self.vote_fraction
            if bool(mask.all()):
                mask[torch.argmax(scores[group.id])] = False
            masks[group.id] = mask
        return self.plan_from_masks(masks)

    def after_backward(self) -> None:
        self.regularizer.apply_to_grads(self.model)

    def step(self) -> None:
        super().step()
        if self.mask_plan is None and self.iteration >= self.mask_iters:
            self._make_mask()

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        if self.mask_plan is None:
            self._make_mask()
        assert self.mask_plan is not None
        return self.apply(self.mask_plan)

    def sparsity_stats(self) -> dict[str, float]:
        return self.regularizer.stats(self.model)

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        criterion = BNScaleImportance()
        return {f"group{gid}": v.float() for gid, v in criterion(self.model, self.graph).items()}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["mask_plan"] = self.mask_plan.to_dict() if self.mask_plan else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("mask_plan") is not None:
            self.mask_plan = Plan.from_dict(state["mask_plan"])
            self.regularizer.s = self._masked_strength
            self.regularizer.set_mask(self.mask_plan.drop_masks())
