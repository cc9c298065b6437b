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


def exact_plan(
    model: nn.Module,
    x: torch.Tensor,
    ratio: float,
    importance: str = "random",
    seed: int = 0,
    scope: str = "local",
) -> tuple[DependencyGraph, Plan]:
    """The plan :func:`check_exact` applies: the engine's plan, restricted to exact groups."""
    graph, plan = make_plan(model, x, ratio=ratio, importance=importance, seed=seed, scope=scope)
    return graph, exact_only(graph, plan)


def check_exact(
    model: nn.Module,
    x: torch.Tensor,
    ratio: float,
    importance: str = "random",
    seed: int = 0,
    scope: str = "local",
    atol: float = 1e-4,
) -> tuple[nn.Module, Plan]:
    """Prune ``model`` at ``ratio`` and assert the exactness contract; return the pruned model.

    The plan must drop at least one channel: with nothing dropped the check would compare the
    model with itself. Callers where that can legitimately happen (a tiny ratio, only
    LayerNorm-coupled groups) test :func:`exact_plan` first and check that case otherwise.
    """
    model = model.eval()
    graph, plan = exact_plan(model, x, ratio, importance=importance, seed=seed, scope=scope)
    assert plan.num_dropped() > 0, (
        f"ratio={ratio} drops no channel of an exact group: nothing to compare "
        f"(group sizes {[g.size for g in graph.groups]})"
    )
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
