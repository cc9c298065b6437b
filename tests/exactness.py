"""The core check: zeroed channels removed by surgery leave the outputs unchanged."""

from __future__ import annotations

import torch
from torch import nn

from regprune.allocation import Plan
from regprune.api import make_plan
from regprune.graph import DependencyGraph
from regprune.surgery import apply_plan, zero_channels


def exact_only(graph: DependencyGraph, plan: Plan) -> Plan:
    """Drop only channels of exact groups (LayerNorm-coupled ones change statistics)."""
    exact = {g.id for g in graph.groups if g.exact}
    return Plan(
        {k: v for k, v in plan.drop.items() if k in exact}, plan.group_sizes, plan.model_type
    )


def check_exact(
    model: nn.Module,
    x: torch.Tensor,
    ratio: float,
    importance: str = "random",
    seed: int = 0,
    scope: str = "local",
    atol: float = 1e-4,
) -> tuple[nn.Module, Plan]:
    """Prune ``model`` at ``ratio`` and assert the exactness contract; return the pruned model."""
    model = model.eval()
    graph, plan = make_plan(model, x, ratio=ratio, importance=importance, seed=seed, scope=scope)
    plan = exact_only(graph, plan)
    reference = zero_channels(model, graph, plan)
    # the first clause is surgery alone: channels that happen to be constant in a random
    # model (a saturated ReLU6) would otherwise be folded, which the zeroed reference is not
    pruned = apply_plan(model, graph, plan, compensate=None)
    with torch.no_grad():
        expected = reference(x)
        got = pruned(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().clamp(min=1.0)
    assert torch.allclose(got, expected, atol=atol * float(scale), rtol=1e-4), (
        f"max abs diff {(got - expected).abs().max():.3g} after dropping "
        f"{plan.num_dropped()} channels"
    )
    return pruned, plan


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
