"""Thin DDP helpers for runs launched with ``torchrun``.

Why so thin: DDP already all-reduces gradients inside ``loss.backward()``, so a method's
``after_backward`` gradient edit sees the same averaged gradients on every rank and every rank
takes the same step. What is left for us is process-group setup from torchrun's environment,
sharing objects computed once (pruning plans, masks) and keeping file writes on rank 0.
Every helper is a no-op in a single process, so the same code runs with and without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (``world_size == 1`` without torchrun)."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, metrics and logs."""
    return get_rank() == 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else this process's GPU (``LOCAL_RANK``) when CUDA exists, else CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
    them (or with ``WORLD_SIZE=1``) nothing is initialized and a single-process
    :class:`DistInfo` is returned.

    Args:
        backend: default ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        :class:`DistInfo` with this process's device (its local GPU, or the CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 0, 1, None, resolve_device())
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset; launch with "
            "`torchrun --nproc-per-node=N ...`, which sets all of them"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistInfo(rank, local_rank, world_size, dist.get_backend(), device)


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Return ``src``'s ``obj`` on every rank (any picklable object: a plan, masks, a config).

    Why: plans and masks depend on importance scores; computing them once and broadcasting
    guarantees every rank prunes the same channels even if floating-point ties break differently.
    """
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank.

    Why: DDP broadcasts buffers at the start of each forward, so after the last training step
    every rank still holds statistics from its own last batch. Syncing before evaluation and
    checkpointing makes every rank evaluate, and rank 0 save, the same model.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (metrics counts); returns it for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if is_distributed():
        dist.destroy_process_group()
