"""Surgery: apply a plan to get a physically smaller model; save and load it safely."""

from regprune.surgery.apply import PlanError, apply_plan, zero_channels
from regprune.surgery.optimizer import rebuild_optimizer
from regprune.surgery.serialize import load_pruned, save_pruned

__all__ = [
    "PlanError",
    "apply_plan",
    "load_pruned",
    "rebuild_optimizer",
    "save_pruned",
    "zero_channels",
]
