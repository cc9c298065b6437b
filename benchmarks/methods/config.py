"""The benchmark's YAML config as typed, validated data, and its expansion into runs.

One config fixes everything that must be equal across methods (data, baseline schedule, the
sparsify / fine-tune schedules, the MACs target, the seeds); each ``runs`` entry only names a
method and its own hyper-parameters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("ours", "tp", "unstructured")
"""``ours``: a structural regprune method; ``tp``: a Torch-Pruning 1.6.1 pruner;
``unstructured``: a regprune unstructured method, run once per sparsity in ``ratios``."""

PLAIN = "plain"
"""``sparsify: plain``: the method adds nothing during the sparsify epochs (one-shot criteria), so
all such runs of a seed share one plain-continued model (identical computation, done once)."""


@dataclass(frozen=True)
class Phase:
    epochs: int
    lr: float
    schedule: str = "cosine"


@dataclass(frozen=True)
class RunSpec:
    """One method at one setting: ``label`` names it in tables and JSON."""

    label: str
    family: str
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    sparsify: str = "train"
    ratio: float | None = None


@dataclass(frozen=True)
class BenchConfig:
    name: str
    model: str
    dataset: str
    data_root: str | None
    train_subset: int | None
    test_subset: int | None
    data_seed: int
    seeds: list[int]
    batch_size: int
    threads: int
    device: str
    weight_decay: float
    target_macs: float
    calibration_batches: int
    pretrain: Phase
    sparsify: Phase
    finetune: Phase
    latency_repeats: int
    latency_batches: list[int]
    cache_dir: str
    out: str
    runs: list[RunSpec]

    def baseline_key(self, seed: int) -> str:
        """Cache key of a pretrained baseline: everything that changes its weights."""
        parts = {
            "model": self.model,
            "dataset": self.dataset,
            "train_subset": self.train_subset,
            "data_seed": self.data_seed,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "pretrain": asdict(self.pretrain),
            "seed": seed,
        }
        return _digest(parts)

    def plain_key(self, seed: int) -> str:
        return _digest({"baseline": self.baseline_key(seed), "sparsify": asdict(self.sparsify)})


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _phase(raw: dict[str, Any], name: str) -> Phase:
    if name not in raw:
        raise ValueError(f"config: missing the '{name}' phase (epochs, lr, schedule)")
    phase = Phase(**raw[name])
    if phase.epochs < 1 or phase.lr <= 0:
        raise ValueError(f"config: {name} needs epochs >= 1 and lr > 0, got {phase}")
    return phase


def _expand(entry: dict[str, Any]) -> list[RunSpec]:
    entry = dict(entry)
    family = entry.pop("family", "ours")
    if family not in FAMILIES:
        raise ValueError(f"run {entry.get('label')!r}: family must be one of {FAMILIES}")
    label = entry.pop("label")
    method = entry.pop("method")
    kwargs = dict(entry.pop("kwargs", {}) or {})
    sparsify = entry.pop("sparsify", "train")
    ratios = entry.pop("ratios", None)
    if entry:
        raise ValueError(f"run {label!r}: unknown keys {sorted(entry)}")
    if family != "unstructured":
        return [RunSpec(label, family, method, kwargs, sparsify)]
    if not ratios:
        return [RunSpec(label, family, method, kwargs, sparsify)]
    return [RunSpec(f"{label}@{r:g}", family, method, kwargs, sparsify, float(r)) for r in ratios]


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a benchmark config (see ``configs/cpu.yaml`` for every key)."""
    raw = yaml.safe_load(Path(path).read_text())
    latency = raw.get("latency", {})
    runs = [spec for entry in raw["runs"] for spec in _expand(entry)]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"config: run labels must be unique, got {labels}")
    return BenchConfig(
        name=raw["name"],
        model=raw["model"],
        dataset=raw["dataset"],
        data_root=raw.get("data_root"),
        train_subset=raw.get("train_subset"),
        test_subset=raw.get("test_subset"),
        data_seed=int(raw.get("data_seed", 0)),
        seeds=[int(s) for s in raw["seeds"]],
        batch_size=int(raw["batch_size"]),
        threads=int(raw.get("threads", 1)),
        device=raw.get("device", "cpu"),
        weight_decay=float(raw.get("weight_decay", 5e-4)),
        target_macs=float(raw["target_macs"]),
        calibration_batches=int(raw.get("calibration_batches", 8)),
        pretrain=_phase(raw, "pretrain"),
        sparsify=_phase(raw, "sparsify"),
        finetune=_phase(raw, "finetune"),
        latency_repeats=int(latency.get("repeats", 10)),
        latency_batches=[int(b) for b in latency.get("batches", [1, 64])],
        cache_dir=raw.get("cache_dir", "/tmp/regprune-bench-cache"),
        out=raw["out"],
        runs=runs,
    )
