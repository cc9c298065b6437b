"""The model factory: names, errors that help, and torchvision pass-through without downloads."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

from regprune.models import create_model, list_models, register_model, registry
from regprune.models.resnet_cifar import CifarResNet

PAPER_MODELS = {
    "lenet5",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "mobilenetv2",
}


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register names without leaking them into the other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_every_paper_model_is_registered_and_listed_sorted() -> None:
    names = list_models()
    assert set(names) >= PAPER_MODELS
    assert names == sorted(names)


def test_unknown_name_raises_key_error_listing_available_names() -> None:
    with pytest.raises(KeyError) as info:
        create_model("resnet21")
    message = str(info.value)
    assert "resnet21" in message
    for name in PAPER_MODELS:
        assert name in message


def test_create_model_passes_num_classes_in_channels_and_options() -> None:
    model = create_model("resnet20", num_classes=7, in_channels=1, shortcut="A")
    assert isinstance(model, CifarResNet)
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 7
    assert model.training


def test_unknown_option_is_an_error_not_ignored() -> None:
    with pytest.raises(TypeError):
        create_model("resnet20", shortcuts="A")


def test_register_model_makes_a_new_name_creatable(isolated_registry: None) -> None:
    @register_model("tiny_test_net")
    def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Conv2d(in_channels, num_classes, 1)

    assert "tiny_test_net" in list_models()
    model = create_model("tiny_test_net", num_classes=4, in_channels=2)
    assert isinstance(model, nn.Conv2d)
    assert (model.in_channels, model.out_channels) == (2, 4)


def test_duplicate_registration_is_rejected(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda **kwargs: nn.Identity())


@pytest.mark.parametrize("name", ["", "torchvision:mine"])
def test_reserved_or_empty_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        register_model(name)


def test_torchvision_prefix_builds_an_untrained_torchvision_model() -> None:
    model = create_model("torchvision:resnet18", num_classes=5)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 5


def test_torchvision_unknown_name_lists_torchvision_names() -> None:
    with pytest.raises(KeyError, match="resnet18"):
        create_model("torchvision:resnet19")


def test_torchvision_rejects_other_input_channels_and_weights() -> None:
    with pytest.raises(ValueError, match="in_channels=1"):
        create_model("torchvision:resnet18", in_channels=1)
    with pytest.raises(ValueError, match="never downloads"):
        create_model("torchvision:resnet18", weights="DEFAULT")
