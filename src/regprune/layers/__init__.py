"""The bottom layer: what every other part needs to know about layer types.

One table of layer rules (how a conv, a linear, an embedding is traced, sliced, counted and
folded; which layers are opaque; which per-channel layers need their size attributes refreshed).
The graph, surgery and regularizers import it; it imports none of them.
"""

from regprune.layers.multihead import MULTIHEAD_FORMS, PrunedMultiheadAttention
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
from regprune.layers.window_attention import WINDOW_FORMS, PrunedShiftedWindowAttention

PRUNED_FORMS = MULTIHEAD_FORMS | WINDOW_FORMS
"""Classes whose pruned copy surgery gives a subclass (with an ``adopt`` classmethod), because
the original forward cannot take the pruned sizes; :func:`regprune.surgery.load_pruned`
restores them by this table."""

__all__ = [
    "LAYER_RULES",
    "MACS_FORMULAS",
    "PRUNED_FORMS",
    "WEIGHT_LAYER_TYPES",
    "LayerRecord",
    "LayerRule",
    "MacsFormula",
    "PrunedMultiheadAttention",
    "PrunedShiftedWindowAttention",
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
