"""Leave the caller's train/eval flags as they were -- every module's, not just the root's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of the block, then each module's own flag back.

    ``model.train(was_training)`` would reset a submodule the caller had frozen in eval (a
    BatchNorm held fixed for fine-tuning), so the flags are saved and restored one by one.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
