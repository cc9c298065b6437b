"""Nothing regprune does to a model changes the caller's model: tracing, planning, surgery with
compensation, counting, timing, a method's prune. Fingerprinted before and after."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import regprune as rp
from regprune.metrics.latency import measure_latency
from regprune.models import create_model
from tests.fingerprint import assert_same_fingerprint, fingerprint
from tests.zoo import ZOO, randomize_norms


class CachesInForward(nn.Module):
    """Caches a grid sized by its input in forward, like YOLO's Detect head and its anchors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.grid = torch.zeros(1, 1, 8, 8)
        self.shape: torch.Size | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.relu(self.conv(x)))
        if self.shape != y.shape:
            self.grid = torch.arange(y.shape[-1], dtype=y.dtype).expand_as(y[:, :1]).clone()
            self.shape = y.shape
        return y + self.grid


def parametrized_net() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 4),
    )
    parametrizations.weight_norm(net[2])
    parametrizations.spectral_norm(net[0])
    return net


def with_hooks(model: nn.Module) -> nn.Module:
    model.register_forward_hook(lambda m, a, o: None)
    next(iter(model.children())).register_forward_pre_hook(lambda m, a: None)
    return model


CASES = {
    **{name: make for name, make in ZOO.items()},
    "caches_in_forward": lambda: (CachesInForward(), torch.randn(2, 3, 16, 16)),
    "parametrized": lambda: (parametrized_net(), torch.randn(2, 3, 8, 8)),
    "resnet20": lambda: (
        randomize_norms(create_model("resnet20", num_classes=10, in_channels=1)),
        torch.randn(2, 1, 28, 28),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("training", [False, True])
def test_nothing_we_do_changes_the_callers_model(name: str, training: bool) -> None:
    model, x = CASES[name]()
    model = with_hooks(model).train(training)
    if name == "caches_in_forward":
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 8))  # the caller's cache is for another size
    for p in list(model.parameters())[:1]:
        p.requires_grad_(False)  # a frozen layer must stay frozen
    before = fingerprint(model)
    graph = rp.trace_graph(model, x[:1])
    rp.make_plan(model, x[:1], ratio=0.5)
    small = rp.prune(model, x[:1], ratio=0.5)
    if x.is_floating_point():
        rp.prune(model, x[:1], ratio=0.5, compensate="mean", calibration=[(x, None)])
    rp.count(model, x[:1])
    measure_latency(model, x[:1], warmup=0, repeats=1)
    if graph.groups:
        rp.methods.get("oneshot", model, x[:1], ratio=0.5).prune()
    assert_same_fingerprint(before, fingerprint(model))
    with torch.no_grad():
        assert small.eval()(x).shape == model.eval()(x).shape


def test_parametrized_layers_are_kept_whole_with_the_reason() -> None:
    model = parametrized_net()
    graph = rp.trace_graph(model, torch.randn(1, 3, 8, 8))
    reasons = " ".join(str(u) for u in graph.unprunable)
    assert "parametrized (weight_norm, spectral_norm" in reasons
    small = rp.prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert small[0].weight.shape == model[0].weight.shape  # spectral-normed conv: whole
    assert small[5].out_channels < 8  # the plain 1x1 conv still shrinks
