"""What every phase needs: the config, the run directory, the device, data and models.

Why phases share a context instead of passing models along: a phase must also run alone (after a
resume, or from ``regprune finetune``), so each one can rebuild its inputs from the run directory;
the context caches what an uninterrupted run already holds in memory and rebuilds the rest.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from regprune.data import DataSplits, Loaders, build_loaders, set_epoch
from regprune.data.seeds import derive_seed
from regprune.lifecycle import PruningMethod
from regprune.models import create_model
from regprune.pipeline.config import RunConfig
from regprune.pipeline.methods import build_method
from regprune.pipeline.rundir import RunDir, RunDirError
from regprune.pipeline.typed import ConfigError
from regprune.surgery import load_pruned
from regprune.train import (
    barrier,
    get_world_size,
    is_main_process,
    load_checkpoint,
    load_model_state,
    resolve_device,
    seed_everything,
)

logger = logging.getLogger("regprune.pipeline")

PHASES = ("pretrain", "sparsify", "prune", "finetune", "report")


@dataclass
class RunContext:
    """One run's settings and lazily built objects.

    Attributes:
        config: the resolved config.
        run_dir: where every file goes.
        command: the command line that reproduces the run.
        method: the method after sparsity training, when this process ran that phase.
    """

    config: RunConfig
    run_dir: RunDir
    command: str
    method: PruningMethod | None = None
    _splits: DataSplits | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @property
    def main(self) -> bool:
        """Only the main process writes files."""
        return is_main_process()

    @property
    def splits(self) -> DataSplits:
        if self._splits is None:
            self._splits = self.config.data.build_datasets(self.config.seed)
        return self._splits

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            data = self.config.data
            self._loaders = build_loaders(
                self.splits,
                batch_size=data.batch_size,
                workers=data.workers,
                seed=self.config.seed,
                distributed=get_world_size() > 1,
            )
        return self._loaders

    def input_shape(self, batch_size: int = 1) -> tuple[int, int, int, int]:
        splits = self.splits
        return (batch_size, splits.in_channels, splits.image_size, splits.image_size)

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(self.input_shape(batch_size), device=self.device)

    def reseed(self, phase: str) -> None:
        """Seed every RNG from (run seed, phase).

        Why per phase: a phase then starts from the same random state whether the earlier
        phases ran in this process or in one that was killed, which makes resume exact.
        """
        # 32 bits: NumPy's legacy seeding refuses larger seeds.
        seed_everything(derive_seed(self.config.seed, PHASES.index(phase)) % 2**32)

    def preflight(self, phases: tuple[str, ...]) -> None:
        """Open the data, build the model and (if a phase needs it) the method once, now.

        Why: a missing data set, a wrong architecture option or a method that rejects its
        kwargs should fail before anything is written and before hours of pretraining, not when
        the phase that needs them starts.
        """
        model = self.build_model()
        if {"sparsify", "prune"} & set(phases):
            build_method(self.config.method, model, self.example_inputs(), self.sparsify_steps())

    def build_model(self) -> nn.Module:
        """A freshly initialised model of the configured architecture, on the device."""
        return self._create_model().to(self.device)

    def _create_model(self) -> nn.Module:
        model_section = self.config.model
        try:
            model = create_model(
                model_section.name,
                num_classes=self.splits.num_classes,
                in_channels=self.splits.in_channels,
                **model_section.kwargs,
            )
        except (TypeError, ValueError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ConfigError(f"model {model_section.name!r}: {message}") from error
        return model

    def load_phase_weights(self, model: nn.Module, phase: str) -> None:
        """Load the model weights a finished phase left in ``checkpoints/<phase>.pt``."""
        path = self.run_dir.checkpoint(phase)
        if not path.is_file():
            raise RunDirError(f"{path} is missing: run the {phase} phase first")
        load_model_state(model, load_checkpoint(path, map_location=self.device)["model"])

    def fresh_method(self) -> PruningMethod:
        """Reseed, build the model, load the pretrained weights, build the method on it."""
        self.reseed("sparsify")
        model = self.build_model()
        self.load_phase_weights(model, "pretrain")
        return build_method(self.config.method, model, self.example_inputs(), self.sparsify_steps())

    def sparsify_steps(self) -> int:
        """The sparsify phase's iterations on this rank: the budget methods size themselves to."""
        return self.config.sparsify.epochs * len(self.loaders.train)

    def restore_method(self, checkpoint_phase: str) -> PruningMethod:
        """Rebuild the method as the sparsify phase built it, then load a checkpoint's state.

        The same steps in the same order as the start of the sparsify phase (reseed, fresh
        model, pretrained weights, method), so a method whose construction draws random
        numbers (gates, random scores) comes back identical before its saved state is loaded.

        Args:
            checkpoint_phase: ``"sparsify"`` or ``"prune"``: load that checkpoint's model and
                method state if the file exists (a sparsify phase of 0 epochs writes none).
        """
        method = self.fresh_method()
        model = method.model
        path = self.run_dir.checkpoint(checkpoint_phase)
        if path.is_file():
            state = load_checkpoint(path, map_location=self.device)
            load_model_state(model, state["model"])
            method.load_state_dict(state["method"])
        return method

    def load_saved_model(self, name: str) -> nn.Module:
        """A pruned model saved with ``save_pruned`` in the run directory, on the device."""
        path = self.run_dir.path(name)
        if not path.is_file():
            raise RunDirError(f"{path} is missing: run the phase that writes it first")
        return load_pruned(self._create_model(), path).to(self.device)

    def calibration_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The first ``prune.calibration_batches`` training batches of epoch 0, on the device."""
        wanted = self.config.prune.calibration_batches
        if wanted == 0:
            return None
        set_epoch(self.loaders.train, 0)
        return [
            (x.to(self.device), y.to(self.device))
            for x, y in itertools.islice(self.loaders.train, wanted)
        ]

    def wait_for_main(self) -> None:
        """Every rank waits here until rank 0 has written what the next step reads."""
        barrier()
