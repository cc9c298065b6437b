from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from regprune.train import build_optimizer, build_scheduler


def _lrs(schedule: str, epochs: int = 4, steps: int = 5, **kwargs) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), lr=1.0)
    scheduler = build_scheduler(optimizer, schedule, epochs=epochs, steps_per_epoch=steps, **kwargs)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_goes_from_peak_through_half_to_near_zero_per_iteration():
    lrs = _lrs("cosine")

    assert lrs[0] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.5)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_step_drops_by_gamma_at_each_milestone_epoch():
    lrs = _lrs("step", milestones=(1, 3), gamma=0.1)

    assert lrs[:5] == [1.0] * 5
    assert lrs[5:15] == pytest.approx([0.1] * 10)
    assert lrs[15:] == pytest.approx([0.01] * 5)


def test_step_defaults_to_half_and_three_quarters():
    lrs = _lrs("step", epochs=8, steps=1)

    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_and_optimizer_settings():
    optimizer = build_optimizer(nn.Linear(2, 2), lr=0.3, momentum=0.8, nesterov=True)

    assert _lrs("constant") == [1.0] * 20
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.8, True)
    assert group["weight_decay"] == 5e-4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_optimizer(nn.Linear(2, 2), lr=0.1, momentum=0, nesterov=True), "momentum"),
        (lambda: build_optimizer(nn.Linear(2, 2), lr=0), "lr must be > 0"),
        (lambda: build_optimizer(nn.Linear(2, 2), lr=0.1, kind="lbfgs"), "sgd, adam, adamw"),
        (
            lambda: build_optimizer(nn.Linear(2, 2), lr=0.1, nesterov=True, kind="adam"),
            "nesterov=True needs the sgd optimizer",
        ),
        (lambda: _lrs("linear"), "cosine, step, constant"),
        (lambda: _lrs("step", milestones=(0, 4)), r"milestones must lie in \(0, 4\)"),
    ],
)
def test_bad_arguments_are_rejected_with_the_allowed_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_method_group_gets_its_own_lr_and_weight_decay_and_follows_the_schedule():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    gates = list(model[1].parameters())
    optimizer = build_optimizer(
        model, lr=0.1, groups=[{"params": gates, "lr_scale": 10.0, "weight_decay": 0.0}]
    )
    base, special = optimizer.param_groups
    assert [id(p) for p in base["params"]] == [id(p) for p in model[0].parameters()]
    assert [id(p) for p in special["params"]] == [id(p) for p in gates]
    assert (base["lr"], base["weight_decay"]) == (0.1, 5e-4)
    assert special["lr"] == pytest.approx(1.0) and special["weight_decay"] == 0.0
    scheduler = build_scheduler(optimizer, "cosine", epochs=2, steps_per_epoch=2)
    optimizer.step()
    scheduler.step()
    assert special["lr"] / base["lr"] == pytest.approx(10.0)


def test_an_excluded_group_is_left_out_of_the_optimizer():
    """Parameters a method trains itself (L0's gates in budget mode) are in no group."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    gates = list(model[1].parameters())
    optimizer = build_optimizer(model, lr=0.1, groups=[{"params": gates, "exclude": True}])
    (base,) = optimizer.param_groups
    assert [id(p) for p in base["params"]] == [id(p) for p in model[0].parameters()]


def test_a_schedule_started_part_way_continues_where_it_stands():
    full = _lrs("cosine", epochs=1, steps=10)
    assert _lrs("cosine", epochs=1, steps=10, start_step=4)[:6] == pytest.approx(full[4:])


def test_an_unknown_optimizer_group_key_is_rejected():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"\['lr'\] unknown; allowed"):
        build_optimizer(model, lr=0.1, groups=[{"params": [model.bias], "lr": 1.0}])


@pytest.mark.parametrize(
    ("kind", "expected"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_adam_keeps_method_groups_and_steps_each_parameter_by_about_lr(kind, expected):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    gates = list(model[1].parameters())
    optimizer = build_optimizer(
        model, lr=1e-2, weight_decay=0.0, kind=kind, groups=[{"params": gates, "lr_scale": 5.0}]
    )
    assert type(optimizer) is expected
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 5e-2])
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    # Adam's first step moves every parameter with a non-zero gradient by exactly lr (sign step)
    steps = [(p.detach() - b).abs() for p, b in zip(model.parameters(), before, strict=True)]
    assert torch.allclose(steps[0], torch.full_like(steps[0], 1e-2), rtol=1e-3)
    assert torch.allclose(steps[3], torch.full_like(steps[3], 5e-2), rtol=1e-3)
