"""Make a pruned Hugging Face model's ``config`` state its new sizes, and say when it cannot.

``save_pretrained`` writes ``model.config``; ``from_pretrained`` builds the architecture from it
and then loads the weights. After surgery the config must therefore state the pruned head
counts, head size and MLP width, or the reload builds the original shapes. Most HF configs hold
one count for all layers (``num_attention_heads``, ``intermediate_size``): a plan that keeps
different counts in different layers cannot be stated, and some configs cannot state a head size
that does not follow from ``hidden_size / num_attention_heads`` (BERT). We set what the config
can hold and then check it by building the architecture from the refreshed config on the
``meta`` device (no memory, no arithmetic) and comparing every tensor's shape with the pruned
model's: what :func:`refresh_hf_config` returns is exactly what ``from_pretrained`` would get
wrong, never a guess.
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.layers.rules import head_layout_for, head_projections, head_sizes, rule_for

HIDDEN_WIDTH_FIELD = "hidden_size"
"""The residual stream's width (GPT-2's ``n_embd`` answers to it through its attribute map)."""

MLP_WIDTH_FIELDS = ("intermediate_size", "n_inner", "d_ff")
"""Config fields of the MLP's hidden width (``n_inner``: GPT-2, ``None`` meaning 4 x hidden;
``d_ff``: T5)."""


def is_hf_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel``: it has a config it saves and rebuilds from."""
    config = getattr(model, "config", None)
    return hasattr(model, "save_pretrained") and hasattr(config, "to_dict")


def _mlp_width(config: object) -> tuple[str, int] | None:
    for name in MLP_WIDTH_FIELDS:
        if hasattr(config, name):
            value = getattr(config, name)
            if value is None and name == "n_inner":
                value = 4 * config.hidden_size  # type: ignore[attr-defined]
            if isinstance(value, int):
                return name, value
    return None


def _widths(model: nn.Module) -> dict[str, int]:
    """Output width of every layer with a slicing rule, by name."""
    widths = {}
    for name, module in model.named_modules():
        rule = rule_for(module)
        if rule is not None:
            widths[name] = rule.output_channels(module)
    return widths


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if head_layout_for(m) is not None}


def refresh_hf_config(original: nn.Module, pruned: nn.Module, unit: str = "heads") -> list[str]:
    """Set ``pruned.config``'s head counts, head size and MLP width to the pruned sizes.

    ``pruned`` is surgery's copy (its config a copy too: the caller's is untouched). Returns
    what the config still cannot state, one line each (empty: ``save_pretrained`` /
    ``from_pretrained`` rebuild the pruned model exactly).
    """
    if not is_hf_model(pruned):
        return []
    config = pruned.config
    problems: list[str] = []
    attention = _attention_modules(pruned)
    sizes = [head_sizes(m) for m in attention.values()]
    if sizes:
        for key, field in (
            ("heads", "num_attention_heads"),
            ("kv_heads", "num_key_value_heads"),
            ("head_dim", "head_dim"),
        ):
            per_layer = [s[key] for s in sizes]  # type: ignore[index]
            if len(set(per_layer)) > 1:
                problems.append(
                    f"{key} differ between layers ({per_layer}); {type(config).__name__} holds "
                    "one value for all layers"
                )
            elif field == "head_dim" or hasattr(config, field):
                # head_dim even where the config has no such field: ViT reads it when present
                setattr(config, field, per_layer[0])
    before, after = _widths(original), _widths(pruned)
    head_rows = tuple(
        f"{name}.{child}" for name, m in attention.items() for child in head_projections(m)
    )

    def new_widths(old_width: int, skip: tuple[str, ...]) -> list[int]:
        """The pruned widths of the layers that had ``old_width`` outputs (bar ``skip``)."""
        names = [n for n, w in before.items() if w == old_width and not n.startswith(skip)]
        return sorted({after[n] for n in names if n in after})

    fields = []
    if isinstance(getattr(config, HIDDEN_WIDTH_FIELD, None), int):
        fields.append((HIDDEN_WIDTH_FIELD, config.hidden_size, head_rows))
    mlp = _mlp_width(config)
    if mlp is not None:
        fields.append((*mlp, tuple(f"{n}." for n in attention)))
    for field, old_width, skip in fields:
        new = new_widths(old_width, skip)
        if len(new) == 1:
            setattr(config, field, new[0])
        elif len(new) > 1:
            problems.append(
                f"{field} differs between layers ({new}); the config holds one value for all layers"
            )
    return problems + _rebuild_mismatches(pruned)


def _rebuild_mismatches(pruned: nn.Module, limit: int = 3) -> list[str]:
    """Tensors whose shape ``type(pruned)(config)`` would build differently (on ``meta``)."""
    try:
        with torch.device("meta"):
            rebuilt = type(pruned)(pruned.config)
    except Exception as error:  # a config the constructor refuses is itself the answer
        return [f"{type(pruned).__name__}(config) fails on the refreshed config: {error}"]
    derived = []
    for name, module in _attention_modules(rebuilt).items():
        built, kept = head_sizes(module), head_sizes(pruned.get_submodule(name))
        if built and kept and built["head_dim"] != kept["head_dim"]:
            derived.append(
                f"{name} gets head size {built['head_dim']} from the config, "
                f"{kept['head_dim']} pruned (its constructor derives the head size from "
                "hidden_size / num_attention_heads)"
            )
            break
    expected = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    mismatches = [
        f"{key}: {expected[key]} from the config, {tuple(tensor.shape)} pruned"
        for key, tensor in pruned.state_dict().items()
        if key in expected and expected[key] != tuple(tensor.shape)
    ]
    mismatches += [
        f"{key}: not in {type(pruned).__name__}(config) (a bias compensation added to a layer "
        "built without one)"
        for key in pruned.state_dict()
        if key not in expected
    ]
    if len(mismatches) > limit:
        mismatches = [*mismatches[:limit], f"... {len(mismatches) - limit} more"]
    return derived + mismatches
