"""Importance criteria: how much each channel matters."""

from regprune.importance.criteria import (
    IMPORTANCES,
    BNScaleImportance,
    FPGMImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
    get_importance,
    register_importance,
)

__all__ = [
    "IMPORTANCES",
    "BNScaleImportance",
    "FPGMImportance",
    "Importance",
    "MagnitudeImportance",
    "RandomImportance",
    "get_importance",
    "register_importance",
]
