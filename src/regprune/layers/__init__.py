"""The bottom layer: what every other part needs to know about layer types.

One table of layer rules (how a conv, a linear, an embedding is traced, sliced, counted and
folded; which layers are opaque; which per-channel layers need their size attributes refreshed).
The graph, surgery and regularizers import it; it imports none of them.
"""

from regprune.layers.multihead import PrunedMultiheadAttention
from regprune.layers.rules import (
    LAYER_RULES,
    MACS_FORMULAS,
    WEIGHT_LAYER_TYPES,
    LayerRecord,
    LayerRule,
    MacsFormula,
    is_batch_norm,
    is_conv_like,
    is_per_channel_layer,
    is_plain_conv,
    is_weight_layer,
    macs_formula_for,
    opaque_reason,
    refresh_attributes,
    rule_for,
    weight_layers,
)

__all__ = [
    "LAYER_RULES",
    "MACS_FORMULAS",
    "WEIGHT_LAYER_TYPES",
    "LayerRecord",
    "LayerRule",
    "MacsFormula",
    "PrunedMultiheadAttention",
    "is_batch_norm",
    "is_conv_like",
    "is_per_channel_layer",
    "is_plain_conv",
    "is_weight_layer",
    "macs_formula_for",
    "opaque_reason",
    "refresh_attributes",
    "rule_for",
    "weight_layers",
]
