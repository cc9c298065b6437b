"""Every method passes the same checks (in the spirit of scikit-learn's ``check_estimator``).

Parametrized over ``regprune.methods.available()``: a method added to the registry is checked
without writing a test for it. On a residual, a concat and a depthwise model:

* the life cycle runs: ``penalty()`` is a finite scalar, ``after_backward / step`` run, and
  ``prune(data)`` returns a new module that runs with the original output shape;
* ``prune`` leaves the trained model untouched (fingerprinted);
* the target is met: structural methods keep at most the MACs asked for, within 1 %;
  unstructured ones zero the share of weights asked for;
* ``state_dict()`` goes through ``torch.save`` / ``torch.load(weights_only=True)`` into a fresh
  method on a fresh model, and the resumed pair continues exactly as the original one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regprune as rp
from regprune import methods
from regprune.lifecycle import PruningMethod
from regprune.methods.unstructured import weight_sparsity
from regprune.models import create_model
from regprune.train import build_optimizer
from tests.fingerprint import assert_same_fingerprint, fingerprint
from tests.zoo import ConcatNet, GroupedNet, randomize_norms

UNSTRUCTURED = {"magnitude_unstructured", "greg_unstructured", "l0_weight"}

KWARGS = {
    "oneshot": {},
    "slimming": {"s": 1e-3},
    "group_lasso": {"lam": 1e-3},
    "masksparsity": {"mask_iters": 2, "s": 1e-2},
    "greg1": {"update_every": 1, "delta": 0.2, "stabilize_iters": 2},
    "greg2": {"update_every": 1, "delta": 0.2, "stabilize_iters": 2, "pick_delta": 5e-3},
    "hgsr": {"lam": 1e-4},
    "l0_channel": {"lam": 0.1, "num_samples": 1000},
    "l0_weight": {"lam": 0.1, "num_samples": 1000},
    "adapruner": {"s": 1e-3},
    "greg_unstructured": {"update_every": 1, "delta": 0.2, "stabilize_iters": 2},
    "magnitude_unstructured": {},
}
STEPS = 6

MODELS = {
    "residual": lambda: (create_model("resnet20", num_classes=10, in_channels=3), (3, 16)),
    "concat": lambda: (ConcatNet(), (3, 8)),
    "depthwise": lambda: (GroupedNet(), (3, 8)),
}
TARGETS = {"residual": 0.5, "concat": 0.6, "depthwise": 0.5}
"""MACs targets each model's granularity can meet within 1 % (small groups make coarse steps)."""


def test_every_registered_method_is_covered() -> None:
    assert set(methods.available()) == set(KWARGS)


def make(name: str, model: nn.Module, x: torch.Tensor, macs: float = 0.5) -> PruningMethod:
    target = {"ratio": 0.5} if name in UNSTRUCTURED - {"l0_weight"} else {}
    if name not in UNSTRUCTURED:
        target = {"target_macs": macs, "max_ratio": 0.7}
    return methods.get(name, model, x, **KWARGS[name], **target)


def batches(shape: tuple[int, int], outputs: int, n: int = 4) -> list:
    generator = torch.Generator().manual_seed(0)
    channels, size = shape
    return [
        (
            torch.randn(8, channels, size, size, generator=generator),
            torch.randint(0, outputs, (8,), generator=generator),
        )
        for _ in range(n)
    ]


def train(model: nn.Module, method: PruningMethod, data: list, steps: int) -> list[float]:
    optimizer = build_optimizer(
        model, lr=0.05, momentum=0.9, weight_decay=0.0, groups=method.optimizer_groups()
    )
    losses = []
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        task = F.cross_entropy(model(x), y)
        method.observe_loss(float(task.detach()))
        penalty = method.penalty()
        assert penalty.dim() == 0 and torch.isfinite(penalty)
        (task + penalty).backward()
        method.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        method.step()
        losses.append(float(task.detach()))
    return losses


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(KWARGS))
def test_the_life_cycle_target_and_untouched_model(name: str, arch: str) -> None:
    torch.manual_seed(0)
    model, shape = MODELS[arch]()
    model = randomize_norms(model)
    x = torch.randn(1, *shape[:1], shape[1], shape[1])
    outputs = model.eval()(x).shape[-1]
    data = batches(shape, outputs)
    method = make(name, model, x, TARGETS[arch])
    train(model, method, data, STEPS)
    before = fingerprint(model)
    small = method.prune(data=data)
    assert_same_fingerprint(before, fingerprint(model))
    assert small is not model
    with torch.no_grad():
        assert small.eval()(x).shape == model.eval()(x).shape
    if name in UNSTRUCTURED:
        if name != "l0_weight":  # L0's sparsity is what its gates closed
            assert weight_sparsity(small) == pytest.approx(0.5, abs=0.02)
        return
    kept = rp.count(small, x).macs / rp.count(model, x).macs
    target = TARGETS[arch]
    assert kept <= target + 1e-9, f"kept {kept:.4f} of the MACs for {target}"
    assert kept >= target * 0.99 - 1e-9, f"kept {kept:.4f} of the MACs for {target}"


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_state_round_trips_and_a_resumed_run_continues_exactly(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model, shape = MODELS["residual"]()
    x = torch.randn(1, 3, 16, 16)
    data = batches(shape, 10)
    method = make(name, model, x)
    train(model, method, data, 3)
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, tmp_path / "c.pt")
    torch.manual_seed(1)  # a fresh method on a fresh architecture, then the checkpoint
    fresh, _ = MODELS["residual"]()
    twin = make(name, fresh, x)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    fresh.load_state_dict(saved["model"])
    twin.load_state_dict(saved["method"])
    assert _plain(twin.state_dict()) == _plain(method.state_dict())
    torch.manual_seed(2)
    losses = train(model, method, data, 3)
    torch.manual_seed(2)
    resumed = train(fresh, twin, data, 3)
    assert resumed == pytest.approx(losses, rel=1e-5, abs=1e-6)


def _plain(value):
    """A comparable form of a state dict (tensors as lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
