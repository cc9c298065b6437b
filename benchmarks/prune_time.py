"""End-to-end time of ``regprune.prune`` (what users call) on a few torchvision models.

    python -m benchmarks.prune_time
    PYTHONPATH=<a checkout of another commit>/src python -m benchmarks.prune_time   # compare

``rp.prune(model, x, ratio=0.5)`` at 1x3x224x224, one torch thread, median of 3 calls in one
process (random weights, ``weights=None``). Run both commits on the same quiet machine.
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

import regprune as rp

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121")


def main() -> None:
    torch.set_num_threads(1)
    print(f"regprune from {rp.__file__}")
    for name in MODELS:
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            rp.prune(model, x, ratio=0.5)
            times.append(time.perf_counter() - start)
        print(f"{name}: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
