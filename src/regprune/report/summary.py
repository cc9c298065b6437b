"""``summary.json``: the numbers a run reports, in one typed, validated record.

Why a dataclass and not a free dict: the pipeline writes it and the report (and later benchmark
tables) read it, so a missing or mistyped field fails at the writer, not three tools later.
Validation is strict on purpose: accuracies are fractions (a percentage written by mistake would
make every table wrong by 100x), MACs and FLOPs are never both stored (FLOPs are ``2 * MACs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from regprune.report.machine import describe_machine
from regprune.report.rundir import atomic_write_text

SUMMARY_FILE = "summary.json"
SCHEMA_VERSION = 1


@dataclass
class RunSummary:
    """What one pruning run reports (see docs/specs/METHODS.md, "What every method reports").

    A run directory holds one pruned architecture. With several seeds, each accuracy field holds
    one value per seed (same order as ``seeds``) and the report shows mean and std; the structure
    fields (MACs, params, widths, latency) are those of the first seed's pruned model.

    Attributes:
        method: method name as in the config (``"masksparsity"``, ``"slimming"``...).
        model: model name as given to ``create_model``.
        dataset: dataset name.
        seeds: the seed of each repetition, at least one.
        command: the exact command line that reproduces the run.
        acc_before_prune: test accuracy (fraction in [0, 1]) of the model just before surgery:
            after sparsity training for regularization methods.
        acc_after_prune: accuracy right after surgery, before fine-tuning.
        acc_after_finetune: accuracy at the final fine-tuning epoch (not the best epoch).
        macs_before: MACs of one forward of the example inputs (batch 1), unpruned.
        macs_after: the same for the pruned model.
        params_before: parameters of the unpruned model.
        params_after: parameters of the pruned model.
        latency_ms_before: ``{batch size: median latency in ms}``, unpruned (e.g. batch 1 and 64).
        latency_ms_after: the same batch sizes, pruned.
        latency_layouts: ``{"before"|"after": {batch size: "contiguous"|"channels_last"}}``,
            the memory layout each figure was measured in (each model in its faster one);
            empty in summaries written before layouts were compared.
        layer_widths: ``{layer: (width before, width after)}``, see ``width_changes``.
        phase_time_s: wall time per phase in seconds (``{"sparsify": 812.3, ...}``).
        ratio: the channel ratio asked for, if the target was a ratio.
        target_macs: the fraction of MACs to keep, if the target was a MACs budget. Neither
            target: the method decided the widths or the sparsity itself (L0 gates).
        weight_sparsity: fraction of exact zeros in the final model's conv / linear weights
            (what unstructured methods deliver; near 0 for structured ones).
        acc_baseline: test accuracy of the pretrained model, before any sparsity training:
            what the final accuracy is compared with. None in summaries that predate it.
        removal: how silent the removed channels were where they are read and what the
            compensation folded (:class:`regprune.surgery.CompensationReport` as a dict), with
            the method's warnings about an unfinished schedule; None when not recorded.
        machine: where the numbers were measured; defaults to the current machine.
        schema_version: format version of the JSON file.
    """

    method: str
    model: str
    dataset: str
    seeds: list[int]
    command: str
    acc_before_prune: list[float]
    acc_after_prune: list[float]
    acc_after_finetune: list[float]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    latency_ms_before: dict[int, float]
    latency_ms_after: dict[int, float]
    layer_widths: dict[str, tuple[int, int]]
    phase_time_s: dict[str, float]
    ratio: float | None = None
    target_macs: float | None = None
    weight_sparsity: float = 0.0
    acc_baseline: list[float] | None = None
    removal: dict[str, Any] | None = None
    latency_layouts: dict[str, dict[int, str]] = field(default_factory=dict)
    machine: str = field(default_factory=describe_machine)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for name in ("acc_baseline", "acc_before_prune", "acc_after_prune", "acc_after_finetune"):
            values = getattr(self, name)
            if values is None:  # only acc_baseline may be absent
                continue
            if len(values) != len(self.seeds):
                raise ValueError(
                    f"{name} has {len(values)} values for {len(self.seeds)} seeds; "
                    "give one per seed"
                )
            if any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"{name} must be fractions in [0, 1] (not percent), got {values}")
        if self.ratio is not None and self.target_macs is not None:
            raise ValueError(
                f"give at most one target, ratio or target_macs; got ratio={self.ratio}, "
                f"target_macs={self.target_macs}"
            )
        if not 0.0 <= self.weight_sparsity <= 1.0:
            raise ValueError(
                f"weight_sparsity must be a fraction in [0, 1], got {self.weight_sparsity}"
            )
        for name in ("macs_before", "macs_after", "params_before", "params_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.latency_ms_before.keys() != self.latency_ms_after.keys():
            raise ValueError(
                "latency_ms_before and latency_ms_after must cover the same batch sizes, got "
                f"{sorted(self.latency_ms_before)} and {sorted(self.latency_ms_after)}"
            )

    @property
    def flops_before(self) -> int:
        """``2 * macs_before``."""
        return 2 * self.macs_before

    @property
    def flops_after(self) -> int:
        """``2 * macs_after``."""
        return 2 * self.macs_after

    @property
    def macs_ratio(self) -> float:
        """``macs_before / macs_after``: the speedup the MACs promise, latency's upper limit."""
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    def speedup(self, batch_size: int) -> float:
        """Measured latency speedup at ``batch_size`` (before / after median)."""
        return self.latency_ms_before[batch_size] / self.latency_ms_after[batch_size]

    def to_json(self) -> str:
        """The summary as pretty-printed JSON (batch sizes become string keys, tuples lists)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        """Parse :meth:`to_json` output, restoring int batch sizes and width tuples.

        Raises:
            ValueError: not JSON, missing fields, unknown fields, or a newer schema version.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a run summary is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"summary schema version {version} is newer than this regprune reads "
                f"({SCHEMA_VERSION}); upgrade regprune"
            )
        known = {f.name for f in fields(cls)}
        if unknown := sorted(data.keys() - known):
            raise ValueError(f"unknown summary fields {unknown}")
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        if missing := sorted(required - data.keys()):
            raise ValueError(f"summary is missing fields {missing}")
        for name in ("latency_ms_before", "latency_ms_after"):
            data[name] = {int(batch): float(ms) for batch, ms in data[name].items()}
        data["latency_layouts"] = {
            which: {int(batch): str(layout) for batch, layout in per_batch.items()}
            for which, per_batch in data.get("latency_layouts", {}).items()
        }
        data["layer_widths"] = {
            layer: (int(pair[0]), int(pair[1])) for layer, pair in data["layer_widths"].items()
        }
        return cls(**data)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run_dir/summary.json`` atomically and return its path.

        Why atomic (temporary file in the same directory, then ``os.replace``): a run killed
        mid-write must leave the previous summary or none, never half a JSON file that a later
        ``write_report`` would choke on.
        """
        return atomic_write_text(Path(run_dir) / SUMMARY_FILE, self.to_json())

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunSummary:
        """Read ``run_dir/summary.json``.

        Raises:
            FileNotFoundError: no summary in ``run_dir`` (the message names the path).
            ValueError: the file is not a valid summary (the message names the path).
        """
        path = Path(run_dir) / SUMMARY_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no run summary at {path}; the pipeline writes it with RunSummary.save(run_dir)"
            )
        try:
            return cls.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path} is not a valid run summary: {error}") from error
