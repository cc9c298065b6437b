"""How exact lossless removal is: silenced channels removed with and without compensation.

    python -m benchmarks.compensation_error            # prints the Markdown table

For each model, half of the channels (random plan, seed 0) are silenced the way a finished
regularizer leaves them (``regprune.surgery.silence_channels``: producer weights zeroed, biases
and norms kept, so each channel sends a constant), then removed three ways: dropped as they are
(``compensate=None``), folded into the consumers' biases (``compensate="constant"``, the
default), and folded with every zero-padded conv switched to replicate padding (where a constant
stays constant at the border, so the fold is exact everywhere). The figure is the largest
absolute difference of the logits from the silenced model's over 8 random inputs, relative to
the largest logit. Norms get random statistics and every bias is random, so the constants are
not zero.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

import regprune as rp
from regprune.models import create_model
from regprune.report import describe_machine, markdown_table
from regprune.surgery import apply_plan, silence_channels

MODELS = {
    "resnet20 @ 28x28": (lambda: create_model("resnet20", num_classes=10, in_channels=1), (1, 28)),
    "resnet20 @ 32x32": (lambda: create_model("resnet20", num_classes=10, in_channels=1), (1, 32)),
    "vgg16 @ 32x32": (lambda: create_model("vgg16", num_classes=10, in_channels=3), (3, 32)),
    "mobilenetv2 @ 32x32": (lambda: create_model("mobilenetv2", num_classes=10), (3, 32)),
    "torchvision resnet50 @ 224": (lambda: torchvision.models.resnet50(), (3, 224)),
    "torchvision mobilenet_v2 @ 224": (lambda: torchvision.models.mobilenet_v2(), (3, 224)),
}


def randomized(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.uniform_(0.1, 0.5, generator=generator)
    return model.eval()


def replicate(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
            module.padding_mode = "replicate"
    return model


def relative_error(pruned: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = reference(x)
        return float((pruned.eval()(x) - want).abs().max() / want.abs().max())


def measure(make, shape) -> dict[str, float]:
    channels, size = shape
    torch.manual_seed(0)
    x = torch.randn(8, channels, size, size)
    row = {}
    for padding in ("zeros", "replicate"):
        model = randomized(make())
        if padding == "replicate":
            replicate(model)
        graph, plan = rp.make_plan(model, x[:1], ratio=0.5, importance="random")
        silenced = silence_channels(model, graph, plan).eval()
        if padding == "zeros":
            dropped = apply_plan(silenced, graph, plan, compensate=None)
            row["dropped"] = relative_error(dropped, silenced, x)
        row[padding] = relative_error(apply_plan(silenced, graph, plan), silenced, x)
    return row


def main() -> None:
    rows = []
    for name, (make, shape) in MODELS.items():
        row = measure(make, shape)
        rows.append(
            [name, f"{row['dropped']:.3g}", f"{row['zeros']:.3g}", f"{row['replicate']:.2g}"]
        )
    header = ["model", "dropped as they are", "folded (zero padding)", "folded (replicate padding)"]
    print(f"Machine: {describe_machine()}.\n\n{markdown_table(header, rows)}")


if __name__ == "__main__":
    main()
