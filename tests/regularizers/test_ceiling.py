"""The budget's planned ceiling on the removal set (regprune.regularizers.ceiling)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from regprune import methods
from regprune.graph import trace_graph
from regprune.models import create_model
from regprune.regularizers.ceiling import SilenceCeiling
from tests.methods.test_methods_unit import X, train_steps


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    )


def test_the_ceiling_scales_removed_channels_as_a_whole_and_leaves_the_rest() -> None:
    model = conv_bn_net()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -1.0, 1.0)
    graph = trace_graph(model, torch.randn(1, 3, 8, 8))
    (group,) = graph.groups
    mask = torch.zeros(group.size, dtype=torch.bool)
    mask[[1, 4, 6]] = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ceiling = SilenceCeiling(
        graph.groups, {group.id: mask}, start_step=10, silence_step=20, end_ratio=0.01
    )
    start = ceiling.magnitudes(model, group.id)
    ceiling.apply(model, 15)  # halfway along the geometric path: 0.01 ** 0.5
    now = ceiling.magnitudes(model, group.id)
    assert torch.allclose(now[mask], 0.1 * start[mask], rtol=1e-6)
    assert torch.equal(now[~mask], start[~mask])
    after = model.state_dict()
    # every slice of a removed channel shrank by the same factor: filter, bias, BN scale, shift
    factor = after["1.weight"][mask] / before["1.weight"][mask]
    for key in ("0.weight", "0.bias", "1.bias"):
        ratio = after[key][mask] / before[key][mask]
        assert torch.allclose(ratio.reshape(3, -1), factor.reshape(3, 1), rtol=1e-5)
        assert torch.equal(after[key][~mask], before[key][~mask])
    # the consumer's input slice and the running statistics are left alone
    assert torch.equal(after["3.weight"], before["3.weight"])
    assert torch.equal(after["1.running_mean"], before["1.running_mean"])
    ceiling.apply(model, 40)  # past the silence step: held at end_ratio
    assert torch.allclose(ceiling.magnitudes(model, group.id)[mask], 0.01 * start[mask])
    assert ceiling.fraction(12) == pytest.approx(0.01**0.2)  # the controller's own path
    with pytest.raises(ValueError, match="end_ratio must be in"):
        SilenceCeiling(graph.groups, {}, start_step=0, silence_step=1, end_ratio=0.0)


@pytest.mark.parametrize(
    "name", ["slimming", "group_lasso", "masksparsity", "greg1", "greg2", "hgsr", "adapruner"]
)
def test_budget_mode_silences_its_set_on_time_even_where_the_lr_cannot(name: str) -> None:
    """At an lr of 1e-4 no penalty moves a weight far in 32 steps; the set is silent by 0.8 of
    the budget all the same (the cosine schedule's tail, docs/budget_study.md)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 40-step budget is short: the method says so
        method = methods.get(name, model, X, target_macs=0.5, max_ratio=0.7, total_steps=40)
    assert method.strength_mode == "budget" and method.silence_step == 32
    train_steps(model, method, 32, lr=1e-4)
    assert method.ceiling is not None and method.ceiling.fraction(32) == pytest.approx(0.01)
    data = [(X.repeat(4, 1, 1, 1) + 0.1 * torch.randn(4, *X.shape[1:]), torch.arange(4))] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.prune(data=data)
    report = method.removal_report()
    assert report["silent_inputs"] >= 0.9 * report["removed_inputs"] > 0


def test_explicit_strengths_get_no_ceiling_and_the_ceiling_resumes(tmp_path) -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1)
    explicit = methods.get("greg1", model, X, ratio=0.5, delta=0.1)
    train_steps(model, explicit, 3, lr=1e-4)
    assert explicit.silence_step is None and explicit.ceiling is None

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = methods.get("masksparsity", model, X, ratio=0.5, total_steps=40)
    train_steps(model, method, 15, lr=1e-4)  # mask at 8, ceiling from the step after
    assert method.ceiling is not None and method.ceiling.start_step == 9
    torch.save(method.state_dict(), tmp_path / "m.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = methods.get(
            "masksparsity", create_model("resnet20", 10, 1), X, ratio=0.5, total_steps=40
        )
    twin.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert twin.ceiling is not None
    assert twin.ceiling.fraction(20) == method.ceiling.fraction(20)
    assert all(torch.equal(twin.ceiling.start[g], v) for g, v in method.ceiling.start.items())
    assert all(torch.equal(twin.ceiling.masks[g], m) for g, m in method.ceiling.masks.items())
