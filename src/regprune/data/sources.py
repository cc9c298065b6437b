"""Locate a data set on disk and open its untransformed train and test sets.

Why a separate module: finding files (and saying clearly where we looked when they are missing) is
the part users trip over; transforms and splits are the same for every data set and live elsewhere.
Nothing is downloaded unless the caller passes ``download=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from regprune.data.idx import IDX_FILES, find_idx_dir, prepare_idx_root

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where we looked; the message lists the places and how to provide it."""


@dataclass(frozen=True)
class RawDataset:
    """Untransformed train and test sets (items are ``(PIL image, class index)``) and their shape.

    Both sets expose ``targets`` (class index per sample), which splits and subsets read so they
    never have to decode an image.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int


def default_cache_dir() -> Path:
    """``$REGPRUNE_DATA_CACHE``, else ``$XDG_CACHE_HOME/regprune/data``, else ``~/.cache/...``."""
    if override := os.environ.get("REGPRUNE_DATA_CACHE"):
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "regprune" / "data"


def _not_found(title: str, looked_in: list[Path], how_to_fix: str) -> DatasetNotFoundError:
    places = "\n".join(f"  - {path}" for path in looked_in) or "  (no folder given)"
    return DatasetNotFoundError(f"{title} not found. Looked in:\n{places}\n{how_to_fix}")


def _open_idx(
    class_name: str,
    title: str,
    root: Path | None,
    cache_dir: Path,
    download: bool,
    system_dirs: tuple[Path, ...] = (),
    install_option: str | None = None,
) -> RawDataset:
    """MNIST-family sets: a user folder (flat IDX files or torchvision layout), else system dirs."""
    if root is not None:
        candidates = [root, root / class_name / "raw"]
    else:
        candidates = [*system_dirs, cache_dir / class_name / "raw"]
    source = find_idx_dir(candidates)
    if source is not None:
        tv_root = prepare_idx_root(source, class_name, cache_dir)
    elif download:
        tv_root = root if root is not None else cache_dir
    else:
        files = ", ".join(f"{name}[.gz]" for name in IDX_FILES)
        options = [
            f"pass root=<folder> holding {files} (flat, or in torchvision's "
            f"<folder>/{class_name}/raw/ layout)",
            "pass download=True to fetch it from the internet",
        ]
        if install_option is not None:
            options.insert(0, install_option)
        raise _not_found(title, candidates, "To provide it: " + "; or ".join(options) + ".")
    dataset_class = getattr(tvd, class_name)
    train = dataset_class(str(tv_root), train=True, download=download)
    test = dataset_class(str(tv_root), train=False, download=download)
    return RawDataset(train, test, num_classes=10, in_channels=1, image_size=28)


def _open_fashion_mnist(root: Path | None, cache_dir: Path, download: bool, _: int | None):
    return _open_idx(
        "FashionMNIST",
        "Fashion-MNIST",
        root,
        cache_dir,
        download,
        system_dirs=(DEBIAN_FASHION_MNIST_DIR,),
        install_option=(
            "install it with `sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; "
            f"the files go to {DEBIAN_FASHION_MNIST_DIR})"
        ),
    )


def _open_mnist(root: Path | None, cache_dir: Path, download: bool, _: int | None):
    return _open_idx("MNIST", "MNIST", root, cache_dir, download)


def _open_cifar(
    class_name: str, folder: str, files: tuple[str, ...], num_classes: int
) -> Callable[[Path | None, Path, bool, int | None], RawDataset]:
    def open_cifar(root: Path | None, cache_dir: Path, download: bool, _: int | None):
        tv_root = root if root is not None else cache_dir
        expected = tv_root / folder
        if not download and not all((expected / name).is_file() for name in files):
            raise _not_found(
                class_name.replace("CIFAR", "CIFAR-"),
                [expected],
                f"Pass root=<folder> where <folder>/{folder}/ holds {', '.join(files)} "
                f"(the extracted python-version archive), or download=True.",
            )
        dataset_class = getattr(tvd, class_name)
        try:
            train = dataset_class(str(tv_root), train=True, download=download)
            test = dataset_class(str(tv_root), train=False, download=download)
        except RuntimeError as exc:
            raise DatasetNotFoundError(
                f"{expected} exists but torchvision rejects it ({exc}): a file is damaged "
                "(MD5 mismatch); extract the archive again."
            ) from exc
        return RawDataset(train, test, num_classes=num_classes, in_channels=3, image_size=32)

    return open_cifar


def _first_image_size(dataset: tvd.ImageFolder) -> int:
    with Image.open(dataset.samples[0][0]) as image:
        return min(image.size)


def _open_imagefolder(root: Path | None, _: Path, download: bool, image_size: int | None):
    """``root/train/<class>/*`` and ``root/val/<class>/*`` (Tiny-ImageNet, ImageNet layout).

    ``val`` becomes the test set; the validation split is carved out of ``train`` like for every
    other data set, so model selection never sees the reported test images.
    """
    if download:
        raise ValueError("imagefolder data sets cannot be downloaded; pass root=<folder>")
    layout = (
        "Expected root/train/<class>/<image> and root/val/<class>/<image> with the same class "
        "folders in both (for Tiny-ImageNet, first move val/images/* into per-class folders "
        "using val/val_annotations.txt)."
    )
    looked_in = [] if root is None else [root / "train", root / "val"]
    if root is None or not all(path.is_dir() for path in looked_in):
        raise _not_found("imagefolder data set", looked_in, layout)
    train = tvd.ImageFolder(str(root / "train"))
    test = tvd.ImageFolder(str(root / "val"))
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))[:5]
        only_val = sorted(set(test.classes) - set(train.classes))[:5]
        raise ValueError(
            f"{root}: train and val class folders differ (only in train: {only_train}, "
            f"only in val: {only_val}); class indices would not match. {layout}"
        )
    if image_size is None:
        first = _first_image_size(train)
        image_size = first if first <= 64 else 224
    num_classes = len(train.classes)
    return RawDataset(train, test, num_classes, in_channels=3, image_size=image_size)


_OPENERS: dict[str, Callable[[Path | None, Path, bool, int | None], RawDataset]] = {
    "fashionmnist": _open_fashion_mnist,
    "mnist": _open_mnist,
    "cifar10": _open_cifar(
        "CIFAR10",
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        10,
    ),
    "cifar100": _open_cifar("CIFAR100", "cifar-100-python", ("train", "test", "meta"), 100),
    "imagefolder": _open_imagefolder,
}


def canonical_name(name: str) -> str:
    """``"Fashion-MNIST"``, ``"fashion_mnist"`` and ``"fashionmnist"`` name the same data set."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _OPENERS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")
    return key


def available_datasets() -> list[str]:
    """Canonical names accepted by :func:`open_dataset` and ``build_datasets``."""
    return sorted(_OPENERS)


def open_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> RawDataset:
    """Find and open a data set without transforms.

    Args:
        name: one of :func:`available_datasets` (case, ``-`` and ``_`` ignored).
        root: the user's folder; for Fashion-MNIST, None means the Debian package's folder.
        cache_dir: where decompressed IDX files go; default :func:`default_cache_dir`.
        download: let torchvision fetch the files when they are missing.
        image_size: imagefolder only; default is the first image's shorter side when at most
            64 px (Tiny-ImageNet keeps 64), else 224 (the ImageNet pipeline).

    Raises:
        DatasetNotFoundError: the files are not there; the message says where we looked and how
            to provide them.

    Example:
        >>> raw = open_dataset("fashion-mnist")  # doctest: +SKIP
        >>> len(raw.train), raw.num_classes  # doctest: +SKIP
        (60000, 10)
    """
    key = canonical_name(name)
    root_path = None if root is None else Path(root).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _OPENERS[key](root_path, cache, download, image_size)
