"""Pruning methods: one life cycle (see :mod:`regprune.lifecycle`), created by name.

Each method registers itself with ``@register_method("name")`` on its class
(:mod:`regprune.methods.registry`); importing this package imports every method module.

Example:
    >>> method = regprune.methods.get("masksparsity", model, x, target_macs=0.5, s=1e-4)
"""

from __future__ import annotations

from regprune.lifecycle import CalibrationData, PruningMethod
from regprune.methods.adapruner import AdaPruner
from regprune.methods.graph_method import GraphMethod
from regprune.methods.greg import GReg
from regprune.methods.group_lasso import GroupLassoMethod
from regprune.methods.hgsr import HGSR
from regprune.methods.l0 import L0Channel, L0Weight
from regprune.methods.masksparsity import MaskSparsity
from regprune.methods.oneshot import OneShot
from regprune.methods.registry import (
    METHODS,
    available,
    get,
    register_method,
    unregister_method,
)
from regprune.methods.slimming import NetworkSlimming
from regprune.methods.unstructured import GRegUnstructured, KeepSparsity, MagnitudeUnstructured

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
    "register_method",
    "unregister_method",
]
