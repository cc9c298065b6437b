"""Sparsity regularizers: small stateful objects that act as a loss term or a gradient edit.

Each one is built once from the model's channel groups (or parameters / convs), precomputes its
index tensors once, and exposes the hooks of the shared life cycle that apply to it:
``penalty(...)`` (a differentiable loss term), ``apply_to_grads(model)`` (an in-place edit of
``.grad`` after ``backward`` and before ``optimizer.step``), ``step(...)`` (schedules) and
``state_dict()`` / ``load_state_dict()`` (``weights_only``-safe).

Group-based regularizers (:class:`BNScaleL1`, :class:`GroupLasso`, :class:`GrowingL2`) keep no
reference to the model and take it as an argument; :class:`HierarchicalGroupSparsity` and
:class:`L0Regularizer` are bound to the modules they regularize (the latter installs gates).
"""

from regprune.regularizers.bn_l1 import BNScaleL1
from regprune.regularizers.group_lasso import GroupLasso
from regprune.regularizers.growing_l2 import GrowingL2, l1_prune_set
from regprune.regularizers.hierarchical import HierarchicalGroupSparsity
from regprune.regularizers.l0_gates import (
    BETA,
    GAMMA,
    ZETA,
    ChannelGating,
    HardConcreteGate,
    L0Regularizer,
    WeightGating,
)

__all__ = [
    "BETA",
    "GAMMA",
    "ZETA",
    "BNScaleL1",
    "ChannelGating",
    "GroupLasso",
    "GrowingL2",
    "HardConcreteGate",
    "HierarchicalGroupSparsity",
    "L0Regularizer",
    "WeightGating",
    "l1_prune_set",
]
