"""Allocation: from per-channel scores and a target to a Plan."""

from regprune.allocation.macs_model import MacsModel
from regprune.allocation.plan import Plan
from regprune.allocation.select import SCOPES, BudgetError, allocate, validate_target

__all__ = ["SCOPES", "BudgetError", "MacsModel", "Plan", "allocate", "validate_target"]
