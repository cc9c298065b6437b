"""The one way regprune takes example inputs: the model's arguments, as ``torch.export`` takes them.

- a tensor is the model's one argument: ``model(x)``;
- a tuple holds the model's positional arguments, each a tensor or any nesting of lists, tuples
  and dicts of tensors: ``(x, mask)``, or ``([img],)`` for a torchvision detector, whose first
  argument is a list of images;
- :class:`CallArgs` adds keyword arguments: ``CallArgs(x, attention_mask=m)``.

A bare list is refused, naming both fixes: ``[x, y]`` (the arguments, which regprune took it for
before) and ``[img]`` (a detector's one argument) are written alike, and a wrong guess fails deep
inside the model with a message about some layer. Nesting is read with torch's pytree utilities,
so a structure torch.export understands (namedtuples, OrderedDicts, registered output classes)
is understood here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from regprune.structures import with_article

_CONSTANT_LEAVES = (bool, int, float, type(None))
"""Non-tensor values a model may take as arguments (a flag, a step count, ``targets=None``)."""


class CallArgs:
    """Positional and keyword example inputs: ``CallArgs(x, mask=m)`` means ``model(x, mask=m)``.

    Why a class and not a ``(args, kwargs)`` pair: a model may well take a tuple and a dict as its
    two positional arguments, so a pair could not say which was meant.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __repr__(self) -> str:
        items = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"CallArgs({', '.join(items)})"


pytree.register_pytree_node(
    CallArgs,
    lambda call: ((call.args, call.kwargs), None),
    lambda children, _: CallArgs(*children[0], **children[1]),
    serialized_type_name="regprune.inputs.CallArgs",
)

ExampleInputs = torch.Tensor | tuple[Any, ...] | CallArgs


def as_call_args(example_inputs: Any) -> CallArgs:
    """Normalise ``example_inputs`` to a :class:`CallArgs`, rejecting anything else early.

    Raises:
        TypeError: not a tensor, a non-empty tuple or a CallArgs (a bare list, a dict, a set, a
            string), or a value inside that is neither a tensor nor a list, tuple, dict, number
            or None; it would otherwise fail deep inside the model with an unrelated message.
        ValueError: an empty batch (it would fail inside the model, blaming a layer).
    """
    if isinstance(example_inputs, torch.Tensor):
        call = CallArgs(example_inputs)
    elif isinstance(example_inputs, CallArgs):
        call = example_inputs
    elif isinstance(example_inputs, tuple) and example_inputs:
        call = CallArgs(*example_inputs)
    else:
        raise TypeError(_refusal(example_inputs))
    named = [(f"example_inputs[{i}]", arg) for i, arg in enumerate(call.args)]
    named += [(f"example_inputs keyword '{k}'", v) for k, v in call.kwargs.items()]
    if not named:
        raise TypeError(_refusal(()))
    found_tensor = False
    for name, value in named:
        for path, leaf in pytree.tree_flatten_with_path(value)[0]:
            if isinstance(leaf, torch.Tensor):
                found_tensor = True
            elif not isinstance(leaf, _CONSTANT_LEAVES):
                what = with_article(type(leaf).__name__)
                raise TypeError(
                    f"{_ALLOWED}, got {name}{pytree.keystr(path)} = {what}{_hint(leaf)}"
                )
        _refuse_empty_batch(name, value)
    if not found_tensor:
        raise TypeError(f"{_ALLOWED}, got arguments that hold no tensor: {call!r}")
    return call


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """The positional arguments of ``example_inputs``, validated: call ``model(*inputs)``.

    Raises as :func:`as_call_args` does, and TypeError for keyword inputs, which a caller of
    ``model(*inputs)`` would silently drop (:func:`call_model` passes them).
    """
    call = as_call_args(example_inputs)
    if call.kwargs:
        raise TypeError(
            f"example_inputs has keyword arguments {sorted(call.kwargs)}, which this function "
            "does not pass to the model yet; pass them positionally in a tuple, or report this"
        )
    return call.args


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Run ``model`` on ``example_inputs`` (validated), positional and keyword arguments alike."""
    call = as_call_args(example_inputs)
    return model(*call.args, **call.kwargs)


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it and the structure kept (moving
    inputs to a device, to meta, perturbing them)."""
    return pytree.tree_map_only(torch.Tensor, fn, value)


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a nesting of tuples, lists, dicts and other pytree nodes (model
    outputs, op arguments), in pytree order."""
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            yield leaf


_ALLOWED = (
    "example_inputs must be a tensor or a non-empty tuple of the model's positional arguments "
    "(each a tensor, or lists, tuples and dicts of tensors; CallArgs(*args, **kwargs) for "
    "keyword arguments)"
)


def _refusal(example_inputs: Any) -> str:
    got = with_article(type(example_inputs).__name__)
    if isinstance(example_inputs, list):
        if not example_inputs:
            return f"{_ALLOWED}, got an empty list"
        strangers = [
            f"[{i}] is {with_article(type(x).__name__)}"
            for i, x in enumerate(example_inputs)
            if not isinstance(x, torch.Tensor)
        ]
        whose = f" whose item{'s' if len(strangers) > 1 else ''} {', '.join(strangers[:3])}"
        return (
            f"{_ALLOWED}, got list{whose if strangers else ''}; a list is ambiguous, so write a "
            "tuple: (x, y) if its items are the model's arguments, or ([img, ...],) if the "
            "model takes the list itself as its first argument (a torchvision detector does)"
        )
    if isinstance(example_inputs, dict):
        return (
            f"{_ALLOWED}, got a dict; pass ({{...}},) if the model takes the dict as its first "
            "argument, or CallArgs(**inputs) if its keys are the model's keyword arguments"
        )
    if isinstance(example_inputs, tuple) and not example_inputs:
        return f"{_ALLOWED}, got an empty tuple"
    return f"{_ALLOWED}, got {got}{_hint(example_inputs)}"


def _hint(value: Any) -> str:
    if isinstance(value, (set, frozenset)):
        return " (a set has no order, so the model could not tell its items apart: use a tuple)"
    if type(value).__module__ == "numpy":
        return " (convert it with torch.from_numpy)"
    if isinstance(value, (str, bytes)):
        return f" ({value!r:.40}: models take tensors; tokenize text first)"
    return ""


def _refuse_empty_batch(name: str, value: Any) -> None:
    """A top-level argument is batch-first; nested tensors are not (a detector's target boxes
    may well be ``(0, 4)``), so only the arguments themselves are checked."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == 0:
            raise ValueError(
                f"{name} is an empty batch (shape {tuple(value.shape)}); pass at least one "
                "sample (batch 1 is enough)"
            )
    elif isinstance(value, (list, tuple, dict)) and not value:
        raise ValueError(
            f"{name} is an empty {type(value).__name__}, an empty batch; pass at least one "
            "sample (([img],) for a model that takes a list of images)"
        )
