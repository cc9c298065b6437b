"""Training engine: epochs with the method life cycle, SGD + schedules, checkpoints, exact
resume, metrics as JSON lines, and DDP through ``torchrun``.

Example:
    >>> from regprune.train import Trainer, TrainConfig, seed_everything
    >>> seed_everything(0)
    >>> config = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    >>> trainer = Trainer(model, loaders.train, loaders.val, config=config)  # doctest: +SKIP
    >>> trainer.fit()  # doctest: +SKIP
"""

from regprune.train.batchnorm import recalibrate_batch_norm
from regprune.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from regprune.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    resolve_device,
    sync_buffers,
)
from regprune.train.engine import NonFiniteLossError, evaluate, train_one_epoch
from regprune.train.metrics_log import MetricsLog
from regprune.train.optim import build_optimizer, build_scheduler
from regprune.train.seeding import seed_everything
from regprune.train.trainer import TrainConfig, Trainer, TrainSettings

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "DistInfo",
    "MetricsLog",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainSettings",
    "Trainer",
    "barrier",
    "broadcast_object",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "cleanup",
    "evaluate",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_model_state",
    "recalibrate_batch_norm",
    "resolve_device",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "sync_buffers",
    "train_one_epoch",
]
