"""Exactness over many architectures: surgery equals zeroing the removed channels."""

from __future__ import annotations

import pytest
import torch
import torchvision

from regprune.models import create_model
from tests.exactness import check_exact, param_count
from tests.zoo import ZOO, randomize_norms


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_zoo_models_are_exact(name: str, ratio: float) -> None:
    model, x = ZOO[name]()
    randomize_norms(model)
    pruned, _ = check_exact(model, x, ratio)
    assert param_count(pruned) < param_count(model)


OWN_MODELS = [
    ("resnet20", {"shortcut": "A"}),
    ("resnet20", {"shortcut": "B"}),
    ("vgg16", {}),
    ("mobilenetv2", {}),
    ("lenet5", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), OWN_MODELS)
def test_paper_models_are_exact(name: str, kwargs: dict) -> None:
    model = randomize_norms(create_model(name, num_classes=10, in_channels=3, **kwargs))
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = check_exact(model, x, 0.5, importance="l1")
    assert param_count(pruned) < param_count(model)


TORCHVISION_FAST = [
    "resnet18",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "mnasnet0_5",
    "regnet_x_400mf",
    "googlenet",
    "alexnet",
]


@pytest.mark.parametrize("name", TORCHVISION_FAST)
def test_torchvision_models_are_exact(name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = randomize_norms(torchvision.models.get_model(name, num_classes=10, **kwargs))
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = check_exact(model, x, 0.4)
    assert param_count(pruned) < param_count(model)
