"""A tiny but real run config (Fashion-MNIST subset, ResNet-20, one or two epochs per phase)."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.real_data import needs_fashion_mnist as needs_fashion_mnist

TINY: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "progress": False,
    "data": {"name": "fashion-mnist", "subset": 120, "batch_size": 32},
    "model": {"name": "resnet20", "kwargs": {"shortcut": "A"}},
    "pretrain": {"epochs": 1, "lr": 0.1},
    # mask_iters=2: the mask is made inside the first sparsify epoch, so a resume must restore it
    "method": {
        "name": "masksparsity",
        "target_macs": 0.5,
        "kwargs": {"s": 1e-2, "mask_iters": 2},
    },
    "sparsify": {"epochs": 2, "lr": 0.05},
    "prune": {"calibration_batches": 1},
    "finetune": {"epochs": 2, "lr": 0.01},
    "report": {"latency_batch_sizes": [1, 4], "latency_repeats": 1, "latency_warmup": 0},
}


def tiny_config(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """:data:`TINY` writing to ``run_dir``; keyword arguments replace or update sections."""
    data = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    data["output"] = {"run_dir": str(run_dir)}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def torch_globals_restored() -> Iterator[None]:
    """Run single-threaded; restore the thread count and determinism switches afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
