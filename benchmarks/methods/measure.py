"""What every run records about a model: test accuracy, MACs / FLOPs / params, weight sparsity.

Latency is not measured here, while other runs may share the machine: ``latency.py`` times every
saved model against its baseline afterwards, interleaved, on a quiet machine."""

from __future__ import annotations

import torch
from torch import nn

from regprune.methods.unstructured import weight_sparsity
from regprune.metrics import count
from regprune.train import evaluate

from .config import BenchConfig
from .data import BenchData


def test_accuracy(model: nn.Module, data: BenchData, config: BenchConfig) -> float:
    return float(evaluate(model, data.test, config.device)["acc"])


@torch.no_grad()
def size_of(model: nn.Module, data: BenchData) -> dict[str, float]:
    """MACs (FLOPs = 2 x MACs), params and the fraction of exact zeros in conv/linear weights."""
    counted = count(model, data.example_input())
    return {
        "macs": counted.macs,
        "flops": 2 * counted.macs,
        "params": counted.params,
        "weight_sparsity": weight_sparsity(model),
    }
