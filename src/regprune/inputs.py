"""The one way metrics take example inputs: a tensor, or a tuple of tensors passed positionally."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

ExampleInputs = torch.Tensor | Sequence[torch.Tensor]


def as_input_tuple(example_inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` to ``model(*inputs)`` form, rejecting anything else early.

    Raises:
        TypeError: not a tensor nor a non-empty sequence of tensors (a dict, say, would otherwise
            fail deep inside the model with an unrelated message).
        ValueError: an empty batch (it would fail inside the model, blaming a layer).
    """
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple[torch.Tensor, ...] = (example_inputs,)
    elif (
        isinstance(example_inputs, Sequence)
        and len(example_inputs) > 0
        and all(isinstance(x, torch.Tensor) for x in example_inputs)
    ):
        inputs = tuple(example_inputs)
    else:
        got = type(example_inputs).__name__
        if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
            if not example_inputs:
                got = f"an empty {got}"
            strangers = [
                f"[{i}] is {_a(type(x).__name__)}"
                for i, x in enumerate(example_inputs)
                if not isinstance(x, torch.Tensor)
            ]
            if strangers:
                got += f" whose item{'s' if len(strangers) > 1 else ''} {', '.join(strangers[:3])}"
        raise TypeError(
            "example_inputs must be a tensor or a non-empty tuple or list of tensors (the "
            f"model's positional arguments), got {got}"
        )
    for i, x in enumerate(inputs):
        if x.dim() > 0 and x.shape[0] == 0:
            raise ValueError(
                f"example_inputs[{i}] is an empty batch (shape {tuple(x.shape)}); pass at least "
                "one sample (batch 1 is enough)"
            )
    return inputs


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts (model outputs, op arguments)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)
