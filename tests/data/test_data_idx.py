from __future__ import annotations

from pathlib import Path

import pytest
from idx_fixture import make_idx_set
from torchvision.datasets import FashionMNIST

from regprune.data.idx import IDX_FILES, find_idx_dir, prepare_idx_root


def test_gzipped_files_are_decompressed_once_into_torchvision_layout(idx_dir, cache_dir):
    root = prepare_idx_root(idx_dir, "FashionMNIST", cache_dir)

    assert root == cache_dir
    raw = cache_dir / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_FILES)
    assert len(FashionMNIST(str(root), train=True, download=False)) == 200
    mtimes = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}

    prepare_idx_root(idx_dir, "FashionMNIST", cache_dir)

    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes


def test_decompressed_torchvision_layout_is_used_in_place(tmp_path, cache_dir):
    raw = make_idx_set(tmp_path / "user" / "FashionMNIST" / "raw", compress=False)

    assert prepare_idx_root(raw, "FashionMNIST", cache_dir) == tmp_path / "user"
    assert not cache_dir.exists()


def test_find_idx_dir_needs_all_four_files(idx_dir, tmp_path):
    incomplete = make_idx_set(tmp_path / "incomplete")
    (incomplete / "t10k-labels-idx1-ubyte.gz").unlink()

    assert find_idx_dir([incomplete, idx_dir]) == idx_dir
    assert find_idx_dir([incomplete]) is None


def test_damaged_gzip_is_reported_and_leaves_no_partial_file(idx_dir, cache_dir):
    damaged = idx_dir / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:100])

    with pytest.raises(OSError, match=r"train-images-idx3-ubyte\.gz.*damaged"):
        prepare_idx_root(idx_dir, "FashionMNIST", cache_dir)

    leftovers = [p.name for p in (cache_dir / "FashionMNIST" / "raw").iterdir()]
    assert "train-images-idx3-ubyte" not in leftovers
    assert not [name for name in leftovers if name.endswith(".tmp")]


def test_missing_source_file_names_it(tmp_path: Path, cache_dir):
    folder = make_idx_set(tmp_path / "idx")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()

    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        prepare_idx_root(folder, "MNIST", cache_dir)
