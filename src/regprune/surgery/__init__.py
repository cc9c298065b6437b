"""Surgery: apply a plan to get a physically smaller model; save and load it safely."""

from regprune.surgery.apply import (
    PlanError,
    apply_plan,
    apply_plan_with_report,
    silence_channels,
    zero_channels,
)
from regprune.surgery.compensate import COMPENSATION_MODES, CompensationReport
from regprune.surgery.optimizer import rebuild_optimizer
from regprune.surgery.serialize import load_pruned, save_pruned

__all__ = [
    "COMPENSATION_MODES",
    "CompensationReport",
    "PlanError",
    "apply_plan",
    "apply_plan_with_report",
    "load_pruned",
    "rebuild_optimizer",
    "save_pruned",
    "silence_channels",
    "zero_channels",
]
