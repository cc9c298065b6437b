"""The run directory: every file a run writes, and the record of which phases are done.

Layout::

    run_dir/
      config.yaml              resolved config
      progress.json            command, completed phases and their results (resume reads it)
      metrics.jsonl            one record per epoch, every phase
      checkpoints/<phase>.pt   trainer checkpoints (model, optimizer, method state, RNG)
      sparsity/epoch_XXX.pt    {name: 1-D tensor} snapshots, one per sparsify epoch
      plan.json                the channels removed (structural methods)
      pruned.pt                the model right after surgery (``save_pruned``)
      finetuned.pt             the final model (``save_pruned``)
      summary.json, report.md, plots/

Why one class hands out every path: the pipeline never joins a path itself, so no file can be
written outside the run directory, not even through a symlink placed inside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regprune.io import atomic_write_text
from regprune.report.rundir import METRICS_FILE, PLOTS_DIR, REPORT_FILE, SPARSITY_DIR
from regprune.report.summary import SUMMARY_FILE

CONFIG_FILE = "config.yaml"
PROGRESS_FILE = "progress.json"
CHECKPOINT_DIR = "checkpoints"
PLAN_FILE = "plan.json"
PRUNED_FILE = "pruned.pt"
FINETUNED_FILE = "finetuned.pt"

__all__ = [
    "CONFIG_FILE",
    "FINETUNED_FILE",
    "METRICS_FILE",
    "PLAN_FILE",
    "PLOTS_DIR",
    "PROGRESS_FILE",
    "PRUNED_FILE",
    "REPORT_FILE",
    "SPARSITY_DIR",
    "SUMMARY_FILE",
    "Progress",
    "RunDir",
    "RunDirError",
]


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (already holds a run, escapes, is incomplete)."""


@dataclass
class Progress:
    """What ``progress.json`` records: the command that started the run and, per completed phase,
    its results (accuracies, wall time). A phase is complete exactly when it has an entry."""

    command: str
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def done(self, phase: str) -> bool:
        return phase in self.phases


class RunDir:
    """Paths and small state files of one run directory.

    Args:
        root: the run directory; it need not exist yet.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def path(self, *parts: str) -> Path:
        """``root/parts...``, guaranteed to stay inside the run directory.

        Raises:
            RunDirError: the path (after resolving symlinks) lies outside the run directory.
        """
        target = self.root.joinpath(*parts)
        if not target.resolve().is_relative_to(self.root):
            raise RunDirError(
                f"{target} resolves to {target.resolve()}, outside the run directory {self.root}; "
                "refusing to write there"
            )
        return target

    def checkpoint(self, phase: str) -> Path:
        return self.path(CHECKPOINT_DIR, f"{phase}.pt")

    def snapshot(self, epoch: int) -> Path:
        return self.path(SPARSITY_DIR, f"epoch_{epoch:03d}.pt")

    def has_run(self) -> bool:
        """True when a run was started here (its progress file exists)."""
        return self.path(PROGRESS_FILE).is_file()

    def read_progress(self) -> Progress:
        """Load ``progress.json``.

        Raises:
            RunDirError: no run here, or the file is damaged.
        """
        path = self.path(PROGRESS_FILE)
        if not path.is_file():
            raise RunDirError(f"{self.root} holds no run (no {PROGRESS_FILE}); start one first")
        try:
            data = json.loads(path.read_text())
            return Progress(command=str(data["command"]), phases=dict(data["phases"]))
        except (ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"{path} is damaged ({error}); start a new run") from None

    def write_progress(self, progress: Progress) -> None:
        """Atomic, so a kill never leaves a half-written record of what is done."""
        text = json.dumps({"command": progress.command, "phases": progress.phases}, indent=2)
        atomic_write_text(self.path(PROGRESS_FILE), text + "\n")

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path(name), text)
