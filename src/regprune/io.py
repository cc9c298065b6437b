"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half of one.

Every file regprune writes that a later run reads (checkpoints, pruned models, summaries, the
data cache, metrics rewrites) goes through :func:`atomic_open`: a unique temporary file in the
same folder, fsync, ``os.replace``, and an fsync of the folder so the rename itself survives a
power loss. Unique names also let several processes (DDP ranks, test workers) write at once.
"""

from __future__ import annotations

import os
import pickle
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, mode.replace("w", "x")) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as file:
        file.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (never a truncated checkpoint)."""
    with atomic_open(path, "wb") as file:
        torch.save(obj, file)
    return Path(path)


def check_integrity(path: str | os.PathLike[str], what: str) -> None:
    """Raise ValueError naming ``path`` if the torch (zip) file is truncated or a checksum fails."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{path} is corrupt or not a torch file ({error}); expected {what}"
        ) from error
    if damaged is not None:
        raise ValueError(f"{path} is corrupt: member {damaged} fails its checksum")


def read_weights_only(path: str | os.PathLike[str], what: str) -> Any:
    """``torch.load(..., weights_only=True)`` with damage reported as such, naming the file.

    ``torch.load`` neither checks the zip CRCs (a flipped byte loads silently as a wrong
    weight) nor names the file in its errors (and suggests ``weights_only=False`` for a foreign
    pickle, which is the unsafe thing to do). Both are checked here first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected {what})")
    check_integrity(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{path} is corrupt or not {what}: it cannot be read with weights_only=True "
            f"({type(error).__name__})"
        ) from error
