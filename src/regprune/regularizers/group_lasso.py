"""Group lasso over channel groups (Wen et al., "Learning Structured Sparsity in Deep Neural
Networks", NeurIPS 2016).

One group of the lasso is one *channel* of a :class:`~regprune.graph.groups.ChannelGroup`: every
parameter entry that is removed with that channel (the producer's filter and bias, the norm
scale and shift, the consumers' input slices, the same channel in every residual branch), so
coupled layers shrink together and a channel is driven to zero as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup
from regprune.regularizers._slices import index_groups, sum_except, zero_like_model
from regprune.regularizers.protocol import Regularizer


class GroupLasso(Regularizer):
    """``lam * sum_groups sum_channels sqrt(||W_c||^2 + eps)``, a loss term.

    ``||W_c||^2`` sums the squares of every entry of channel ``c`` over *all* slices of its
    group (every role: ``"out"``, ``"in"``, ``"norm"``, ``"free"``); it is gathered with one
    ``index_add`` per slice over ``channel_of``, never a loop over channels. Buffers (running
    statistics) are not weights and are left out.

    ``eps`` (default 1e-8) sits inside the square root: the plain norm has an undefined gradient
    at a channel that is exactly zero (0/0), which is where group lasso drives channels. With it
    the gradient ``w / sqrt(||W_c||^2 + eps)`` is finite everywhere and 0 at 0; the value shifts
    by at most ``lam * sqrt(eps)`` per channel, a constant that does not change the optimum.

    Args:
        groups: the channel groups to regularize.
        lam: penalty strength (``lambda``), >= 0.
        eps: smoothing inside the square root, >= 0.

    Example::

        reg = GroupLasso(groups, lam=1e-4)
        loss = criterion(model(x), y) + reg.penalty(model)
    """

    def __init__(self, groups: Iterable[ChannelGroup], lam: float, eps: float = 1e-8) -> None:
        if not 0 <= lam < float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if not 0 <= eps < float("inf"):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        self.groups, _ = index_groups(groups)
        self.lam = float(lam)
        self.eps = float(eps)
        self._indices = [(group, [sl for sl in group.slices]) for group in self.groups]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The group-lasso loss term, differentiable in every grouped parameter."""
        total: torch.Tensor | None = None
        for squared in self._squared_norms(model).values():
            term = torch.sqrt(squared + self.eps).sum()
            total = term if total is None else total + term
        if total is None:
            return zero_like_model(model)
        return self.lam * total

    def channel_norms(self, model: nn.Module) -> dict[int, torch.Tensor]:
        """Exact per-channel L2 norms ``||W_c||`` (no ``eps``), detached: for logging and
        importance ("group-norm distributions" in the sparsity trajectory)."""
        with torch.no_grad():
            return {gid: sq.sqrt() for gid, sq in self._squared_norms(model).items()}

    def stats(self, model: nn.Module) -> dict[str, float]:
        norms = torch.cat(list(self.channel_norms(model).values()))
        return {"group_norm/mean": float(norms.mean()), "group_norm/min": float(norms.min())}

    def _squared_norms(self, model: nn.Module) -> dict[int, torch.Tensor]:
        # Per-index sums of squares are shared between groups: a consumer after a concat is
        # sliced by every group of the concat, and squaring it once per group would make
        # DenseNet-style chains quadratic.
        per_index_cache: dict[tuple[str, str, int], torch.Tensor] = {}
        norms: dict[int, torch.Tensor] = {}
        for group, indices in self._indices:
            squared: torch.Tensor | None = None
            for index in indices:
                tensor = index.weight_in(model)
                if tensor is None:
                    continue
                dim = index.axis(tensor)
                key = (index.module, index.param, dim)
                per_index = per_index_cache.get(key)
                if per_index is None:
                    per_index = sum_except(tensor.square(), dim)
                    per_index_cache[key] = per_index
                positions, channels = index.positions_on(tensor.device)
                if squared is None:
                    squared = per_index.new_zeros(group.size)
                values = per_index.index_select(0, positions).to(squared.dtype)
                squared = squared.index_add(0, channels, values)
            if squared is not None:
                norms[group.id] = squared
        return norms
