"""The benchmark's YAML config as typed, validated data, and its expansion into runs.

One config fixes everything that must be equal across methods (data, baseline schedule, the
sparsify / fine-tune schedules, the MACs target, the seeds); each ``runs`` entry only names a
method and its own hyper-parameters.

The file stays flat (``dataset:``, ``train_subset:``, ``pretrain: {epochs, lr, schedule}``) so a
derived config (``base: cpu.yaml``) overrides one key, but what it reads into is the pipeline's
own sections (``DataSection``, ``ModelSection``, ``TrainSection``), checked by their rules and
the one target rule (``regprune.allocation.Target``): the harness has no schema of its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from regprune.allocation import Target
from regprune.pipeline.config import parse_yaml
from regprune.pipeline.sections import DataSection, ModelSection, TrainSection
from regprune.pipeline.typed import ConfigError, build

FAMILIES = ("ours", "tp", "unstructured")
"""``ours``: a structural regprune method; ``tp``: a Torch-Pruning 1.6.1 pruner;
``unstructured``: a regprune unstructured method, run once per sparsity in ``ratios``."""

PLAIN = "plain"
"""``sparsify: plain``: the method adds nothing during the sparsify epochs (one-shot criteria), so
all such runs of a seed share one plain-continued model (identical computation, done once)."""


PHASE_OVERRIDES = ("optimizer", "lr", "weight_decay", "schedule")
"""What a run may change of the shared sparsify phase (``sparsify_phase:``): how it optimizes,
never how long, so every method still gets the same epochs."""


@dataclass(frozen=True)
class RunSpec:
    """One method at one setting: ``label`` names it in tables and JSON."""

    label: str
    family: str
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    sparsify: str = "train"
    ratio: float | None = None
    sparsify_phase: TrainSection | None = None
    """This run's own optimizer settings for the sparsify epochs (L0 gates train with Adam, as
    in the paper); ``None``: the config's ``sparsify`` phase."""


@dataclass(frozen=True)
class BenchConfig:
    """A whole benchmark: the shared data, model, phases and target, and its runs.

    Attributes:
        data: the training data (``dataset``, ``data_root``, ``train_subset``, ``batch_size``;
            no validation split: accuracy is on the test set, final epoch only).
        test_subset: class-balanced test images every run is judged on (None: all).
        data_seed: fixes the train and test subsets; the run seed never changes them.
        max_ratio: cap on the share of any one channel group that a structured run may remove
            (ours: ``max_ratio``, Torch-Pruning: ``max_pruning_ratio``); ``None``: no cap.
        latency_rounds: interleaved timing rounds per batch size in ``latency.py``.
    """

    name: str
    model: ModelSection
    data: DataSection
    test_subset: int | None
    data_seed: int
    seeds: list[int]
    threads: int
    device: str
    target_macs: float
    max_ratio: float | None
    calibration_batches: int
    pretrain: TrainSection
    sparsify: TrainSection
    finetune: TrainSection
    latency_rounds: int
    latency_batches: list[int]
    cache_dir: str
    out: str
    runs: list[RunSpec]

    def baseline_key(self, seed: int) -> str:
        """Cache key of a pretrained baseline: everything that changes its weights."""
        parts = {
            "model": asdict(self.model),
            "data": asdict(self.data),
            "data_seed": self.data_seed,
            "pretrain": asdict(self.pretrain),
            "seed": seed,
        }
        return _digest(parts)

    @property
    def latency_out(self) -> Path:
        """The latency pass's JSON lines beside ``out``: ``latency.py`` writes, the report reads."""
        out = Path(self.out)
        return out.with_name(f"{out.stem}_latency.jsonl")

    def plain_key(self, seed: int) -> str:
        return _digest({"baseline": self.baseline_key(seed), "sparsify": asdict(self.sparsify)})


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _phase(raw: dict[str, Any], name: str, weight_decay: float) -> TrainSection:
    """The ``name`` phase as the pipeline's ``TrainSection``; the config's ``weight_decay``
    applies where the phase sets none. Every phase runs: ``epochs`` must be at least 1."""
    if name not in raw:
        raise ValueError(f"config: missing the '{name}' phase (epochs, lr, schedule)")
    phase = build(TrainSection, {"weight_decay": weight_decay, **raw[name]}, name)
    phase.validate(name)
    if phase.epochs < 1:
        raise ConfigError(f"{name}.epochs: every benchmark phase runs, so >= 1; got 0")
    return phase


def _sparsify_phase(
    label: str, overrides: dict[str, Any] | None, shared: TrainSection
) -> TrainSection | None:
    if not overrides:
        return None
    unknown = sorted(set(overrides) - set(PHASE_OVERRIDES))
    if unknown:
        raise ValueError(
            f"run {label!r}: sparsify_phase keys {unknown} unknown; allowed: {PHASE_OVERRIDES} "
            "(the epochs are the config's, the same for every method)"
        )
    where = f"run {label!r} sparsify_phase"
    phase = build(TrainSection, {**asdict(shared), **overrides}, where)
    phase.validate(where)
    return phase


def _expand(entry: dict[str, Any], shared_sparsify: TrainSection) -> list[RunSpec]:
    entry = dict(entry)
    family = entry.pop("family", "ours")
    if family not in FAMILIES:
        raise ValueError(f"run {entry.get('label')!r}: family must be one of {FAMILIES}")
    label = entry.pop("label")
    method = entry.pop("method")
    kwargs = dict(entry.pop("kwargs", {}) or {})
    sparsify = entry.pop("sparsify", "train")
    ratios = entry.pop("ratios", None)
    phase = _sparsify_phase(label, entry.pop("sparsify_phase", None), shared_sparsify)
    if entry:
        raise ValueError(f"run {label!r}: unknown keys {sorted(entry)}")
    if family == "unstructured" and ratios:
        return [
            RunSpec(f"{label}@{r:g}", family, method, kwargs, sparsify, float(r), phase)
            for r in ratios
        ]
    return [RunSpec(label, family, method, kwargs, sparsify, None, phase)]


def _read(path: Path) -> dict[str, Any]:
    """The YAML mapping at ``path``; ``base: OTHER.yaml`` (beside it) supplies every key it
    does not set itself, so a VGG or smoke config changes the model or data, not the runs."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark config {path} does not exist")
    raw = parse_yaml(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a benchmark config is a YAML mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _read(path.parent / base) | raw


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a benchmark config (see ``configs/cpu.yaml`` for every key)."""
    raw = _read(Path(path))
    latency = raw.get("latency", {})
    weight_decay = float(raw.get("weight_decay", 5e-4))
    sparsify = _phase(raw, "sparsify", weight_decay)
    entries = list(raw["runs"]) + list(raw.get("extra_runs") or [])
    runs = [spec for entry in entries for spec in _expand(entry, sparsify)]
    if raw.get("structured_only", False):
        runs = [spec for spec in runs if spec.family != "unstructured"]
    for label, changes in (raw.get("kwargs_overrides") or {}).items():
        matches = [i for i, spec in enumerate(runs) if spec.label == label]
        if not matches:
            raise ValueError(f"config: kwargs_overrides names a run that does not exist: {label}")
        for i in matches:
            runs[i] = replace(runs[i], kwargs={**runs[i].kwargs, **changes})
    only = raw.get("only")
    if only is not None:
        unknown = sorted(set(only) - {spec.label for spec in runs})
        if unknown:
            raise ValueError(f"config: 'only' names runs that do not exist: {unknown}")
        runs = [spec for spec in runs if spec.label in only]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"config: run labels must be unique, got {labels}")
    data = DataSection(
        name=raw["dataset"],
        root=raw.get("data_root"),
        subset=raw.get("train_subset"),
        batch_size=int(raw["batch_size"]),
        val_fraction=0.0,
    )
    data.validate("data")
    model = ModelSection(raw["model"], dict(raw.get("model_kwargs") or {}))
    model.validate("model")
    target_macs = float(raw["target_macs"])
    max_ratio = None if raw.get("max_ratio") is None else float(raw["max_ratio"])
    try:
        Target(target_macs=target_macs, max_ratio=1.0 if max_ratio is None else max_ratio)
    except ValueError as error:
        raise ConfigError(f"config: {error}") from None
    return BenchConfig(
        name=raw["name"],
        model=model,
        data=data,
        test_subset=raw.get("test_subset"),
        data_seed=int(raw.get("data_seed", 0)),
        seeds=[int(s) for s in raw["seeds"]],
        threads=int(raw.get("threads", 1)),
        device=raw.get("device", "cpu"),
        target_macs=target_macs,
        max_ratio=max_ratio,
        calibration_batches=int(raw.get("calibration_batches", 8)),
        pretrain=_phase(raw, "pretrain", weight_decay),
        sparsify=sparsify,
        finetune=_phase(raw, "finetune", weight_decay),
        latency_rounds=int(latency.get("rounds", 15)),
        latency_batches=[int(b) for b in latency.get("batches", [1, 64])],
        cache_dir=raw.get("cache_dir", "/tmp/regprune-bench-cache"),
        out=raw["out"],
        runs=runs,
    )
