"""Mirror the per-epoch records to TensorBoard, when the ``tensorboard`` package is installed.

Why a mirror and not the source of truth: ``metrics.jsonl`` is what the report, resume and the
tests read; TensorBoard is for watching a long run live. Without the package nothing happens
(no warning per epoch: the pipeline says once, at INFO level, that it is off).
"""

from __future__ import annotations

import logging
import os
from numbers import Real
from pathlib import Path
from typing import Any

logger = logging.getLogger("regprune.train")

TENSORBOARD_DIR = "tensorboard"


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a (nested) record, keyed ``a/b`` by its path."""
    values: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            values.update(_scalars(value, f"{name}/"))
        elif isinstance(value, Real) and not isinstance(value, bool):
            values[name] = float(value)
    return values


class TensorBoardLog:
    """One ``SummaryWriter`` under ``log_dir``; ``write`` logs a record at its epoch."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("TensorBoard logging off: `pip install tensorboard` to turn it on")
            self.writer = None
            return
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def write(self, record: dict[str, Any]) -> None:
        """Log every number of ``record`` as ``<phase>/<key>`` at step ``record['epoch']``."""
        if self.writer is None:
            return
        phase = record.get("phase", "train")
        step = int(record.get("epoch", 0))
        for key, value in _scalars(record).items():
            if key != "epoch":
                self.writer.add_scalar(f"{phase}/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
