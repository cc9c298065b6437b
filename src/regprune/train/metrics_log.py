"""Per-epoch metrics as JSON lines, kept consistent with the checkpoint on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from regprune.io import atomic_write_text


class MetricsLog:
    """Append-only JSON-lines file; one dict per epoch.

    Why :meth:`drop_after`: a run can die after writing epoch k's line but before its checkpoint
    (or the reverse). On (re)start the trainer drops this phase's lines past the epoch it resumes
    from, so the file never holds an epoch twice. Other phases' lines (e.g. the sparsity phase
    before fine-tuning) are kept.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path) as file:
            return [json.loads(line) for line in file if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")

    def drop_after(self, phase: str, epoch: int) -> None:
        """Remove records of ``phase`` with ``epoch`` greater than ``epoch`` (atomically)."""
        records = self.read()
        kept = [r for r in records if r.get("phase") != phase or r.get("epoch", 0) <= epoch]
        if len(kept) == len(records):
            return
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
