"""Sparsity on normalization scales: network slimming and MaskSparsity.

Network slimming (Liu et al., ICCV 2017) adds ``s * sign(gamma)`` to the gradient of every
prunable BN scale after ``backward`` and before ``optimizer.step``; channels whose ``|gamma|``
reaches ~0 are then removed. MaskSparsity (Jiang et al., MIR 2023; code
CASIA-IVA-Lab/MaskSparsity, ``netslim/sparse.py: update_bn_by_names_dict``) multiplies that term
by a mask ``m`` that is 1 exactly on the channels to be pruned, so the kept channels train without
any penalty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers._slices import (
    along,
    index_groups,
    writable_grad,
    zero_like_model,
)
from regprune.regularizers.protocol import Regularizer

ScaleNorm = Literal["l1", "l2", "smooth_l1"]
_NORMS = ("l1", "l2", "smooth_l1")


class BNScaleL1(Regularizer):
    """Slimming / MaskSparsity penalty on the norm scales (role ``"norm"``, param ``"weight"``).

    Gradient edit (:meth:`apply_to_grads`), per scale ``gamma`` of channel ``c``::

        l1:        grad_gamma += s * sign(gamma) * m[c]
        l2:        grad_gamma += s * gamma * m[c]
        smooth_l1: grad_gamma += s * (gamma if |gamma| < beta else sign(gamma)) * m[c]

    with ``m = 1`` everywhere when no mask is given (network slimming) and ``m[c] = mask[c]``
    otherwise (MaskSparsity: kept channels get exactly zero). The three forms are the
    ``regular_method`` options ``L1`` / ``L2`` / ``smoothL1`` of the MaskSparsity code; there the
    smooth-L1 switch point is ``beta = lr * s`` (below it a sign step would jump over zero), here it
    is the ``smooth_l1_beta`` argument because a regularizer does not know the learning rate. Note
    that, as in that code, the smooth-L1 gradient is discontinuous at ``|gamma| = beta``.

    Loss-term form (:meth:`penalty`), whose autograd gradient equals the edit above::

        l1:        s * sum |gamma * m|
        l2:        0.5 * s * sum m * gamma^2
        smooth_l1: s * sum m * (0.5 * gamma^2        if |gamma| < beta
                                |gamma| - beta + 0.5 * beta^2  otherwise)   (continuous at beta)

    Use one form or the other, not both. Scale entries whose ``channel_of`` is -1 belong to
    another group and are left alone; norm parameters that are buffers are skipped.

    Args:
        groups: the channel groups to regularize; groups without a norm scale cannot be slimmed
            and are listed in :attr:`unscaled_group_ids` for the caller to report.
        s: sparsity strength (the paper's ``s``; MaskSparsity's ImageNet default is 5e-4).
        mask: optional ``{group_id: BoolTensor[group.size]}``, True on channels to prune. Every
            group needs an entry when a mask is given.
        norm: ``"l1"`` (default), ``"l2"`` or ``"smooth_l1"``.
        smooth_l1_beta: switch point of ``"smooth_l1"`` (required for it, ignored otherwise).

    Example::

        reg = BNScaleL1(groups, s=1e-4)
        loss.backward()
        reg.apply_to_grads(model)
        optimizer.step()
    """

    edits_gradients = True
    strength_attr = "s"

    def __init__(
        self,
        groups: Iterable[ChannelGroup],
        s: float,
        mask: Mapping[int, torch.Tensor] | None = None,
        norm: ScaleNorm = "l1",
        smooth_l1_beta: float | None = None,
    ) -> None:
        if not 0 <= s < float("inf"):
            raise ValueError(f"s must be a finite number >= 0, got {s}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if norm == "smooth_l1" and (smooth_l1_beta is None or not smooth_l1_beta > 0):
            raise ValueError(
                f"norm='smooth_l1' needs smooth_l1_beta > 0 (the code uses lr * s), "
                f"got {smooth_l1_beta}"
            )
        self.groups, self._by_id = index_groups(groups)
        self.s = float(s)
        self.norm: ScaleNorm = norm
        self.smooth_l1_beta = float(smooth_l1_beta) if smooth_l1_beta is not None else 0.0
        self._scales = [(group.id, sl) for group in self.groups for sl in group.norm_scales()]
        scaled = {gid for gid, _ in self._scales}
        self.unscaled_group_ids = [g.id for g in self.groups if g.id not in scaled]
        self._mask: dict[int, torch.Tensor] | None = None
        self._mask_on_device: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._signs: list[tuple[int, ParamSlice, torch.Tensor]] = []
        self.set_mask(mask)

    @property
    def mask(self) -> dict[int, torch.Tensor] | None:
        """The current channel mask (True = penalized), or None for plain slimming."""
        return None if self._mask is None else {k: v.clone() for k, v in self._mask.items()}

    def set_mask(self, mask: Mapping[int, torch.Tensor] | None) -> None:
        """Replace the channel mask (MaskSparsity computes it after a short slimming run).

        Raises:
            ValueError: a group has no entry, an entry names an unknown group, or a mask has the
                wrong size.
        """
        self._mask_on_device.clear()
        if mask is None:
            self._mask = None
            return
        unknown = sorted(set(mask) - set(self._by_id))
        missing = sorted(set(self._by_id) - set(mask))
        if unknown or missing:
            raise ValueError(
                f"mask keys must be exactly the group ids; unknown: {unknown}, missing: {missing}"
            )
        checked: dict[int, torch.Tensor] = {}
        for gid, m in mask.items():
            m = torch.as_tensor(m).detach().to("cpu")
            size = self._by_id[gid].size
            if m.dtype != torch.bool or m.shape != (size,):
                raise ValueError(
                    f"mask[{gid}] must be a BoolTensor of shape ({size},), "
                    f"got {m.dtype} {tuple(m.shape)}"
                )
            checked[gid] = m.clone()
        self._mask = checked

    def apply_to_grads(self, model: nn.Module) -> None:
        """Add the penalty's gradient to ``gamma.grad`` in place (after backward, before step).

        The edit is an ``index_add_`` into the ``.grad`` tensor itself, so it cannot land in a
        throw-away copy.
        """
        for gid, index in self._scales:
            gamma = index.weight_in(model, leaf=True)
            if gamma is None:
                continue
            grad = writable_grad(gamma)
            if grad is None:
                continue
            dim = index.axis(gamma)
            positions, channels = index.positions_on(gamma.device)
            values = gamma.detach().index_select(dim, positions)
            term = self._grad_term(values)
            weight = self._channel_weight(gid, gamma.device, gamma.dtype)
            if weight is not None:
                term = term * along(weight[channels], dim, term.dim())
            grad.index_add_(dim, positions, term)

    def remember_signs(self, model: nn.Module) -> None:
        """Note the sign of every penalized scale (before the optimizer step)."""
        self._signs = []
        with torch.no_grad():
            for gid, index in self._scales:
                gamma = index.weight_in(model, leaf=True)
                if gamma is None:
                    continue
                dim = index.axis(gamma)
                positions, _ = index.positions_on(gamma.device)
                self._signs.append((gid, index, torch.sign(gamma.index_select(dim, positions))))

    def zero_the_crossed(self, model: nn.Module) -> None:
        """Set to zero every penalized scale whose sign the last step changed, and keep the
        ones at zero there: the proximal form of the L1 step. Why: the subgradient
        ``s * sign(gamma)`` makes a scale that reached zero jitter around it with an amplitude
        of about ``lr * s / (1 - momentum)``, so with a constant learning rate the channel
        never goes quiet; clipping at the crossing holds it at zero (budget mode only: the
        papers use the plain subgradient). A scale at zero stays there (the masked set is
        removed anyway): clipping only the sign flips let momentum carry a zeroed scale off
        zero every other step, and at the strengths a short budget needs that jitter was
        larger than the kept scales (docs/budget_study.md, "MaskSparsity at short budgets")."""
        with torch.no_grad():
            for gid, index, before in self._signs:
                gamma = index.weight_in(model, leaf=True)
                if gamma is None:
                    continue
                dim = index.axis(gamma)
                positions, channels = index.positions_on(gamma.device)
                now = gamma.index_select(dim, positions)
                crossed = torch.sign(now) != before
                weight = self._channel_weight(gid, gamma.device, torch.bool)
                if weight is not None:
                    crossed &= along(weight[channels], dim, crossed.dim())
                gamma.index_copy_(dim, positions, torch.where(crossed, 0.0, now))
        self._signs = []

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The loss-term form (see the class docstring); differentiable in ``gamma``."""
        total: torch.Tensor | None = None
        for gid, index in self._scales:
            gamma = index.weight_in(model)
            if gamma is None:
                continue
            dim = index.axis(gamma)
            positions, channels = index.positions_on(gamma.device)
            values = gamma.index_select(dim, positions)
            weight = self._channel_weight(gid, gamma.device, gamma.dtype)
            if weight is not None:
                values = values * along(weight[channels], dim, values.dim())
            term = self._penalty_term(values).sum()
            total = term if total is None else total + term
        return total if total is not None else zero_like_model(model)

    def stats(self, model: nn.Module) -> dict[str, float]:
        """Mean ``|gamma|`` of the penalized and of the unpenalized channels, for logging."""
        sums = {"penalized": 0.0, "kept": 0.0}
        counts = {"penalized": 0, "kept": 0}
        with torch.no_grad():
            for gid, index in self._scales:
                gamma = index.weight_in(model)
                if gamma is None:
                    continue
                dim = index.axis(gamma)
                positions, channels = index.positions_on(gamma.device)
                values = gamma.index_select(dim, positions).abs().movedim(dim, 0)
                values = values.reshape(len(positions), -1)
                weight = self._channel_weight(gid, gamma.device, torch.bool)
                chosen = (
                    torch.ones_like(channels, dtype=torch.bool)
                    if weight is None
                    else weight[channels]
                )
                sums["penalized"] += float(values[chosen].sum())
                counts["penalized"] += values[chosen].numel()
                sums["kept"] += float(values[~chosen].sum())
                counts["kept"] += values[~chosen].numel()
        return {
            f"mean_abs_gamma_{k}": sums[k] / counts[k] if counts[k] else float("nan") for k in sums
        }

    def state_dict(self) -> dict[str, Any]:
        """``s`` and the mask (tensors and floats only: ``weights_only``-safe)."""
        return {"s": self.s, "mask": self.mask}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.s = float(state["s"])
        self.set_mask(state["mask"])

    def _channel_weight(
        self, gid: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        if self._mask is None:
            return None
        key = (gid, device, dtype)
        weight = self._mask_on_device.get(key)
        if weight is None:
            weight = self._mask[gid].to(device=device, dtype=dtype)
            self._mask_on_device[key] = weight
        return weight

    def _grad_term(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.norm == "l1":
            return self.s * torch.sign(gamma)
        if self.norm == "l2":
            return self.s * gamma
        inside = gamma.abs() < self.smooth_l1_beta
        return self.s * torch.where(inside, gamma, torch.sign(gamma))

    def _penalty_term(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.norm == "l1":
            return self.s * gamma.abs()
        if self.norm == "l2":
            return 0.5 * self.s * gamma.square()
        beta = self.smooth_l1_beta
        inside = gamma.abs() < beta
        outside_value = gamma.abs() - beta + 0.5 * beta * beta
        return self.s * torch.where(inside, 0.5 * gamma.square(), outside_value)
