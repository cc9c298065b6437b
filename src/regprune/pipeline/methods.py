"""Build the configured pruning method through the registry, with config-level errors.

Why a wrapper: a method that rejects its keyword arguments raises ``TypeError`` deep inside a
constructor; here it becomes a :class:`ConfigError` that points at ``method.kwargs``, the place
in the YAML file the user has to edit.
"""

from __future__ import annotations

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


def build_method(section: MethodSection, model: nn.Module, example_inputs: Any) -> PruningMethod:
    """``regprune.methods.get(name, model, example_inputs, **kwargs, **target)``.

    Build the optimizer only after this returns: some methods (L0) install parameters.

    Raises:
        ConfigError: the method rejects its kwargs or its target.
    """
    try:
        return methods_registry.get(
            section.name, model, example_inputs, **section.kwargs, **section.target_kwargs()
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {section.name!r} rejects its settings: {error}") from error
