"""The papers' CIFAR-style models, built by name through one factory.

Example::

    from regprune.models import create_model, list_models

    model = create_model("resnet56", num_classes=10, shortcut="A")
    fmnist = create_model("vgg16", num_classes=10, in_channels=1)
    tv = create_model("torchvision:resnet18", num_classes=100)
"""

# The architecture modules are imported for their side effect: registering their names.
from regprune.models import lenet, mobilenetv2_cifar, resnet_cifar, vgg
from regprune.models.registry import create_model, list_models, register_model

__all__ = [
    "create_model",
    "lenet",
    "list_models",
    "mobilenetv2_cifar",
    "register_model",
    "resnet_cifar",
    "vgg",
]
