"""The registry of pruning methods: a decorator on the class is the one registry line.

Example::

    @register_method("my_method")
    class MyMethod(GraphMethod):
        ...

    method = regprune.methods.get("my_method", model, x, ratio=0.5)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from torch import nn

from regprune.lifecycle import PruningMethod

METHODS: dict[str, Callable[..., PruningMethod]] = {}
"""Name -> constructor (a class, or a class with fixed keywords: ``greg1`` is GReg variant 1)."""

T = TypeVar("T", bound=type)


def register_method(name: str, **fixed: Any) -> Callable[[T], T]:
    """Class decorator: make the method available as ``regprune.methods.get(name, ...)``.

    ``fixed`` keywords are bound for this name (one class can serve several names).
    """

    def decorate(cls: T) -> T:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = partial(cls, **fixed) if fixed else cls
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a registered name (tests and notebooks that define a method twice)."""
    METHODS.pop(name, None)


def available() -> list[str]:
    return sorted(METHODS)


def get(name: str, model: nn.Module, example_inputs: Any, **kwargs: Any) -> PruningMethod:
    """Create a method by name; unknown names list the available ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {available()}")
    return METHODS[name](model, example_inputs, **kwargs)
