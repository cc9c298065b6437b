"""Budget-driven strength: silence the removal set within the sparsify steps the user has.

Why: a fixed penalty strength only works for the schedule it was sized for. The papers' defaults
assume 100-300 epochs; in 300 steps they barely move, and a strength sized for 300 steps wrecks a
network trained for 3,000. Given the budget (``total_steps``), this controller plans the path of
the removal set's relative magnitude ``r`` (the set's 90th percentile of the regularized
quantity over the kept channels' median: |gamma|, group norms) from its value at the start down
to :data:`SILENT_RATIO` at ``silence_at`` of the budget, geometrically, and every
``check_every`` steps

* raises the strength (x ``raise_factor``) when ``r`` is above the planned path,
* lowers it (x ``lower_factor``) when ``r`` is already below,
* and lowers it whenever the task loss (an EMA over ~5 iterations) is more than
  ``loss_tolerance`` above its value when control started: the network first has to absorb
  what was taken. The strength never drops below its initial value.

``r`` is measured against the kept channels' median *at the first check* (a fixed scale).
A penalty confined to the removal set (MaskSparsity's masked stage) is driven to
:data:`SILENT_RATIO`. A penalty on every channel (slimming, group lasso, HGSR) cannot be: driven
there, the pilot (benchmarks/budget_pilot.py, docs/methods.md) collapsed the network in 100
steps whatever the guard, since raising the strength shrinks what is kept as fast as what goes.
Those methods only *select* under this controller, to a higher ``end_ratio``, and a growing L2
on the chosen set silences it (:mod:`regprune.regularizers.staged`).

The remaining ``1 - silence_at`` of the budget lets the network adapt with the set held silent.
**Our choice**: a multiplicative (bang-bang) controller rather than a tuned PID; it needs no
knowledge of the learning rate or the model's scale, and reaches any strength within a few
dozen checks. Its whole state is in :meth:`state_dict`, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

SILENT_RATIO = 1e-2
"""The planned end point: the removal set's magnitude at 1 % of the kept channels' (our
choice; channels this quiet are silent where they are read, and their constant part is folded
by surgery)."""

MIN_USEFUL_STEPS = 20
"""Below this many steps no schedule can silence anything: the method warns."""

SHORT_BUDGET_STEPS = 200
"""Below this many steps the removal set is silenced faster than the network adapts, and the
method warns that the model loses accuracy before pruning. Measured (docs/budget_study.md,
target 50 % of the MACs): at 50 and 100 steps most methods ended 2-9 points below the same
training without a penalty on ResNet-20; from 250 steps every method was within 2."""


def geometric_share(step: int, start_step: int, end_step: int, end_ratio: float) -> float:
    """The planned path of a removal set: 1 at ``start_step``, falling geometrically to
    ``end_ratio`` at ``end_step`` and held there (the controller's target and the ceiling's
    cap, :mod:`regprune.regularizers.ceiling`). Geometric (our choice): most of the fall comes
    early, which leaves the network the longest time to adapt to the set's absence."""
    progress = min(max(step - start_step, 0) / max(end_step - start_step, 1), 1.0)
    return end_ratio**progress


def warn_if_too_short(total_steps: int, owner: str) -> None:
    """Every budget mode says so when its budget cannot silence anything, or only at a cost."""
    if total_steps < MIN_USEFUL_STEPS:
        warnings.warn(
            f"{owner}: a budget of {total_steps} sparsify steps is too short to silence "
            f"anything (at least {MIN_USEFUL_STEPS}); pruning will remove live channels",
            stacklevel=4,
        )
    elif total_steps < SHORT_BUDGET_STEPS:
        warnings.warn(
            f"{owner}: a budget of {total_steps} sparsify steps silences the removal set "
            f"faster than the network adapts (under {SHORT_BUDGET_STEPS}): expect the model "
            "to lose a few points before pruning, which fine-tuning mostly recovers "
            "(docs/budget_study.md); give more steps to avoid it",
            stacklevel=4,
        )


class BudgetSchedule:
    """Drive one penalty strength so that the removal set is silent by ``silence_at``.

    Args:
        total_steps: the sparsify iterations (the budget).
        initial: the strength to start from (each method has a scale-aware default).
        silence_at: share of the budget by which the set should be silent (0.8).
        check_every: steps between checks; default ``total_steps / 50`` rounded (at least 1):
            about 50 checks per budget.
        raise_factor, lower_factor: multiplicative steps of the strength.
        loss_tolerance: relative rise of the task loss over its start that stops raising.
        end_ratio: where the planned path ends (:data:`SILENT_RATIO`; a selection stage ends
            higher, see :mod:`regprune.regularizers.staged`).
        ceiling: the strength never rises above this (None: no bound). For a penalty whose
            damage the task loss does not show in time (HGSR on BatchNorm nets shrinks every
            group, which train-mode BN hides and eval mode does not).
        owner: the method's name, for the warning.
    """

    def __init__(
        self,
        total_steps: int,
        initial: float,
        *,
        silence_at: float = 0.8,
        check_every: int | None = None,
        raise_factor: float = 1.3,
        lower_factor: float = 0.8,
        loss_tolerance: float = 0.25,
        end_ratio: float = SILENT_RATIO,
        ceiling: float | None = None,
        owner: str = "method",
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(
                f"total_steps must be a positive integer (the sparsify iterations), "
                f"got {total_steps!r}"
            )
        if not 0 < silence_at <= 1:
            raise ValueError(f"silence_at must be in (0, 1], got {silence_at!r}")
        if not 0 < end_ratio < 1:
            raise ValueError(f"end_ratio must be in (0, 1), got {end_ratio!r}")
        if not initial > 0:
            raise ValueError(f"the initial strength must be > 0, got {initial!r}")
        warn_if_too_short(total_steps, owner)
        self.total_steps = total_steps
        self.silence_at = float(silence_at)
        self.end_ratio = float(end_ratio)
        self.ceiling = ceiling
        self.check_every = check_every or max(1, round(total_steps / 50))
        self.raise_factor = raise_factor
        self.lower_factor = lower_factor
        self.loss_tolerance = loss_tolerance
        self.strength = float(initial)
        self.floor = float(initial)
        """The strength never drops below where it started: backing off holds, never undoes."""
        self.start_ratio: float | None = None
        self.start_step = 0
        self.last_ratio: float | None = None
        self.loss_start: float | None = None
        self.loss_ema: float | None = None
        self.held = 0
        self.reference_scale: float | None = None

    @property
    def silence_step(self) -> int:
        return max(1, round(self.silence_at * self.total_steps))

    def planned(self, step: int) -> float | None:
        """The relative magnitude the removal set should have after ``step`` steps."""
        if self.start_ratio is None:
            return None
        start = max(self.start_ratio, self.end_ratio)
        return start * geometric_share(
            step, self.start_step, self.silence_step, self.end_ratio / start
        )

    def observe_loss(self, loss: float) -> None:
        """Feed the task loss of one iteration (an EMA over about 5 iterations: the guard must
        see a collapse coming before the strength has grown further)."""
        if not math.isfinite(loss):
            return
        self.loss_ema = loss if self.loss_ema is None else 0.8 * self.loss_ema + 0.2 * loss

    def due(self, step: int) -> bool:
        return step % self.check_every == 0

    def update(self, step: int, ratio: float) -> float:
        """One check after ``step`` steps with the removal set at ``ratio``: the new strength."""
        if self.start_ratio is None:
            self.start_ratio = ratio
            self.start_step = step
            self.loss_start = self.loss_ema  # the loss when control starts is the reference
        self.last_ratio = ratio
        target = self.planned(step)
        assert target is not None
        if self._loss_too_high():
            self.held += 1  # the network must first absorb what was taken: back off
            self.strength = max(self.strength * self.lower_factor, self.floor)
        elif ratio > target:
            self.strength *= self.raise_factor
            if self.ceiling is not None:
                self.strength = min(self.strength, self.ceiling)
        else:
            self.strength = max(self.strength * self.lower_factor, self.floor)
        return self.strength

    def _loss_too_high(self) -> bool:
        if self.loss_ema is None or self.loss_start is None:
            return False
        return self.loss_ema > (1 + self.loss_tolerance) * self.loss_start

    def report(self) -> dict[str, Any]:
        """Where the schedule stands (for logs and the removal report)."""
        return {
            "total_steps": self.total_steps,
            "strength": self.strength,
            "start_ratio": self.start_ratio,
            "last_ratio": self.last_ratio,
            "end_ratio": self.end_ratio,
            "held_by_loss": self.held,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "start_ratio": self.start_ratio,
            "start_step": self.start_step,
            "last_ratio": self.last_ratio,
            "loss_start": self.loss_start,
            "loss_ema": self.loss_ema,
            "held": self.held,
            "reference_scale": self.reference_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strength = float(state["strength"])
        self.start_ratio = state["start_ratio"]
        self.start_step = int(state["start_step"])
        self.last_ratio = state["last_ratio"]
        self.loss_start = state["loss_start"]
        self.loss_ema = state["loss_ema"]
        self.held = int(state["held"])
        self.reference_scale = state["reference_scale"]
