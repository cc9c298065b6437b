"""A Lagrangian constraint on the expected cost of gated channels: L0 gates that meet a target.

Why: with a plain expected-L0 penalty ``lam * E[L0]``, how many gates close depends on ``lam``,
the data, the schedule and the model, so every budget needs its own hand-sized ``lam``. Structured
L0 pruning of language models (Wang et al., EMNLP 2020; CoFi, Xia et al., ACL 2022) replaces it by
a constraint on the expected size, enforced with a Lagrange multiplier that the training itself
raises while the constraint is violated::

    L = task loss + lambda_1 * max(r - t, 0) + lambda_2 * (r - t)^2

minimized in the weights and gates, *maximized* in ``lambda_1, lambda_2`` (gradient ascent), with
``r`` the expected kept share of the cost (MACs or channels; differentiable in ``log_alpha``) and
``t`` the target, warmed up linearly from 1 (CoFi's ``lagrangian_warmup``).

The linear term acts only while the share is above the target (**our choice**; CoFi's is
``lambda_1 * (r - t)``): ``lambda_1`` grows while the gates lag the warm-up, and with the
two-sided term it kept pushing them closed long after they had passed the target, until it had
come down again: on ResNet-20 after 250 budget steps 48 kept channels had closed gates
(zeros in the pruned model) and the gated model read 80.8 % against 83.3 %; with this term
none, and 83.8 % (docs/budget_study.md, "Channel L0 and BatchNorm"). Below the target only the
quadratic term acts, and it pulls the share back up. Here the warm-up
ends at ``reach_at`` of the budget (**our choice**: 0.5 of ``silence_at``, so the gates close
with time left to settle), and the multipliers step with Adam (as CoFi's) at a rate sized to the
budget: ``lr = LR_SCALE / ramp_steps`` (**our choice**, see docs/methods.md for the pilot).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

LR_SCALE = 4.0
"""Adam's lr for the multipliers times the warm-up steps (our choice, from the pilot)."""


class ExpectedCostConstraint:
    """``lambda_1 max(r - t, 0) + lambda_2 (r - t)^2`` with ascending multipliers.

    Args:
        kept_share: maps ``{group id: keep probability per channel}`` to the expected kept
            share of the cost in [0, 1], differentiably (expected MACs over total, or kept
            channels over all).
        target: the kept share to reach (``target_macs``, or ``1 - ratio``).
        total_steps: the sparsify budget (optimizer steps).
        reach_at: share of the budget at which the warmed-up target reaches ``target``.
        lr: Adam's learning rate for the multipliers; default ``LR_SCALE`` / warm-up steps.
    """

    def __init__(
        self,
        kept_share: Callable[[Mapping[int, torch.Tensor]], torch.Tensor],
        target: float,
        total_steps: int,
        *,
        reach_at: float = 0.4,
        lr: float | None = None,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not 0 < target < 1:
            raise ValueError(f"target must be a kept share in (0, 1), got {target!r}")
        if not 0 < reach_at <= 1:
            raise ValueError(f"reach_at must be in (0, 1], got {reach_at!r}")
        self.kept_share = kept_share
        self.target = float(target)
        self.ramp_steps = max(1, round(reach_at * total_steps))
        self.lambdas = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam(
            [self.lambdas], lr=lr if lr is not None else LR_SCALE / self.ramp_steps, maximize=True
        )
        self.iteration = 0
        self.last_share: float | None = None

    def target_at(self, step: int) -> float:
        """The warmed-up target: 1 at step 0, ``target`` from ``ramp_steps`` on."""
        return 1.0 - (1.0 - self.target) * min(1.0, step / self.ramp_steps)

    def term(self, keep_prob: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The Lagrangian term for this step (differentiable in the gates and the multipliers)."""
        share = self.kept_share(keep_prob)
        self.last_share = float(share.detach())
        gap = share - self.target_at(self.iteration)
        lambdas = self.lambdas.to(share.device)
        return (lambdas[0] * gap.clamp(min=0) + lambdas[1] * gap * gap).to(torch.float32)

    def update(self) -> None:
        """Ascend the multipliers on the gradient the last backward left (after the step)."""
        if self.lambdas.grad is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1

    def stats(self) -> dict[str, float]:
        return {
            "l0/lambda_1": float(self.lambdas[0].detach()),
            "l0/lambda_2": float(self.lambdas[1].detach()),
            "l0/expected_share": float("nan") if self.last_share is None else self.last_share,
            "l0/target_now": self.target_at(self.iteration),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "lambdas": self.lambdas.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.lambdas.copy_(state["lambdas"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
