"""Standard augmentation and normalization, one table row per data set.

Why these choices: they are what the pruning papers we compare against train with (random crop with
padding for 28x28 and 32x32 sets, horizontal flip except for digits, whose mirror images are other
glyphs), so accuracies are comparable. Means and standard deviations are measured on each train set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision import transforms as T

Transform = Callable[[object], object]


@dataclass(frozen=True)
class AugmentSpec:
    """Per-data-set normalization statistics and crop/flip augmentation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    hflip: bool


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENT_SPECS: dict[str, AugmentSpec] = {
    "mnist": AugmentSpec((0.1307,), (0.3081,), crop_padding=2, hflip=False),
    "fashionmnist": AugmentSpec((0.2860,), (0.3530,), crop_padding=2, hflip=True),
    "cifar10": AugmentSpec((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, hflip=True),
    "cifar100": AugmentSpec((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, hflip=True),
}


def _fixed_size_transforms(
    spec: AugmentSpec, image_size: int, augment: bool
) -> tuple[Transform, Transform]:
    to_tensor = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    train: list[Transform] = []
    if augment:
        train.append(T.RandomCrop(image_size, padding=spec.crop_padding))
        if spec.hflip:
            train.append(T.RandomHorizontalFlip())
    return T.Compose(train + to_tensor), T.Compose(to_tensor)


def _imagefolder_transforms(image_size: int, augment: bool) -> tuple[Transform, Transform]:
    """Tiny-ImageNet-sized images (<= 64 px) get the CIFAR recipe; larger ones ImageNet's."""
    to_tensor = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if image_size <= 64:
        resize = [T.Resize(image_size), T.CenterCrop(image_size)]
        augmentation = [T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip()]
        train = resize + (augmentation if augment else [])
        return T.Compose(train + to_tensor), T.Compose(resize + to_tensor)
    evaluate = [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)]
    train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] if augment else evaluate
    return T.Compose(train + to_tensor), T.Compose(evaluate + to_tensor)


def build_transforms(name: str, image_size: int, augment: bool) -> tuple[Transform, Transform]:
    """Return ``(train_transform, eval_transform)`` for a canonical data set name.

    Args:
        name: canonical name (see ``regprune.data.available_datasets``).
        image_size: side of the square input the model sees.
        augment: False gives the train set the eval transform (deterministic inputs, e.g. for
            calibrating importance scores).

    Example:
        >>> train_tf, eval_tf = build_transforms("cifar10", 32, augment=True)
    """
    if name == "imagefolder":
        return _imagefolder_transforms(image_size, augment)
    return _fixed_size_transforms(AUGMENT_SPECS[name], image_size, augment)
