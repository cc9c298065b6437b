"""The papers' CIFAR-style models, built by name through one factory.

Example::

    from regprune.models import create_model, list_models

    model = create_model("resnet56", num_classes=10, shortcut="A")
    fmnist = create_model("vgg16", num_classes=10, in_channels=1)
    tv = create_model("torchvision:resnet18", num_classes=100)
"""

# Imported for their side effect: each architecture module registers its names.
from regprune.models import lenet, mobilenetv2_cifar, resnet_cifar, vgg  # noqa: F401
from regprune.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
