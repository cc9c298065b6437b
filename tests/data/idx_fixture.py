"""Tiny IDX data sets written on the fly, so the decompress-and-load path is always tested."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, N_CLASSES = 200, 60, 10


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx_set(directory: Path, compress: bool = True, seed: int = 0) -> Path:
    """Write train/t10k images and labels; labels cycle through classes, images encode them."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = np.arange(n) % N_CLASSES
        images = rng.integers(0, 64, size=(n, 28, 28))
        images[:, :, :] += (labels * 19)[:, None, None]  # class-dependent brightness
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return directory
