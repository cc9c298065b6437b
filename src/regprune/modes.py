"""Mode handling in one place: run a caller's model as a probe and leave it exactly as it was
(:func:`eval_mode`), or train it and give every module its own flag back (:func:`train_mode`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


class _ModuleState:
    """Each module's attributes, parameter and buffer slots and train flag, to put back.

    Why: a module may cache tensors in its forward (YOLO's Detect head keeps its anchor grid,
    attention blocks their relative-position tables, rotary embeddings their sin/cos). A probe
    forward (tracing on the meta device, counting MACs, measuring what removed channels send)
    would leave meta tensors or shapes of the probe on the caller's model, which then fails on
    its next real call. Restoring the attribute dicts by identity undoes any such caching.
    """

    def __init__(self, model: nn.Module) -> None:
        self.entries: list[tuple[nn.Module, dict[str, Any], dict, dict, dict]] = [
            (
                module,
                dict(module.__dict__),
                dict(module._parameters),
                dict(module._buffers),
                dict(module._modules),
            )
            for module in model.modules()
        ]

    def restore(self) -> None:
        for module, attributes, parameters, buffers, children in self.entries:
            current = module.__dict__
            for key in [k for k in current if k not in attributes]:
                del current[key]
            for key, value in attributes.items():
                if current.get(key) is not value:
                    current[key] = value
            for store, saved in (
                (module._parameters, parameters),
                (module._buffers, buffers),
                (module._modules, children),
            ):
                if store.keys() != saved.keys() or any(store[k] is not v for k, v in saved.items()):
                    store.clear()
                    store.update(saved)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of the block, then the model exactly as it was.

    Each module's own train flag comes back (``model.train(was_training)`` would reset a
    submodule the caller had frozen in eval, a BatchNorm held fixed for fine-tuning), and so does
    every attribute, parameter, buffer and child slot a forward inside the block added or
    replaced (see :class:`_ModuleState`). Values written *into* existing tensors in place are
    not undone: BatchNorm's running statistics do not move in eval mode.
    """
    state = _ModuleState(model)
    model.eval()
    try:
        yield model
    finally:
        state.restore()


def training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    """Every module's own train flag (a frozen BatchNorm in a training model keeps ``False``)."""
    return {module: module.training for module in model.modules()}


def restore_training_flags(flags: dict[nn.Module, bool]) -> None:
    for module, training in flags.items():
        module.training = training


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode for the block, then each module's own flag back. Unlike :func:`eval_mode`
    nothing else is undone: training is meant to change the model (BN statistics, caches)."""
    flags = training_flags(model)
    model.train()
    try:
        yield model
    finally:
        restore_training_flags(flags)
