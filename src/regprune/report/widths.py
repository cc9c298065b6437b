"""Per-layer output widths of a model, and how pruning changed them.

Widths come from the surgery's table of layer rules (``rule_for``), the one place that knows how
each layer type names its channel count, so this module holds no layer-type knowledge of its own.
"""

from __future__ import annotations

from torch import nn

from regprune.layers.rules import rule_for


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (conv filters, linear rows, embedding dims) of every layer with a rule.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``{qualified module name: width}`` in ``named_modules()`` order.

    Example::

        layer_widths(create_model("resnet20"))["conv1"]  # 16
    """
    widths = {}
    for name, module in model.named_modules():
        rule = rule_for(module)
        if rule is not None:
            widths[name] = int(rule.output_channels(module))
    return widths


def width_changes(original: nn.Module, pruned: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (width before, width after)}`` for :attr:`RunSummary.layer_widths`.

    Surgery keeps module names, so layers are matched by name.

    Raises:
        ValueError: the two models do not have the same layers (not a model and its pruned copy).
    """
    before, after = layer_widths(original), layer_widths(pruned)
    if before.keys() != after.keys():
        only_before = sorted(before.keys() - after.keys())
        only_after = sorted(after.keys() - before.keys())
        raise ValueError(
            "the models do not have the same layers (is the second a pruned copy of the first?); "
            f"only in the original: {only_before[:5]}, only in the pruned: {only_after[:5]}"
        )
    return {name: (before[name], after[name]) for name in before}
