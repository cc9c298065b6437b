"""SGD and learning-rate schedules from plain arguments (what a YAML config holds).

Why per-iteration schedules: pruning runs are often a few epochs long, where a per-epoch
staircase is coarse; a closed-form lr(step) is also trivially resumable (the scheduler's state is
just the step count).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "step", "constant")


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(
    params: nn.Module | Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    groups: Sequence[dict[str, Any]] = (),
    kind: str = "sgd",
) -> torch.optim.Optimizer:
    """SGD (default), Adam or AdamW over a model's (or an iterable's) parameters.

    SGD with momentum is what the CIFAR pruning papers use. Adam is there for the methods
    whose papers train with it: L0 gates (Louizos et al.) move far more evenly under Adam,
    because the expected-L0 gradient of an open gate is a saturated sigmoid's slope that
    plain SGD barely feels. ``momentum`` and ``nesterov`` are SGD's; Adam keeps its default
    betas. Adam's ``weight_decay`` is an L2 term in the gradient, AdamW's is decoupled.

    Weight decay applies to every parameter, as in the CIFAR pruning papers we reproduce,
    except those of ``groups``: a method's own parameters with their own settings (L0 gates:
    ``{"params": [...], "lr_scale": 10.0, "weight_decay": 0.0}``), from
    :meth:`PruningMethod.optimizer_groups`. ``lr_scale`` multiplies ``lr``, so schedules
    scale every group alike; a group with ``"exclude": True`` is left out (the method trains
    those parameters itself).

    Example:
        >>> opt = build_optimizer(nn.Linear(2, 2), lr=0.1, nesterov=True)
        >>> opt = build_optimizer(nn.Linear(2, 2), lr=1e-3, kind="adam")
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    if nesterov and (momentum <= 0 or kind != "sgd"):
        raise ValueError("nesterov=True needs the sgd optimizer with momentum > 0")
    if isinstance(params, nn.Module):
        params = params.parameters()
    special: list[dict[str, Any]] = []
    claimed: set[int] = set()
    for group in groups:
        unknown = set(group) - {"params", "lr_scale", "weight_decay", "exclude"}
        if unknown:
            raise ValueError(
                f"optimizer group keys {sorted(unknown)} unknown; allowed: "
                "params, lr_scale, weight_decay, exclude"
            )
        members = list(group["params"])
        claimed.update(id(p) for p in members)
        if group.get("exclude", False):
            continue
        special.append(
            {
                "params": members,
                "lr": lr * float(group.get("lr_scale", 1.0)),
                "weight_decay": float(group.get("weight_decay", weight_decay)),
            }
        )
    base = [p for p in params if id(p) not in claimed]
    param_groups = [{"params": base}, *special]
    if kind == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(
        param_groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def _lr_factor(
    schedule: str, total_steps: int, milestone_steps: Sequence[int], gamma: float
) -> Callable[[int], float]:
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "step":
        return lambda step: gamma ** sum(step >= m for m in milestone_steps)
    return lambda step: 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
    start_step: int = 0,
) -> LambdaLR:
    """A scheduler to step once per iteration.

    Args:
        optimizer: its current lr is the peak lr.
        schedule: ``cosine`` (to 0 at the last step), ``step`` (multiply by ``gamma`` at each
            milestone) or ``constant``.
        epochs: run length.
        steps_per_epoch: iterations per epoch (``len(train_loader)``).
        milestones: ``step`` only: epochs at which the lr drops; default half and three
            quarters of the run.
        gamma: ``step`` only: the drop factor.
        start_step: the iteration of the schedule the first step is at (a run split in
            parts, each with its own optimizer, continues one schedule).

    Example:
        >>> sched = build_scheduler(opt, "cosine", epochs=10, steps_per_epoch=391)  # doctest: +SKIP
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"epochs and steps_per_epoch must be >= 1, got {epochs}, {steps_per_epoch}"
        )
    if milestones is None:
        milestones = sorted({m for m in (epochs // 2, epochs * 3 // 4) if 0 < m < epochs})
    if schedule == "step" and any(not 0 < m < epochs for m in milestones):
        raise ValueError(f"milestones must lie in (0, {epochs}) epochs, got {list(milestones)}")
    milestone_steps = [m * steps_per_epoch for m in milestones]
    factor = _lr_factor(schedule, epochs * steps_per_epoch, milestone_steps, gamma)
    if start_step:
        return LambdaLR(optimizer, lambda step: factor(start_step + step))
    return LambdaLR(optimizer, factor)
