"""Plumbing shared by the group regularizers: slice indices cached per device, tensor lookup.

Why a separate module: every group regularizer needs the same three things from a
:class:`~regprune.graph.groups.ParamSlice` -- the positions along ``dim`` that belong to the group,
the group channel of each position, and the live tensor in the model -- and each must be computed
once, not per step. Positions whose ``channel_of`` is -1 belong to another group (a concat
consumer sees several groups) and are never touched here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice


class SliceIndex:
    """Index tensors of one :class:`ParamSlice`, built once and copied lazily to each device.

    Attributes:
        slice: the described slice.
        length: ``len(channel_of)``, which must equal ``param.shape[dim]``.
    """

    def __init__(self, param_slice: ParamSlice, group_size: int) -> None:
        channel_of = torch.as_tensor(param_slice.channel_of).detach().to("cpu", torch.long)
        channel_of = channel_of.flatten()
        if channel_of.numel() and (channel_of.min() < -1 or channel_of.max() >= group_size):
            raise ValueError(
                f"{_name(param_slice)}: channel_of must hold group channels in [0, {group_size}) "
                f"or -1, got values in [{int(channel_of.min())}, {int(channel_of.max())}]"
            )
        valid = channel_of >= 0
        self.slice = param_slice
        self.length = channel_of.numel()
        self._positions = valid.nonzero().flatten()
        self._channels = channel_of[valid]
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, channels)`` on ``device``: positions along ``dim`` and their channel."""
        cached = self._on_device.get(device)
        if cached is None:
            cached = (self._positions.to(device), self._channels.to(device))
            self._on_device[device] = cached
        return cached

    def tensor(self, model: nn.Module, *, leaf: bool = False) -> torch.Tensor | None:
        """The live tensor, or None for a buffer (running statistics are not weights).

        Args:
            model: the model the slice refers into.
            leaf: require a leaf ``nn.Parameter`` (gradient edits write ``.grad`` of a leaf).

        Raises:
            ValueError: the tensor is missing, its ``shape[dim]`` does not match ``channel_of``,
                or ``leaf`` is set and the tensor is computed by a parametrization.
        """
        s = self.slice
        owner = model.get_submodule(s.module) if s.module else model
        if s.param in owner._buffers:
            return None
        tensor = getattr(owner, s.param, None)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{_name(s)} is not a tensor of the model (got {type(tensor)})")
        dim = s.dim % max(tensor.dim(), 1)
        if tensor.shape[dim] != self.length:
            raise ValueError(
                f"{_name(s)}: shape[{s.dim}] is {tensor.shape[dim]} but channel_of has "
                f"{self.length} entries; were the groups built for another model?"
            )
        if leaf and not isinstance(tensor, nn.Parameter):
            raise ValueError(
                f"{_name(s)} is computed by a parametrization; a gradient edit needs the leaf "
                "parameter. Use the loss-term form (penalty) instead."
            )
        return tensor

    def dim(self, tensor: torch.Tensor) -> int:
        """The slice's dim, made non-negative for ``tensor``."""
        return self.slice.dim % max(tensor.dim(), 1)


def index_groups(
    groups: Iterable[ChannelGroup],
) -> tuple[list[ChannelGroup], dict[int, ChannelGroup]]:
    """The groups as a list and by id; ids must be unique (they key masks and state)."""
    group_list = list(groups)
    by_id: dict[int, ChannelGroup] = {}
    for group in group_list:
        if not isinstance(group, ChannelGroup):
            raise TypeError(f"expected ChannelGroup objects, got {type(group).__name__}")
        if group.id in by_id:
            raise ValueError(f"two groups share the id {group.id}; group ids must be unique")
        by_id[group.id] = group
    return group_list, by_id


def sum_except(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over every dim but ``dim``: one value per index along ``dim``."""
    if values.dim() <= 1:
        return values
    return values.sum(dim=[d for d in range(values.dim()) if d != dim])


def along(values: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """View a vector so that it broadcasts along ``dim`` of an ``ndim``-dim tensor."""
    shape = [1] * max(ndim, 1)
    shape[dim] = -1
    return values.reshape(shape)


def writable_grad(param: torch.Tensor) -> torch.Tensor | None:
    """``param.grad`` to edit in place; None for a frozen parameter.

    A trainable parameter that got no gradient this step (unused in the forward, grads set to
    None) receives a zero gradient first: the penalty's gradient exists whether or not the task
    loss reached the parameter, and the optimizer skips parameters whose grad is None.
    """
    if not param.requires_grad:
        return None
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    return param.grad


def zero_like_model(model: nn.Module) -> torch.Tensor:
    """A scalar zero on the model's device: the penalty of a regularizer with nothing to do."""
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else "cpu")


def _name(param_slice: ParamSlice) -> str:
    where = param_slice.module or "<root>"
    return f"{where}.{param_slice.param} (dim {param_slice.dim}, role {param_slice.role!r})"
