"""Hierarchical group sparse regularization (HGSR).

Source: Mitsuno and Kurita, "Filter Pruning using Hierarchical Group Sparse Regularization for
Deep Convolutional Neural Networks", ICPR 2020 (arXiv 2011.02389); code of the regularizer:
K-Mitsuno/hierarchical-group-sparse-regularization, ``main.py: sparse_regularization``.

For a conv weight ``W[o, i, k...]`` the outer group is the *input* channel ``i`` ("feature-wise"
grouping) and the inner group the kernel ``W[o, i]``. When every kernel that reads input channel
``i`` vanishes, the filter that produces channel ``i`` in the previous layer is unnecessary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from regprune.layers import is_conv_like, is_plain_conv

HGSRVariant = Literal["squared", "sqrt", "l1_2", "exclusive"]
_VARIANTS = ("squared", "sqrt", "l1_2", "exclusive")


class HierarchicalGroupSparsity:
    """HGSR + L1 on conv weights, a loss term::

        penalty = lam * balance * sum_convs HGSR(W) + lam * (1 - balance) * sum_convs ||W||_1

    (``balance = 0.5`` is the code's ``_lambda2``: docs/specs/METHODS.md's
    ``0.5 * lambda * HGSR + 0.5 * lambda * L1`` with ``lambda = 1e-3``; ``l1=False`` drops the
    second term). With ``n_oi = ||W[o, i]||_2`` and ``a_oi = ||W[o, i]||_1``, per conv:

    * ``"squared"`` (default, hierarchical squared group lasso): ``sum_i (sum_o n_oi)^2``
    * ``"sqrt"`` (hierarchical square-rooted group lasso): ``sum_i sqrt(sum_o n_oi)``
    * ``"l1_2"`` (hierarchical squared group L1/2): ``sum_i (sum_o sqrt(a_oi))^2``. The inner
      group L1/2 term of a kernel is ``||W[o, i]||_1 ^ (1/2)`` -- the L1 norm of the kernel, not
      its L2 norm -- because that is both the definition of the group L1/2 regularizer and what
      the authors' code computes (``hierarchical_squared_group_l12_regularization``, which is
      also the variant their ``train`` loop uses).
    * ``"exclusive"`` (exclusive lasso over the outer group): ``sum_i (sum_o a_oi)^2``, i.e.
      ``sum_i (sum_{o, k} |W[o, i, k]|)^2``: an L1 inside the group makes kernels of the same
      input channel compete, the square across groups keeps every input channel alive; as in
      the code's ``exclusive_sparsity_regularization``.

    Square roots of a sum that is exactly zero have an infinite derivative; **our choice** is a
    zero subgradient there (the value stays exact), so a vanished group stays finite in backward.

    Grouped and depthwise convs: ``W[o, j]`` of a conv with ``g`` groups reads input channel
    ``(o // (out / g)) * (in / g) + j``, so the sum over ``o`` runs over the filters of that
    group only and every true input channel is one outer group (**our choice**; the code only
    handles ``groups=1``).

    Args:
        model_or_convs: a model (every ``Conv1d`` / ``Conv2d`` / ``Conv3d`` in it), or the convs
            to regularize as an iterable or a ``{name: conv}`` mapping. The code skips the
            residual shortcut convs (``"downsample"`` in the name); pass an explicit selection to
            do the same.
        lam: ``lambda`` (1e-3).
        variant: ``"squared"`` | ``"sqrt"`` | ``"l1_2"`` | ``"exclusive"``.
        l1: add the L1 term.
        balance: weight of HGSR against L1 (0.5).

    Raises:
        ValueError: a transposed conv is given or found (its weight is laid out ``[in, out, k]``
            and is not covered), or there is no conv at all.

    Example::

        reg = HierarchicalGroupSparsity(model, lam=1e-3)
        loss = criterion(model(x), y) + reg.penalty()
        vanished = {n: v < 1e-3 for n, v in reg.input_channel_norms().items()}
    """

    def __init__(
        self,
        model_or_convs: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module],
        lam: float = 1e-3,
        variant: HGSRVariant = "squared",
        l1: bool = True,
        balance: float = 0.5,
    ) -> None:
        if not 0 <= lam < float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if not 0 <= balance <= 1:
            raise ValueError(f"balance must be in [0, 1], got {balance}")
        self.convs = _collect_convs(model_or_convs)
        self.lam = float(lam)
        self.variant: HGSRVariant = variant
        self.l1 = bool(l1)
        self.balance = float(balance)

    def penalty(self) -> torch.Tensor:
        """The loss term (a scalar on the convs' device), differentiable in every conv weight."""
        total: torch.Tensor | None = None
        for conv in self.convs.values():
            weight = conv.weight
            term = self.lam * self.balance * self._hgsr(_grouped(weight, conv.groups))
            if self.l1:
                term = term + self.lam * (1 - self.balance) * weight.abs().sum()
            total = term if total is None else total + term
        assert total is not None
        return total

    def hgsr(self) -> torch.Tensor:
        """The bare HGSR value summed over the convs (no ``lam``, no L1), for logging."""
        terms = [self._hgsr(_grouped(c.weight, c.groups)) for c in self.convs.values()]
        return torch.stack(terms).sum()

    def input_channel_norms(self) -> dict[str, torch.Tensor]:
        """Per conv, the L2 norm of everything that reads each input channel, detached.

        ``sqrt(sum_o n_oi^2)``, a vector of length ``in_channels``: zero exactly when the outer
        group vanished, i.e. when the producer of that channel can be removed.
        """
        with torch.no_grad():
            return {
                name: torch.linalg.vector_norm(_grouped(conv.weight, conv.groups), dim=(1, 3))
                .flatten()
                .clone()
                for name, conv in self.convs.items()
            }

    def state_dict(self) -> dict[str, Any]:
        """Only ``lam``: HGSR has no schedule, but shares the life cycle."""
        return {"lam": self.lam}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lam = float(state["lam"])

    def _hgsr(self, w: torch.Tensor) -> torch.Tensor:
        # w: [groups, out per group, in per group, kernel]; sums over dim 1 run over the filters
        # that read one input channel.
        if self.variant == "squared":
            return torch.linalg.vector_norm(w, dim=-1).sum(dim=1).square().sum()
        if self.variant == "sqrt":
            return _sqrt(torch.linalg.vector_norm(w, dim=-1).sum(dim=1)).sum()
        if self.variant == "l1_2":
            return _sqrt(w.abs().sum(dim=-1)).sum(dim=1).square().sum()
        return w.abs().sum(dim=(1, 3)).square().sum()


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[out, in / g, k...]`` as ``[g, out / g, in / g, prod(k)]``."""
    out_channels, in_per_group = weight.shape[:2]
    return weight.reshape(groups, out_channels // groups, in_per_group, -1)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero subgradient at 0 instead of ``inf * 0 = nan``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


# Scanning a model collects every conv, transposed ones included, so that a model holding a
# transposed conv fails loudly below instead of having it skipped silently.
def _collect_convs(
    source: nn.Module | Iterable[nn.Module] | Mapping[str, nn.Module],
) -> dict[str, nn.Module]:
    if isinstance(source, nn.Module):
        found = {name: m for name, m in source.named_modules() if is_conv_like(m)}
        if not found:
            raise ValueError(f"{type(source).__name__} contains no Conv1d/Conv2d/Conv3d")
    elif isinstance(source, Mapping):
        found = dict(source)
    else:
        found = {str(i): m for i, m in enumerate(source)}
    if not found:
        raise ValueError("no convs to regularize")
    for name, module in found.items():
        if not _is_conv(module):
            raise ValueError(
                f"{name or '<root>'} is a {type(module).__name__}; HGSR covers "
                "Conv1d/Conv2d/Conv3d (transposed convs store [in, out, k] and are not covered: "
                "pass the convs to regularize explicitly)"
            )
    return found


def _is_conv(module: nn.Module) -> bool:
    return is_plain_conv(module)
