"""A model's fingerprint: everything a caller could notice if we had touched their model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Tensors (values, dtype, device, requires_grad, identity), every module's attributes by
    identity, hooks, train flags and parametrizations."""
    tensors = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        tensors[name] = (
            id(tensor),
            tensor.detach().clone(),
            tensor.dtype,
            str(tensor.device),
            tensor.requires_grad,
        )
    modules = {}
    for name, module in model.named_modules(remove_duplicate=False):
        attributes = {k: id(v) for k, v in module.__dict__.items()}
        hooks = [
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            len(module._state_dict_hooks),
        ]
        parametrized = sorted(getattr(module, "parametrizations", {}) or {})
        modules[name] = (type(module).__name__, module.training, attributes, hooks, parametrized)
    return {"tensors": tensors, "modules": modules}


def assert_same_fingerprint(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["modules"].keys() == before["modules"].keys(), "modules added or removed"
    for name, entry in before["modules"].items():
        assert after["modules"][name] == entry, f"module '{name}' changed"
    assert after["tensors"].keys() == before["tensors"].keys(), "tensors added or removed"
    for name, (ident, value, dtype, device, grad) in before["tensors"].items():
        got = after["tensors"][name]
        assert got[0] == ident, f"{name} was replaced"
        assert (got[2], got[3], got[4]) == (dtype, device, grad), f"{name} dtype/device/grad"
        assert torch.equal(got[1], value), f"{name} values changed"
