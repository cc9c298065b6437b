"""Allocation: from per-channel scores and a target to a Plan."""

from regprune.allocation.macs_model import MacsModel
from regprune.allocation.plan import Plan
from regprune.allocation.select import BudgetError, allocate
from regprune.allocation.target import SCOPES, Target

__all__ = ["SCOPES", "BudgetError", "MacsModel", "Plan", "Target", "allocate"]
