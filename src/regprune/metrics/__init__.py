"""Model cost: MACs / FLOPs / parameters (per layer on request) and measured latency.

Example::

    from regprune.metrics import count, format_count, measure_latency

    cost = count(model, torch.randn(1, 3, 32, 32), per_layer=True)
    print(format_count(cost.macs), cost.table())
    print(measure_latency(model, torch.randn(64, 3, 32, 32), threads=1).median_ms)
"""

from regprune.metrics.count import LayerCount, MacsCounter, ModelCount, count, format_count
from regprune.metrics.latency import Latency, measure_latency

__all__ = [
    "Latency",
    "LayerCount",
    "MacsCounter",
    "ModelCount",
    "count",
    "format_count",
    "measure_latency",
]
