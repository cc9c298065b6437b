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
from pathlib import Path
from typing import Any

import yaml

from regprune.pipeline.sections import (
    DataSection,
    MethodSection,
    ModelSection,
    OutputSection,
    PretrainSection,
    PruneSection,
    ReportSection,
    TrainSection,
    check,
)
from regprune.pipeline.typed import ConfigError, build

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


# Sections by phase: a phase's result depends on its own sections and on all earlier ones. A
# resumed run may not change them for a phase that has already started (see ``changed_keys``).
PHASE_SECTIONS: dict[str, tuple[str, ...]] = {
    "pretrain": ("seed", "data", "model", "pretrain"),
    "sparsify": ("method", "sparsify"),
    "prune": ("prune",),
    "finetune": ("finetune",),
    "report": ("report",),
}


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
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
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
