from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.real_data import HAS_FASHION_MNIST, IN_CI, needs_fashion_mnist, skips_real_data

import regprune.data.sources as sources
from regprune.data import (
    DatasetNotFoundError,
    available_datasets,
    build_datasets,
    default_cache_dir,
    open_dataset,
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_missing_fashion_mnist_names_the_places_and_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")

    with pytest.raises(DatasetNotFoundError) as caught:
        open_dataset("fashion-mnist", cache_dir=tmp_path / "cache")

    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "cache" / "FashionMNIST" / "raw") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "download=True" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_missing_user_root_is_not_replaced_by_another_source(idx_dir, tmp_path):
    # An explicit root that lacks the files must fail, not silently read the system copy.
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "empty")):
        open_dataset("mnist", root=tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_missing_cifar_names_the_expected_folder_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        open_dataset("cifar10", root=tmp_path)

    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "test_batch" in message

    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        open_dataset("CIFAR-100", root=tmp_path)


def test_missing_imagefolder_explains_the_layout(tmp_path):
    (tmp_path / "train").mkdir()

    with pytest.raises(DatasetNotFoundError, match=r"root/train/<class>.*root/val/<class>"):
        open_dataset("imagefolder", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no folder given"):
        open_dataset("imagefolder")


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: cifar10, cifar100, fashionmnist"):
        open_dataset("svhn")
    assert "imagefolder" in available_datasets()


def test_mnist_family_reads_user_folder_with_gzipped_files(idx_dir, cache_dir):
    raw = open_dataset("MNIST", root=idx_dir, cache_dir=cache_dir)

    assert (len(raw.train), len(raw.test)) == (200, 60)
    assert (raw.num_classes, raw.in_channels, raw.image_size) == (10, 1, 28)
    assert (cache_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_fashion_mnist_found_in_system_folder(idx_dir, cache_dir, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", idx_dir)

    raw = open_dataset("fashion_mnist", cache_dir=cache_dir)

    assert len(raw.train) == 200
    assert (cache_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def _write_image_folder(root: Path, classes: list[str], per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            pixels[..., index % 3] = 255
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_layout_builds_splits(tmp_path):
    _write_image_folder(tmp_path / "train", ["cat", "dog"], per_class=10, size=16)
    _write_image_folder(tmp_path / "val", ["cat", "dog"], per_class=3, size=16)

    splits = build_datasets("imagefolder", root=tmp_path, val_fraction=0.2)

    assert (splits.num_classes, splits.in_channels, splits.image_size) == (2, 3, 16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    image, label = splits.test[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)


def test_imagefolder_with_different_class_folders_is_an_error(tmp_path):
    _write_image_folder(tmp_path / "train", ["cat", "dog"], per_class=2, size=8)
    _write_image_folder(tmp_path / "val", ["cat", "emu"], per_class=2, size=8)

    with pytest.raises(ValueError, match=r"only in train: \['dog'\].*only in val: \['emu'\]"):
        open_dataset("imagefolder", root=tmp_path)


def test_default_cache_dir_can_be_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("REGPRUNE_DATA_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("REGPRUNE_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "regprune" / "data"


@needs_fashion_mnist
def test_real_fashion_mnist_from_the_debian_package(tmp_path_factory):
    cache = tmp_path_factory.mktemp("fmnist-cache")

    raw = open_dataset("fashion-mnist", cache_dir=cache)
    splits = build_datasets("fashion-mnist", subset=100, cache_dir=cache, seed=0)

    assert (len(raw.train), len(raw.test)) == (60000, 10000)
    assert len(splits.train) == 100
    assert torch.bincount(torch.tensor(splits.train.targets)).tolist() == [10] * 10
    assert len(splits.test) == round(10000 * 100 / 54000)
    image, label = splits.test[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    # Normalization constants are the real set's: a large eval sample is ~N(0, 1).
    full = build_datasets("fashion-mnist", cache_dir=cache, augment=False, subset=2000)
    pixels = torch.stack([full.train[i][0] for i in range(len(full.train))])
    assert abs(pixels.mean().item()) < 0.05
    assert abs(pixels.std().item() - 1.0) < 0.05


def test_real_data_tests_never_skip_in_ci() -> None:
    assert skips_real_data(has_data=False, in_ci=False)  # a developer without the package
    assert not skips_real_data(has_data=False, in_ci=True)  # CI: they run, and fail loudly
    assert not skips_real_data(has_data=True, in_ci=False)
    # and where this runs under CI, the data is there (.ci/run installs it or stops)
    assert HAS_FASHION_MNIST or not IN_CI, "CI must install dataset-fashion-mnist"
