"""Save and load pruned models so that ``torch.load(..., weights_only=True)`` reads them.

A pruned model differs from its original architecture only in tensor shapes and a few size
attributes (``in_channels``, ``num_features`` ...). We store exactly that: the state dict, the
shape of every tensor and the size attributes of every module. Loading rebuilds the original
architecture (the user's constructor), resizes it, and loads the weights: no pickled modules.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from regprune.io import atomic_torch_save, read_weights_only
from regprune.layers import PRUNED_FORMS

FORMAT = "regprune.pruned/1"

SIZE_ATTRIBUTES = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "num_groups",
    "normalized_shape",
    "num_parameters",
    "embedding_dim",
    "nf",
    "nx",
    "num_heads",
    "n_heads",
    "num_attention_heads",
    "num_key_value_heads",
    "num_key_value_groups",
    "head_dim",
    "attention_head_size",
    "all_head_size",
    "attn_dim",
    "split_size",
    "embed_dim",
    "kdim",
    "vdim",
    "d_model",
)
"""Module attributes that surgery changes (the last ones: head sizes an attention forward reads,
``layers.rules.HEAD_LAYOUTS``, ``nn.MultiheadAttention``'s widths, ``nn.Transformer``'s
``d_model``); everything else comes from the constructor."""


def _pruned_forms(model: nn.Module) -> dict[str, str]:
    """Modules that surgery gave a pruned form (:data:`~regprune.layers.PRUNED_FORMS`),
    by name: the class name of that form."""
    forms = set(PRUNED_FORMS.values())
    return {name: type(m).__name__ for name, m in model.named_modules() if type(m) in forms}


def _restore_pruned_forms(model: nn.Module, forms: dict[str, str], path: Any) -> None:
    for name, form_name in forms.items():
        module = model.get_submodule(name) if name else model
        form = PRUNED_FORMS.get(type(module))
        if form is None or form.__name__ != form_name:
            raise ValueError(
                f"{path}: module '{name}' was saved as a {form_name}, which a "
                f"{type(module).__name__} cannot become; build the architecture it was pruned from"
            )
        form.adopt(module)


def _size_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        values = {}
        for attr in SIZE_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, int):
                values[attr] = value
            elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
                values[attr] = list(value)
        if values:
            found[name] = values
    return found


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied and non-persistent ones included."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors |= {n: b for n, b in model.named_buffers(remove_duplicate=False) if b is not None}
    return tensors


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s weights and sizes atomically (temp file + rename) to ``path``."""
    state = model.state_dict()
    tensors = _all_tensors(model)
    payload = {
        "format": FORMAT,
        "model_type": type(model).__name__,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "attributes": _size_attributes(model),
        "pruned_forms": _pruned_forms(model),
        "state_dict": state,
        # non-persistent buffers are not in the state dict, but surgery may have sliced them
        "extra_buffers": {k: v for k, v in tensors.items() if k not in state},
    }
    atomic_torch_save(payload, path)


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Resize a freshly built original ``model`` to the saved pruned shapes and load weights.

    Returns the same ``model`` object, now pruned. Raises ValueError when the file is not a
    regprune pruned model or was saved from another architecture.
    """
    payload = read_weights_only(path, "a regprune pruned model")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a regprune pruned model (expected format {FORMAT!r}); "
            "save it with regprune.save_pruned"
        )
    missing_keys = {"model_type", "shapes", "attributes", "state_dict"} - set(payload)
    if missing_keys:
        raise ValueError(f"{path} is corrupt: a pruned model file without {sorted(missing_keys)}")
    if payload["model_type"] != type(model).__name__:
        raise ValueError(
            f"{path} holds a pruned {payload['model_type']}, but the model given is a "
            f"{type(model).__name__}; build the original architecture it was pruned from"
        )
    for name, values in payload["attributes"].items():
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError as error:
            raise ValueError(
                f"{path}: module '{name}' does not exist in the given model; "
                "build the architecture it was pruned from"
            ) from error
        for attr, value in values.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    _restore_pruned_forms(model, payload.get("pruned_forms", {}), path)
    own = _all_tensors(model)
    missing = sorted(set(own) - set(payload["shapes"]))
    if missing:
        raise ValueError(
            f"{path}: the given model has tensors the saved one lacks ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); build the architecture it was pruned from"
        )
    for key, shape in payload["shapes"].items():
        if key not in own:
            own[key] = _empty_slot(model, key, path)
        tensor = own[key]
        if list(tensor.shape) != shape:
            module_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(module_name) if module_name else model
            fresh = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                setattr(owner, attr, nn.Parameter(fresh, tensor.requires_grad))
            else:
                owner._buffers[attr] = fresh
    model.load_state_dict(payload["state_dict"])
    with torch.no_grad():
        for key, value in payload.get("extra_buffers", {}).items():
            own_after = _all_tensors(model)
            own_after[key].copy_(value)
    _retie(model, own)
    return model


def _empty_slot(model: nn.Module, key: str, path: str | os.PathLike) -> nn.Parameter:
    """A parameter the pruned model has where the original's slot is None: the bias that
    compensation gave a layer built without one (``Conv2d(..., bias=False)``)."""
    module_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(module_name) if module_name else model
    if attr not in owner._parameters or owner._parameters[attr] is not None:
        raise ValueError(
            f"{path}: tensor '{key}' does not exist in the given model; "
            "build the architecture it was pruned from"
        )
    weight = getattr(owner, "weight", None)
    like = weight if isinstance(weight, torch.Tensor) else torch.empty(0)
    owner._parameters[attr] = nn.Parameter(torch.empty(0, dtype=like.dtype, device=like.device))
    return owner._parameters[attr]


def _retie(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Parameters that were one tensor before resizing are one tensor again."""
    first_name: dict[int, str] = {}
    for name, tensor in before.items():
        if id(tensor) in first_name and isinstance(tensor, nn.Parameter):
            source = model.get_parameter(first_name[id(tensor)])
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name) if module_name else model, attr, source)
        else:
            first_name.setdefault(id(tensor), name)
