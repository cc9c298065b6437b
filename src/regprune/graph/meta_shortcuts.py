"""Results of shape-preserving ops on ``meta`` tensors, without running their meta kernels.

Why: tracing runs on the ``meta`` device so that no arithmetic is done, but several common ops
(batch norm, ``hardtanh``/ReLU6, the other norms) have their meta kernels written as Python
decompositions, which cost more than the real op on a small input: they were a third of the
trace time of DenseNet-121 and half of MobileNetV2's. Their output has the input's shape,
dtype and layout by definition, so on meta the answer is known without asking the kernel.
In-place variants return the input itself, as the real op does, so the tracer sees the same
tensor identities either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

_NORMS: tuple[Callable[..., Any], ...] = (
    F.batch_norm,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
)
"""Output has the shape of the input; never in place."""

_ACTIVATIONS: tuple[Callable[..., Any], ...] = (
    F.relu,
    F.relu6,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.silu,
    F.mish,
    F.elu,
    F.leaky_relu,
    F.dropout,
)
"""Element-wise, with an ``inplace`` argument."""

_SHAPE_PRESERVING = frozenset(_NORMS + _ACTIVATIONS)


@cache
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def _is_inplace(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> bool:
    if func in _NORMS:
        return False
    bound = _signature(func).bind(*args, **kwargs)
    return bool(bound.arguments.get("inplace", False))


def shape_only_result(
    func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]
) -> torch.Tensor | None:
    """The output of ``func(*args, **kwargs)`` if it is a shape-preserving op on a meta tensor.

    Returns ``None`` when ``func`` must really run: not in the table, the input is not a meta
    tensor, or the arguments do not bind (the real call then raises the user's error).
    """
    if func not in _SHAPE_PRESERVING or not args:
        return None
    x = args[0]
    if not isinstance(x, torch.Tensor) or not x.is_meta:
        return None
    try:
        inplace = _is_inplace(func, args, kwargs)
    except TypeError:
        return None
    return x if inplace else torch.empty_like(x)
