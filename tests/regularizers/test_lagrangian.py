"""The Lagrangian constraint on expected cost: L0 channel gates that meet a target by themselves."""

from __future__ import annotations

import pytest
import torch

from regprune import methods
from regprune.allocation import MacsModel
from regprune.graph import trace_graph
from regprune.models import create_model
from regprune.regularizers.lagrangian import ExpectedCostConstraint
from tests.methods import test_conformance as conformance

X = torch.rand(1, 1, 28, 28)


def test_expected_macs_of_certain_keeps_are_the_macs_of_that_mask() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    graph = trace_graph(model, X)
    macs = MacsModel(graph, 1e6)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        keep = torch.rand(graph.group_of_component.numel(), generator=generator) > 0.4
        expected = macs.expected(keep.double())
        assert float(expected) == pytest.approx(macs.macs(keep), rel=1e-12)
    probability = torch.full((graph.group_of_component.numel(),), 0.5, dtype=torch.float64)
    probability.requires_grad_(True)
    macs.expected(probability).backward()
    assert (probability.grad > 0).all()  # every channel's keep probability costs MACs


def test_the_multipliers_rise_while_violated_and_the_term_pulls_back_once_below() -> None:
    share = torch.tensor(0.9, requires_grad=True)
    constraint = ExpectedCostConstraint(lambda _: share, 0.5, total_steps=10, reach_at=0.2)
    assert constraint.target_at(0) == 1.0
    assert constraint.target_at(1) == pytest.approx(0.75)
    assert constraint.target_at(2) == constraint.target_at(9) == 0.5
    for _ in range(4):  # 0.9 kept against a target at or below 0.75: violated
        constraint.term({}).backward()
        constraint.update()
    high = float(constraint.lambdas[0].detach())
    assert high > 0 and share.grad is not None and float(share.grad) > 0  # pushes the share down
    with torch.no_grad():
        share.fill_(0.2)  # now far below the target: nothing may push it further down
    share.grad = None
    constraint.term({}).backward()
    assert float(share.grad) < 0  # only the quadratic term acts: it pulls the share back up
    constraint.update()
    # lambda_1 is not brought down below the target (it is ready if the share rises again)
    assert float(constraint.lambdas[0].detach()) >= high


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        ExpectedCostConstraint(lambda _: torch.tensor(1.0), 0.5, total_steps=0)
    with pytest.raises(ValueError, match="target"):
        ExpectedCostConstraint(lambda _: torch.tensor(1.0), 1.5, total_steps=10)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="needs a target"):
        methods.get("l0_channel", model, X, total_steps=10)


def test_budget_mode_is_chosen_only_without_an_explicit_strength() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    budget = methods.get("l0_channel", model, X, target_macs=0.5, total_steps=50)
    assert budget.strength_mode == "budget" and budget.regularizer.lam == 0.0
    assert budget.regularizer.constraint is not None
    model = create_model("resnet20", num_classes=10, in_channels=1)
    explicit = methods.get("l0_channel", model, X, target_macs=0.5, total_steps=50, lam=0.2)
    assert explicit.strength_mode == "explicit" and explicit.regularizer.constraint is None


@pytest.mark.parametrize("target", [{"target_macs": 0.5}, {"ratio": 0.5}])
def test_budget_mode_resumes_exactly(target, monkeypatch, tmp_path) -> None:
    """The multipliers, their optimizer and the warm-up position are in the state."""
    monkeypatch.setitem(conformance.KWARGS, "l0_channel", {"total_steps": 6})
    if "ratio" in target:
        monkeypatch.setattr(
            conformance,
            "make",
            lambda name, model, x, macs=0.5: methods.get(name, model, x, ratio=0.5, total_steps=6),
        )
    conformance.test_state_round_trips_and_a_resumed_run_continues_exactly("l0_channel", tmp_path)
