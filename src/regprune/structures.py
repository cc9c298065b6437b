"""Compare model outputs of any structure: a tensor, a tuple of maps, a dict of heads, a list of
per-image detection dicts, a list of flows.

Why one module: every place that checks a pruned model against the original (the API's run
check, the exactness tests, compensation checks) must agree on what "the same outputs" means,
and comparing only the first tensor, or the tensors in whatever order a walk finds them, lets a
missing head or a swapped dict entry through. Structures are read with torch's pytree utilities,
so anything ``torch.export`` can flatten is compared the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn


def flatten_with_paths(value: Any) -> list[tuple[str, Any]]:
    """Every leaf of ``value`` with its path, e.g. ``("[0]['boxes']", tensor)``, in pytree
    order."""
    leaves, _ = pytree.tree_flatten_with_path(value)
    return [(pytree.keystr(path), leaf) for path, leaf in leaves]


def structure_mismatch(got: Any, want: Any, *, rows_may_vary: bool = False) -> str | None:
    """Why ``got`` does not have ``want``'s structure, or None if it does.

    The same containers with the same keys and lengths, and at every leaf a tensor of the same
    dtype and shape (or, for a non-tensor leaf, a value of the same type: a count of detections
    may change with the weights).

    Args:
        got: the outputs to check (a pruned model's).
        want: the reference outputs (the original model's).
        rows_may_vary: let the first dim of tensors differ: a detector's number of boxes depends
            on its weights, so a pruned detector returns as many rows as it finds. Rank, dtype
            and every other dim must still match.

    Returns:
        A message naming the first difference and where it is (``[0]['boxes']``), or None.

    Example:
        >>> structure_mismatch([{"boxes": torch.zeros(3, 4)}], [{"boxes": torch.zeros(5, 4)}])
        "at [0]['boxes']: shape (3, 4), expected (5, 4)"
    """
    want_leaves, want_spec = pytree.tree_flatten(want)
    got_spec = pytree.tree_structure(got)
    if got_spec != want_spec:
        return _spec_difference(got_spec, want_spec, "")
    for (path, g), w in zip(flatten_with_paths(got), want_leaves, strict=True):
        where = f"at {path or 'the output'}"
        if isinstance(w, torch.Tensor):
            if not isinstance(g, torch.Tensor):
                return f"{where}: {with_article(type(g).__name__)}, expected a tensor"
            if g.dtype != w.dtype:
                return f"{where}: dtype {g.dtype}, expected {w.dtype}"
            same = (
                g.shape[1:] == w.shape[1:] and g.dim() == w.dim()
                if rows_may_vary
                else g.shape == w.shape
            )
            if not same:
                return f"{where}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        elif type(g) is not type(w):
            got_type, want_type = type(g).__name__, type(w).__name__
            return f"{where}: {with_article(got_type)}, expected {with_article(want_type)}"
    return None


def value_mismatch(got: Any, want: Any, *, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """Why ``got`` is not ``want`` within tolerance, leaf by leaf, or None if it is.

    Structures and shapes must match exactly (see :func:`structure_mismatch`); tensors must be
    close as in :func:`torch.allclose` (NaNs in the same places count as equal); other leaves
    must be equal.

    Returns:
        A message naming the first leaf that differs, where it is and by how much, or None.
    """
    problem = structure_mismatch(got, want)
    if problem is not None:
        return problem
    for (path, g), w in zip(flatten_with_paths(got), pytree.tree_leaves(want), strict=True):
        where = f"at {path or 'the output'}"
        if isinstance(g, torch.Tensor):
            if not torch.allclose(g, w, atol=atol, rtol=rtol, equal_nan=True):
                if g.is_floating_point() or g.is_complex():
                    diff = float((g - w).abs().nan_to_num(nan=torch.inf).max())
                    return f"{where}: max abs difference {diff:.3g} (atol {atol}, rtol {rtol})"
                return f"{where}: {int((g != w).sum())} of {g.numel()} values differ"
        elif g != w:
            return f"{where}: {g!r}, expected {w!r}"
    return None


@contextlib.contextmanager
def recorded_outputs(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, list[Any]]]:
    """Record what the named submodules return while the caller runs ``model``: name -> one
    output per call (a head shared across pyramid levels is called once per level).

    Why: a detector's final outputs pass through score thresholds, top-k and NMS, so two models
    that compute the same features up to rounding may still return different boxes; the
    outputs of its backbone and of its heads' raw predictions come before any of that and can
    be compared with :func:`value_mismatch`. Hooks are removed on exit.

    Example:
        >>> with recorded_outputs(detector, ["backbone", "rpn.head"]) as outputs:
        ...     detector([image])
        >>> outputs["rpn.head"][0]  # (objectness per level, box deltas per level)
    """
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    handles = []
    try:
        for name in outputs:
            handles.append(
                model.get_submodule(name).register_forward_hook(
                    lambda module, args, output, calls=outputs[name]: calls.append(output)
                )
            )
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replayed_outputs(model: nn.Module, outputs: dict[str, list[Any]]) -> Iterator[None]:
    """Make the named submodules return ``outputs`` (as :func:`recorded_outputs` recorded them,
    one per call, in order) instead of what they compute, while the caller runs ``model``.

    Why: a two-stage detector's second stage runs on the proposals the first one selects by
    top-k and NMS, so a change in the last bit of an objectness score may hand it other
    proposals. Replaying another model's proposals (``{"rpn": ...}``) compares both second
    stages on the same ones. The submodules still run (whatever they record is recorded);
    only their results are replaced. Hooks are removed on exit.

    Raises:
        RuntimeError: a submodule is called more often than it was recorded.
    """
    handles = []

    def replay(calls: list[Any], name: str) -> Any:
        remaining = iter(calls)

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            try:
                return next(remaining)
            except StopIteration:
                raise RuntimeError(
                    f"{name} was called more than the {len(calls)} times recorded"
                ) from None

        return hook

    try:
        for name, calls in outputs.items():
            handles.append(model.get_submodule(name).register_forward_hook(replay(calls, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _spec_difference(got: pytree.TreeSpec, want: pytree.TreeSpec, path: str) -> str:
    where = f"at {path or 'the output'}"
    if got.is_leaf() or want.is_leaf() or got.type is not want.type:
        return f"{where}: {_describe(got)}, expected {_describe(want)}"
    if got.context != want.context:
        return f"{where}: keys {_keys(got)}, expected {_keys(want)}"
    if got.num_children != want.num_children:
        return f"{where}: {_describe(got)}, expected {want.num_children}"
    for step, g, w in zip(_steps(want), got.children(), want.children(), strict=True):
        if g != w:
            return _spec_difference(g, w, path + step)
    return f"{where}: {got}, expected {want}"  # specs differ in a way not named above


def _steps(spec: pytree.TreeSpec) -> list[str]:
    """How each child's path extends its parent's, spelled as :func:`pytree.keystr` spells it."""
    fields = getattr(spec.context, "_fields", None)
    if fields is not None:  # a namedtuple: its class is the context
        return [f".{field}" for field in fields]
    if isinstance(spec.context, list):  # dict keys
        return [f"[{key!r}]" for key in spec.context]
    return [f"[{i}]" for i in range(spec.num_children)]


def _describe(spec: pytree.TreeSpec) -> str:
    if spec.is_leaf():
        return "a leaf"
    name = (spec.context if hasattr(spec.context, "_fields") else spec.type).__name__
    n = spec.num_children
    return f"{with_article(name)} of {n} item{'' if n == 1 else 's'}"


def _keys(spec: pytree.TreeSpec) -> list[Any]:
    return list(spec.context) if isinstance(spec.context, list) else [spec.context]


def with_article(noun: str) -> str:
    """``"a list"``, ``"an int"``: type names in messages."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
