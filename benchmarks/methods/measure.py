"""What every run records about a model: test accuracy, MACs / FLOPs / params, CPU latency."""

from __future__ import annotations

import torch
from torch import nn

from regprune.methods.unstructured import weight_sparsity
from regprune.metrics import count, measure_latency
from regprune.train import evaluate

from .config import BenchConfig
from .data import BenchData


def test_accuracy(model: nn.Module, data: BenchData, config: BenchConfig) -> float:
    return float(evaluate(model, data.test, config.device)["acc"])


def size_of(model: nn.Module, data: BenchData) -> dict[str, float]:
    """MACs (FLOPs = 2 x MACs), params and the fraction of exact zeros in conv/linear weights."""
    counted = count(model, data.example_input())
    return {
        "macs": counted.macs,
        "flops": 2 * counted.macs,
        "params": counted.params,
        "weight_sparsity": weight_sparsity(model),
    }


def latency_ms(model: nn.Module, data: BenchData, config: BenchConfig) -> dict[str, float]:
    """Median CPU latency per batch size, one thread (the machine is shared: medians only)."""
    result = {}
    for batch in config.latency_batches:
        timing = measure_latency(
            model,
            data.example_input(batch),
            warmup=2,
            repeats=config.latency_repeats,
            threads=config.threads,
        )
        result[f"latency_b{batch}_ms"] = timing.median_ms
    return result


def describe(model: nn.Module, data: BenchData, config: BenchConfig, latency: bool) -> dict:
    with torch.no_grad():
        record = size_of(model, data)
    if latency:
        record |= latency_ms(model, data, config)
    return record
