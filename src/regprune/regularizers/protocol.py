"""The one protocol every regularizer follows, so a method only declares which one it uses.

Why one protocol: the life cycle (:class:`regprune.lifecycle.PruningMethod`) forwards its hooks
to the method's regularizer without knowing which it is, and the budget controller drives any
regularizer's strength through one attribute. Every hook takes the model being trained, also
for regularizers that hold references to their modules (L0's gates), so a caller never needs to
know which kind it has.

Two forms exist, and a regularizer says which one the life cycle uses
(:attr:`Regularizer.edits_gradients`):

* a **loss term** (:meth:`penalty`), added to the task loss before ``backward``: group lasso,
  HGSR, L0 (its gates only receive a gradient through the loss);
* a **gradient edit** (:meth:`apply_to_grads`), applied after ``backward`` and before
  ``optimizer.step``: slimming / MaskSparsity (``s * sign(gamma)``), GReg (``lambda * w``), as
  their papers' code does. These also offer :meth:`penalty` (same gradient, for loops that
  cannot edit gradients), but a method uses one form, never both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class Regularizer:
    """Base class: a regularizer that does nothing; subclasses override the hooks they need.

    Attributes:
        edits_gradients: True when the life cycle calls :meth:`apply_to_grads` (and adds no
            :meth:`penalty`); False for a loss term.
        strength_attr: the attribute holding the strength a budget drives (``"s"``, ``"lam"``),
            or None when there is no single strength (GReg's per-layer lambdas).
    """

    edits_gradients = False
    strength_attr: str | None = "lam"

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The loss term (a scalar on the model's device; zero here)."""
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else "cpu")

    def apply_to_grads(self, model: nn.Module) -> None:
        """Edit ``.grad`` in place after ``backward`` and before ``optimizer.step``."""

    def step(self, model: nn.Module) -> None:
        """Advance schedules once per optimizer step (after ``optimizer.step``)."""

    @property
    def done(self) -> bool:
        """True once the regularizer's own schedule has finished (GReg); False otherwise."""
        return False

    @property
    def strength(self) -> float:
        """The strength a budget drives (see :attr:`strength_attr`)."""
        if self.strength_attr is None:
            raise AttributeError(f"{type(self).__name__} has no single strength")
        return float(getattr(self, self.strength_attr))

    @strength.setter
    def strength(self, value: float) -> None:
        if self.strength_attr is None:
            raise AttributeError(f"{type(self).__name__} has no single strength")
        setattr(self, self.strength_attr, float(value))

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters the regularizer owns (L0's gates); none here."""
        return []

    @property
    def steps_own_parameters(self) -> bool:
        """True when :meth:`step` trains :meth:`parameters` itself (L0's gates in budget
        mode), so the caller's optimizer must leave them out."""
        return False

    def stats(self, model: nn.Module) -> dict[str, float]:
        """Scalars worth logging while regularizing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Every piece of state that changes during training (``weights_only``-safe values)."""
        return {} if self.strength_attr is None else {self.strength_attr: self.strength}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.strength_attr is not None:
            self.strength = float(state[self.strength_attr])
