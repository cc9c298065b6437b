"""Regularize, prune and fine-tune a torchvision detector: the loop for models that return losses.

    python examples/prune_detector.py                 # SSDlite on synthetic boxes, a minute on CPU
    python examples/prune_detector.py --method masksparsity --target-macs 0.5 --steps 200

Detectors differ from classifiers in one place only: in train mode they take ``(images,
targets)`` and return a dict of losses. The method's hooks go where they go for any model::

    loss = sum(model(images, targets).values())
    (loss + method.penalty()).backward()
    method.after_backward()          # gradient edits (GReg, slimming)
    optimizer.step(); optimizer.zero_grad()
    method.step()                    # schedules

The method traces the model in eval mode (``(images,)`` as example inputs: one positional
argument, a list of 3 x H x W tensors); the widths fixed by the task (class logits, box
coordinates, anchors per location) stay by themselves. With torchvision's reference scripts
(``references/detection/engine.py: train_one_epoch``), add ``method.penalty()`` to ``losses``
before ``backward``, call ``method.after_backward()`` between ``backward`` and
``optimizer.step()``, ``method.step()`` after it, and ``method.prune()`` after the last epoch;
then fine-tune the pruned model with the same script. Ultralytics: docs/yolo.md.

The synthetic data (one bright square per image, its class from its colour) only shows the loop
runs and learns; use your own dataset for real numbers.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torchvision.models import detection

import regprune as rp
from regprune.methods import PruningMethod
from regprune.train import build_optimizer

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]


def synthetic_boxes(index: int, size: int = 96, num_classes: int = 3) -> Sample:
    """One square per image on a noisy background; its class sets its colour channel."""
    generator = torch.Generator().manual_seed(index)
    image = 0.2 * torch.rand(3, size, size, generator=generator)
    label = 1 + index % (num_classes - 1)
    side = size // 3
    x0, y0 = torch.randint(0, size - side, (2,), generator=generator).tolist()
    image[label - 1, y0 : y0 + side, x0 : x0 + side] = 1.0
    box = torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32)
    return image, {"boxes": box, "labels": torch.tensor([label])}


def batches(sample: Callable[[int], Sample], batch_size: int, start: int = 0) -> Iterator:
    index = start
    while True:
        items = [sample(index + k) for k in range(batch_size)]
        index += batch_size
        yield [image for image, _ in items], [target for _, target in items]


def train_detector(
    model: nn.Module,
    data: Iterator,
    steps: int,
    lr: float,
    method: PruningMethod | None = None,
) -> list[float]:
    """``steps`` SGD steps on a detector's summed losses, with the method's hooks if given."""
    groups = method.optimizer_groups() if method is not None else ()
    optimizer = build_optimizer(model, lr=lr, weight_decay=1e-4, groups=groups)
    model.train()
    losses = []
    for _ in range(steps):
        images, targets = next(data)
        loss = sum(model(images, targets).values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the detector's loss is {float(loss)}; lower the lr")
        losses.append(float(loss.detach()))
        if method is not None:
            method.observe_loss(losses[-1])
            loss = loss + method.penalty()
        loss.backward()
        if method is not None:
            method.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        if method is not None:
            method.step()
    return losses


def prune_detector(
    model: nn.Module,
    example_images: list[torch.Tensor],
    data: Iterator,
    *,
    method_name: str = "greg1",
    target_macs: float = 0.5,
    steps: int = 100,
    finetune_steps: int = 50,
    lr: float = 0.01,
) -> tuple[nn.Module, dict]:
    """Regularize ``steps`` steps in budget mode, prune to ``target_macs``, fine-tune.

    The caller's model is not modified (the method trains a copy). Returns the pruned,
    fine-tuned model and what happened (losses, MACs, how silent the removed set was).
    """
    model = copy.deepcopy(model).eval()
    example = (example_images,)
    method = rp.methods.get(method_name, model, example, target_macs=target_macs, total_steps=steps)
    sparsify_losses = train_detector(model, data, steps, lr, method)
    model.eval()
    pruned = method.prune()
    finetune_losses = train_detector(pruned, data, finetune_steps, lr)
    pruned.eval()
    report = {
        "sparsify_losses": sparsify_losses,
        "finetune_losses": finetune_losses,
        "macs_before": rp.count(model, example).macs,
        "macs_after": rp.count(pruned, example).macs,
        "removal": method.removal_report(),
    }
    return pruned, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="greg1")
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    images = [synthetic_boxes(10_000)[0]]
    pruned, report = prune_detector(
        model,
        images,
        batches(synthetic_boxes, batch_size=4),
        method_name=args.method,
        target_macs=args.target_macs,
        steps=args.steps,
        finetune_steps=args.finetune_steps,
    )
    removal = report["removal"]
    print(
        f"{args.method}: loss {report['sparsify_losses'][0]:.2f} -> "
        f"{report['sparsify_losses'][-1]:.2f} while regularizing, "
        f"{report['finetune_losses'][-1]:.2f} after fine-tuning; MACs "
        f"{report['macs_before'] / 1e6:.1f} M -> {report['macs_after'] / 1e6:.1f} M; "
        f"{removal.get('silent_inputs')} of {removal.get('removed_inputs')} removed inputs "
        "silent"
    )
    detections = pruned(images)[0]
    print(f"pruned model detects: {len(detections['boxes'])} boxes on the example image")


if __name__ == "__main__":
    main()
