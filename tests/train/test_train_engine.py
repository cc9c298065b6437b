from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from train_fixtures import GrowingL1, tiny_model

from regprune.lifecycle import PruningMethod
from regprune.train import (
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    engine,
    evaluate,
    train_one_epoch,
)


def _loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator)
    return DataLoader(TensorDataset(inputs, (inputs[:, 0] > 0).long()), batch_size=batch_size)


class Recorder(PruningMethod):
    """Logs every hook call, and what the gradients look like when after_backward runs."""

    def __init__(self, model: nn.Module, log: list[str]) -> None:
        super().__init__(model)
        self.log = log
        self.grad_norms: list[float] = []

    def penalty(self) -> torch.Tensor:
        self.log.append("penalty")
        return super().penalty()

    def after_backward(self) -> None:
        self.log.append("after_backward")
        grads = [p.grad.flatten() for p in self.model.parameters()]
        self.grad_norms.append(torch.cat(grads).norm().item())

    def step(self) -> None:
        self.log.append("method.step")
        super().step()


def _instrumented(log: list[str], grad_clip: float | None = None):
    torch.manual_seed(0)
    model = tiny_model()
    method = Recorder(model, log)
    model[0].weight.register_hook(lambda grad: log.append("backward"))
    optimizer = build_optimizer(model, lr=0.1)
    optimizer.register_step_post_hook(lambda *_: log.append("optimizer.step"))
    scheduler = build_scheduler(optimizer, "cosine", epochs=1, steps_per_epoch=4)
    original_step = scheduler.step
    scheduler.step = lambda: (log.append("scheduler.step"), original_step())
    return model, method, optimizer, scheduler


def test_hooks_run_in_the_life_cycle_order_every_iteration():
    log: list[str] = []
    model, method, optimizer, scheduler = _instrumented(log)

    stats = train_one_epoch(
        model, _loader(), optimizer, nn.CrossEntropyLoss(), method, scheduler, device="cpu"
    )

    order = ["penalty", "backward", "after_backward", "optimizer.step", "method.step"]
    assert log == [*order, "scheduler.step"] * 4
    assert method.iteration == 4
    assert stats["iterations"] == 4 and stats["samples"] == 32
    assert 0.0 <= stats["acc"] <= 1.0 and stats["loss"] > 0


def test_grad_clip_applies_before_the_method_edits_gradients():
    model, method, optimizer, _ = _instrumented([])

    train_one_epoch(
        model, _loader(), optimizer, nn.CrossEntropyLoss(), method, device="cpu", grad_clip=1e-3
    )

    assert max(method.grad_norms) <= 1e-3 * 1.001


def test_grad_clip_covers_what_the_optimizer_steps():
    """A parameter the method trains itself (L0's gates in budget mode: outside the optimizer,
    and under AMP still loss-scaled) does not enter the weights' clipping norm."""
    torch.manual_seed(0)
    model = tiny_model()
    outsider = nn.Parameter(torch.ones(1))
    model.register_parameter("outsider", outsider)

    class Loud(PruningMethod):
        def penalty(self) -> torch.Tensor:
            return 1e6 * outsider.sum()

        def after_backward(self) -> None:
            grads = [p.grad.flatten() for n, p in model.named_parameters() if n != "outsider"]
            self.norm = torch.cat(grads).norm().item()

    method = Loud(model)
    weights = [p for n, p in model.named_parameters() if n != "outsider"]
    optimizer = build_optimizer(weights, lr=0.1)
    train_one_epoch(
        model, _loader(n=8), optimizer, nn.CrossEntropyLoss(), method, device="cpu", grad_clip=1e-3
    )

    assert method.norm == pytest.approx(1e-3, rel=1e-3)


def test_penalty_enters_the_loss_and_the_gradient_edit_changes_the_step():
    def final_weights(method_factory) -> torch.Tensor:
        torch.manual_seed(0)
        model = tiny_model()
        method = method_factory(model)
        optimizer = build_optimizer(model, lr=0.1, weight_decay=0.0)
        train_one_epoch(model, _loader(), optimizer, nn.CrossEntropyLoss(), method, device="cpu")
        return model[0].weight.detach().clone()

    plain = final_weights(lambda model: None)
    regularized = final_weights(GrowingL1)

    assert not torch.equal(plain, regularized)
    assert regularized.abs().sum() < plain.abs().sum()  # L1 pulls weights toward zero


class ExplodingPenalty(PruningMethod):
    def penalty(self) -> torch.Tensor:
        value = float("nan") if self.iteration == 2 else 0.0
        return torch.tensor(value)


def test_non_finite_loss_names_epoch_and_iteration_and_does_not_step():
    torch.manual_seed(0)
    model = tiny_model()
    method = ExplodingPenalty(model)
    optimizer = build_optimizer(model, lr=0.1)
    snapshots: list[dict[str, torch.Tensor]] = []
    optimizer.register_step_post_hook(
        lambda *_: snapshots.append({k: v.clone() for k, v in model.named_parameters()})
    )

    with pytest.raises(NonFiniteLossError, match=r"epoch 7, iteration 3.*penalty") as caught:
        train_one_epoch(
            model, _loader(), optimizer, nn.CrossEntropyLoss(), method, device="cpu", epoch=7
        )

    assert (caught.value.epoch, caught.value.iteration) == (7, 3)
    assert len(snapshots) == 2
    for key, value in model.named_parameters():
        assert torch.equal(value, snapshots[-1][key]), key


def test_evaluate_matches_a_manual_computation_and_restores_the_mode():
    torch.manual_seed(0)
    model = tiny_model().train()
    loader = _loader(n=20, batch_size=6)

    result = evaluate(model, loader, "cpu")

    model.eval()
    inputs = torch.cat([x for x, _ in loader])
    targets = torch.cat([y for _, y in loader])
    with torch.no_grad():
        logits = model(inputs)
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, targets).item())
    assert result["acc"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    model.train()
    assert model.training


def test_amp_on_cpu_warns_and_trains_in_float32():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1)

    with pytest.warns(UserWarning, match="AMP needs CUDA"):
        stats = train_one_epoch(
            model, _loader(), optimizer, nn.CrossEntropyLoss(), device="cpu", amp=True
        )

    assert stats["iterations"] == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_no_progress_output_when_disabled_or_not_a_tty(capsys):
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1)

    train_one_epoch(model, _loader(), optimizer, nn.CrossEntropyLoss(), device="cpu", progress=True)

    assert capsys.readouterr().err == ""


def test_progress_bar_on_a_tty_shows_loss_acc_lr_and_method_stats(capsys, monkeypatch):
    postfixes: list[dict[str, str]] = []

    class RecordingBar(engine.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            postfixes.append(dict(ordered_dict))
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(engine, "tqdm", RecordingBar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = build_optimizer(model, lr=0.1)

    train_one_epoch(
        model, _loader(), optimizer, nn.CrossEntropyLoss(), GrowingL1(model), device="cpu", epoch=2
    )

    assert "epoch 2" in capsys.readouterr().err
    assert len(postfixes) == 4
    assert list(postfixes[-1]) == ["loss", "acc", "lr", "lam"]


def test_empty_loader_is_an_error():
    model = tiny_model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)))

    with pytest.raises(ValueError, match="no batches"):
        train_one_epoch(
            model, empty, build_optimizer(model, 0.1), nn.CrossEntropyLoss(), device="cpu"
        )
