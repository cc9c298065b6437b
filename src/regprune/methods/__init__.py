"""Pruning methods: one life cycle (see :mod:`regprune.lifecycle`), created by name.

Example:
    >>> method = regprune.methods.get("masksparsity", model, x, target_macs=0.5, s=1e-4)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from regprune.lifecycle import CalibrationData, PruningMethod
from regprune.methods.adapruner import AdaPruner
from regprune.methods.graph_method import GraphMethod
from regprune.methods.greg import GReg
from regprune.methods.group_lasso import GroupLassoMethod
from regprune.methods.hgsr import HGSR
from regprune.methods.l0 import L0Channel, L0Weight
from regprune.methods.masksparsity import MaskSparsity
from regprune.methods.oneshot import OneShot
from regprune.methods.slimming import NetworkSlimming
from regprune.methods.unstructured import GRegUnstructured, KeepSparsity, MagnitudeUnstructured

METHODS: dict[str, Callable[..., PruningMethod]] = {
    "oneshot": OneShot,
    "slimming": NetworkSlimming,
    "group_lasso": GroupLassoMethod,
    "masksparsity": MaskSparsity,
    "greg1": partial(GReg, variant=1),
    "greg2": partial(GReg, variant=2),
    "hgsr": HGSR,
    "l0_channel": L0Channel,
    "l0_weight": L0Weight,
    "adapruner": AdaPruner,
    "greg_unstructured": GRegUnstructured,
    "magnitude_unstructured": MagnitudeUnstructured,
}


def available() -> list[str]:
    return sorted(METHODS)


def get(name: str, model: nn.Module, example_inputs: Any, **kwargs: Any) -> PruningMethod:
    """Create a method by name; unknown names list the available ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {available()}")
    return METHODS[name](model, example_inputs, **kwargs)


__all__ = [
    "HGSR",
    "METHODS",
    "AdaPruner",
    "CalibrationData",
    "GReg",
    "GRegUnstructured",
    "GraphMethod",
    "GroupLassoMethod",
    "KeepSparsity",
    "L0Channel",
    "L0Weight",
    "MagnitudeUnstructured",
    "MaskSparsity",
    "NetworkSlimming",
    "OneShot",
    "PruningMethod",
    "available",
    "get",
]
