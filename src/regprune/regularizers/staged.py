"""Select, then silence: how a penalty on every channel meets a budget (issue 14; our choice).

Why: slimming, group lasso and HGSR penalize every channel, so a strength raised to silence the
channels that will go shrinks the ones that stay as fast (on BatchNorm nets the next BN undoes a
uniform shrink), and the budget controller collapsed them (docs/methods.md). Their papers use the
penalty to *choose*: after long training the unneeded channels are the ones it drove lowest.
Within a budget we keep that role and hand the rest to the mechanism that is known to silence a
set without touching the others:

1. **select** (``select_steps``, by default 20 % of the budget): the paper's penalty on every
   channel, its strength driven by the method's budget controller towards a separation of the
   would-be removal set (the controller's usual loss guard holds it back);
2. at the switch the method's own ranking of the regularized quantity and its target fix the
   removal set (``choose``);
3. **silence**: GReg's growing L2 on exactly that set, on filters and BN scale *and* shift
   (:class:`regprune.regularizers.GrowingL2`), sized so that the set is silent by
   ``silence_at`` of the whole budget; the rest lets the network adapt.

The method still selects with its own criterion at prune time (slimming's |gamma|, group lasso's
norms, HGSR's loss increase); a silenced channel scores ~0 in each of them, so it goes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup
from regprune.regularizers.growing_l2 import GrowingL2, greg_for
from regprune.regularizers.protocol import Regularizer

SELECT_SHARE = 0.2
"""Share of the budget the paper's penalty has to choose the removal set (our choice). The
penalty on every channel shrinks the kept ones too, so the shorter it acts the less the network
loses before the set is silenced: at 250 budget steps, 0.2 instead of 0.4 took the model before
pruning from 3.8-5.4 points below the baseline to 0.9-2.3 on VGG-11 (slimming, group lasso,
HGSR, AdaPruner) and AdaPruner on ResNet-20 from -16.1 to -3.2 (docs/budget_study.md,
"Selection share")."""

SELECT_CEILING = 100.0
"""While selecting, the strength stays within this multiple of where it started (our choice).
The selection only has to separate, and a penalty on every channel acts with a lag the
controller cannot see: on cpu_budget.yaml (94 steps, a check every step) group lasso's strength
grew 1.3^38-fold, the task loss rose from 0.41 to 1.67 and fine-tuning ended at 51 %
(commit f86a6f9, `python -m benchmarks.methods.run benchmarks/methods/configs/cpu_budget.yaml
--seeds 0 --only group_lasso_budget`)."""

SELECT_RATIO = 0.5
"""Where the selection stage's controller steers the would-be removal set: its 90th percentile
at half the kept channels' median (our choice: separated enough that the ranking is the
penalty's, far from the silence a penalty on every channel cannot reach safely)."""

Masks = Mapping[int, torch.Tensor]


class SelectThenSilence(Regularizer):
    """The paper's regularizer for ``select_steps`` steps, then growing L2 on what it chose.

    Args:
        first: the paper's regularizer (penalty on every channel).
        groups: the channel groups the growing L2 acts on.
        choose: called once at the switch with the model: ``{group id: BoolTensor}``
            (True = remove), the method's target over its own ranking.
        silence_schedule: ``steps -> GrowingL2 schedule`` for the remaining steps
            (:func:`regprune.regularizers.growing_l2.budget_schedule` with the right share).
        total_steps: the whole budget; select_steps: the selection stage's length.
    """

    def __init__(
        self,
        first: Regularizer,
        groups: Sequence[ChannelGroup],
        choose: Callable[[nn.Module], Masks],
        silence_schedule: Callable[[int], dict[str, Any]],
        *,
        total_steps: int,
        select_steps: int,
    ) -> None:
        if not 0 < select_steps < total_steps:
            raise ValueError(
                f"select_steps must be in (0, total_steps={total_steps}), got {select_steps!r}"
            )
        self.first = first
        self.groups = list(groups)
        self.choose = choose
        self.silence_schedule = silence_schedule
        self.total_steps = total_steps
        self.select_steps = select_steps
        self.steps = 0
        self.masks: dict[int, torch.Tensor] | None = None
        self.second: GrowingL2 | None = None

    @property
    def selecting(self) -> bool:
        return self.second is None

    @property
    def edits_gradients(self) -> bool:  # type: ignore[override]
        return self.first.edits_gradients if self.selecting else True

    @property
    def strength_attr(self) -> str | None:  # type: ignore[override]
        return self.first.strength_attr

    @property
    def strength(self) -> float:  # type: ignore[override]
        return self.first.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.first.strength = value

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.first.penalty(model) if self.selecting else super().penalty(model)

    def apply_to_grads(self, model: nn.Module) -> None:
        if self.second is not None:
            self.second.apply_to_grads(model)
        else:
            self.first.apply_to_grads(model)

    def step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.second is not None:
            self.second.step(model)
            return
        self.first.step(model)
        if self.steps >= self.select_steps:
            masks = {int(g): m.bool().cpu() for g, m in self.choose(model).items()}
            self._start_silencing(masks)

    def _start_silencing(self, masks: dict[int, torch.Tensor]) -> None:
        self.masks = masks
        schedule = self.silence_schedule(self.total_steps - self.select_steps)
        self.second = greg_for(self.groups, masks, 1, **schedule)

    @property
    def done(self) -> bool:
        return self.second is not None and self.second.done

    @property
    def phase(self) -> str:
        return "selecting" if self.second is None else f"silencing ({self.second.phase})"

    def parameters(self) -> list[nn.Parameter]:
        return self.first.parameters()

    def stats(self, model: nn.Module) -> dict[str, float]:
        if self.second is None:
            return self.first.stats(model)
        return {f"silence/{k}": v for k, v in self.second.stats(model).items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "first": self.first.state_dict(),
            "masks": self.masks,
            "second": None if self.second is None else self.second.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.first.load_state_dict(state["first"])
        self.masks, self.second = None, None
        if state["masks"] is not None:
            self._start_silencing({int(g): m.bool() for g, m in state["masks"].items()})
            assert self.second is not None
            self.second.load_state_dict(state["second"])
