"""Unstructured pruning: single weights become exact zeros (same shapes, sparse tensors).

Unstructured sparsity does not change dense MACs, so these methods take ``ratio`` (the
fraction of weights zeroed) and refuse ``target_macs`` with an explanation. Their pruned model
keeps the zeros baked in, and :class:`KeepSparsity` keeps them at zero during fine-tuning.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from regprune.allocation import SCOPES
from regprune.layers import weight_layers
from regprune.lifecycle import CalibrationData, PruningMethod
from regprune.methods.greg import SCHEDULE_KEYS
from regprune.methods.registry import register_method
from regprune.regularizers.budget import warn_if_too_short
from regprune.regularizers.growing_l2 import budget_schedule, greg_for
from regprune.train.distributed import broadcast_object


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear weights (:func:`regprune.layers.is_weight_layer`) that train."""
    return {
        f"{name}.weight" if name else "weight": layer.weight
        for name, layer in weight_layers(model).items()
        if layer.weight.requires_grad
    }


def magnitude_masks(
    weights: dict[str, torch.Tensor], ratio: float, scope: str
) -> dict[str, torch.Tensor]:
    """True on the ``ratio`` fraction of smallest |w|, per tensor (local) or overall (global)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1) (fraction of weights zeroed), got {ratio}")
    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([w.detach().abs().reshape(-1).cpu() for w in weights.values()])
            k = int(ratio * flat.numel())
            threshold = torch.kthvalue(flat, k).values if k else torch.tensor(-1.0)
            return {n: (w.detach().abs().cpu() <= threshold) for n, w in weights.items()}
        masks = {}
        for name, w in weights.items():
            k = int(ratio * w.numel())
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[torch.argsort(w.detach().abs().reshape(-1).cpu())[:k]] = True
            masks[name] = mask.reshape(w.shape)
        return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with the masked weights set to exactly zero."""
    pruned = copy.deepcopy(model)
    params = dict(pruned.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(mask.to(params[name].device), 0.0)
    return pruned


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over conv / linear weights."""
    weights = list(prunable_weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def _check_unstructured_target(target: dict[str, Any]) -> tuple[float, str]:
    if target.get("target_macs") is not None:
        raise ValueError(
            "unstructured pruning zeroes weights but keeps every layer's shape, so dense MACs "
            "do not change; give ratio= (the fraction of weights to zero) instead of target_macs="
        )
    unknown = set(target) - {"ratio", "scope", "target_macs"}
    if unknown:
        raise TypeError(f"unexpected arguments for an unstructured method: {sorted(unknown)}")
    if target.get("ratio") is None:
        raise ValueError("give ratio= (the fraction of weights to zero)")
    return float(target["ratio"]), target.get("scope") or "global"


class KeepSparsity(PruningMethod):
    """Keeps zeroed weights at zero while fine-tuning (gradients masked, weights re-zeroed)."""

    name = "keep_sparsity"

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(model)
        params = prunable_weights(model)
        self.masks = masks or {n: (p.detach() == 0).cpu() for n, p in params.items()}

    def _masked(self):
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            yield params[name], mask.to(params[name].device)

    def after_backward(self) -> None:
        for param, mask in self._masked():
            if param.grad is not None:
                param.grad.masked_fill_(mask, 0.0)

    def step(self) -> None:
        super().step()
        with torch.no_grad():
            for param, mask in self._masked():
                param.masked_fill_(mask, 0.0)

    def wants_more_training(self) -> bool:
        return True

    def sparsity_stats(self) -> dict[str, float]:
        return {"weight_sparsity": weight_sparsity(self.model)}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"masks": dict(self.masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.masks = dict(state["masks"])


@register_method("magnitude_unstructured")
class MagnitudeUnstructured(PruningMethod):
    """Global (or per-layer) magnitude pruning of single weights: the unstructured baseline."""

    name = "magnitude_unstructured"

    def __init__(self, model: nn.Module, example_inputs: Any = None, **target: Any) -> None:
        super().__init__(model)
        self.ratio, self.scope = _check_unstructured_target(target)
        self.masks: dict[str, torch.Tensor] | None = None

    def wants_more_training(self) -> bool:
        return False

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        masks = magnitude_masks(prunable_weights(self.model), self.ratio, self.scope)
        self.masks = broadcast_object(masks)
        return apply_masks(self.model, self.masks)

    def finetune_method(self, pruned: nn.Module) -> PruningMethod:
        return KeepSparsity(pruned, self.masks)


@register_method("greg_unstructured")
class GRegUnstructured(PruningMethod):
    """GReg-1 / GReg-2 on single weights: the growing penalty pushes chosen weights to zero.

    GReg-1's prune set is the ``ratio`` fraction of smallest |w| (per layer as in the paper,
    or globally); GReg-2 picks it after its growing phase, with the same per-layer counts.
    """

    name = "greg_unstructured"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any = None,
        *,
        variant: int = 1,
        total_steps: int | None = None,
        silence_at: float = 0.8,
        **kwargs: Any,
    ) -> None:
        super().__init__(model)
        schedule = {k: kwargs.pop(k) for k in SCHEDULE_KEYS if k in kwargs}
        self.strength_mode = "explicit" if schedule else "paper"
        if total_steps is not None and not schedule:
            # budget mode: the structured rule (regularizers/growing_l2.py budget_schedule)
            schedule = budget_schedule(total_steps, silence_at, variant)
            warn_if_too_short(total_steps, self.name)
            self.strength_mode = "budget"
        self.ratio, self.scope = _check_unstructured_target(kwargs)
        self.variant = variant
        weights = prunable_weights(model)
        masks = magnitude_masks(weights, self.ratio, self.scope)
        for name, mask in masks.items():
            if bool(mask.all()):  # an all-zero layer (a zero-initialized classifier) ties at
                # the global threshold; GReg never empties a layer, as in the code: keep one
                flat = mask.reshape(-1)
                flat[int(weights[name].detach().abs().reshape(-1).argmax())] = False
        self.regularizer = greg_for(weights, masks, variant, **schedule)
        self.masks: dict[str, torch.Tensor] | None = None

    def prune(self, data: CalibrationData | None = None) -> nn.Module:
        masks = {str(k): v for k, v in self.regularizer.prune_set().items()}
        self.masks = broadcast_object(masks)
        return apply_masks(self.model, self.masks)

    def finetune_method(self, pruned: nn.Module) -> PruningMethod:
        return KeepSparsity(pruned, self.masks)
