"""Name -> constructor registry, so configs and CLIs name models by string (timm-style).

Every constructor is called as ``fn(num_classes=..., in_channels=..., **kwargs)``: one signature
for every architecture means a config never needs to know which family a name belongs to.
Names of the form ``torchvision:<name>`` resolve to :func:`torchvision.models.get_model` with
``weights=None``, so nothing is ever downloaded and every torchvision classifier is reachable
through the same factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

TORCHVISION_PREFIX = "torchvision:"

ModelFn = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFn)

_REGISTRY: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[_F], _F]:
    """Register a model constructor under ``name``.

    Args:
        name: the string configs use; must be new, lower-case by convention, and must not start
            with ``"torchvision:"`` (that prefix is reserved for torchvision's own models).

    Returns:
        A decorator that records the constructor and returns it unchanged.

    Raises:
        ValueError: if ``name`` is empty, reserved, or already registered (a silent overwrite
            would make a config mean different models depending on import order).

    Example::

        @register_model("tiny")
        def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module: ...
    """
    if not name or name.startswith(TORCHVISION_PREFIX):
        raise ValueError(
            f"invalid model name {name!r}: must be non-empty and not start with "
            f"{TORCHVISION_PREFIX!r}"
        )

    def decorator(fn: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name]!r})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted (torchvision models are not listed; see module doc)."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any
) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: a name from :func:`list_models`, or ``"torchvision:<name>"`` for any model that
            ``torchvision.models.get_model`` knows (built with ``weights=None``).
        num_classes: size of the classifier output.
        in_channels: input image channels (1 for Fashion-MNIST, 3 for CIFAR). torchvision models
            only accept 3: their stems are not ours to rewrite here.
        **kwargs: architecture options, passed through (e.g. ``shortcut="A"`` for the CIFAR
            ResNets, ``width_mult=0.5`` for MobileNetV2).

    Returns:
        A new ``nn.Module`` in training mode.

    Raises:
        KeyError: unknown name; the message lists the available names.
        ValueError: ``in_channels != 3`` for a torchvision model.

    Example::

        model = create_model("resnet56", num_classes=100, shortcut="A")
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(
            name[len(TORCHVISION_PREFIX) :], num_classes, in_channels, **kwargs
        )
    try:
        fn = _REGISTRY[name]
    except KeyError:
        available = ", ".join(list_models())
        raise KeyError(
            f"unknown model {name!r}; available: {available} "
            f"(or 'torchvision:<name>' for torchvision classifiers)"
        ) from None
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)


def _create_torchvision(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    import torchvision

    if in_channels != 3:
        raise ValueError(
            f"torchvision:{name} takes 3 input channels, got in_channels={in_channels}; "
            f"use a regprune model or replace the stem yourself"
        )
    if "weights" in kwargs:
        raise ValueError(
            "regprune never downloads weights: build with weights=None and load a "
            "state_dict yourself"
        )
    available = torchvision.models.list_models()
    if name not in available:
        raise KeyError(f"unknown torchvision model {name!r}; available: {', '.join(available)}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
