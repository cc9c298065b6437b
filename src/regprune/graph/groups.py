"""Channel groups: the unit every importance, regularizer and plan speaks about.

A *channel* of a group is one removable unit: everything that must go together when it is
removed (a conv's output filter, the BN scale/shift of that channel, the matching input slice of
every consumer and, through residual adds, the same channel of every branch). A *group* collects
the channels that share the same producing layers (one conv's filters; one residual stream).

Every parameter touched by a group is described by a :class:`ParamSlice`: a parameter, one of its
dims, and ``channel_of`` -- for every index along that dim, the group channel it belongs to, or -1
when that index belongs to some other group (a concat consumer sees several groups). This scatter
index is what lets regularizers run without a Python loop over channels::

    per_channel = torch.zeros(group.size).index_add_(0, idx, per_index_values)

where ``idx = s.channel_of[s.channel_of >= 0]`` and the values are taken at the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

SliceRole = Literal["out", "in", "norm", "free"]


@dataclass(frozen=True)
class ParamSlice:
    """One parameter dim that a group's channels index into.

    Attributes:
        module: qualified name of the owning module (``""`` for the root model).
        param: attribute name on that module (``"weight"``, ``"bias"``, ``"class_token"`` ...).
        dim: the sliced dimension of the parameter.
        role: ``"out"`` for a producer's outputs (conv filters, linear rows), ``"in"`` for a
            consumer's input slice, ``"norm"`` for per-channel affine parameters of BN / GN /
            LN / PReLU, ``"free"`` for parameters used directly in the forward.
        channel_of: LongTensor of length ``param.shape[dim]``: group channel index, or -1.
    """

    module: str
    param: str
    dim: int
    role: SliceRole
    channel_of: torch.Tensor
    _positions: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def tensor(self, model: nn.Module) -> torch.Tensor:
        """The live parameter (or buffer) this slice refers to in ``model``."""
        owner = model.get_submodule(self.module) if self.module else model
        return getattr(owner, self.param)

    def positions_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, channels)`` on ``device``: the indices along ``dim`` that belong to the
        group and the group channel of each. Built once per device: regularizers call this
        every step, and a scatter must not loop over channels in Python."""
        cached = self._positions.get(device)
        if cached is None:
            channel_of = torch.as_tensor(self.channel_of).detach().to("cpu", torch.long).flatten()
            valid = channel_of >= 0
            cached = (valid.nonzero().flatten().to(device), channel_of[valid].to(device))
            self._positions[device] = cached
        return cached

    def axis(self, tensor: torch.Tensor) -> int:
        """The slice's dim, made non-negative for ``tensor``."""
        return self.dim % max(tensor.dim(), 1)

    def weight_in(self, model: nn.Module, *, leaf: bool = False) -> torch.Tensor | None:
        """The live tensor to regularize, or None for a buffer (running statistics are not
        weights).

        Args:
            model: the model the slice refers into.
            leaf: require a leaf ``nn.Parameter`` (gradient edits write ``.grad`` of a leaf).

        Raises:
            ValueError: the tensor is missing, its ``shape[dim]`` does not match ``channel_of``
                (groups of another model), or ``leaf`` is set and the tensor is computed by a
                parametrization.
        """
        owner = model.get_submodule(self.module) if self.module else model
        if self.param in owner._buffers:
            return None
        tensor = getattr(owner, self.param, None)
        where = f"{self.module or '<root>'}.{self.param} (dim {self.dim}, role {self.role!r})"
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where} is not a tensor of the model (got {type(tensor)})")
        length = len(self.channel_of)
        if tensor.shape[self.axis(tensor)] != length:
            raise ValueError(
                f"{where}: shape[{self.dim}] is {tensor.shape[self.axis(tensor)]} but "
                f"channel_of has {length} entries; were the groups built for another model?"
            )
        if leaf and not isinstance(tensor, nn.Parameter):
            raise ValueError(
                f"{where} is computed by a parametrization; a gradient edit needs the leaf "
                "parameter. Use the loss-term form (penalty) instead."
            )
        return tensor

    def per_channel_sum(self, values: torch.Tensor, group_size: int) -> torch.Tensor:
        """Sum a per-index vector (length ``param.shape[dim]``) into per-channel totals."""
        positions, channels = self.positions_on(values.device)
        out = torch.zeros(group_size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, channels, values[positions])


@dataclass
class ChannelGroup:
    """A set of coupled, removable channels.

    Attributes:
        id: stable index of the group inside its graph.
        size: number of removable channels.
        slices: every parameter dim the channels index into.
        producers: qualified names of the layers whose outputs these channels are.
        exact: False when removing a zero channel still changes the output (a LayerNorm or a mean
            over the channel dim sees the channel count); exactness tests skip such groups.
        macs_per_channel: filled by the graph: MACs removed with one channel (first order), a
            guide for budget-aware criteria.
    """

    id: int
    size: int
    slices: list[ParamSlice] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    exact: bool = True

    def slices_with_role(self, *roles: SliceRole) -> list[ParamSlice]:
        return [s for s in self.slices if s.role in roles]

    def norm_scales(self) -> list[ParamSlice]:
        """Per-channel scales of normalization layers (BN gamma ...): slimming's target."""
        return [s for s in self.slices if s.role == "norm" and s.param == "weight"]

    def __repr__(self) -> str:
        names = ", ".join(self.producers[:3]) + (" ..." if len(self.producers) > 3 else "")
        return f"ChannelGroup(id={self.id}, size={self.size}, producers=[{names}])"
