"""From a trace to channel groups: the engine's view of what can be removed.

Components of the coupling edges are the removable *channels*; a channel is prunable when it
contains at least one producer output (a conv filter, a linear row) and no locked atom.
Channels with the same set of producing layers form a *group* (one conv's filters; one residual
stream), ordered by their producers' output index, so channel ``k`` of a plain conv's group is
filter ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice, SliceRole
from regprune.graph.ops import ProductRecord
from regprune.graph.tracer import FreeParam, Tracer
from regprune.layers.rules import LayerRecord, is_per_channel_layer


@dataclass
class FreeParamSlicing:
    """How surgery slices one directly used parameter: along ``dim``, by ``component`` index."""

    param: FreeParam
    dim: int
    component: torch.Tensor  # component id of every index along ``dim`` (-1 = untouched)


@dataclass
class Unprunable:
    """Channels kept whole, and why (shown to the user; never silently skipped)."""

    layer: str
    channels: int
    total: int
    reason: str

    def __str__(self) -> str:
        if not self.total:
            return f"{self.layer}: kept whole ({self.reason})"
        return f"{self.layer}: {self.channels}/{self.total} channels kept whole ({self.reason})"


@dataclass
class DependencyGraph:
    """Everything the rest of the engine needs to know about a traced model.

    Attributes:
        groups: the prunable channel groups.
        records: every traced conv / linear / embedding layer, in call order.
        component: component id of every atom.
        group_of_component / channel_of_component: where each component sits (-1 if nowhere).
        free_slicings: how each directly used parameter is sliced.
        unprunable: what was kept whole, and why.
        model_type: the traced model's class name (plans check it before they apply).
        example_inputs: what the model was traced with (surgery probes constant channels with it).
        traced_on_meta: whether the forward ran on the ``meta`` device (False: it needed real
            values, so a meta forward of a pruned copy would fail too and is not tried).
        attention: the removable unit of a channel dim split into (heads, head_dim) in this
            trace (surgery refreshes head counts or head sizes by it).
        products: the products between activations (attention's ``q k^T`` and ``attn v``),
            whose MACs the allocation's MACs model follows.
    """

    groups: list[ChannelGroup]
    records: list[LayerRecord]
    component: torch.Tensor
    group_of_component: torch.Tensor
    channel_of_component: torch.Tensor
    free_slicings: list[FreeParamSlicing]
    unprunable: list[Unprunable] = field(default_factory=list)
    model_type: str = ""
    example_inputs: Any = None
    traced_on_meta: bool = False
    attention: str = "heads"
    products: list[ProductRecord] = field(default_factory=list)

    def group_components(self, group_id: int) -> torch.Tensor:
        """Component id of each channel of a group, in channel order."""
        in_group = torch.nonzero(self.group_of_component == group_id).reshape(-1)
        order = torch.argsort(self.channel_of_component[in_group])
        return in_group[order]

    def describe(self) -> str:
        lines = [f"{len(self.groups)} prunable channel groups:"]
        lines += [f"  {group!r}" for group in self.groups]
        if self.unprunable:
            lines.append("kept whole:")
            lines += [f"  {item}" for item in self.unprunable]
        return "\n".join(lines)


def build_dependency_graph(model: nn.Module, tracer: Tracer) -> DependencyGraph:
    atoms = tracer.atoms
    records = list(tracer.records.values())
    component = atoms.components()
    atoms.check_fixed_dims(component)
    num_components = int(component.max()) + 1 if component.numel() else 0
    reason_of_atom = atoms.reason_of_atoms()
    locked_atoms = reason_of_atom >= 0
    locked = torch.zeros(num_components, dtype=torch.bool)
    locked[component[locked_atoms]] = True
    big = torch.iinfo(torch.long).max
    reason_of = torch.full((num_components,), big, dtype=torch.long)
    reason_of.scatter_reduce_(0, component[locked_atoms], reason_of_atom[locked_atoms], "amin")
    reason_of[reason_of == big] = -1

    slicings = _free_param_slicings(tracer, component, locked, reason_of)

    produced = torch.zeros(num_components, dtype=torch.bool)
    for record in records:
        produced[component[record.out_atoms]] = True
    prunable = produced & ~locked

    group_of, channel_of, groups = _form_groups(records, component, prunable)
    inexact = atoms.inexact_atoms()
    inexact_groups = set(group_of[component[inexact]].tolist()) if inexact.numel() else set()
    graph = DependencyGraph(
        groups=groups,
        records=records,
        component=component,
        group_of_component=group_of,
        channel_of_component=channel_of,
        free_slicings=slicings,
        model_type=type(model).__name__,
        attention=tracer.attention,
        products=tracer.products,
    )
    slices = _all_slices(model, graph, slicings)
    for group in groups:
        group.exact = group.id not in inexact_groups
        group.slices = slices[group.id]
    graph.unprunable = _unprunable(records, component, locked, reason_of, atoms.lock_reasons)
    graph.unprunable += _locked_weights(tracer, component, locked, reason_of, atoms.lock_reasons)
    graph.unprunable += [Unprunable(name, 0, 0, reason) for name, reason in tracer.opaque.items()]
    return graph


def _form_groups(
    records: list[LayerRecord], component: torch.Tensor, prunable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[ChannelGroup]]:
    """Group prunable components by the set of layers producing them (a hashed signature)."""
    num_components = prunable.numel()
    generator = torch.Generator().manual_seed(0)
    signature = torch.zeros(num_components, dtype=torch.long)
    first_atom = torch.full((num_components,), torch.iinfo(torch.long).max, dtype=torch.long)
    producer_names: dict[int, list[str]] = {}
    # every (record, component it produces) pair once, all records in one pass rather than a
    # loop of small tensor ops per record
    empty = torch.zeros(0, dtype=torch.long)
    out_atoms = torch.cat([r.out_atoms for r in records] or [empty])
    out_record = torch.cat(
        [torch.full((r.out_atoms.numel(),), i, dtype=torch.long) for i, r in enumerate(records)]
        or [empty]
    )
    out_component = component[out_atoms]
    pairs = torch.unique(out_record * num_components + out_component)
    pair_record, pair_component = pairs // max(num_components, 1), pairs % max(num_components, 1)
    keys = torch.randint(1, 2**62, (len(records),), generator=generator)
    signature.index_add_(0, pair_component, keys[pair_record])
    first_atom.scatter_reduce_(0, out_component, out_atoms, "amin")
    group_of = torch.full((num_components,), -1, dtype=torch.long)
    channel_of = torch.full((num_components,), -1, dtype=torch.long)
    candidates = torch.nonzero(prunable).reshape(-1)
    groups: list[ChannelGroup] = []
    if candidates.numel() == 0:
        return group_of, channel_of, groups
    unique_signatures, group_index = torch.unique(signature[candidates], return_inverse=True)
    # order groups by their first producer atom, i.e. by where they appear in the model
    group_first = torch.full((unique_signatures.numel(),), torch.iinfo(torch.long).max)
    group_first.scatter_reduce_(0, group_index, first_atom[candidates], "amin")
    group_rank = torch.empty_like(group_first)
    group_rank[torch.argsort(group_first)] = torch.arange(group_first.numel())
    candidate_group = group_rank[group_index]
    group_of[candidates] = candidate_group
    # channels in producer-atom order within each group: all groups in one sort, not a loop
    # that scans every candidate once per group
    order = torch.argsort(first_atom[candidates], stable=True)
    order = order[torch.argsort(candidate_group[order], stable=True)]
    sizes = torch.bincount(candidate_group, minlength=unique_signatures.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_group = candidate_group[order]
    channel_of[candidates[order]] = torch.arange(order.numel()) - starts[sorted_group]
    groups = [ChannelGroup(id=gid, size=int(size)) for gid, size in enumerate(sizes.tolist())]
    pair_group = group_of[pair_component]
    produced = pair_group >= 0
    num_groups = len(groups)
    record_group = torch.unique(pair_record[produced] * num_groups + pair_group[produced])
    for index, gid in zip(
        (record_group // num_groups).tolist(), (record_group % num_groups).tolist(), strict=True
    ):
        # sorted by record: each group's producers in call order
        producer_names.setdefault(gid, []).append(records[index].name)
    for group in groups:
        group.producers = producer_names.get(group.id, [])
    return group_of, channel_of, groups


def _free_param_slicings(
    tracer: Tracer, component: torch.Tensor, locked: torch.Tensor, reason_of: torch.Tensor
) -> list[FreeParamSlicing]:
    """Pick, for every directly used parameter, the one dim its channels run along.

    A parameter can be sliced only if every removable channel touching it occupies whole
    slices along a single dim (a (C,) scale, a (1, L, C) position embedding along C). Channels
    that would cut it any other way are locked here.
    """
    slicings = []
    for param in tracer.free_params.values():
        comps = component[param.atoms]
        if comps.dim() == 0:
            continue
        if comps.dim() == 1:
            # a (C,) parameter (a norm's scale, a BN statistic): its one dim, each entry whole
            if comps.numel() > 1:
                slicings.append(FreeParamSlicing(param, 0, comps.clone()))
            continue
        chosen = None
        for dim in range(comps.dim()):
            if comps.shape[dim] < 2:
                continue
            moved = comps.movedim(dim, 0).reshape(comps.shape[dim], -1)
            pure = (moved == moved[:, :1]).all(dim=1)
            if bool(pure.all()):
                chosen = FreeParamSlicing(param, dim, moved[:, 0].clone())
                break
        if chosen is not None:
            slicings.append(chosen)
            continue
        for dim in range(comps.dim()):
            # channels that would cut the parameter across dims are locked
            moved = comps.movedim(dim, 0).reshape(comps.shape[dim], -1)
            pure = (moved == moved[:, :1]).all(dim=1)
            locked[torch.unique(moved[~pure])] = True
    return slicings


def _all_slices(
    model: nn.Module, graph: DependencyGraph, slicings: list[FreeParamSlicing]
) -> dict[int, list[ParamSlice]]:
    """Every group's parameter slices, in one pass over layers and parameters.

    Every sliced dim's components are looked up at once (our choice: a lookup of small tensor
    ops per parameter dim added up over hundreds of dims); only a dim whose channels span
    several groups (a concatenation's consumer) is split per group."""
    slices: dict[int, list[ParamSlice]] = {g.id: [] for g in graph.groups}
    layer_dims: list[tuple[str, str, int, SliceRole]] = []
    layer_atoms: list[torch.Tensor] = []
    for record in graph.records:
        module = model.get_submodule(record.name)
        rule = record.rule
        layer_dims.append((record.name, rule.weight_name, rule.out_dim, "out"))
        layer_atoms.append(record.out_atoms)
        if rule.bias(module) is not None:
            layer_dims.append((record.name, rule.bias_name, 0, "out"))
            layer_atoms.append(record.out_atoms)
        if record.groups == 1 and record.in_atoms.numel():
            layer_dims.append((record.name, rule.weight_name, rule.in_dim, "in"))
            layer_atoms.append(record.in_atoms)
    param_dims: list[tuple[str, str, int, SliceRole]] = []
    param_components: list[torch.Tensor] = []
    for slicing in slicings:
        param = slicing.param
        if not param.is_parameter:
            continue
        owner = model.get_submodule(param.module) if param.module else model
        role: SliceRole = "norm" if is_per_channel_layer(owner) else "free"
        param_dims.append((param.module, param.attr, slicing.dim, role))
        param_components.append(slicing.component)
    dims = layer_dims + param_dims
    if not dims:
        return slices
    empty = torch.zeros(0, dtype=torch.long)
    atoms = torch.cat(layer_atoms or [empty])
    components = torch.cat(
        [
            torch.where(atoms >= 0, graph.component[atoms.clamp(min=0)], -1),
            *param_components,
        ]
    )
    lengths = [values.numel() for values in layer_atoms + param_components]
    valid = components >= 0
    group = torch.where(valid, graph.group_of_component[components.clamp(min=0)], -1)
    channel = graph.channel_of_component[components.clamp(min=0)]
    # one group per dim (the usual case) when its lowest and highest group agree
    dim_index = torch.repeat_interleave(torch.arange(len(dims)), torch.tensor(lengths))
    big = torch.iinfo(torch.long).max
    low = torch.full((len(dims),), big).scatter_reduce_(0, dim_index, group, "amin")
    high = torch.full((len(dims),), -big).scatter_reduce_(0, dim_index, group, "amax")
    for (module, param, dim, role), gid, top, groups_of, channels in zip(
        dims,
        low.tolist(),
        high.tolist(),
        torch.split(group, lengths),
        torch.split(channel, lengths),
        strict=True,
    ):
        if gid == top:
            if gid >= 0:
                slices[gid].append(ParamSlice(module, param, dim, role, channels))
            continue
        for each in torch.unique(groups_of[groups_of >= 0]).tolist():
            channel_of = torch.where(groups_of == each, channels, -1)
            slices[each].append(ParamSlice(module, param, dim, role, channel_of))
    return slices


def _locked_weights(
    tracer: Tracer,
    component: torch.Tensor,
    locked: torch.Tensor,
    reason_of: torch.Tensor,
    reasons: list[Any],
) -> list[Unprunable]:
    """Weights (2+ dims) used directly in a custom forward that could not be followed.

    A Conv2d subclass calling ``F.conv2d`` itself has no slicing rule: its weight is traced as a
    plain parameter, and when the op locks it the layer must still be listed as kept whole.
    """
    found = []
    for param in tracer.free_params.values():
        if param.atoms.dim() < 2:
            continue
        comps = component[param.atoms.reshape(-1)]
        if bool(locked[comps].all()):
            known = reason_of[comps][reason_of[comps] >= 0]
            text = reasons[int(known[0])].reason if known.numel() else "coupled with a lock"
            channels = int(torch.unique(comps).numel())  # a (1, C, 1, 1) buffer has C channels
            found.append(
                Unprunable(param.module or "<model>", channels, channels, f"{param.attr}: {text}")
            )
    return found


def _unprunable(
    records: list[LayerRecord],
    component: torch.Tensor,
    locked: torch.Tensor,
    reason_of: torch.Tensor,
    reasons: list[Any],
) -> list[Unprunable]:
    found = []
    for record in records:
        comps = component[record.out_atoms]
        is_locked = locked[comps]
        if bool(is_locked.any()):
            reason_ids = reason_of[comps[is_locked]]
            known = reason_ids[reason_ids >= 0]
            if known.numel():
                lock = reasons[int(known[0])]
                text = f"{lock.reason}, at {lock.where}"
            else:
                text = "coupled with a parameter that cannot be sliced"
            found.append(Unprunable(record.name, int(is_locked.sum()), comps.numel(), text))
    return found
