"""Training continues after surgery with the optimizer state sliced like the weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regprune.api import make_plan
from regprune.models import create_model
from regprune.surgery import apply_plan, rebuild_optimizer

X = torch.randn(8, 3, 32, 32)
Y = torch.randint(0, 10, (8,))


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_state_is_sliced_like_the_parameters(optimizer_class) -> None:
    model = create_model("resnet20", num_classes=10)
    kwargs = {"lr": 0.1, "momentum": 0.9} if optimizer_class is torch.optim.SGD else {"lr": 1e-3}
    optimizer = optimizer_class(model.parameters(), **kwargs)
    for _ in range(2):
        F.cross_entropy(model(X), Y).backward()
        optimizer.step()
        optimizer.zero_grad()
    graph, plan = make_plan(model, X[:1], ratio=0.5)
    pruned = apply_plan(model, graph, plan)
    rebuilt = rebuild_optimizer(optimizer, model, pruned, graph, plan)
    key = "momentum_buffer" if optimizer_class is torch.optim.SGD else "exp_avg"
    old = optimizer.state[model.layer1[0].conv1.weight][key]
    new = rebuilt.state[pruned.layer1[0].conv1.weight][key]
    kept_out = [
        c
        for c in range(16)
        if c not in plan.drop[next(g.id for g in graph.groups if g.producers == ["layer1.0.conv1"])]
    ]
    stream = next(g.id for g in graph.groups if "conv1" in g.producers)
    kept_in = [c for c in range(16) if c not in plan.drop.get(stream, [])]
    assert torch.equal(new, old[kept_out][:, kept_in])
    assert rebuilt.param_groups[0]["lr"] == kwargs["lr"]
    F.cross_entropy(pruned(X), Y).backward()
    rebuilt.step()  # shapes agree: training goes on
