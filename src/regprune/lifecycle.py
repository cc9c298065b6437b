"""The one life cycle every pruning method shares.

Why one base class: the trainer must never special-case a method. Each method is a composition of
a regularizer (a loss term or a gradient edit), an importance criterion, an allocation rule and a
schedule; the trainer only ever calls the five hooks below, in this order, every iteration::

    loss = criterion(model(x), y) + method.penalty()
    loss.backward()
    method.after_backward()      # gradient edits (slimming's s*sign(gamma), GReg's lambda*w)
    optimizer.step()
    method.step()                # schedules: growing lambdas, phase changes, gate clamping
    ...
    small = method.prune()       # a NEW, physically smaller nn.Module

and saves ``method.state_dict()`` inside every checkpoint so a resumed run continues exactly.

A method that declares ``self.regularizer`` (any :class:`regprune.regularizers.Regularizer`)
inherits the forwarding: its loss term or gradient edit, its schedule step, its parameters in the
optimizer, its logging and its state all come from the regularizer; the method itself says only
what to remove (importance, allocation) and when (its schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regprune.regularizers.protocol import Regularizer

CalibrationData = Sequence[tuple[torch.Tensor, torch.Tensor]]
"""A few (inputs, targets) batches, already on the model's device or movable there."""


class PruningMethod:
    """Base class: a method that does nothing during training and prunes nothing.

    Subclasses override only the hooks they need. ``state_dict`` must hold every piece of state
    that changes during training (iteration counters, lambdas, masks, phase), as tensors or plain
    Python values, so ``torch.load(..., weights_only=True)`` can read it back.
    """

    name: str = "none"
    regularizer: Regularizer | None = None
    """What the method trains with; None for one-shot methods."""
    regularizer_lr_scale = 1.0
    """Learning-rate multiple of the regularizer's own parameters (L0's gates)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.iteration = 0
        self.last_plan: Any = None
        """The Plan the last :meth:`prune` applied (structural methods), for the run report."""

    def penalty(self) -> torch.Tensor:
        """The loss term to add to the task loss (scalar; zero for gradient-edit methods)."""
        if self.regularizer is not None and not self.regularizer.edits_gradients:
            return self.regularizer.penalty(self.model)
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return torch.zeros((), device=device)

    def observe_loss(self, loss: float) -> None:
        """The task loss of this iteration (a float, before backward): budget-driven schedules
        hold their strength back when it rises. Called by the trainer; optional in own loops."""

    def after_backward(self) -> None:
        """Edit gradients in place after ``loss.backward()`` and before ``optimizer.step()``."""
        if self.regularizer is not None and self.regularizer.edits_gradients:
            self.regularizer.apply_to_grads(self.model)

    def step(self) -> None:
        """Advance schedules after ``optimizer.step()``; called once per training iteration."""
        self.iteration += 1
        if self.regularizer is not None:
            self.regularizer.step(self.model)

    def wants_more_training(self) -> bool:
        """False once the method's own schedule is done (GReg stops growing and stabilizes)."""
        return self.regularizer is None or not self.regularizer.done

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        """Return a new, physically smaller model; the model being trained is left untouched.

        ``data`` is a few (inputs, targets) batches from the training set, for methods that
        score channels by the loss (HGSR), compare candidates (AdaPruner) or re-estimate BN
        statistics that a penalty or stochastic gates left behind (:meth:`model_to_prune`);
        one-shot methods ignore it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement prune()")

    def model_to_prune(self, data: CalibrationData | None = None) -> nn.Module:
        """The network :meth:`prune` cuts, as it computes at test time: the trained model here;
        structural methods trained under a penalty return a copy whose BN statistics are
        re-estimated on ``data`` (:meth:`GraphMethod.model_to_prune`), L0 its test-gated copy.
        The pipeline reports its accuracy as "before pruning"."""
        return self.model

    def removal_report(self) -> dict[str, Any]:
        """After :meth:`prune`: how silent the removed set was (for logs and the run report)."""
        return {}

    def finetune_method(self, pruned: nn.Module) -> PruningMethod | None:
        """What to run while fine-tuning ``pruned`` (unstructured methods keep their zeros)."""
        return None

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The method's own parameters that need other optimizer settings than the weights.

        Each entry is ``{"params": [...], "lr_scale": float, "weight_decay": float}`` for
        :func:`regprune.train.build_optimizer`; build the optimizer after creating the method.
        The regularizer's own parameters (L0's gates) train at :attr:`regularizer_lr_scale`
        without weight decay (decay would pull a gate back to its initial keep probability),
        or, when the regularizer steps them itself, are marked ``exclude``: leave them out of
        the optimizer (:func:`regprune.train.build_optimizer` does).
        """
        params = self.regularizer.parameters() if self.regularizer is not None else []
        if not params:
            return []
        if self.regularizer.steps_own_parameters:
            return [{"params": params, "exclude": True}]
        return [{"params": params, "lr_scale": self.regularizer_lr_scale, "weight_decay": 0.0}]

    def sparsity_snapshot(self) -> dict[str, torch.Tensor]:
        """The regularized quantity per layer/group (|gamma|, group norms, gates) for histograms."""
        return {}

    def sparsity_stats(self) -> dict[str, float]:
        """Scalars worth logging during sparsity training (mean |gamma| of the masked set, ...)."""
        return self.regularizer.stats(self.model) if self.regularizer is not None else {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iteration": self.iteration}
        if self.regularizer is not None:
            state["regularizer"] = self.regularizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        if self.regularizer is not None:
            if "regularizer" not in state:
                raise ValueError(
                    f"{self.name}: the saved state has no 'regularizer' entry; was it saved "
                    "by another method?"
                )
            self.regularizer.load_state_dict(state["regularizer"])
