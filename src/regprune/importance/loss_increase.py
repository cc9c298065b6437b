"""Importance by the increase of the loss when a channel is removed (HGSR's filter selection).

Removing a channel = zeroing every parameter slice that produces it (filters, biases, norm
scale and shift, layer scales): exactly the function of the pruned model for exact groups.

* ``exact``: one forward over all calibration samples per channel with that channel zeroed.
  Cost: (number of channels) forwards; for small models and benchmarks.
* ``fast``: first-order estimate from one backward pass: ``dL ~= -sum(grad * theta)`` over the
  zeroed parameters. When a channel has norm layers, only their scale and shift are used: the
  norm output is linear in them and zeroing them zeroes the channel, so the estimate is the
  exact linearization of the removal (the filter behind a norm layer does not count twice).

Both run in eval mode (running statistics), the mode in which the pruned model is judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regprune.graph.dependency import DependencyGraph
from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.modes import eval_mode, restore_training_flags, training_flags

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def removal_slices(group: ChannelGroup) -> list[ParamSlice]:
    """The slices whose zeroing silences the channel (everything but consumer inputs)."""
    return [s for s in group.slices if s.role != "in"]


def _first_order_slices(group: ChannelGroup) -> list[ParamSlice]:
    norm = [s for s in group.slices if s.role in ("norm", "free")]
    if any(s.role == "norm" for s in norm):
        return norm
    return [s for s in group.slices if s.role in ("out", "free")]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _joined(data: Batches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not data:
        raise ValueError("loss-increase importance needs calibration batches (data=...)")
    inputs = torch.cat([x for x, _ in data]).to(device)
    targets = torch.cat([y for _, y in data]).to(device)
    return inputs, targets


def exact_loss_increase(
    model: nn.Module, graph: DependencyGraph, data: Batches, loss_fn: LossFn = F.cross_entropy
) -> dict[int, torch.Tensor]:
    """Loss with each channel removed minus the loss of the full model, per group channel."""
    inputs, targets = _joined(data, _device(model))
    scores: dict[int, torch.Tensor] = {}
    with eval_mode(model), torch.no_grad():
        base = float(loss_fn(model(inputs), targets))
        for group in graph.groups:
            slices = [(s, s.tensor(model)) for s in removal_slices(group)]
            values = torch.zeros(group.size, dtype=torch.float64)
            for channel in range(group.size):
                saved = []
                for s, tensor in slices:
                    index = torch.nonzero(s.channel_of == channel).reshape(-1).to(tensor.device)
                    saved.append((tensor, s.dim, index, tensor.index_select(s.dim, index).clone()))
                    tensor.index_fill_(s.dim, index, 0.0)
                values[channel] = float(loss_fn(model(inputs), targets)) - base
                for tensor, dim, index, old in saved:
                    tensor.index_copy_(dim, index, old)
            scores[group.id] = values
    return scores


def fast_loss_increase(
    model: nn.Module, graph: DependencyGraph, data: Batches, loss_fn: LossFn = F.cross_entropy
) -> dict[int, torch.Tensor]:
    """First-order estimate of the loss increase of removing each channel (one backward)."""
    saved_grads = {n: p.grad for n, p in model.named_parameters()}
    flags = training_flags(model)
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        inputs, targets = _joined(data, _device(model))
        loss_fn(model(inputs), targets).backward()
        scores = {}
        for group in graph.groups:
            values = torch.zeros(group.size, dtype=torch.float64)
            for s in _first_order_slices(group):
                tensor = s.tensor(model)
                if tensor.grad is None:
                    continue
                product = (tensor.grad * tensor).detach().movedim(s.dim, 0)
                per_index = product.reshape(product.shape[0], -1).sum(1).double().cpu()
                values -= s.per_channel_sum(per_index, group.size)
            scores[group.id] = values
    finally:
        for name, param in model.named_parameters():
            param.grad = saved_grads[name]
        restore_training_flags(flags)
    return scores
