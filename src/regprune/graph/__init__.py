"""Tracing a model and finding its channel groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from regprune.graph.dependency import DependencyGraph, Unprunable, build_dependency_graph
from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.graph.tracer import ATTENTION_UNITS, TraceError, Tracer
from regprune.inputs import as_call_args
from regprune.modes import eval_mode


def resolve_ignore(
    model: nn.Module, ignore: Iterable[nn.Module | str] | nn.Module | str
) -> list[str]:
    """Turn ``ignore`` entries (modules or qualified names) into names, rejecting strangers."""
    if ignore is None:
        return []
    if isinstance(ignore, (str, nn.Module)):
        ignore = [ignore]  # one entry, not a sequence of characters / children
    if not isinstance(ignore, Iterable):
        raise TypeError(
            f"ignore must be a list of modules or module names, got {type(ignore).__name__}"
        )
    names_by_id = {id(m): name for name, m in model.named_modules()}
    all_names = set(names_by_id.values())
    resolved = []
    for entry in ignore:
        if entry is model or entry == "":
            raise ValueError(
                "ignore names the model itself: that would keep every channel; pass its "
                "submodules (e.g. model.fc) or their names, or leave ignore empty"
            )
        if isinstance(entry, nn.Module):
            if id(entry) not in names_by_id:
                raise ValueError(
                    f"ignore entry {type(entry).__name__} is not a submodule of the model being "
                    "pruned; pass modules of this model (e.g. model.fc) or their names"
                )
            resolved.append(names_by_id[id(entry)])
        elif isinstance(entry, str):
            if entry not in all_names:
                close = sorted(n for n in all_names if n and entry.split(".")[-1] in n)[:5]
                top = sorted(n for n in all_names if n and "." not in n)[:8]
                hint = (
                    f"; similar names: {close}"
                    if close
                    else f"; names are those of model.named_modules(), e.g. {top}"
                )
                raise ValueError(f"ignore entry '{entry}' names no submodule of the model{hint}")
            resolved.append(entry)
        else:
            raise TypeError(f"ignore entries must be modules or names, got {type(entry).__name__}")
    return resolved


def trace_graph(
    model: nn.Module,
    example_inputs: Any,
    ignore: Iterable[nn.Module | str] = (),
    on_meta: bool = True,
    attention: str = "heads",
    grouped_conv: str = "channels",
) -> DependencyGraph:
    """Trace ``model`` once on ``example_inputs`` and return its channel groups.

    ``example_inputs`` are the model's arguments as :mod:`regprune.inputs` describes: a tensor,
    a tuple of positional arguments of any nesting (``([img],)`` for a torchvision detector) or a
    :class:`~regprune.inputs.CallArgs`.

    The model is traced in eval mode (so BatchNorm uses running statistics and dropout is off)
    and put back exactly as it was: its mode, and every attribute its forward cached (a
    detection head's anchors, a rotary table, a stored input shape), are restored after each
    attempt; its parameters are not modified. By default the forward runs on the ``meta`` device
    (shapes only, no arithmetic); a model whose forward needs real values (data-dependent
    control flow, an op without a meta kernel) is traced for real.

    ``attention`` is the removable unit where a channel dim is reshaped into (heads,
    head_dim): ``"heads"`` or ``"head_dim"`` (:data:`~regprune.graph.tracer.ATTENTION_UNITS`).
    ``grouped_conv`` is the removable unit of a grouped conv: ``"channels"`` (the same channels
    inside every group) or ``"groups"`` (whole groups); depthwise convs always lose whole groups
    (:data:`~regprune.graph.tracer.GROUPED_CONV_UNITS`).
    """
    ignored = resolve_ignore(model, ignore)
    as_call_args(example_inputs)  # reject bad inputs before anything touches the model
    if on_meta:
        try:
            graph = _trace_once(model, example_inputs, ignored, True, attention, grouped_conv)
        except (TraceError, NotImplementedError, RuntimeError):
            graph = None  # fall back to a real forward, which also gives the real error
        if graph is not None:
            return graph
    return _trace_once(model, example_inputs, ignored, False, attention, grouped_conv)


def _trace_once(
    model: nn.Module,
    example_inputs: Any,
    ignored: list[str],
    on_meta: bool,
    attention: str,
    grouped_conv: str,
) -> DependencyGraph:
    """One traced forward, the model restored after it: a meta attempt that fails after caching
    meta tensors in the model must not hand them to the real attempt (a head that caches its
    grid per input shape would find the shape unchanged and reuse a meta grid)."""
    whole: frozenset[str] = frozenset()
    while True:
        with eval_mode(model):
            tracer = Tracer(
                model,
                ignored,
                on_meta=on_meta,
                attention=attention,
                grouped_conv=grouped_conv,
                whole_groups=whole,
            )
            tracer.run(example_inputs)
            graph = build_dependency_graph(model, tracer)
        collapsed = _collapsed_inside_groups(graph)
        if not collapsed:
            break
        whole |= collapsed  # retrace with them by whole groups; each round adds one at least
    graph.example_inputs = example_inputs
    graph.traced_on_meta = on_meta
    return graph


def _collapsed_inside_groups(graph: DependencyGraph) -> frozenset[str]:
    """Grouped convs whose positions inside a group all ended up one channel.

    Channels removed inside every group couple position ``i`` of every group; when something
    else couples the positions of one group with each other (GroupNorm over the same blocks, as
    in ResNeXt-GN, where a group of the norm is a group of the conv), nothing is left to
    remove, while whole groups would be free: such a conv is traced again by whole groups.
    """
    collapsed = set()
    for record in graph.records:
        if not record.inside_groups:
            continue
        for atoms in (record.in_atoms, record.out_atoms):
            first = atoms.reshape(record.groups, -1)[0]
            first = first[first >= 0]
            if first.numel() > 1 and graph.component[first].unique().numel() == 1:
                collapsed.add(record.name)
    return frozenset(collapsed)


__all__ = [
    "ATTENTION_UNITS",
    "ChannelGroup",
    "DependencyGraph",
    "ParamSlice",
    "TraceError",
    "Unprunable",
    "trace_graph",
]
