"""The run config: a typed, nested schema, loaded from YAML, overridable from the command line.

Why typed dataclasses: a run that dies after an hour of training because ``finetune.lr`` was the
string ``"0.01 "`` costs an hour; a schema checked at load time costs nothing. Every error names
the key, its section, and what is allowed.

Example:
    >>> config = load_config("configs/quickstart.yaml", ["finetune.epochs=3"])  # doctest: +SKIP
    >>> config.finetune.epochs  # doctest: +SKIP
    3
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

from regprune.pipeline.typed import ConfigError, build
from regprune.train import TrainConfig
from regprune.train.optim import SCHEDULES

__all__ = [
    "ConfigError",
    "DataSection",
    "MethodSection",
    "ModelSection",
    "OutputSection",
    "PretrainSection",
    "PruneSection",
    "ReportSection",
    "RunConfig",
    "TrainSection",
    "apply_overrides",
    "changed_keys",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_override",
    "parse_yaml",
]


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float.

    Why: YAML 1.1 (PyYAML's dialect) only treats ``1.0e-4`` as a float and turns ``1e-4`` into a
    *string*, and regularization strengths are written ``1e-4`` everywhere. The YAML 1.2 rule
    added here changes nothing else; no Python object can be constructed (still a SafeLoader).
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader above (plain data only: no tags, no objects)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: builds plain data only


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


@dataclass
class DataSection:
    """Which data set and how it is split and batched (see ``regprune.data.build_datasets``)."""

    name: str
    root: str | None = None
    subset: int | None = None
    batch_size: int = 128
    val_fraction: float = 0.1
    workers: int = 0
    augment: bool = True

    def validate(self, where: str) -> None:
        from regprune.data.sources import canonical_name

        try:
            canonical_name(self.name)
        except ValueError as error:
            raise ConfigError(f"{where}.name: {error}") from None
        _check(self.subset is None or self.subset >= 1, f"{where}.subset", "must be >= 1 or null")
        _check(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            0.0 <= self.val_fraction < 1.0,
            f"{where}.val_fraction",
            f"must be in [0, 1), got {self.val_fraction}",
        )
        _check(self.workers >= 0, f"{where}.workers", f"must be >= 0, got {self.workers}")


@dataclass
class ModelSection:
    """Architecture by registry name; ``kwargs`` go to ``create_model`` (e.g. ``shortcut: A``).

    ``num_classes`` and ``in_channels`` come from the data set and must not be given here.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        from regprune.models import list_models

        names = list_models()
        _check(
            self.name in names or self.name.startswith("torchvision:"),
            f"{where}.name",
            f"unknown model {self.name!r}; available: {', '.join(names)} or torchvision:<name>",
        )
        for key in ("num_classes", "in_channels"):
            _check(key not in self.kwargs, f"{where}.kwargs.{key}", "is set from the data set")


@dataclass
class TrainSection:
    """SGD settings of one training phase (``TrainConfig``); ``epochs: 0`` skips the phase."""

    epochs: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = False

    def validate(self, where: str) -> None:
        _check(self.epochs >= 0, f"{where}.epochs", f"must be >= 0, got {self.epochs}")
        _check(self.lr > 0, f"{where}.lr", f"must be > 0, got {self.lr}")
        _check(
            self.schedule in SCHEDULES,
            f"{where}.schedule",
            f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        _check(
            0.0 <= self.label_smoothing < 1.0,
            f"{where}.label_smoothing",
            f"must be in [0, 1), got {self.label_smoothing}",
        )
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            f"{where}.grad_clip",
            f"must be > 0 or null, got {self.grad_clip}",
        )
        _check(
            not self.nesterov or self.momentum > 0,
            f"{where}.nesterov",
            "needs momentum > 0",
        )

    def train_config(self, device: str | None, progress: bool) -> TrainConfig:
        """The trainer's settings for this phase (only meaningful when ``epochs >= 1``)."""
        milestones = tuple(self.milestones) if self.milestones is not None else None
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            milestones=milestones,
            gamma=self.gamma,
            label_smoothing=self.label_smoothing,
            amp=self.amp,
            grad_clip=self.grad_clip,
            device=device,
            progress=progress,
        )


@dataclass
class PretrainSection(TrainSection):
    """Baseline training; ``checkpoint`` reuses a trained baseline instead (``epochs`` is then
    ignored): a regprune checkpoint (``checkpoints/pretrain.pt`` of another run) or a plain
    ``state_dict`` file, loaded with ``weights_only=True``."""

    checkpoint: str | None = None


@dataclass
class MethodSection:
    """The pruning method by registry name, its own ``kwargs`` and the pruning target.

    Exactly one of ``ratio`` (fraction of channels removed) and ``target_macs`` (fraction of
    MACs kept) is given. ``scope: null`` uses the method's own default.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    target_macs: float | None = None
    scope: str | None = None
    round_to: int = 1
    ignore: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        from regprune.pipeline.methods import available_methods

        names = available_methods()
        _check(
            self.name in names,
            f"{where}.name",
            f"unknown method {self.name!r}; available: {', '.join(names)}",
        )
        _check(
            (self.ratio is None) != (self.target_macs is None),
            where,
            "give exactly one of ratio and target_macs "
            f"(got ratio={self.ratio}, target_macs={self.target_macs}); "
            "set the other to null when overriding",
        )
        _check(
            self.ratio is None or 0.0 <= self.ratio < 1.0,
            f"{where}.ratio",
            f"must be in [0, 1), got {self.ratio}",
        )
        _check(
            self.target_macs is None or 0.0 < self.target_macs <= 1.0,
            f"{where}.target_macs",
            f"must be in (0, 1], got {self.target_macs}",
        )
        _check(
            self.scope in (None, "local", "global"),
            f"{where}.scope",
            f"must be local, global or null, got {self.scope!r}",
        )
        _check(self.round_to >= 1, f"{where}.round_to", f"must be >= 1, got {self.round_to}")
        for key in ("ratio", "target_macs", "scope", "round_to", "ignore"):
            _check(key not in self.kwargs, f"{where}.kwargs.{key}", f"set it as {where}.{key}")

    def target_kwargs(self) -> dict[str, Any]:
        """The target keywords every structural method takes; defaults are left out, so a
        method with fewer options (unstructured ones) is not handed keywords it lacks."""
        target: dict[str, Any] = {}
        if self.ratio is not None:
            target["ratio"] = self.ratio
        if self.target_macs is not None:
            target["target_macs"] = self.target_macs
        if self.scope is not None:
            target["scope"] = self.scope
        if self.round_to != 1:
            target["round_to"] = self.round_to
        if self.ignore:
            target["ignore"] = list(self.ignore)
        return target


@dataclass
class PruneSection:
    """Surgery: ``calibration_batches`` training batches go to ``method.prune(data)``."""

    calibration_batches: int = 4

    def validate(self, where: str) -> None:
        _check(
            self.calibration_batches >= 0,
            f"{where}.calibration_batches",
            f"must be >= 0, got {self.calibration_batches}",
        )


@dataclass
class ReportSection:
    """Latency measurement for the report (median of ``latency_repeats`` calls per batch size).

    ``latency_threads: null`` keeps torch's thread count; fix it to compare runs on a shared host.
    """

    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    latency_repeats: int = 20
    latency_warmup: int = 3
    latency_threads: int | None = None

    def validate(self, where: str) -> None:
        _check(
            all(b >= 1 for b in self.latency_batch_sizes),
            f"{where}.latency_batch_sizes",
            f"batch sizes must be >= 1, got {self.latency_batch_sizes}",
        )
        _check(self.latency_repeats >= 1, f"{where}.latency_repeats", "must be >= 1")
        _check(self.latency_warmup >= 0, f"{where}.latency_warmup", "must be >= 0")
        _check(
            self.latency_threads is None or self.latency_threads >= 1,
            f"{where}.latency_threads",
            "must be >= 1 or null",
        )


@dataclass
class OutputSection:
    """Where the run writes. Every file of the run goes inside ``run_dir``."""

    run_dir: str = "runs/run"

    def validate(self, where: str) -> None:
        _check(bool(self.run_dir.strip()), f"{where}.run_dir", "must not be empty")
        _check(
            ".." not in PurePath(self.run_dir).parts,
            f"{where}.run_dir",
            f"must not contain '..' (got {self.run_dir!r}); give a path below the working "
            "directory or an absolute path",
        )


# Sections by phase: a phase's result depends on its own sections and on all earlier ones. A
# resumed run may not change them for a phase that has already started (see ``changed_keys``).
PHASE_SECTIONS: dict[str, tuple[str, ...]] = {
    "pretrain": ("seed", "data", "model", "pretrain"),
    "sparsify": ("method", "sparsify"),
    "prune": ("prune",),
    "finetune": ("finetune",),
    "report": ("report",),
}
RUNTIME_KEYS = ("device", "progress", "output")
"""Settings that change nothing about the results (where the run writes, progress bars)."""


@dataclass(kw_only=True)
class RunConfig:
    """One pruning run: pretrain -> sparsify -> prune -> finetune -> report.

    Attributes:
        seed: fixes the initial weights, the data split and subset, shuffling and every phase.
        device: ``cpu``, ``cuda``, ``cuda:1``; null picks CUDA when available.
        progress: tqdm bars on a terminal.
        data, model, pretrain, method, sparsify, prune, finetune, report, output: sections.
    """

    seed: int = 0
    device: str | None = None
    progress: bool = True
    data: DataSection
    model: ModelSection
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    method: MethodSection
    sparsify: TrainSection = field(default_factory=TrainSection)
    prune: PruneSection = field(default_factory=PruneSection)
    finetune: TrainSection = field(default_factory=TrainSection)
    report: ReportSection = field(default_factory=ReportSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        for name in (
            "data",
            "model",
            "pretrain",
            "method",
            "sparsify",
            "prune",
            "finetune",
            "report",
            "output",
        ):
            getattr(self, name).validate(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, in schema order (what ``config.yaml`` holds)."""
        return asdict(self)


def config_from_dict(data: Any) -> RunConfig:
    """Validate plain data (a parsed YAML document) into a :class:`RunConfig`.

    Raises:
        ConfigError: unknown key (named with its section and the allowed keys), missing
            required key, wrong type (key, expected type, value) or a value out of range.
    """
    return build(RunConfig, data, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"method.kwargs.s=1e-4"`` -> ``(["method", "kwargs", "s"], 0.0001)``.

    The value is parsed as YAML, so ``3`` is an int, ``null`` is None, ``[1, 64]`` a list and
    ``'3'`` the string "3".

    Raises:
        ConfigError: no ``=``, an empty key, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path):
        raise ConfigError(
            f"override {text!r} is not KEY=VALUE with a dotted key (e.g. finetune.epochs=3)"
        )
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return [part.strip() for part in path], value


def apply_overrides(data: Mapping[str, Any] | None, overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``key.sub=value`` override set (later ones win).

    Missing sections along the path are created (a config may rely on a section's defaults);
    whether the final key exists is checked by :func:`config_from_dict`, with the allowed keys.

    Raises:
        ConfigError: a malformed override, or a path that runs through a non-section value.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a run config is a mapping of sections, got {type(data).__name__}")
    result: dict[str, Any] = copy.deepcopy(dict(data or {}))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(path[: depth + 1])
                raise ConfigError(
                    f"override {text!r}: {prefix} is a value ({child!r}), not a section"
                )
            node = child
        node[path[-1]] = value
    return result


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config, apply command-line overrides and validate the result.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings, applied in order.

    Raises:
        ConfigError: unreadable file, invalid YAML, or any schema error (see
            :func:`config_from_dict`); the message starts with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, in schema order, readable back by :func:`load_config`."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(data, tuple):
        data = list(data)
    return {prefix: data}


def changed_keys(old: RunConfig, new: RunConfig, sections: Iterable[str]) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs inside the given top-level sections."""
    wanted = set(sections)
    before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key.split(".")[0] in wanted and before.get(key) != after.get(key):
            changes.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return changes
