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
