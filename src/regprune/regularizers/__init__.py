"""Sparsity regularizers: small stateful objects that act as a loss term or a gradient edit.

Every one follows :class:`Regularizer` (regularizers/protocol.py): the same hooks with the same
signature -- ``penalty(model)``, ``apply_to_grads(model)``, ``step(model)``, ``stats(model)``,
``parameters()``, ``state_dict()`` / ``load_state_dict()`` -- and one ``strength`` a budget can
drive. Group regularizers are built once over the model's channel groups (HGSR over the
groups' consumer slices) and precompute their index tensors; GReg also takes named parameters
(unstructured); L0 installs gates on the model it is given.

Budget mode (issue 14) lives beside them: :mod:`.budget` drives one strength towards a planned
path, :mod:`.lagrangian` holds L0's gates to a target, :mod:`.staged` lets a penalty on every
channel select and growing L2 silence the selection.
"""

from regprune.regularizers.bn_l1 import BNScaleL1
from regprune.regularizers.group_lasso import GroupLasso
from regprune.regularizers.growing_l2 import GrowingL2, greg_for, l1_prune_set
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
from regprune.regularizers.protocol import Regularizer

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
    "Regularizer",
    "WeightGating",
    "greg_for",
    "l1_prune_set",
]
