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
from dataclasses import asdict, dataclass, field, fields, replace
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
    target_macs: float | None = None
    """This run's own MACs target (a claim row), instead of the config's targets."""
    model: ModelSection | None = None
    """This run's own architecture (a claim made on LeNet-5 or MobileNetV2); its baseline is
    pretrained by the config's rule, once per (model, seed), like the config's own."""
    claim: Claim | None = None


@dataclass(frozen=True)
class Claim:
    """A paper's headline claim, transposed to this benchmark's data (``report.claims_table``).

    Attributes:
        paper: who claims it (``MaskSparsity``), and ``text`` what they claim.
        metric: the reduction claimed: ``macs``, ``params`` (1 - after / before) or
            ``weight_sparsity`` (the share of conv / linear weights that are zero).
        at_least: the reduction the claim needs (0.6: 60 % fewer FLOPs).
        max_drop: the accuracy drop it allows, in points (0: "no loss").
    """

    paper: str
    text: str
    metric: str
    at_least: float
    max_drop: float


CLAIM_METRICS = ("macs", "params", "weight_sparsity")


@dataclass(frozen=True)
class Plateau:
    """``pretrain: {until_plateau: {...}}``: train the baseline until test accuracy stops rising.

    In stages of constant lr (``lr``, then ``lr x factor`` ``drops`` times): a stage ends when
    its best test accuracy has not risen by ``min_delta`` for ``patience`` epochs; the last
    stage's end ends training, and so does ``max_epochs`` in all. The epochs trained are the
    baseline's: the sparsify / fine-tune budgets given as a ``share`` are a share of them.
    """

    patience: int = 3
    max_epochs: int = 60
    min_delta: float = 1e-3
    drops: int = 2
    factor: float = 0.1

    def __post_init__(self) -> None:
        if self.patience < 1 or not 1 <= self.max_epochs < 1000:
            raise ConfigError(
                "pretrain.until_plateau: patience >= 1 and 1 <= max_epochs < 1000 (the sparsify "
                f"phase shuffles from epoch 1000 on); got {self.patience}, {self.max_epochs}"
            )
        if self.drops < 0 or not 0 < self.factor < 1 or self.min_delta < 0:
            raise ConfigError(
                "pretrain.until_plateau: drops >= 0, 0 < factor < 1, min_delta >= 0; got "
                f"{self.drops}, {self.factor}, {self.min_delta}"
            )


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
    targets: tuple[float, ...] = ()
    """Every MACs target of the config (``target_macs: [0.5, 0.25]``); ``target_macs`` is the
    one a run is at (``at_target``). A single target: ``(target_macs,)``."""
    plateau: Plateau | None = None
    sparsify_share: float | None = None
    finetune_share: float | None = None
    """``sparsify: {share: 0.1}``: that share of the baseline's trained epochs (``resolved``)."""
    data_on_device: bool = False
    """The training set held on ``device`` as tensors, augmented there (``data.DeviceLoader``)."""
    tp_reg_from_budget: bool = False
    """Torch-Pruning peers with no ``reg`` get one sized by the sparsify iterations
    (``tp_peers.budget_kwargs``), as our methods are in budget mode."""
    baselines_dir: str | None = None
    """Published baselines (``baselines.py``): loaded from there, hash-checked, when present."""
    workers: int = 1
    """Processes ``run.py`` starts by default, sharing the runs through the claim files."""

    def baseline_key(self, seed: int) -> str:
        """Cache key of a pretrained baseline: everything that changes its weights."""
        parts = {
            "model": asdict(self.model),
            "data": asdict(self.data),
            "data_seed": self.data_seed,
            "pretrain": asdict(self.pretrain),
            "seed": seed,
        }
        if self.plateau is not None:  # absent otherwise: the keys of older configs stand
            parts["until_plateau"] = asdict(self.plateau)
        if self.data_on_device:
            parts["data_on_device"] = True  # augmented by another random stream
        return _digest(parts)

    @property
    def budget_mode(self) -> bool:
        """Whether the sparsify / fine-tune epochs are shares of the baseline's epochs."""
        return self.sparsify_share is not None or self.finetune_share is not None

    def resolved(self, baseline_epochs: int) -> BenchConfig:
        """This config with the ``share`` budgets turned into epochs of a baseline trained
        ``baseline_epochs`` epochs (at least 1 each); itself when it gives epochs."""
        if not self.budget_mode:
            return self

        def epochs(share: float | None, phase: TrainSection) -> TrainSection:
            if share is None:
                return phase
            return replace(phase, epochs=max(1, round(share * baseline_epochs)))

        sparsify = epochs(self.sparsify_share, self.sparsify)
        runs = [
            replace(r, sparsify_phase=replace(r.sparsify_phase, epochs=sparsify.epochs))
            if r.sparsify_phase is not None
            else r
            for r in self.runs
        ]
        return replace(
            self,
            sparsify=sparsify,
            finetune=epochs(self.finetune_share, self.finetune),
            runs=runs,
            sparsify_share=None,
            finetune_share=None,
        )

    def at_target(self, target_macs: float) -> BenchConfig:
        return replace(self, target_macs=target_macs)

    def for_model(self, model: ModelSection | None) -> BenchConfig:
        """This config on a run's own architecture (claim rows), or itself."""
        return self if model is None or model == self.model else replace(self, model=model)

    @property
    def multi_target(self) -> bool:
        """More than one target, or runs with their own: records and files name their target."""
        return len(self.targets) > 1 or any(r.target_macs is not None for r in self.runs)

    def targets_of(self, spec: RunSpec) -> list[float]:
        """The targets ``spec`` runs at: its own, or the config's; unstructured runs (their
        ``ratio`` is the target) once, recorded at the first."""
        if spec.target_macs is not None:
            return [spec.target_macs]
        if spec.family == "unstructured":
            return [self.targets[0]]
        return list(self.targets)

    @property
    def latency_out(self) -> Path:
        """The latency pass's JSON lines beside ``out``: ``latency.py`` writes, the report reads."""
        out = Path(self.out)
        return out.with_name(f"{out.stem}_latency.jsonl")

    def plain_key(self, seed: int) -> str:
        return _digest({"baseline": self.baseline_key(seed), "sparsify": asdict(self.sparsify)})


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _phase(raw: dict[str, Any], name: str, weight_decay: float, amp: bool = False) -> TrainSection:
    """The ``name`` phase as the pipeline's ``TrainSection``; the config's ``weight_decay`` (and
    ``amp``) apply where the phase sets none. Every phase runs: ``epochs`` must be at least 1.
    A ``share`` (budget) or ``until_plateau`` (pretrain) phase is read by ``_budget`` /
    ``_plateau``; its epochs here are placeholders until ``BenchConfig.resolved``."""
    if name not in raw:
        raise ValueError(f"config: missing the '{name}' phase (epochs, lr, schedule)")
    section = {k: v for k, v in raw[name].items() if k not in ("share", "until_plateau")}
    if "share" in raw[name]:
        section["epochs"] = 1
    if "until_plateau" in raw[name]:
        section["epochs"] = _plateau(raw).max_epochs
    defaults = {"weight_decay": weight_decay} | ({"amp": True} if amp else {})
    phase = build(TrainSection, defaults | section, name)
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


def _plateau(raw: dict[str, Any]) -> Plateau | None:
    rule = raw["pretrain"].get("until_plateau")
    if rule is None:
        return None
    if "epochs" in raw["pretrain"]:
        raise ConfigError("pretrain: give epochs or until_plateau, not both")
    unknown = sorted(set(rule) - {f.name for f in fields(Plateau)})
    if unknown:
        raise ConfigError(f"pretrain.until_plateau: unknown keys {unknown}")
    return Plateau(**rule)


def _share(raw: dict[str, Any], name: str) -> float | None:
    """``{share: 0.1}``: the phase's epochs as a share of the baseline's (needs until_plateau,
    or a fixed pretrain, whose epochs are then the baseline's)."""
    share = raw[name].get("share")
    if share is None:
        return None
    if "epochs" in raw[name]:
        raise ConfigError(f"{name}: give epochs or share, not both")
    if not 0 < float(share) <= 1:
        raise ConfigError(f"{name}.share: a share of the baseline's epochs in (0, 1]; got {share}")
    return float(share)


def _claim(label: str, raw: dict[str, Any] | None) -> Claim | None:
    if raw is None:
        return None
    try:
        claim = Claim(**raw)
    except TypeError as error:
        keys = [f.name for f in fields(Claim)]
        raise ConfigError(f"run {label!r} claim: {error}; keys: {keys}") from None
    if claim.metric not in CLAIM_METRICS:
        raise ConfigError(
            f"run {label!r} claim.metric: one of {CLAIM_METRICS}, got {claim.metric!r}"
        )
    return claim


def _targets(value: Any) -> tuple[float, ...]:
    targets = tuple(float(t) for t in (value if isinstance(value, list) else [value]))
    if not targets or len(set(targets)) != len(targets):
        raise ConfigError(f"config: target_macs: one value or a list of distinct ones; got {value}")
    return targets


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
    target = entry.pop("target_macs", None)
    own = {
        "target_macs": None if target is None else float(target),
        "model": _run_model(label, entry.pop("model", None), entry.pop("model_kwargs", None)),
        "claim": _claim(label, entry.pop("claim", None)),
    }
    if entry:
        raise ValueError(f"run {label!r}: unknown keys {sorted(entry)}")
    if family == "unstructured" and ratios:
        return [
            RunSpec(f"{label}@{r:g}", family, method, kwargs, sparsify, float(r), phase, **own)
            for r in ratios
        ]
    return [RunSpec(label, family, method, kwargs, sparsify, None, phase, **own)]


def _run_model(label: str, name: str | None, kwargs: dict | None) -> ModelSection | None:
    if name is None:
        return None
    model = ModelSection(name, dict(kwargs or {}))
    model.validate(f"run {label!r} model")
    return model


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


def load_config(
    path: str | Path, out: str | None = None, cache_dir: str | None = None
) -> BenchConfig:
    """Read and validate a benchmark config (see ``configs/cpu.yaml`` for every key).

    ``out`` / ``cache_dir`` replace the file's (``run.py --out``: results elsewhere, e.g. under
    a device machine's ``$OUT``, without editing the config)."""
    raw = _read(Path(path))
    raw |= {k: v for k, v in (("out", out), ("cache_dir", cache_dir)) if v is not None}
    latency = raw.get("latency", {})
    weight_decay = float(raw.get("weight_decay", 5e-4))
    device = raw.get("device", "cpu")
    amp = bool(raw.get("amp", False)) and str(device).startswith("cuda")  # CUDA only
    sparsify = _phase(raw, "sparsify", weight_decay, amp)
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
    targets = _targets(raw["target_macs"])
    target_macs = targets[0]
    max_ratio = None if raw.get("max_ratio") is None else float(raw["max_ratio"])
    own_targets = [r.target_macs for r in runs if r.target_macs is not None]
    for target in (*targets, *own_targets):
        try:
            Target(target_macs=target, max_ratio=1.0 if max_ratio is None else max_ratio)
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
        device=device,
        target_macs=target_macs,
        max_ratio=max_ratio,
        calibration_batches=int(raw.get("calibration_batches", 8)),
        pretrain=_phase(raw, "pretrain", weight_decay, amp),
        sparsify=sparsify,
        finetune=_phase(raw, "finetune", weight_decay, amp),
        latency_rounds=int(latency.get("rounds", 15)),
        latency_batches=[int(b) for b in latency.get("batches", [1, 64])],
        cache_dir=raw.get("cache_dir", "/tmp/regprune-bench-cache"),
        out=raw["out"],
        runs=runs,
        targets=targets,
        plateau=_plateau(raw),
        sparsify_share=_share(raw, "sparsify"),
        finetune_share=_share(raw, "finetune"),
        data_on_device=bool(raw.get("data_on_device", False)),
        tp_reg_from_budget=bool(raw.get("tp_reg_from_budget", False)),
        baselines_dir=raw.get("baselines_dir"),
        workers=int(raw.get("workers", 1)),
    )
