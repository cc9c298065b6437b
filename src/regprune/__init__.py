"""regprune: sparse-regularization pruning for PyTorch.

Train with a sparsity penalty, choose what to remove, physically remove it, fine-tune, report.
"""

from regprune import methods
from regprune._version import __version__ as __version__
from regprune.allocation import Plan
from regprune.api import PruneResult, make_plan, prune, prune_with_result
from regprune.graph import ChannelGroup, DependencyGraph, trace_graph
from regprune.metrics import count, measure_latency
from regprune.surgery import apply_plan, load_pruned, rebuild_optimizer, save_pruned

__all__ = [
    "ChannelGroup",
    "DependencyGraph",
    "Plan",
    "PruneResult",
    "apply_plan",
    "count",
    "load_pruned",
    "make_plan",
    "measure_latency",
    "methods",
    "prune",
    "prune_with_result",
    "rebuild_optimizer",
    "save_pruned",
    "trace_graph",
]
