"""L0 regularization with hard-concrete gates (Louizos, Welling, Kingma, ICLR 2018).

Two granularities:

* ``channel`` (structured): one gate per channel of every group, so whatever the gates close
  is physically removed afterwards: a smaller, faster plain model.
* ``weight`` (fine-grained, Xie et al., ECAI 2019): one gate per weight; closed gates become
  exact zeros.

The gates are a reparametrization installed **on the model you pass** (its ``log_alpha``
parameters appear in ``model.parameters()``: build the optimizer after the method).
``prune()`` writes the test-time gates into the weights of a copy
(:meth:`L0Regularizer.baked_copy`) and prunes that, so what comes out is a plain ``nn.Module``
and the gated model is left as it was (training can go on).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from regprune.allocation import Plan
from regprune.lifecycle import CalibrationData, PruningMethod
from regprune.methods.graph_method import GraphMethod
from regprune.methods.registry import register_method
from regprune.methods.unstructured import (
    KeepSparsity,
    prunable_weights,
)
from regprune.regularizers import L0Regularizer
from regprune.regularizers.budget import warn_if_too_short
from regprune.regularizers.lagrangian import ExpectedCostConstraint
from regprune.train.batchnorm import recalibrate_batch_norm


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"gate_lr_scale must be a number > 0, got {scale!r}")
    return float(scale)


GATE_TRAVEL = 10.0
"""Budget mode: the gates' own Adam runs at ``GATE_TRAVEL / warm-up steps`` (our choice): Adam
moves a parameter about ``lr`` a step while its gradient keeps its sign, so a gate can travel
this far in ``log_alpha`` during the constraint's warm-up, about twice the way from the initial
keep probability 0.9 (``log_alpha`` 2.2) to a closed test gate (below -2.4)."""


def _gates_own_adam(regularizer: L0Regularizer, gate_lr: float | None) -> None:
    """Budget mode: the gates train with their own Adam, sized to the constraint's warm-up."""
    assert regularizer.constraint is not None
    lr = GATE_TRAVEL / regularizer.constraint.ramp_steps if gate_lr is None else gate_lr
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"gate_lr must be a number > 0, got {gate_lr!r}")
    regularizer.train_gates_with_adam(float(lr))


@register_method("l0_channel")
class L0Channel(GraphMethod):
    """Structured L0: gates on channels, removal of closed ones.

    Args:
        lam: ``lambda`` of the expected-L0 penalty.
        num_samples: ``N``, training set size (the penalty is scaled by 1/N).
        init_keep_prob: initial keep probability of every gate.
        gate_lr_scale: the gates' ``log_alpha`` train at this multiple of the weights' learning
            rate and without weight decay (**our choice**: the paper trains everything with
            Adam, whose steps do not depend on the gradient's scale; with SGD the expected-L0
            gradient, ``lam / N`` times a sigmoid slope, moves ``log_alpha`` too slowly to close
            gates in a short schedule, and weight decay would pull it towards keep-prob 0.5).
            Default 1. In budget mode the gates have an Adam of their own instead (``gate_lr``);
            giving ``gate_lr_scale`` there puts them back in the caller's optimizer.
        total_steps: the sparsify budget. Given without ``lam``, the gates meet the target by
            themselves (**budget mode**): no per-gate penalty, a Lagrangian constraint on the
            expected MACs (``target_macs``) or the expected kept channels (``ratio``) instead,
            its target warmed up to be reached at half of ``silence_at`` of the budget
            (:mod:`regprune.regularizers.lagrangian`; Wang et al. 2020, CoFi 2022); from
            ``silence_at`` on the gates take their test value in training too
            (:attr:`L0Regularizer.settle_at`).
        silence_at: share of the budget by which the removed set should be silent (0.8).
        constraint_lr: the multipliers' Adam learning rate (default: sized to the budget).
        gate_lr: budget mode: the learning rate of the gates' own Adam, stepped by
            :meth:`step` whatever the weights' optimizer and schedule (default
            :data:`GATE_TRAVEL` / warm-up steps; :meth:`L0Regularizer.train_gates_with_adam`
            says why). Build the optimizer with :meth:`optimizer_groups`, which leaves the
            gates out.
        **target: optional (required in budget mode). Without a target the channels whose test
            gate is 0 are removed (at least one channel per group is kept); with ``ratio`` /
            ``target_macs`` the channels are ranked by ``log_alpha`` and allocated like any
            other criterion.
    """

    name = "l0_channel"
    silences_removal_set = True
    default_scope = "global"
    target_optional = True

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        lam: float | None = None,
        num_samples: int = 50000,
        init_keep_prob: float = 0.9,
        gate_lr_scale: float | None = None,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        constraint_lr: float | None = None,
        gate_lr: float | None = None,
        **target: Any,
    ) -> None:
        super().__init__(model, example_inputs, **target)
        budget = lam is None and total_steps is not None
        own_adam = budget and gate_lr_scale is None
        self.regularizer_lr_scale = _check_scale(1.0 if gate_lr_scale is None else gate_lr_scale)
        if lam is None:
            lam = 0.0 if budget else 0.1
        self.strength_mode = "budget" if budget else ("paper" if lam == 0.1 else "explicit")
        self.regularizer: L0Regularizer = L0Regularizer(
            model,
            self.groups,
            lam=lam,
            num_samples=num_samples,
            granularity="channel",
            init_keep_prob=init_keep_prob,
        )
        if budget:
            assert total_steps is not None
            self.regularizer.constraint = self._cost_constraint(
                total_steps, silence_at, constraint_lr
            )
            self.regularizer.settle_at = round(silence_at * total_steps)
            if own_adam:
                _gates_own_adam(self.regularizer, gate_lr)
            warn_if_too_short(total_steps, self.name)
        self._gates_at_prune: dict[int, torch.Tensor] = {}

    def _cost_constraint(
        self, total_steps: int, silence_at: float, lr: float | None
    ) -> ExpectedCostConstraint:
        """The Lagrangian of budget mode, on the expected MACs share or kept-channel share."""
        if self.target is None:
            raise ValueError(
                "l0_channel: budget mode (total_steps without lam) needs a target to constrain "
                "the gates to: give target_macs= or ratio=, or give lam= for the plain penalty"
            )
        if self.target.is_macs:
            model = self.macs_model
            components = {g.id: self.graph.group_components(g.id) for g in self.groups}
            count = self.graph.group_of_component.numel()

            def kept_share(keep_prob):
                # every step: one copy to the CPU and one scatter, not one per group
                gids = [int(g) for g in keep_prob]
                probs = torch.cat([p.reshape(-1) for p in keep_prob.values()]).double().cpu()
                where = torch.cat([components[g] for g in gids])
                prob = torch.ones(count, dtype=torch.float64).index_copy(0, where, probs)
                return model.expected(prob) / model.total

            share = float(self.target.target_macs)
        else:
            channels = float(sum(g.size for g in self.groups))

            def kept_share(keep_prob):
                return (
                    torch.cat([p.reshape(-1) for p in keep_prob.values()]).double().sum().cpu()
                    / channels
                )

            share = 1.0 - float(self.target.ratio)
        return ExpectedCostConstraint(
            kept_share, share, total_steps, reach_at=0.5 * silence_at, lr=lr
        )

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        gates = {int(k): v for k, v in self.regularizer.test_gates().items()}
        log_alpha = {
            int(k): g.log_alpha.detach().double().cpu() for k, g in self.regularizer.gates.items()
        }
        self._gates_at_prune = gates
        baked = self.model_to_prune(data)
        if self.target is None:
            masks = {}
            for gid, gate in gates.items():
                closed = (gate == 0).cpu()
                if bool(closed.all()):
                    closed[torch.argmax(log_alpha[gid])] = False
                masks[gid] = closed
            return self.apply(self.plan_from_masks(masks), data, source=baked)
        plan = self.plan_from_scores(log_alpha, comparable=True)
        _warn_closed_but_kept(gates, plan.drop_masks())
        return self.apply(plan, data, source=baked)

    def model_to_prune(self, data: CalibrationData | None = None) -> nn.Module:
        """The test-gated copy, its BN statistics re-estimated (:func:`_baked_with_statistics`)."""
        return _baked_with_statistics(self.regularizer, data)

    def schedule_warnings(self, plan: Plan) -> list[str]:
        gates = self._gates_at_prune
        if not gates:
            return []
        drop = plan.drop_masks()
        removed_open = sum(
            int((gates[g].reshape(-1).cpu()[drop[g]] > 0).sum()) for g in drop if g in gates
        )
        removed = plan.num_dropped()
        if not removed_open:
            return []
        return [
            f"l0_channel: {removed_open} of the {removed} removed channels still have open "
            "gates (the L0 penalty has not closed what the target removes); train longer or "
            "raise lam"
        ]

    def sparsity_stats(self) -> dict[str, float]:
        """Share of closed channel gates (by count, not by parameter entries)."""
        gates = torch.cat([g.reshape(-1) for g in self.regularizer.test_gates().values()])
        with torch.no_grad():
            expected = float(self.regularizer.expected_nonzero())
        return {"gates/closed": float((gates == 0).double().mean()), "l0/expected": expected}

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        return {f"group{k}": v.float().cpu() for k, v in self.regularizer.test_gates().items()}


def _baked_with_statistics(regularizer: L0Regularizer, data: CalibrationData | None) -> nn.Module:
    """The test-gated copy, its BatchNorm statistics re-estimated on ``data`` when given.

    Why (**our choice**; the paper's networks are evaluated as trained): the running
    statistics were averaged over forwards with *sampled* gates, whose spread of ``z`` in
    (0, 1) changes what every later BN sees, so they describe a different network than the
    test gates. On ResNet-20 after 250 budget-mode steps the gated model read 70.9 % in eval
    mode and the pruned one 81.9 % with its statistics recomputed on 4 batches
    (docs/budget_study.md, "Channel L0 and BatchNorm").
    """
    baked = regularizer.baked_copy()
    recalibrate_batch_norm(baked, data or [])
    return baked


def _warn_closed_but_kept(gates: dict[int, torch.Tensor], drop: dict[int, torch.Tensor]) -> None:
    """Warn when the target keeps channels whose gate is closed: they are zeros in the result.

    Why a warning and not a silent fix: the gated model computes exactly zero for those
    channels, and the pruned model must compute what it did; but a model whose kept channels
    are dead cannot learn them back (a conv fed by zero activations gets no gradient), so the
    user needs to hear that the penalty was too strong for the target.
    """
    kept_closed = total_kept = 0
    for gid, gate in gates.items():
        kept = ~drop[gid].to(gate.device)
        kept_closed += int((gate.reshape(-1)[kept] == 0).sum())
        total_kept += int(kept.sum())
    if kept_closed:
        warnings.warn(
            f"l0_channel: {kept_closed} of the {total_kept} channels kept for the target have "
            "closed gates and are zero in the pruned model (the L0 penalty closed more than "
            "the target removes); lower lam or gate_lr_scale (budget mode: gate_lr), or prune "
            "without a target",
            stacklevel=3,
        )


SNAPSHOT_GATES = 4096
"""Most gates per layer that :meth:`L0Weight.sparsity_snapshot` keeps."""


@register_method("l0_weight")
class L0Weight(PruningMethod):
    """Fine-grained L0: one gate per weight of every conv and linear; closed gates -> zeros.

    ``lam``, ``num_samples``, ``init_keep_prob``, ``gate_lr_scale`` and ``gate_lr`` as in
    :class:`L0Channel`.

    Budget mode (``total_steps`` and ``ratio``, no ``lam``): the expected share of open weight
    gates is constrained to ``1 - ratio`` by the same Lagrangian as channel L0's
    (:class:`ExpectedCostConstraint`, the cost being the number of weights), so the gates
    close the requested fraction by themselves; the closed ones are the zeros.
    """

    name = "l0_weight"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any = None,
        *,
        lam: float | None = None,
        num_samples: int = 50000,
        init_keep_prob: float = 0.9,
        gate_lr_scale: float | None = None,
        total_steps: int | None = None,
        ratio: float | None = None,
        silence_at: float = 0.8,
        constraint_lr: float | None = None,
        gate_lr: float | None = None,
    ) -> None:
        super().__init__(model)
        budget = lam is None and total_steps is not None
        if ratio is not None and not budget:
            raise ValueError(
                "l0_weight: ratio= is the target of budget mode; give total_steps= (the "
                "sparsify iterations) without lam=, or lam= without ratio="
            )
        if budget and ratio is None:
            raise ValueError(
                "l0_weight: budget mode (total_steps without lam) needs ratio= (the fraction "
                "of weights to zero) to constrain the gates to; or give lam= for the penalty"
            )
        own_adam = budget and gate_lr_scale is None
        self.regularizer_lr_scale = _check_scale(1.0 if gate_lr_scale is None else gate_lr_scale)
        if lam is None:
            lam = 0.0 if budget else 0.1
        self.strength_mode = "budget" if budget else ("paper" if lam == 0.1 else "explicit")
        self.regularizer: L0Regularizer = L0Regularizer(
            model,
            lam=lam,
            num_samples=num_samples,
            granularity="weight",
            init_keep_prob=init_keep_prob,
        )
        if budget:
            assert total_steps is not None and ratio is not None
            if not 0 < ratio < 1:
                raise ValueError(f"ratio must be in (0, 1) (weights zeroed), got {ratio!r}")
            count = float(sum(g.log_alpha.numel() for g in self.regularizer.gates.values()))

            def kept_share(keep_prob):
                return sum(p.double().sum().cpu() for p in keep_prob.values()) / count

            self.regularizer.constraint = ExpectedCostConstraint(
                kept_share, 1.0 - ratio, total_steps, reach_at=0.5 * silence_at, lr=constraint_lr
            )
            self.regularizer.settle_at = round(silence_at * total_steps)
            if own_adam:
                _gates_own_adam(self.regularizer, gate_lr)
            warn_if_too_short(total_steps, self.name)
        self.masks: dict[str, torch.Tensor] | None = None

    def model_to_prune(self, data: CalibrationData | None = None) -> nn.Module:
        """The test-gated copy, its BN statistics re-estimated (:func:`_baked_with_statistics`)."""
        return _baked_with_statistics(self.regularizer, data)

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        baked = self.model_to_prune(data)
        self.masks = {n: (p.detach() == 0).cpu() for n, p in prunable_weights(baked).items()}
        return baked

    def finetune_method(self, pruned: nn.Module) -> PruningMethod:
        return KeepSparsity(pruned, self.masks)

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        """Test-time gates per layer, at most ``SNAPSHOT_GATES`` evenly strided ones each: a
        histogram needs their spread, and VGG-16 has 14.7 M gates (60 MB per epoch in full)."""
        snapshot = {}
        for name, gate in self.regularizer.test_gates().items():
            flat = gate.detach().reshape(-1)
            stride = -(-flat.numel() // SNAPSHOT_GATES)
            snapshot[str(name)] = flat[::stride].float().cpu()
        return snapshot

    def sparsity_stats(self) -> dict[str, float]:
        return {"gates/closed": self.regularizer.sparsity()}
