"""The engine's contract, checked on random architectures (see ``tests/property/archs.py``).

Each example is a random model built from a small program of blocks, with a random ratio,
importance criterion and scope. The default suite runs a fixed (derandomized) sample so CI is
reproducible; ``pytest -m slow tests/property`` runs a fresh random sample of
``REGPRUNE_PROPERTY_EXAMPLES`` (default 300) architectures through every property at once.
Add ``--hypothesis-show-statistics`` to see how many examples ran.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

import regprune as rp
from regprune.allocation import BudgetError, MacsModel, Plan
from regprune.surgery import apply_plan
from tests.exactness import check_exact, exact_plan
from tests.fingerprint import assert_same_fingerprint, fingerprint
from tests.property.archs import Block, Program, ProgramNet, build, programs

IMPORTANCES = ("l1", "l2", "fpgm", "random", "bn_scale")
SCOPES = ("local", "global")
SLOW_EXAMPLES = int(os.environ.get("REGPRUNE_PROPERTY_EXAMPLES", "300"))
ONE_CONV = Program(3, 8, (Block("conv", 8, arg=1),), hidden=0, num_classes=4, seed=0)

# Below ~0.25 most of the small groups these programs have lose no channel, and exactness would
# compare a model with itself; ratio 0 is an explicit example (ONE_CONV) instead.
ratios = st.floats(0.25, 0.9)
targets = st.floats(0.3, 0.9)
importances = st.sampled_from(IMPORTANCES)
scopes = st.sampled_from(SCOPES)

_common = {
    "deadline": None,
    "database": None,  # no .hypothesis/ folder in the checkout; failures print their repro
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
fast = settings(max_examples=30, derandomize=True, **_common)
slow = settings(max_examples=SLOW_EXAMPLES, **_common)


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def check_prune_properties(program: Program, ratio: float, importance: str, scope: str) -> None:
    """(a) traces, (b) runs with the same output shape, (c) exact, (d) caller's model unchanged."""
    model = build(program)
    x = program.example_input()
    before = fingerprint(model)
    reference = _outputs(model, x)

    graph = rp.trace_graph(model, x)
    assert all(g.size >= 1 for g in graph.groups)
    seed = program.seed
    result = rp.prune_with_result(
        model, x, ratio=ratio, importance=importance, scope=scope, seed=seed
    )
    pruned = result.model.eval()
    assert _outputs(pruned, x).shape == reference.shape
    assert result.macs_after <= result.macs_before
    for gid, dropped in result.plan.drop.items():
        # the default cap (max_ratio 0.8): every group keeps at least a fifth of its channels
        size = graph.groups[gid].size
        assert size - len(dropped) >= max(1, math.ceil(0.2 * size - 1e-9))

    if exact_plan(model, x, ratio, importance=importance, seed=seed, scope=scope)[1].num_dropped():
        check_exact(model, x, ratio, importance=importance, scope=scope, seed=seed)
    elif result.plan.num_dropped() == 0:
        event("exactness: the ratio removes no channel")
        assert torch.equal(_outputs(pruned, x), reference)
        assert result.macs_after == result.macs_before
    else:
        event("exactness: only channels of inexact (LayerNorm-coupled) groups removed")
        assert not any(graph.groups[gid].exact for gid, drop in result.plan.drop.items() if drop)

    assert_same_fingerprint(before, fingerprint(model))
    assert torch.equal(_outputs(model, x), reference)


def check_round_trip(program: Program, ratio: float, importance: str, scope: str) -> None:
    """(e) save_pruned / load_pruned into a freshly built original gives identical outputs."""
    model = build(program)
    x = program.example_input()
    pruned = rp.prune(model, x, ratio=ratio, importance=importance, scope=scope).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pruned.pt"
        rp.save_pruned(pruned, path)
        assert sorted(p.name for p in Path(folder).iterdir()) == ["pruned.pt"]
        torch.manual_seed(program.seed + 7)  # other initial weights: loading must replace them
        loaded = rp.load_pruned(ProgramNet(program), path).eval()
    expected = pruned.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert torch.equal(_outputs(loaded, x), _outputs(pruned, x))


def macs_floor(model: torch.nn.Module, x: torch.Tensor, graph: rp.DependencyGraph) -> float:
    """Fraction of MACs left when every group keeps one channel: the least any plan reaches."""
    drop = {g.id: list(range(1, g.size)) for g in graph.groups if g.size > 1}
    plan = Plan(drop, {g.id: g.size for g in graph.groups}, graph.model_type)
    return rp.count(apply_plan(model, graph, plan), x).macs / rp.count(model, x).macs


def check_budget_is_safe(program: Program, target: float, importance: str, scope: str) -> None:
    """(f), the part that holds: never above the target; refused only below the floor."""
    model = build(program)
    x = program.example_input()
    graph = rp.trace_graph(model, x)
    floor = macs_floor(model, x, graph)
    try:
        result = rp.prune_with_result(  # uncapped: the floor keeps one channel per group
            model, x, target_macs=target, importance=importance, scope=scope, max_ratio=1.0
        )
    except BudgetError as error:
        if "within 1%" in str(error):  # granularity: no plan lands within 1% of the target
            assert reachable_within(model, x, graph, target) is not True, str(error)
            return
        assert floor > target, f"refused although keeping one channel per group leaves {floor:.4f}"
        assert "larger target_macs" in str(error)
        return
    assert floor <= target + 1e-9, f"accepted although the floor is {floor:.4f}"
    achieved = result.macs_after / result.macs_before
    assert achieved <= target + 1e-9, f"asked to keep {target:.4f} of the MACs, kept {achieved:.4f}"
    assert result.macs_after == rp.count(result.model, x).macs
    assert _outputs(result.model.eval(), x).shape == _outputs(model, x).shape


def reachable_within(
    model: torch.nn.Module,
    x: torch.Tensor,
    graph: rp.DependencyGraph,
    target: float,
    max_plans: int = 4096,
) -> bool | None:
    """Whether some plan lands within 1% below ``target`` (None when too many plans to try).

    The contract: a MACs target is a budget, never exceeded, met within 1% below it.

    Tries every combination of per-group drop counts (lowest channel indices first) with the
    engine's own analytic MACs model, which ``check_budget_is_safe`` ties to ``rp.count``.
    """
    sizes = [g.size for g in graph.groups]
    if math.prod(sizes) > max_plans:
        return None
    macs_model = MacsModel(graph, rp.count(model, x).macs)
    components = [graph.group_components(g.id) for g in graph.groups]
    for counts in itertools.product(*(range(size) for size in sizes)):
        keep = torch.ones(graph.group_of_component.numel(), dtype=torch.bool)
        for group_components, count in zip(components, counts, strict=True):
            keep[group_components[:count]] = False
        kept = macs_model.macs(keep) / macs_model.total
        if target - 0.01 * target - 1e-9 <= kept <= target + 1e-9:
            return True
    return False


def check_budget_contract(program: Program, target: float, importance: str, scope: str) -> None:
    """(f), the whole contract: met within 1%, or BudgetError when no plan can get there."""
    model = build(program)
    x = program.example_input()
    graph = rp.trace_graph(model, x)
    try:
        result = rp.prune_with_result(  # uncapped: the floor keeps one channel per group
            model, x, target_macs=target, importance=importance, scope=scope, max_ratio=1.0
        )
    except BudgetError:
        if macs_floor(model, x, graph) <= target:
            # refused: no plan within 1% below may exist (None: too many plans to check)
            assert reachable_within(model, x, graph, target) is not True
        return
    achieved = result.macs_after / result.macs_before
    assert abs(achieved - target) <= 0.01 * target + 1e-9, (
        f"target_macs={target:.4f} gave {achieved:.4f} without an error "
        f"(a plan within 1% exists: {reachable_within(model, x, graph, target)})"
    )


@fast
@given(program=programs(), ratio=ratios, importance=importances, scope=scopes)
@example(program=ONE_CONV, ratio=0.0, importance="l1", scope="local")
def test_random_architectures_prune_exactly_and_leave_the_model_alone(
    program: Program, ratio: float, importance: str, scope: str
) -> None:
    check_prune_properties(program, ratio, importance, scope)


@fast
@given(program=programs(), ratio=ratios, importance=importances, scope=scopes)
def test_random_pruned_architectures_round_trip_through_save_and_load(
    program: Program, ratio: float, importance: str, scope: str
) -> None:
    check_round_trip(program, ratio, importance, scope)


@fast
@given(program=programs(), target=targets, importance=importances, scope=scopes)
def test_macs_target_is_never_exceeded_and_refused_only_below_the_floor(
    program: Program, target: float, importance: str, scope: str
) -> None:
    check_budget_is_safe(program, target, importance, scope)


@settings(fast, phases=[Phase.explicit, Phase.generate])  # no shrinking: a failure prints its repro
@given(program=programs(), target=targets, importance=importances, scope=scopes)
def test_macs_target_is_met_within_one_percent_or_refused(
    program: Program, target: float, importance: str, scope: str
) -> None:
    check_budget_contract(program, target, importance, scope)


@pytest.mark.slow
@slow
@given(
    program=programs(max_blocks=6),
    ratio=ratios,
    target=targets,
    importance=importances,
    scope=scopes,
)
def test_every_property_on_many_random_architectures(
    program: Program, ratio: float, target: float, importance: str, scope: str
) -> None:
    check_prune_properties(program, ratio, importance, scope)
    check_round_trip(program, ratio, importance, scope)
    check_budget_is_safe(program, target, importance, scope)
