"""Atomic, ``weights_only``-loadable training checkpoints.

Why ``weights_only=True`` only: a checkpoint is data, and unpickling arbitrary objects executes
code. So everything we store is tensors and plain Python values; the RNG states of Python and
NumPy, which are tuples holding big integers and arrays, are converted to tensors and ints.
Why atomic: a run killed while writing must leave the previous checkpoint intact, never a
truncated file under the real name.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from regprune.io import atomic_torch_save, check_integrity

FORMAT_VERSION = "1.0"
REQUIRED_KEYS = ("format_version", "model", "epoch", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, incomplete, too new, or for another model."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state of this process, as tensors and plain values (``weights_only``-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state["cuda"]
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda_states)} GPUs, this machine has "
                f"{torch.cuda.device_count()}; CUDA RNG not restored (resume is not bit-exact)",
                stacklevel=2,
            )
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(py_state["state"].tolist()), py_state["gauss_next"])
    )


# What torch.load(weights_only=True) rebuilds besides containers: checked at save time, so an
# unloadable entry fails when written, naming its key, not when a resume is attempted.
_LOADABLE = (bool, int, float, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_loadable(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key")
            _check_loadable(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple | set):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
    elif not isinstance(value, _LOADABLE):
        raise TypeError(
            f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__name__}, "
            "which torch.load(weights_only=True) cannot read; store tensors and plain values"
        )


def _as_state(value: Any) -> Any:
    """Objects with ``state_dict()`` (model, optimizer, scheduler, method) become their state."""
    if isinstance(value, DistributedDataParallel):
        value = value.module  # save the plain model's keys, without the "module." prefix
    return value.state_dict() if hasattr(value, "state_dict") else value


def save_checkpoint(path: str | os.PathLike[str], **state: Any) -> Path:
    """Write a checkpoint atomically: temp file in the same folder, fsync, ``os.replace``.

    Args:
        path: destination; its folder is created if needed.
        state: at least ``model`` and ``epoch``; usually also ``optimizer``, ``scheduler``,
            ``method``, ``config``. Objects with a ``state_dict()`` method are stored as their
            state dict (a DDP-wrapped model as its inner module's). The RNG states of this
            process are added as ``rng`` unless given, and the format version always.
            Everything else must be tensors and plain Python values (checked here).

    Returns:
        The checkpoint's path.

    Raises:
        TypeError: an entry could not be read back with ``weights_only=True``.

    Example:
        >>> save_checkpoint("run/last.pt", model=model, optimizer=opt, epoch=3)  # doctest: +SKIP
    """
    missing = [key for key in ("model", "epoch") if key not in state]
    if missing:
        raise TypeError(f"save_checkpoint() needs {' and '.join(missing)}")
    payload = {key: _as_state(value) for key, value in state.items()}
    payload.setdefault("rng", capture_rng_state())
    payload["format_version"] = FORMAT_VERSION
    for key, value in payload.items():
        _check_loadable(value, repr(key))
    return atomic_torch_save(payload, path)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``"cpu"`` by default; the trainer passes its device).

    Returns:
        The stored dict (``model``, ``epoch``, ``rng``, ``format_version`` and whatever else was
        saved).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated or corrupt, holds objects ``weights_only=True``
            refuses, lacks a required key, or was written by a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        check_integrity(path, "a checkpoint")
    except ValueError as exc:
        raise CheckpointError(
            f"{path}: unreadable, the file is truncated or corrupt ({exc})"
        ) from exc
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch reports damaged files with several exception types
        # weights_only names the class it refused; anything else means unreadable bytes.
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): it holds pickled Python "
                f"objects, not only tensors and plain values (not a regprune checkpoint?): {exc}"
            ) from exc
        raise CheckpointError(
            f"{path}: unreadable, the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: missing {', '.join(repr(k) for k in missing)} (not a regprune checkpoint, "
            "or written by an incompatible version)"
        )
    version = str(payload["format_version"])
    try:
        too_new = _version_tuple(version) > _version_tuple(FORMAT_VERSION)
    except ValueError as exc:
        raise CheckpointError(f"{path}: malformed format version {version!r}") from exc
    if too_new:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this regprune reads "
            f"({FORMAT_VERSION}); upgrade regprune to load it"
        )
    return payload


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``, explaining a mismatch instead of dumping every key.

    Raises:
        CheckpointError: naming missing/unexpected keys, or the first parameter whose shape
            differs with both shapes (the usual sign of another architecture or width).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint does not fit this model (another architecture?): "
            f"{len(missing)} keys missing from the checkpoint {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise CheckpointError(
                f"checkpoint does not fit this model: {key!r} has shape "
                f"{tuple(state[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the "
                "model (another architecture or a pruned width?)"
            )
    model.load_state_dict(state)
