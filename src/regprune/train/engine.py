"""One training epoch and one evaluation pass, with the method life cycle in a fixed order.

The order per iteration is the contract of ``regprune.lifecycle.PruningMethod``::

    forward -> loss = task_loss + method.penalty() -> backward -> method.after_backward()
    -> optimizer.step() -> method.step() -> scheduler.step()

so no method is ever special-cased here. Gradient clipping, when asked for, runs before
``after_backward``: a gradient-edit regularizer's strength must not depend on how large the
task gradient happened to be.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from regprune.lifecycle import PruningMethod
from regprune.modes import eval_mode, restore_training_flags, training_flags
from regprune.train.distributed import all_reduce_sum, is_main_process

_POSTFIX_EVERY = 10  # iterations between progress-bar refreshes of sparsity_stats()


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised before the optimizer steps on it."""

    def __init__(self, epoch: int, iteration: int, task_loss: float, penalty: float) -> None:
        self.epoch, self.iteration = epoch, iteration
        self.task_loss, self.penalty = task_loss, penalty
        culprit = "the task loss" if not math.isfinite(task_loss) else "the method's penalty"
        super().__init__(
            f"non-finite loss at epoch {epoch}, iteration {iteration}: task loss {task_loss}, "
            f"penalty {penalty} ({culprit} diverged). The optimizer did not step. Lower the "
            "learning rate or the regularization strength, or set grad_clip."
        )


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty() and is_main_process()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _backward_and_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: PruningMethod | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """Everything after the loss, in the life-cycle order (see the module docstring)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # methods and clipping must see true gradient magnitudes
    else:
        loss.backward()
    if grad_clip is not None:
        # what this optimizer steps: a method's own parameters (L0's gates in budget mode) are
        # outside it, and under AMP their gradients are still loss-scaled
        stepped = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(stepped, grad_clip)
    if method is not None:
        method.after_backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if method is not None:
        method.step()
    if scheduler is not None:
        scheduler.step()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    method: PruningMethod | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    device: str | torch.device,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    epoch: int = 1,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: the model (possibly DDP-wrapped); put in train mode, then its mode is restored.
        loader: yields ``(inputs, class_indices)``.
        optimizer: stepped once per iteration.
        criterion: task loss on ``(logits, targets)``.
        method: pruning method whose hooks run every iteration; None trains plainly.
        scheduler: stepped once per iteration, after the method.
        device: where batches go.
        amp: float16 autocast with loss scaling, CUDA only (warns and trains in float32
            elsewhere). The penalty is computed outside autocast, in full precision, and
            gradients are unscaled before the method edits them.
        scaler: keep the trainer's scaler across epochs so its scale is not re-learned.
        grad_clip: max global gradient norm, applied before ``method.after_backward()``.
        progress: tqdm bar (only shown on a TTY and on rank 0).
        epoch: 1-based epoch number, for the progress bar and error messages.

    Returns:
        ``loss`` (mean task loss), ``penalty`` (mean), ``acc``, ``lr`` (of the last iteration),
        ``iterations``, ``samples``, ``time_s``; loss and acc are averaged over all ranks.

    Raises:
        NonFiniteLossError: the loss was NaN/inf; the optimizer has not stepped on it.
    """
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    if amp and not use_amp:
        warnings.warn(f"AMP needs CUDA; training in float32 on {device}", stacklevel=2)
    if use_amp and scaler is None:
        scaler = torch.amp.GradScaler("cuda")
    flags = training_flags(model)
    model.train()
    start = time.perf_counter()
    task_sum = penalty_sum = correct = count = 0.0
    lr = optimizer.param_groups[0]["lr"]
    iteration = 0
    stats: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not _show_progress(progress), leave=False)
    try:
        for iteration, (inputs, targets) in enumerate(bar, start=1):
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(inputs)
                task_loss = criterion(logits, targets)
            penalty = method.penalty() if method is not None else torch.zeros((), device=device)
            loss = task_loss + penalty
            with torch.no_grad():
                hits = (logits.argmax(dim=1) == targets).sum()
                # One host sync per iteration serves the finiteness check and the running metrics.
                task_value, penalty_value, hit_value = torch.stack(
                    [task_loss.detach().float(), penalty.detach().float(), hits.float()]
                ).tolist()
            if not math.isfinite(task_value + penalty_value):
                raise NonFiniteLossError(epoch, iteration, task_value, penalty_value)
            lr = optimizer.param_groups[0]["lr"]
            if method is not None:
                method.observe_loss(task_value)
            _backward_and_step(loss, model, optimizer, method, scheduler, scaler, grad_clip)
            batch = len(targets)
            task_sum += task_value * batch
            penalty_sum += penalty_value * batch
            correct += hit_value
            count += batch
            if not bar.disable:
                if method is not None and iteration % _POSTFIX_EVERY == 1:
                    stats = method.sparsity_stats()
                postfix = {"loss": f"{task_sum / count:.4f}", "acc": f"{correct / count:.2%}"}
                postfix["lr"] = f"{lr:.3g}"
                postfix.update((key, f"{value:.4g}") for key, value in stats.items())
                bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
        restore_training_flags(flags)
    if iteration == 0:
        raise ValueError("the train loader yielded no batches (data set smaller than a batch?)")
    totals = all_reduce_sum(
        torch.tensor([task_sum, penalty_sum, correct, count], dtype=torch.float64, device=device)
    )
    task_sum, penalty_sum, correct, count = totals.tolist()
    return {
        "loss": task_sum / count,
        "penalty": penalty_sum / count,
        "acc": correct / count,
        "lr": lr,
        "iterations": iteration,
        "samples": int(count),
        "time_s": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader``, summed over all ranks.

    The model runs in eval mode and gets its previous mode back. A DDP wrapper is bypassed: its
    forward may synchronise buffers across ranks, which would hang when shards have different
    numbers of batches.

    Returns:
        ``{"loss": ..., "acc": ...}``.
    """
    device = torch.device(device)
    model = _unwrap(model)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with eval_mode(model):
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = model(inputs)
            totals[0] += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            totals[1] += (logits.argmax(dim=1) == targets).sum()
            totals[2] += len(targets)
    loss_sum, correct, count = all_reduce_sum(totals).tolist()
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return {"loss": loss_sum / count, "acc": correct / count}
