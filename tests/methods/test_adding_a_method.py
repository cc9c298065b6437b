"""The example of docs/adding_a_method.md is real code that passes the conformance suite."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from regprune import methods
from tests.methods import test_conformance as conformance

EXAMPLE = Path(__file__).with_name("example_method.py")
DOC = Path(__file__).resolve().parents[2] / "docs" / "adding_a_method.md"


@pytest.fixture
def bn_l2(monkeypatch):
    module = importlib.import_module("tests.methods.example_method")
    if "bn_l2" not in methods.METHODS:  # unregistered by an earlier test in this process
        methods.register_method("bn_l2")(module.BNScaleL2)
    monkeypatch.setitem(conformance.KWARGS, "bn_l2", {"lam": 1e-2})
    yield "bn_l2"
    methods.unregister_method("bn_l2")


def test_the_doc_shows_the_example_file_verbatim() -> None:
    assert EXAMPLE.read_text() in DOC.read_text()


@pytest.mark.parametrize("arch", sorted(conformance.MODELS))
def test_the_example_method_passes_the_life_cycle_checks(bn_l2: str, arch: str) -> None:
    assert bn_l2 in methods.available()
    conformance.test_the_life_cycle_target_and_untouched_model(bn_l2, arch)


def test_the_example_method_resumes_exactly(bn_l2: str, tmp_path) -> None:
    conformance.test_state_round_trips_and_a_resumed_run_continues_exactly(bn_l2, tmp_path)


def test_a_name_cannot_be_registered_twice(bn_l2: str) -> None:
    with pytest.raises(ValueError, match="a method named 'bn_l2' is already registered"):
        methods.register_method("bn_l2")(object)


def test_an_importance_criterion_registers_with_one_line() -> None:
    import torch

    import regprune as rp
    from regprune.importance import IMPORTANCES, Importance, register_importance
    from regprune.models import create_model

    @register_importance("reversed_l1")
    class ReversedL1(Importance):
        """Keeps the smallest filters: a criterion no one should use, easy to recognise."""

        def group_scores(self, model, group):
            return -IMPORTANCES["l1"]().group_scores(model, group)

    try:
        model = create_model("resnet20", num_classes=10, in_channels=1)
        x = torch.randn(1, 1, 28, 28)
        graph, plan = rp.make_plan(model, x, ratio=0.5, importance="reversed_l1")
        group = next(g for g in graph.groups if g.producers == ["layer1.0.conv1"])
        norms = model.layer1[0].conv1.weight.detach().abs().sum((1, 2, 3))
        largest = set(torch.argsort(norms, descending=True)[:8].tolist())
        assert set(plan.drop[group.id]) == largest  # the biggest filters went
        with pytest.raises(ValueError, match="already registered"):
            register_importance("reversed_l1")(ReversedL1)
    finally:
        IMPORTANCES.pop("reversed_l1", None)
