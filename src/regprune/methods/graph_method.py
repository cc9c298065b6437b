"""The shared machinery of every structural method: one trace, one target, one plan.

Every method is a :class:`GraphMethod`: it traces the model once at construction (so its
regularizer can precompute index tensors), accepts either a ratio or a MACs budget (with
``scope`` and ``round_to``), and turns its own channel scores into a Plan with the same
allocation code as one-shot pruning. Subclasses only say how they regularize and score.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regprune.allocation import MacsModel, Plan, Target, allocate
from regprune.graph import DependencyGraph, trace_graph
from regprune.lifecycle import CalibrationData, PruningMethod
from regprune.metrics import count
from regprune.regularizers.budget import SILENT_RATIO, BudgetSchedule
from regprune.regularizers.ceiling import SilenceCeiling
from regprune.regularizers.growing_l2 import budget_schedule
from regprune.regularizers.protocol import Regularizer
from regprune.regularizers.staged import (
    SELECT_CEILING,
    SELECT_RATIO,
    SELECT_SHARE,
    SelectThenSilence,
)
from regprune.surgery import CompensationReport, apply_plan_with_report
from regprune.surgery.compensate import check_compensate
from regprune.train.batchnorm import recalibrate_batch_norm
from regprune.train.distributed import broadcast_object


class GraphMethod(PruningMethod):
    """A method over the channel groups of a traced model.

    Args:
        model: the model to train and prune (methods that install gates say so).
        example_inputs: inputs the model accepts, for tracing (batch 1 is enough).
        ratio: fraction of channels to remove; or
        target_macs: fraction of the MACs to keep (met within 1%).
        scope: ``"local"`` (per group) or ``"global"`` (one ranking).
        round_to: kept widths are multiples of this; ``"auto"``: aligned where the target
            allows (:class:`regprune.allocation.Target`).
        max_ratio: no channel group loses more than this fraction of its channels (default
            0.8, :data:`regprune.allocation.target.DEFAULT_MAX_RATIO`; 1.0 for no cap).
        ignore: modules (or names) whose outputs keep their width.
        compensate: what the removed channels still send is folded into the layers that read
            them (:func:`regprune.apply_plan`): ``"constant"`` (default), ``"mean"`` (over the
            ``data`` given to :meth:`prune`) or ``"none"``.
    """

    default_scope = "global"
    target_optional = False
    """True for methods that can decide the widths themselves (L0's closed gates)."""
    silences_removal_set = False
    """True for methods whose regularizer is meant to silence what they remove: they warn at
    prune time when it did not (a one-shot criterion removes live channels by design)."""
    SILENT_SHARE = 0.9
    """Below this share of silent removed inputs, a silencing method warns (our choice)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        ratio: float | None = None,
        target_macs: float | None = None,
        scope: str | None = None,
        round_to: int | str = 1,
        max_ratio: float | None = None,
        ignore: Iterable[nn.Module | str] = (),
        compensate: str | None = "constant",
        attention: str = "heads",
    ) -> None:
        super().__init__(model)
        check_compensate(compensate, has_data=True)
        self.compensate = compensate
        self.scope = scope or self.default_scope
        self.target: Target | None = None
        """The validated target; None only for a method that decides the widths itself."""
        if not (self.target_optional and ratio is None and target_macs is None):
            self.target = Target(ratio, target_macs, self.scope, round_to, max_ratio)
        self.example_inputs = example_inputs
        # attention: what one removable channel of a (heads, head_dim) split is (heads or
        # head_dim positions: regprune.graph.ATTENTION_UNITS)
        self.graph: DependencyGraph = trace_graph(
            model, example_inputs, ignore=ignore, attention=attention
        )
        if not self.graph.groups:
            raise ValueError(
                f"{type(self).__name__}: the model has no prunable channel group; "
                + "; ".join(str(u) for u in self.graph.unprunable[:3])
            )
        self._macs_model: MacsModel | None = None
        self.last_plan: Plan | None = None
        self.last_compensation: CompensationReport | None = None
        self.last_warnings: list[str] = []
        self.budget: BudgetSchedule | None = None
        self.strength_mode = "explicit"
        self.silence_step: int | None = None
        """Budget mode: the iteration by which the removal set is due silent."""
        self.ceiling: SilenceCeiling | None = None
        self.loss_watch: dict[str, Any] = {"ema": None, "start": None, "seen": 0}

    @property
    def groups(self):
        return self.graph.groups

    # ---- budget mode (regprune.regularizers.budget) ------------------------------------------
    def choose_strength(
        self,
        explicit: float | None,
        *,
        paper: float,
        initial: float,
        total_steps: int | None,
        silence_at: float,
        end_ratio: float = SILENT_RATIO,
        ceiling: float | None = None,
        loss_tolerance: float = 0.25,
    ) -> float:
        """The strength to start with, and the mode: an explicit strength is used as given
        (reproducing a paper or a tuned run); otherwise with ``total_steps`` the budget drives
        it from ``initial`` along a path to ``end_ratio`` at ``silence_at``; with neither, the
        paper's default."""
        if explicit is not None:
            self.strength_mode = "explicit"
            return float(explicit)
        if total_steps is None:
            self.strength_mode = "paper"
            return paper
        self.strength_mode = "budget"
        self.budget = BudgetSchedule(
            total_steps,
            initial,
            silence_at=silence_at,
            end_ratio=end_ratio,
            ceiling=ceiling,
            loss_tolerance=loss_tolerance,
            owner=self.name,
        )
        return initial

    def select_then_silence(
        self,
        first: Regularizer,
        explicit: float | None,
        *,
        paper: float,
        initial: float,
        total_steps: int | None,
        silence_at: float,
        ceiling: float | None = None,
    ) -> Regularizer:
        """The regularizer of a method that penalizes every channel (slimming, group lasso,
        HGSR): ``first`` at the chosen strength (:meth:`choose_strength`); in budget mode
        wrapped so that it selects for :data:`SELECT_SHARE` of the budget, under the controller
        towards :data:`SELECT_RATIO` and at most ``ceiling`` (default :data:`SELECT_CEILING`
        times ``initial``), and growing L2 then silences what it selected by
        ``silence_at`` (:mod:`regprune.regularizers.staged`)."""
        first.strength = self.choose_strength(
            explicit,
            paper=paper,
            initial=initial,
            total_steps=total_steps,
            silence_at=SELECT_SHARE,
            end_ratio=SELECT_RATIO,
            ceiling=SELECT_CEILING * initial if ceiling is None else ceiling,
        )
        if self.budget is None:
            return first
        assert total_steps is not None
        self.plan_silence(total_steps, silence_at)
        select_steps = max(1, round(SELECT_SHARE * total_steps))
        if select_steps >= total_steps:
            raise ValueError(
                f"{self.name}: a budget of {total_steps} steps leaves nothing to silence with; "
                "give total_steps >= 2"
            )
        left = total_steps - select_steps
        share = min(max((silence_at * total_steps - select_steps) / left, 0.1), 1.0)

        def choose(model: nn.Module) -> dict[int, torch.Tensor]:
            return self.select(self._silence_scores())

        return SelectThenSilence(
            first,
            self.groups,
            choose,
            lambda steps: budget_schedule(steps, share, 1),
            total_steps=total_steps,
            select_steps=select_steps,
        )

    def plan_silence(self, total_steps: int, silence_at: float) -> None:
        """Budget mode: the removal set is due silent by ``silence_at`` of ``total_steps``,
        which the penalty aims at and :class:`SilenceCeiling` guarantees (called by each
        budget mode once it knows where its silencing ends)."""
        self.silence_step = max(1, round(silence_at * total_steps))

    def fixed_removal_masks(self) -> dict[int, torch.Tensor] | None:
        """The removal set once the method has fixed it for good (True = removed), None while
        it is still choosing: what the budget's :class:`SilenceCeiling` follows. Default: the
        set a select-then-silence regularizer chose at its switch."""
        if isinstance(self.regularizer, SelectThenSilence):
            return self.regularizer.masks
        return None

    def _follow_ceiling(self) -> None:
        if self.silence_step is None:
            return
        if self.ceiling is None:
            masks = self.fixed_removal_masks()
            if masks is None:
                return
            self.ceiling = SilenceCeiling(
                self.groups,
                masks,
                start_step=self.iteration,
                silence_step=self.silence_step,
                end_ratio=SILENT_RATIO,
            )
        self.ceiling.apply(self.model, self.iteration)

    def budget_active(self) -> bool:
        """Whether the budget drives the strength now (MaskSparsity: only once it has a mask;
        select-then-silence: only while selecting)."""
        if isinstance(self.regularizer, SelectThenSilence):
            return self.budget is not None and self.regularizer.selecting
        return self.budget is not None

    silence_comparable = True
    """Whether :meth:`silence_scores` compare across groups (the allocation rescales if not)."""

    def silence_scores(self) -> dict[int, torch.Tensor]:
        """Per channel, the quantity the regularizer drives to zero (override per method)."""
        raise NotImplementedError

    def removal_masks(self, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The channels the method would remove now (default: its target over ``scores``)."""
        return self.plan_from_scores(scores, comparable=self.silence_comparable).drop_masks()

    def select(self, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The removal set fixed at the end of a select-then-silence selection stage."""
        return self.removal_masks(scores)

    def _silence_scores(self) -> dict[int, torch.Tensor]:
        return {g: v.detach().double().cpu() for g, v in self.silence_scores().items()}

    def removal_ratio(self) -> float:
        """90th percentile of the removal set's scores over the kept channels' median at the
        budget's first check (a fixed scale, see :mod:`regprune.regularizers.budget`)."""
        scores = self._silence_scores()
        masks = self.removal_masks(scores)
        removed = torch.cat([scores[g][masks[g]] for g in scores if g in masks])
        kept = torch.cat([scores[g][~masks[g]] for g in scores if g in masks])
        if not removed.numel() or not kept.numel():
            return 0.0
        assert self.budget is not None
        if self.budget.reference_scale is None:
            self.budget.reference_scale = float(kept.median())
        scale = self.budget.reference_scale
        return float(torch.quantile(removed, 0.9)) / scale if scale > 0 else 0.0

    def observe_loss(self, loss: float) -> None:
        if self.budget is not None:
            self.budget.observe_loss(loss)
        if not math.isfinite(loss):
            return
        watch = self.loss_watch
        watch["ema"] = loss if watch["ema"] is None else 0.8 * watch["ema"] + 0.2 * loss
        watch["seen"] += 1
        if watch["seen"] == self.LOSS_WARMUP:
            watch["start"] = watch["ema"]

    def step(self) -> None:
        super().step()
        if self.budget is not None and self.budget_active() and self.budget.due(self.iteration):
            ratio = self.removal_ratio()
            # every DDP rank must use the same strength: rank 0's losses decide
            strength = broadcast_object(self.budget.update(self.iteration, ratio))
            self.budget.strength = strength
            assert self.regularizer is not None
            self.regularizer.strength = strength
        self._follow_ceiling()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["loss_watch"] = dict(self.loss_watch)
        if self.budget is not None:
            state["budget"] = self.budget.state_dict()
        if self.ceiling is not None:
            state["ceiling"] = self.ceiling.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "loss_watch" in state:
            self.loss_watch = dict(state["loss_watch"])
        if self.budget is not None and state.get("budget") is not None:
            self.budget.load_state_dict(state["budget"])
            assert self.regularizer is not None
            self.regularizer.strength = self.budget.strength
        if state.get("ceiling") is not None:
            self.ceiling = SilenceCeiling.from_state(self.groups, state["ceiling"])

    @property
    def macs_model(self) -> MacsModel:
        if self._macs_model is None:
            self._macs_model = MacsModel(self.graph, count(self.model, self.example_inputs).macs)
        return self._macs_model

    def plan_from_scores(self, scores: dict[int, torch.Tensor], comparable: bool) -> Plan:
        """Allocate the method's target over its own channel scores (higher = keep)."""
        if self.target is None:
            raise ValueError(f"{self.name}: no ratio or target_macs was given to allocate")
        plan = allocate(
            self.graph,
            scores,
            self.target,
            comparable=comparable,
            macs_model=self.macs_model if self.target.is_macs else None,
        )
        return broadcast_object(plan)

    def plan_from_masks(self, masks: dict[int, torch.Tensor]) -> Plan:
        """A plan that drops exactly the channels marked True (a fixed prune set)."""
        drop = {gid: torch.nonzero(m).reshape(-1).tolist() for gid, m in masks.items() if m.any()}
        sizes = {g.id: g.size for g in self.graph.groups}
        return Plan(drop, sizes, self.graph.model_type)

    def apply(
        self, plan: Plan, data: CalibrationData | None = None, *, source: nn.Module | None = None
    ) -> nn.Module:
        """Build the smaller model, compensated; remember the plan and what the fold found.

        ``source``: the model to cut, by default :meth:`model_to_prune`; it must have the
        same module names and shapes as the trained one, i.e. the graph must fit it.
        """
        self.last_plan = plan
        if source is None:
            source = self.model_to_prune(data)
        if self.compensate == "mean" and not data:
            raise ValueError(
                f"{self.name}: compensate='mean' needs calibration batches; call prune(data) "
                "with a few training batches, or use compensate='constant'"
            )
        pruned, report = apply_plan_with_report(
            source,
            self.graph,
            plan,
            compensate=self.compensate,
            calibration=data,
        )
        self.last_compensation = report
        self.last_warnings = self.schedule_warnings(plan) + self.loss_warnings()
        if self.silences_removal_set and report.silent_share < self.SILENT_SHARE:
            self.last_warnings.append(
                f"{self.name}: only {report.silent_inputs} of the {report.removed_inputs} "
                "removed channel inputs were silent where they are read (their range a median "
                f"{report.median_relative_range:.2g} of the kept channels'): the regularizer "
                "has not finished, so removal costs accuracy; train longer or stronger, or "
                "prune with compensate='mean'"
            )
        for text in self.last_warnings:
            warnings.warn(text, stacklevel=3)
        return pruned

    def model_to_prune(self, data: CalibrationData | None = None) -> nn.Module:
        """The trained model; after training under a penalty, a copy of it whose BatchNorm
        statistics are re-estimated on ``data`` (when given).

        Why (**our choice**; the papers prune the model as trained): a penalty moves weights
        faster than momentum-0.1 running statistics follow, so the trained model in eval mode
        computes something its training never did. On ResNet-20 after 1,000 budget-mode steps
        GReg-2 read 79.8 % as trained and 83.5 % with statistics re-estimated on the 4
        calibration batches (baseline 83.3; docs/budget_study.md, the rows and the session-10
        reading). Removal is measured and compensated on the network as it will compute.
        One-shot methods cut the model as trained: its statistics are averaged over a whole
        training run, better than a few calibration batches.
        """
        if self.regularizer is None or not data:
            return self.model
        settled = copy.deepcopy(self.model)
        recalibrate_batch_norm(settled, data)
        return settled

    LOSS_ROSE = 2.0
    """A method warns at prune time when the task loss (an EMA over ~5 iterations) ended above
    this multiple of its value after the first :data:`LOSS_WARMUP` iterations (our choice; the
    pipeline also compares test accuracy with the baseline, a user's own loop may have no test
    set). Needs the loop to call :meth:`observe_loss`, as the library's trainer does."""
    LOSS_WARMUP = 5

    def loss_warnings(self) -> list[str]:
        """Say loudly that the regularized model fell far below where it started."""
        start, now = self.loss_watch["start"], self.loss_watch["ema"]
        if start is None or now is None or now <= self.LOSS_ROSE * start:
            return []
        return [
            f"{self.name}: the task loss rose from {start:.3g} to {now:.3g} during sparsity "
            "training: the regularized model is far below its baseline, and pruning keeps "
            "what it lost; give a longer budget (total_steps), a weaker strength or a "
            "smaller target"
        ]

    def schedule_warnings(self, plan: Plan) -> list[str]:
        """What the method knows about its own unfinished schedule at prune time (override)."""
        return []

    def removal_report(self) -> dict[str, Any]:
        """How silent the removed channels were, measured where they are read (after prune),
        the method's warnings about its schedule, and the budget's state in budget mode."""
        if self.last_compensation is None:
            return {}
        report = self.last_compensation.to_dict() | {"warnings": list(self.last_warnings)}
        report["strength_mode"] = self.strength_mode
        if self.budget is not None:
            report["budget"] = self.budget.report()
        return report

    def scores(self, data: CalibrationData | None = None) -> tuple[dict[int, torch.Tensor], bool]:
        """Per-channel scores and whether they compare across groups (override per method)."""
        raise NotImplementedError

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        """The method's target over its own scores; in select-then-silence budget mode the set
        it selected and silenced (a first-order criterion such as HGSR's fast loss increase
        can rank a live channel below a silent one: its estimate is signed)."""
        staged = self.regularizer
        if isinstance(staged, SelectThenSilence) and staged.masks is not None:
            return self.apply(self.plan_from_masks(staged.masks), data)
        scores, comparable = self.scores(data)
        return self.apply(self.plan_from_scores(scores, comparable), data)
