"""Every regularizer follows the one protocol: same hooks, same signatures, one strength."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from regprune import methods
from regprune.graph import trace_graph
from regprune.regularizers import (
    BNScaleL1,
    GroupLasso,
    GrowingL2,
    HierarchicalGroupSparsity,
    L0Regularizer,
    Regularizer,
)

HOOKS = ("penalty", "apply_to_grads", "step", "stats")


def small_model() -> tuple[nn.Module, list]:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten()
    )
    return model, trace_graph(model, torch.rand(1, 3, 8, 8)).groups


def every_regularizer() -> dict[str, tuple[nn.Module, Regularizer]]:
    built = {}
    for name, make in {
        "bn_l1": lambda m, g: BNScaleL1(g, s=1e-3),
        "group_lasso": lambda m, g: GroupLasso(g, lam=1e-3),
        "growing_l2": lambda m, g: GrowingL2(g, prune_set={g[0].id: torch.arange(6) < 3}),
        "hgsr": lambda m, g: HierarchicalGroupSparsity(g, lam=1e-3),
        "l0": lambda m, g: L0Regularizer(m, g, lam=1.0, num_samples=10, granularity="channel"),
    }.items():
        model, groups = small_model()
        built[name] = (model, make(model, groups))
    return built


@pytest.mark.parametrize("name", sorted(every_regularizer()))
def test_hooks_have_one_signature_and_run(name: str) -> None:
    model, reg = every_regularizer()[name]
    assert isinstance(reg, Regularizer)
    for hook in HOOKS:
        assert list(inspect.signature(getattr(reg, hook)).parameters) == ["model"], hook
    loss = model(torch.rand(2, 3, 8, 8)).square().mean()
    if not reg.edits_gradients:
        loss = loss + reg.penalty(model)
    loss.backward()
    if reg.edits_gradients:
        reg.apply_to_grads(model)
    reg.step(model)
    assert all(isinstance(v, float) for v in reg.stats(model).values())
    assert torch.isfinite(reg.penalty(model)) and reg.penalty(model).dim() == 0


@pytest.mark.parametrize("name", sorted(every_regularizer()))
def test_the_strength_is_one_attribute_saved_in_the_state(name: str) -> None:
    _, reg = every_regularizer()[name]
    _, twin = every_regularizer()[name]
    if reg.strength_attr is None:  # GReg: per-layer lambdas from its schedule, no one strength
        with pytest.raises(AttributeError, match="no single strength"):
            reg.strength = 1.0
        return
    reg.strength = 0.125
    assert getattr(reg, reg.strength_attr) == 0.125
    twin.load_state_dict(reg.state_dict())
    assert twin.strength == 0.125


def test_a_method_inherits_the_forwarding_from_its_regularizer() -> None:
    """Group lasso declares only its regularizer: the loss term, the log and the state come
    through the life cycle."""
    model, _ = small_model()
    method = methods.get("group_lasso", model, torch.rand(1, 3, 8, 8), ratio=0.5, lam=0.5)
    assert method.penalty().item() == pytest.approx(method.regularizer.penalty(model).item())
    assert set(method.sparsity_stats()) == {"group_norm/mean", "group_norm/min"}
    method.regularizer.lam = 0.25
    assert method.state_dict()["regularizer"] == {"lam": 0.25}
    gradient_edit = methods.get("slimming", model, torch.rand(1, 3, 8, 8), ratio=0.5, s=1e-2)
    assert gradient_edit.penalty().item() == 0.0  # slimming edits gradients instead
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    before = model[1].weight.grad.clone()
    gradient_edit.after_backward()
    assert torch.allclose(model[1].weight.grad - before, 1e-2 * model[1].weight.sign(), atol=1e-5)
