"""The core check: zeroed channels removed by surgery leave the outputs unchanged."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regprune.allocation import Plan
from regprune.api import make_plan
from regprune.graph import DependencyGraph
from regprune.inputs import call_model, iter_tensors
from regprune.structures import value_mismatch
from regprune.surgery import apply_plan, zero_channels


def exact_only(graph: DependencyGraph, plan: Plan) -> Plan:
    """Drop only channels of exact groups (LayerNorm-coupled ones change statistics)."""
    exact = {g.id for g in graph.groups if g.exact}
    return Plan(
        {k: v for k, v in plan.drop.items() if k in exact}, plan.group_sizes, plan.model_type
    )


def exact_plan(
    model: nn.Module,
    x: Any,
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
    x: Any,
    ratio: float,
    importance: str = "random",
    seed: int = 0,
    scope: str = "local",
    atol: float = 1e-4,
) -> tuple[nn.Module, Plan]:
    """Prune ``model`` at ``ratio`` and assert the exactness contract; return the pruned model.

    ``x`` is the model's example inputs (a tensor, a tuple of arguments, a CallArgs); outputs
    of any structure are compared leaf by leaf, with a tolerance scaled by the largest output.

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
        expected = call_model(reference, x)
        got = call_model(pruned, x)
    scale = max([float(t.abs().max()) for t in iter_tensors(expected) if t.numel()] + [1.0])
    problem = value_mismatch(got, expected, atol=atol * scale, rtol=1e-4)
    assert problem is None, f"{problem} after dropping {plan.num_dropped()} channels"
    return pruned, plan


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
