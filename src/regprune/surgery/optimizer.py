"""Keep training after surgery: an optimizer for the pruned model with its state sliced.

After surgery the user's optimizer still holds the old, larger parameters (a Torch-Pruning
complaint). Rebuilding it by hand loses momentum and Adam moments. Here the state tensors are
sliced by the very same surgery: a copy of the original model carrying a state tensor in place
of each parameter goes through ``apply_plan``, so state and weights are cut identically.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from regprune.surgery.apply import apply_plan

if TYPE_CHECKING:
    from regprune.allocation.plan import Plan
    from regprune.graph.dependency import DependencyGraph


def rebuild_optimizer(
    optimizer: torch.optim.Optimizer,
    original: nn.Module,
    pruned: nn.Module,
    graph: DependencyGraph,
    plan: Plan,
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``pruned``, same param groups and hyperparameters,
    with every per-parameter state tensor sliced like its parameter (scalars copied).

    Args:
        optimizer: the optimizer that trained ``original``.
        original, pruned: the model before and after ``apply_plan(original, graph, plan)``.
    """
    old_names = {id(p): n for n, p in original.named_parameters()}
    new_params = dict(pruned.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        names = [old_names[id(p)] for p in group["params"] if id(p) in old_names]
        missing = [n for n in names if n not in new_params]
        if missing:
            raise ValueError(
                f"pruned model lacks parameters {missing[:3]}; "
                "pass the model pruned from 'original'"
            )
        groups.append(
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [new_params[n] for n in names],
            }
        )
    # a bias that compensation created (the layer had none) trains with the first group
    created = [p for n, p in new_params.items() if n not in set(old_names.values())]
    if created and groups:
        groups[0]["params"] = groups[0]["params"] + created
    rebuilt = type(optimizer)(groups, **optimizer.defaults)
    old_params = dict(original.named_parameters())
    keys = {
        k
        for p in old_params.values()
        for k, v in optimizer.state.get(p, {}).items()
        if isinstance(v, torch.Tensor) and v.shape == p.shape
    }
    for key in sorted(keys):
        carrier = copy.deepcopy(original)
        with torch.no_grad():
            for name, param in carrier.named_parameters():
                value = optimizer.state.get(old_params[name], {}).get(key)
                param.copy_(value if value is not None else torch.zeros_like(param))
        sliced = dict(apply_plan(carrier, graph, plan, compensate=None).named_parameters())
        for name, param in old_params.items():
            if key in optimizer.state.get(param, {}):
                rebuilt.state[new_params[name]][key] = sliced[name].detach().clone()
    for name, param in old_params.items():
        for key, value in optimizer.state.get(param, {}).items():
            if key not in keys:
                rebuilt.state[new_params[name]][key] = copy.deepcopy(value)
    return rebuilt
