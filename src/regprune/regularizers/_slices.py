"""Small helpers shared by the regularizers.

The scatter itself (positions along ``dim`` that belong to a group, their group channel, cached
per device; the live tensor with its checks) is :class:`~regprune.graph.groups.ParamSlice`'s
own (``positions_on``, ``axis``, ``weight_in``): one abstraction for importance criteria and
regularizers alike.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup


def index_groups(
    groups: Iterable[ChannelGroup],
) -> tuple[list[ChannelGroup], dict[int, ChannelGroup]]:
    """The groups as a list and by id; ids must be unique (they key masks and state), and every
    slice's ``channel_of`` must name channels of its group (checked once, here)."""
    group_list = list(groups)
    by_id: dict[int, ChannelGroup] = {}
    for group in group_list:
        if not isinstance(group, ChannelGroup):
            raise TypeError(f"expected ChannelGroup objects, got {type(group).__name__}")
        if group.id in by_id:
            raise ValueError(f"two groups share the id {group.id}; group ids must be unique")
        for s in group.slices:
            channel_of = torch.as_tensor(s.channel_of)
            if channel_of.numel() and (channel_of.min() < -1 or channel_of.max() >= group.size):
                raise ValueError(
                    f"group {group.id}, {s.module or '<root>'}.{s.param}: channel_of must hold "
                    f"group channels in [0, {group.size}) or -1, got values in "
                    f"[{int(channel_of.min())}, {int(channel_of.max())}]"
                )
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
