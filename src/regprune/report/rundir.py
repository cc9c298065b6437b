"""Reading and writing the files of a run directory.

Layout (written by the pipeline; the report only reads, except ``report.md`` and ``plots/``)::

    run_dir/
      config.yaml          resolved config
      metrics.jsonl        one JSON record per epoch, every phase
      sparsity/epoch_003.pt  {layer or group name: 1-D tensor} of the regularized quantity
      summary.json         RunSummary
      report.md, plots/    written by write_report

Every reader fails with the offending path in its message: a report step that runs after hours of
training should say exactly which file is missing or broken.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from regprune.io import atomic_write_text  # noqa: F401  (re-exported for the report)

METRICS_FILE = "metrics.jsonl"
SPARSITY_DIR = "sparsity"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
_SNAPSHOT_NAME = re.compile(r"epoch_(\d+)\.pt")


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, in file order (blank lines skipped).

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: a line is not a JSON object (the message names the path and line number).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no training metrics at {path}; the report needs the per-epoch records the "
            "trainer writes there"
        )
    records = []
    with open(path) as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number} is not a JSON object")
            records.append(record)
    return records


def snapshot_paths(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``sparsity/epoch_NNN.pt``, sorted by epoch (not by name).

    An absent ``sparsity/`` directory gives an empty list: methods without regularized training
    (one-shot pruning) write no snapshots.
    """
    directory = Path(run_dir) / SPARSITY_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SNAPSHOT_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """One sparsity snapshot, loaded with ``weights_only=True`` (no code runs from the file).

    Raises:
        ValueError: not a ``{name: 1-D tensor}`` dict (the message names the path).
    """
    snapshot = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(snapshot, dict) or not snapshot:
        raise ValueError(f"{path}: a sparsity snapshot is a non-empty dict of 1-D tensors")
    for name, values in snapshot.items():
        if not isinstance(values, torch.Tensor) or values.dim() != 1:
            raise ValueError(f"{path}: entry {name!r} is not a 1-D tensor")
    return snapshot


def pooled_values(snapshot: dict[str, torch.Tensor]) -> torch.Tensor:
    """All values of a snapshot as one float tensor (the histogram pools layers)."""
    return torch.cat([values.detach().float().abs().flatten() for values in snapshot.values()])
