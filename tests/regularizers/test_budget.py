"""Budget-driven strength (regprune.regularizers.budget) and the methods' budget mode."""

from __future__ import annotations

import warnings

import pytest
import torch

from regprune import methods
from regprune.models import create_model
from regprune.regularizers.budget import SHORT_BUDGET_STEPS, SILENT_RATIO, BudgetSchedule
from tests.methods.test_methods_unit import X, train_steps


def test_the_planned_path_falls_geometrically_to_silence_at_the_set_share() -> None:
    schedule = BudgetSchedule(100, 1e-4, silence_at=0.8)
    assert schedule.planned(0) is None
    schedule.update(0, 1.0)
    assert schedule.planned(0) == pytest.approx(1.0)
    assert schedule.planned(40) == pytest.approx(SILENT_RATIO**0.5)
    assert schedule.planned(80) == pytest.approx(SILENT_RATIO)
    assert schedule.planned(100) == pytest.approx(SILENT_RATIO)


def test_strength_rises_behind_the_path_falls_ahead_and_backs_off_on_loss() -> None:
    schedule = BudgetSchedule(100, 1.0, raise_factor=2.0, lower_factor=0.5)
    schedule.observe_loss(1.0)
    schedule.update(0, 1.0)  # on the path at the start: lowered, but never below the start
    assert schedule.strength == pytest.approx(1.0) and schedule.loss_start == 1.0
    schedule.update(40, 0.9)  # far behind the path
    assert schedule.strength == pytest.approx(2.0)
    schedule.update(42, 0.9)
    assert schedule.strength == pytest.approx(4.0)
    for _ in range(20):
        schedule.observe_loss(5.0)  # the task loss rose far above its start
    schedule.update(44, 0.9)
    assert schedule.strength == pytest.approx(2.0) and schedule.held == 1


def test_state_round_trips_and_bad_budgets_are_named() -> None:
    schedule = BudgetSchedule(100, 1e-3)
    schedule.observe_loss(2.0)
    schedule.update(10, 0.5)
    restored = BudgetSchedule(100, 1e-3)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        BudgetSchedule(0, 1e-3)
    with pytest.warns(UserWarning, match="too short to silence anything"):
        BudgetSchedule(5, 1e-3)


def test_greg_budget_mode_silences_its_set_by_the_planned_share() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    method = methods.get("greg1", model, X, ratio=0.5, total_steps=60)
    assert method.strength_mode == "budget"
    train_steps(model, method, 48, lr=0.5)  # 0.8 of the budget, lr as SGD(0.05, momentum 0.9)
    assert not method.wants_more_training()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finished and silent: no warning
        method.prune()
    report = method.removal_report()
    assert report["silent_inputs"] >= 0.9 * report["removed_inputs"]


def test_masksparsity_budget_mode_drives_its_set_down_and_resumes_exactly(tmp_path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    method = methods.get("masksparsity", model, X, ratio=0.5, total_steps=60)
    assert method.mask_iters == 12 and method.strength_mode == "budget"
    train_steps(model, method, 30, lr=0.5)
    assert method.budget.start_ratio is not None
    state = method.state_dict()
    torch.save(state, tmp_path / "m.pt")
    twin = methods.get(
        "masksparsity", create_model("resnet20", 10, 1), X, ratio=0.5, total_steps=60
    )
    twin.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert twin.budget.state_dict() == method.budget.state_dict()
    assert twin.regularizer.s == method.regularizer.s == method.budget.strength
    train_steps(model, method, 18, lr=0.5)
    assert method.budget.last_ratio < 0.5 * method.budget.start_ratio
    train_steps(model, method, 12, lr=0.5)  # the whole budget: the masked set is silent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.prune()
    report = method.removal_report()
    assert report["silent_inputs"] >= 0.9 * report["removed_inputs"]


def test_a_masked_penalty_raises_through_a_loss_rise_a_global_one_backs_off() -> None:
    """MaskSparsity's penalty touches only what goes: a loss 50 % over its start (batch noise
    at a constant lr, or the removal itself) must not hold it; slimming's selection, which
    shrinks every channel, backs off."""
    model = create_model("resnet20", num_classes=10, in_channels=1)
    masked = methods.get("masksparsity", model, X, ratio=0.5, total_steps=100).budget
    every = methods.get("slimming", model, X, ratio=0.5, total_steps=100).budget
    for schedule in (masked, every):
        schedule.observe_loss(0.2)
        schedule.update(2, 0.9)  # control starts: the reference loss is 0.2
        for _ in range(20):
            schedule.observe_loss(0.3)
        before = schedule.strength
        schedule.update(40, 0.9)  # far behind the path, loss 1.5x its start
        assert (schedule.strength > before) is (schedule is masked)


def test_explicit_strengths_and_paper_defaults_are_kept() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    explicit = methods.get("masksparsity", model, X, ratio=0.5, total_steps=100, s=3e-3)
    assert explicit.strength_mode == "explicit" and explicit.budget is None
    assert explicit.mask_iters == 20  # the budget still sizes the slimming stage
    paper = methods.get("masksparsity", model, X, ratio=0.5)
    assert paper.strength_mode == "paper" and paper.budget is None and paper.mask_iters == 200
    greg = methods.get("greg1", model, X, ratio=0.5, total_steps=100, delta=0.5)
    assert greg.strength_mode == "explicit" and greg.regularizer.delta == 0.5


def test_the_pipeline_passes_the_budget_where_a_method_takes_one() -> None:
    from regprune.pipeline.methods import build_method, takes_budget
    from regprune.pipeline.sections import MethodSection

    assert all(
        takes_budget(name)
        for name in (
            "greg1",
            "greg2",
            "greg_unstructured",
            "masksparsity",
            "slimming",
            "group_lasso",
            "hgsr",
            "l0_channel",
            "l0_weight",
            "adapruner",
        )
    )
    assert not takes_budget("oneshot")  # nothing to schedule
    model = create_model("resnet20", num_classes=10, in_channels=1)
    budget = build_method(MethodSection("greg2", ratio=0.5), model, X, total_steps=200)
    assert budget.strength_mode == "budget"
    tuned = build_method(MethodSection("greg2", {"delta": 0.1}, ratio=0.5), model, X, 200)
    assert tuned.strength_mode == "explicit"
    slimming = build_method(MethodSection("slimming", {"s": 1e-3}, ratio=0.5), model, X, 200)
    assert slimming.regularizer.s == 1e-3


@pytest.mark.parametrize("name", ["slimming", "group_lasso", "hgsr", "adapruner"])
def test_a_penalty_on_every_channel_selects_then_silences_its_set_in_budget(name: str) -> None:
    """Given only the budget: the paper's penalty selects for SELECT_SHARE of it, then growing
    L2 makes that set silent by 80 %; prune removes exactly that set, silent where it is read."""
    from regprune.regularizers.staged import SELECT_SHARE, SelectThenSilence

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    method = methods.get(name, model, X, target_macs=0.5, max_ratio=0.7, total_steps=60)
    staged = method.regularizer
    assert method.strength_mode == "budget" and isinstance(staged, SelectThenSilence)
    select = round(SELECT_SHARE * 60)
    train_steps(model, method, select - 1, lr=0.5)
    assert staged.selecting and method.budget_active()
    train_steps(model, method, 1, lr=0.5)  # the last selection step fixes the set
    assert not staged.selecting and not method.budget_active() and staged.masks is not None
    train_steps(model, method, 48 - select, lr=0.5)  # to 0.8 of the budget
    assert not method.wants_more_training()
    data = [(X.repeat(4, 1, 1, 1) + 0.1 * torch.randn(4, *X.shape[1:]), torch.arange(4))] * 2
    method.prune(data=data)
    chosen = method.last_plan.drop_masks()
    assert all(torch.equal(chosen.get(g, ~m & m), m) for g, m in staged.masks.items())
    report = method.removal_report()
    assert report["silent_inputs"] >= 0.9 * report["removed_inputs"]


def test_select_then_silence_resumes_exactly_in_either_stage(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    method = methods.get("group_lasso", model, X, ratio=0.5, total_steps=40)
    for steps in (5, 10):  # once while selecting (8 steps), once while silencing
        train_steps(model, method, steps, lr=0.5)
        torch.save(method.state_dict(), tmp_path / "m.pt")
        twin = methods.get(
            "group_lasso", create_model("resnet20", 10, 1), X, ratio=0.5, total_steps=40
        )
        twin.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        assert twin.regularizer.phase == method.regularizer.phase
        assert twin.regularizer.strength == method.regularizer.strength
        assert twin.budget.state_dict() == method.budget.state_dict()
    assert method.regularizer.phase.startswith("silencing")
    assert twin.regularizer.second.lambdas() == method.regularizer.second.lambdas()
    assert all(
        torch.equal(twin.regularizer.masks[g], m) for g, m in method.regularizer.masks.items()
    )


def test_unstructured_methods_meet_their_sparsity_from_the_budget() -> None:
    """GReg on single weights sizes its schedule to the budget; weight L0 constrains the
    expected share of open gates to 1 - ratio and needs a ratio to do so."""
    model = create_model("lenet5", num_classes=10, in_channels=1)
    greg = methods.get("greg_unstructured", model, X, ratio=0.5, total_steps=40)
    assert greg.strength_mode == "budget" and greg.regularizer.update_every == 1
    l0 = methods.get("l0_weight", create_model("lenet5", 10, 1), X, ratio=0.6, total_steps=40)
    assert l0.strength_mode == "budget" and l0.regularizer.constraint.target == pytest.approx(0.4)
    with pytest.raises(ValueError, match="needs ratio="):
        methods.get("l0_weight", create_model("lenet5", 10, 1), X, total_steps=40)
    with pytest.raises(ValueError, match="ratio= is the target of budget mode"):
        methods.get("l0_weight", create_model("lenet5", 10, 1), X, lam=1.0, ratio=0.5)


def test_a_loss_that_rose_far_during_sparsify_is_said_at_prune_time(tmp_path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    method = methods.get("greg1", model, X, ratio=0.5, total_steps=60)
    assert method.loss_warnings() == []  # no loss seen yet
    for _ in range(5):
        method.observe_loss(0.5)  # the reference: the EMA after 5 iterations
    for _ in range(30):
        method.observe_loss(0.9)
    assert method.loss_warnings() == []  # within 2x of the start
    for _ in range(30):
        method.observe_loss(2.5)
    torch.save(method.state_dict(), tmp_path / "m.pt")  # the watch resumes with the run
    twin = methods.get("greg1", create_model("resnet20", 10, 1), X, ratio=0.5, total_steps=60)
    twin.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    with pytest.warns(UserWarning, match="task loss rose from 0.5 to 2.5"):
        twin.prune()


def test_unstructured_greg_never_empties_a_zero_initialized_layer() -> None:
    """A zero-initialized classifier (torchvision's ViT head) ties at the global threshold:
    GReg keeps one of its weights instead of refusing the model."""
    model = create_model("lenet5", num_classes=10, in_channels=1)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(classifier.weight)
    method = methods.get("greg_unstructured", model, X, ratio=0.5)
    sets = method.regularizer.prune_set()
    name = next(n for n, p in model.named_parameters() if p is classifier.weight)
    assert int((~sets[name]).sum()) == 1


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("greg1", {"ratio": 0.5}),
        ("slimming", {"ratio": 0.5}),
        ("masksparsity", {"ratio": 0.5}),
        ("l0_channel", {"target_macs": 0.5}),
        ("l0_weight", {"ratio": 0.5}),
        ("greg_unstructured", {"ratio": 0.5}),
    ],
)
def test_every_budget_mode_warns_when_the_budget_is_too_short(name: str, target: dict) -> None:
    def fresh():  # L0 installs its gates on the model it is given
        return create_model("resnet20", num_classes=10, in_channels=1)

    with pytest.warns(UserWarning, match="too short to silence anything"):
        methods.get(name, fresh(), X, total_steps=10, **target)
    with pytest.warns(UserWarning, match="faster than the network adapts"):
        methods.get(name, fresh(), X, total_steps=100, **target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods.get(name, fresh(), X, total_steps=SHORT_BUDGET_STEPS, **target)
