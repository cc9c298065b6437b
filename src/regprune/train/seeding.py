"""Seed every RNG a training run touches, and optionally make kernels deterministic."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every GPU).

    Call it before building the model, so the initial weights are fixed too.

    Args:
        seed: the run seed.
        deterministic: also ask torch for deterministic kernels. Ops without a deterministic
            implementation then warn instead of failing (``warn_only=True``), because several
            common layers (e.g. adaptive pooling backward on CUDA) have none and a run should not
            die on them. CPU training with ``workers=0`` is bit-reproducible either way.

    Example:
        >>> seed_everything(0)
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS reads this when its handle is created; it must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
