"""The one way metrics take example inputs: a tensor, or a tuple of tensors passed positionally."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ExampleInputs = torch.Tensor | Sequence[torch.Tensor]


def as_input_tuple(example_inputs: ExampleInputs) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` to ``model(*inputs)`` form, rejecting anything else early.

    Raises:
        TypeError: not a tensor nor a non-empty sequence of tensors (a dict, say, would otherwise
            fail deep inside the model with an unrelated message).
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if (
        isinstance(example_inputs, Sequence)
        and len(example_inputs) > 0
        and all(isinstance(x, torch.Tensor) for x in example_inputs)
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a non-empty tuple of tensors, "
        f"got {type(example_inputs).__name__}"
    )
