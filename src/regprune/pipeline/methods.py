"""Build the configured pruning method through the registry, with config-level errors.

Why a wrapper: a method that rejects its keyword arguments raises ``TypeError`` deep inside a
constructor; here it becomes a :class:`ConfigError` that points at ``method.kwargs``, the place
in the YAML file the user has to edit.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import TYPE_CHECKING, Any

from torch import nn

import regprune.methods as methods_registry
from regprune.lifecycle import PruningMethod
from regprune.pipeline.typed import ConfigError

if TYPE_CHECKING:
    from regprune.pipeline.config import MethodSection


def available_methods() -> list[str]:
    """Method names a config may use (``regprune.methods.available()``)."""
    return methods_registry.available()


def takes_budget(name: str) -> bool:
    """Whether the method can size itself to a budget (``total_steps``, issue 14)."""
    factory = methods_registry.METHODS.get(name)
    if factory is None:
        return False
    target = factory.func if isinstance(factory, partial) else factory
    return "total_steps" in inspect.signature(target).parameters


def build_method(
    section: MethodSection,
    model: nn.Module,
    example_inputs: Any,
    total_steps: int | None = None,
) -> PruningMethod:
    """``regprune.methods.get(name, model, example_inputs, **kwargs, **target)``.

    ``total_steps`` (the sparsify iterations) goes to methods that take a budget, unless the
    config sets it: with no strength in the config they then size themselves to it (budget
    mode); an explicit strength in the config is used as given.

    Build the optimizer only after this returns: some methods (L0) install parameters.

    Raises:
        ConfigError: the method rejects its kwargs or its target.
    """
    kwargs = dict(section.kwargs)
    if total_steps and takes_budget(section.name):
        kwargs.setdefault("total_steps", total_steps)
    try:
        return methods_registry.get(
            section.name, model, example_inputs, **kwargs, **section.target_kwargs()
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {section.name!r} rejects its settings: {error}") from error
