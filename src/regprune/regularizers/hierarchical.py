"""Hierarchical group sparse regularization (HGSR).

Source: Mitsuno and Kurita, "Filter Pruning using Hierarchical Group Sparse Regularization for
Deep Convolutional Neural Networks", ICPR 2020 (arXiv 2011.02389); code of the regularizer:
K-Mitsuno/hierarchical-group-sparse-regularization, ``main.py: sparse_regularization``.

For a conv weight ``W[o, i, k...]`` the outer group is the *input* channel ``i`` ("feature-wise"
grouping) and the inner group the kernel ``W[o, i]``. When every kernel that reads input channel
``i`` vanishes, the filter that produces channel ``i`` in the previous layer is unnecessary.

Stated over the engine's channel groups (**our choice**, the code walks every conv): the outer
groups are the ``"in"`` slices of each :class:`~regprune.graph.groups.ChannelGroup` -- for each
layer that reads a prunable channel, the entries that read it -- so what HGSR drives to zero is
exactly what removing the group's channel removes, with no layer-type check here: a consumer
slice along ``dim`` is laid out ``[in, out, kernel]`` once ``dim`` is moved to the front, for
convs, transposed convs and linears alike. Channels that cannot be pruned (the image's RGB,
ignored layers) are not regularized.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers._slices import index_groups, zero_like_model
from regprune.regularizers.protocol import Regularizer

HGSRVariant = Literal["squared", "sqrt", "l1_2", "exclusive"]
_VARIANTS = ("squared", "sqrt", "l1_2", "exclusive")


class HierarchicalGroupSparsity(Regularizer):
    """HGSR + L1 on the weights that read each prunable channel, a loss term::

        penalty = lam * balance * HGSR + lam * (1 - balance) * ||W_read||_1

    (``balance = 0.5`` is the code's ``_lambda2``: docs/specs/METHODS.md's
    ``0.5 * lambda * HGSR + 0.5 * lambda * L1`` with ``lambda = 1e-3``; ``l1=False`` drops the
    second term). Per consumer slice (one layer reading one group), with ``n_oi = ||W[o, i]||_2``
    and ``a_oi = ||W[o, i]||_1`` of the kernel that output ``o`` applies to input ``i``, and
    ``i`` running over the positions of group channel ``c``:

    * ``"squared"`` (default, hierarchical squared group lasso): ``sum_c (sum_i sum_o n_oi)^2``
    * ``"sqrt"`` (hierarchical square-rooted group lasso): ``sum_c sqrt(sum_i sum_o n_oi)``
    * ``"l1_2"`` (hierarchical squared group L1/2): ``sum_c (sum_i sum_o sqrt(a_oi))^2``. The
      inner group L1/2 term of a kernel is ``||W[o, i]||_1 ^ (1/2)`` -- the L1 norm of the
      kernel, not its L2 norm -- because that is both the definition of the group L1/2
      regularizer and what the authors' code computes
      (``hierarchical_squared_group_l12_regularization``, the variant their ``train`` uses).
    * ``"exclusive"`` (exclusive lasso over the outer group): ``sum_c (sum_i sum_o a_oi)^2``:
      an L1 inside the group makes kernels of the same input channel compete, the square across
      groups keeps every input channel alive; as in ``exclusive_sparsity_regularization``.

    A conv reads one position per channel, so this is the paper's per-conv formula; a linear
    after a flatten reads ``H*W`` positions per channel, and they form one outer group (the
    channel they are removed with). Entries of a consumer that read another group (a concat)
    belong to that group's term, so every read entry is counted once. The L1 term covers the
    same read entries (**our choice**; the code's L1 covers whole conv weights).

    Square roots of a sum that is exactly zero have an infinite derivative; **our choice** is a
    zero subgradient there (the value stays exact), so a vanished group stays finite in backward.

    Args:
        groups: the channel groups (``trace_graph(model, x).groups``); groups nobody reads
            through an ``"in"`` slice (a channel only read by grouped convs, which are coupled
            whole) get no term and are listed in :attr:`unread_group_ids`.
        lam: ``lambda`` (1e-3).
        variant: ``"squared"`` | ``"sqrt"`` | ``"l1_2"`` | ``"exclusive"``.
        l1: add the L1 term.
        balance: weight of HGSR against L1 (0.5).

    Example::

        reg = HierarchicalGroupSparsity(trace_graph(model, x).groups, lam=1e-3)
        loss = criterion(model(x), y) + reg.penalty(model)
        vanished = {g: v < 1e-3 for g, v in reg.input_channel_norms(model).items()}
    """

    def __init__(
        self,
        groups: Iterable[ChannelGroup],
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
        self.groups, _ = index_groups(groups)
        self.lam = float(lam)
        self.variant: HGSRVariant = variant
        self.l1 = bool(l1)
        self.balance = float(balance)
        self._reads = [
            (group, [s for s in group.slices if s.role == "in"]) for group in self.groups
        ]
        self._reads = [(group, reads) for group, reads in self._reads if reads]
        read = {group.id for group, _ in self._reads}
        self.unread_group_ids = [g.id for g in self.groups if g.id not in read]
        if not self._reads:
            raise ValueError(
                "HGSR needs layers that read prunable channels (consumer 'in' slices); "
                "these groups have none"
            )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The loss term (a scalar), differentiable in every weight that reads a channel."""
        total = self.lam * self.balance * self.hgsr(model, grad=True)
        if self.l1:
            total = total + self.lam * (1 - self.balance) * self._l1(model)
        return total

    def hgsr(self, model: nn.Module, *, grad: bool = False) -> torch.Tensor:
        """The bare HGSR value (no ``lam``, no L1); detached unless ``grad``."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            outer = "sqrt" if self.variant == "sqrt" else "square"
            terms = []
            for sums in self._outer_sums(model):
                terms.append(_sqrt(sums).sum() if outer == "sqrt" else sums.square().sum())
            return torch.stack(terms).sum() if terms else zero_like_model(model)

    def input_channel_norms(self, model: nn.Module) -> dict[int, torch.Tensor]:
        """Per group, the L2 norm of every entry that reads each channel, detached: zero
        exactly when the outer group vanished, i.e. when the channel can be removed."""
        with torch.no_grad():
            norms = {}
            for group, reads in self._reads:
                squared = torch.zeros(group.size, dtype=torch.float64)
                for index in reads:
                    rows = _rows(index, model)
                    positions, channels = index.positions_on(rows.device)
                    per_position = rows.square().sum(dim=(1, 2)).index_select(0, positions)
                    squared.index_add_(0, channels.cpu(), per_position.double().cpu())
                norms[group.id] = squared.sqrt()
            return norms

    def stats(self, model: nn.Module) -> dict[str, float]:
        norms = torch.cat(list(self.input_channel_norms(model).values()))
        return {
            "hgsr/value": float(self.hgsr(model)),
            "input_norm/vanished": float((norms < 1e-3).double().mean()),
        }

    def _outer_sums(self, model: nn.Module) -> list[torch.Tensor]:
        """Per group and consumer slice, ``sum_i sum_o inner(W[o, i])`` per channel; one
        entry per (group, slice) so that two consumers of a channel stay two outer groups."""
        sums = []
        for group, reads in self._reads:
            for index in reads:
                rows = _rows(index, model)
                positions, channels = index.positions_on(rows.device)
                inner = self._inner(rows.index_select(0, positions))  # [positions, out]
                sums.append(inner.new_zeros(group.size).index_add(0, channels, inner.sum(1)))
        return sums

    def _inner(self, rows: torch.Tensor) -> torch.Tensor:
        if self.variant in ("squared", "sqrt"):
            return torch.linalg.vector_norm(rows, dim=-1)
        if self.variant == "l1_2":
            return _sqrt(rows.abs().sum(dim=-1))
        return rows.abs().sum(dim=-1)

    def _l1(self, model: nn.Module) -> torch.Tensor:
        total: torch.Tensor | None = None
        for _, reads in self._reads:
            for index in reads:
                rows = _rows(index, model)
                positions, _ = index.positions_on(rows.device)
                term = rows.index_select(0, positions).abs().sum()
                total = term if total is None else total + term
        assert total is not None
        return total


def _rows(index: ParamSlice, model: nn.Module) -> torch.Tensor:
    """The consumer tensor as ``[in, out, kernel]``: the sliced dim first, then the next dim
    (a conv's or linear's outputs, a transposed conv's outputs after its inputs), the rest
    flattened into the kernel."""
    tensor = index.weight_in(model)
    if tensor is None:
        raise ValueError(f"{index.module}.{index.param} is a buffer, not a weight")
    moved = tensor.movedim(index.axis(tensor), 0)
    if moved.dim() == 1:
        return moved.reshape(-1, 1, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero subgradient at 0 instead of ``inf * 0 = nan``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)
