"""The sections of a run config: one dataclass per section, each validating its own values.

Why each section validates itself: the error can then name the exact key (``finetune.lr``)
and the allowed range, and a section is read and checked in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from regprune.allocation import Target
from regprune.pipeline.typed import ConfigError
from regprune.train import TrainConfig, TrainSettings

if TYPE_CHECKING:
    from regprune.data import DataSplits


def check(condition: bool, where: str, message: str) -> None:
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
        check(self.subset is None or self.subset >= 1, f"{where}.subset", "must be >= 1 or null")
        check(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            0.0 <= self.val_fraction < 1.0,
            f"{where}.val_fraction",
            f"must be in [0, 1), got {self.val_fraction}",
        )
        check(self.workers >= 0, f"{where}.workers", f"must be >= 0, got {self.workers}")

    def build_datasets(self, seed: int) -> DataSplits:
        """The train / val / test splits this section names; ``seed`` fixes split and subset.

        Why here: the pipeline and the method benchmark both open their data from this
        section, so the two cannot read the same keys differently.
        """
        from regprune.data import build_datasets

        return build_datasets(
            self.name,
            root=self.root,
            subset=self.subset,
            val_fraction=self.val_fraction,
            seed=seed,
            augment=self.augment,
        )


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
        check(
            self.name in names or self.name.startswith("torchvision:"),
            f"{where}.name",
            f"unknown model {self.name!r}; available: {', '.join(names)} or torchvision:<name>",
        )
        for key in ("num_classes", "in_channels"):
            check(key not in self.kwargs, f"{where}.kwargs.{key}", "is set from the data set")


@dataclass(kw_only=True)
class TrainSection(TrainSettings):
    """Settings of one training phase (:class:`regprune.train.TrainSettings`, the trainer's own
    fields and rules); ``epochs: 0`` skips the phase."""

    def validate(self, where: str) -> None:
        check(self.epochs >= 0, f"{where}.epochs", f"must be >= 0, got {self.epochs}")
        for name, problem in self.problems():
            check(False, f"{where}.{name}", problem)

    def train_config(self, device: str | None, progress: bool) -> TrainConfig:
        """The trainer's settings for this phase (only meaningful when ``epochs >= 1``)."""
        settings = {f.name: getattr(self, f.name) for f in fields(TrainSettings)}
        return TrainConfig(device=device, progress=progress, **settings)


@dataclass
class PretrainSection(TrainSection):
    """Baseline training; ``checkpoint`` reuses a trained baseline instead (``epochs`` is then
    ignored): a regprune checkpoint (``checkpoints/pretrain.pt`` of another run) or a plain
    ``state_dict`` file, loaded with ``weights_only=True``."""

    checkpoint: str | None = None


@dataclass
class MethodSection:
    """The pruning method by registry name, its own ``kwargs`` and the pruning target.

    One of ``ratio`` (fraction of channels, or of weights for unstructured methods, removed)
    and ``target_macs`` (fraction of MACs kept) is given; neither only for a method that sets
    its own sparsity (``l0_weight``). ``scope: null`` uses the method's own default.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None
    target_macs: float | None = None
    scope: str | None = None
    round_to: int | str = 1
    max_ratio: float | None = None
    ignore: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        from regprune.pipeline.methods import available_methods

        names = available_methods()
        check(
            self.name in names,
            f"{where}.name",
            f"unknown method {self.name!r}; available: {', '.join(names)}",
        )
        check(
            self.ratio is None or self.target_macs is None,
            where,
            "give one of ratio and target_macs, not both "
            f"(got ratio={self.ratio}, target_macs={self.target_macs}); "
            "set the other to null when overriding",
        )
        if self.ratio is not None or self.target_macs is not None:
            try:  # the one set of target rules (regprune.allocation.Target)
                Target(
                    self.ratio,
                    self.target_macs,
                    self.scope or "local",
                    self.round_to,
                    self.max_ratio,
                )
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from error
        for key in ("ratio", "target_macs", "scope", "round_to", "max_ratio", "ignore"):
            check(key not in self.kwargs, f"{where}.kwargs.{key}", f"set it as {where}.{key}")

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
        if self.max_ratio is not None:
            target["max_ratio"] = self.max_ratio
        if self.ignore:
            target["ignore"] = list(self.ignore)
        return target


@dataclass
class PruneSection:
    """Surgery: ``calibration_batches`` training batches go to ``method.prune(data)``."""

    calibration_batches: int = 4

    def validate(self, where: str) -> None:
        check(
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
        check(
            all(b >= 1 for b in self.latency_batch_sizes),
            f"{where}.latency_batch_sizes",
            f"batch sizes must be >= 1, got {self.latency_batch_sizes}",
        )
        check(self.latency_repeats >= 1, f"{where}.latency_repeats", "must be >= 1")
        check(self.latency_warmup >= 0, f"{where}.latency_warmup", "must be >= 0")
        check(
            self.latency_threads is None or self.latency_threads >= 1,
            f"{where}.latency_threads",
            "must be >= 1 or null",
        )


@dataclass
class OutputSection:
    """Where the run writes. Every file of the run goes inside ``run_dir``."""

    run_dir: str = "runs/run"

    def validate(self, where: str) -> None:
        check(bool(self.run_dir.strip()), f"{where}.run_dir", "must not be empty")
        check(
            ".." not in PurePath(self.run_dir).parts,
            f"{where}.run_dir",
            f"must not contain '..' (got {self.run_dir!r}); give a path below the working "
            "directory or an absolute path",
        )
