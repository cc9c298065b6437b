"""Give torchvision's MNIST-family classes the decompressed IDX layout they read.

Why this exists: Debian's ``dataset-fashion-mnist`` (and most mirrors) ship the IDX files gzipped,
while torchvision 0.29's ``FashionMNIST(root, download=False)`` only reads decompressed files in
``<root>/FashionMNIST/raw/``. We decompress once into a cache and point torchvision at it, instead
of re-implementing its reader.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterable
from pathlib import Path

from regprune.io import atomic_open

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _source_file(directory: Path, name: str) -> Path | None:
    """The plain file if present, else its ``.gz``; None when neither exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_dir(candidates: Iterable[Path]) -> Path | None:
    """Return the first directory that holds all four IDX files (each plain or gzipped)."""
    for directory in candidates:
        if all(_source_file(directory, name) is not None for name in IDX_FILES):
            return directory
    return None


def _copy_atomically(source: Path, target: Path) -> None:
    """Decompress (or copy) ``source`` to ``target`` so that ``target`` is complete or absent.

    Why atomic: several processes (DDP ranks, parallel test workers) may prepare the same cache at
    once, and a half-written file would be read by torchvision as a truncated data set.
    """
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as src, atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (OSError, EOFError) as exc:
        raise OSError(
            f"cannot read {source} ({type(exc).__name__}: {exc}); the file is damaged, "
            "replace it (or reinstall the package that provides it)"
        ) from exc


def prepare_idx_root(source_dir: Path, class_name: str, cache_dir: Path) -> Path:
    """Return a root that torchvision's ``class_name`` dataset can open with ``download=False``.

    Args:
        source_dir: directory holding the four IDX files, plain or gzipped.
        class_name: torchvision class name, which is also its folder name (``"FashionMNIST"``).
        cache_dir: where decompressed copies go (``<cache_dir>/<class_name>/raw/``).

    Returns:
        ``source_dir``'s grandparent when it already is a decompressed torchvision ``raw`` folder
        (nothing is copied), otherwise ``cache_dir`` after filling it. Files already in the cache
        are reused, so the work happens once per machine.
    """
    already_torchvision_layout = source_dir.name == "raw" and source_dir.parent.name == class_name
    if already_torchvision_layout and all((source_dir / n).is_file() for n in IDX_FILES):
        return source_dir.parent.parent
    raw = cache_dir / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw / name
        if target.is_file():
            continue
        source = _source_file(source_dir, name)
        if source is None:
            raise FileNotFoundError(f"{source_dir} has no {name} or {name}.gz")
        _copy_atomically(source, target)
    return cache_dir
