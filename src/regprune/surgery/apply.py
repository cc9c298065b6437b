"""Apply a Plan: build a new, physically smaller model with sliced parameters and buffers."""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from regprune.layers.hf_config import refresh_hf_config
from regprune.layers.rules import (
    LayerRecord,
    refresh_attributes,
    refresh_head_sizes,
    refresh_widths,
)
from regprune.surgery.compensate import (
    CONSTANT_RTOL,
    CompensationReport,
    InputStats,
    check_compensate,
    fold_removed_inputs,
    measure_inputs,
    probe_inputs,
)

if TYPE_CHECKING:
    from regprune.allocation.plan import Plan
    from regprune.graph.dependency import DependencyGraph


class PlanError(ValueError):
    """A plan that does not fit the graph it is applied with."""


def kept_components(graph: DependencyGraph, plan: Plan) -> torch.Tensor:
    """Boolean per component: False for the components the plan removes."""
    if plan.model_type and plan.model_type != graph.model_type:
        raise PlanError(
            f"the plan was made for a {plan.model_type}, not a {graph.model_type}; "
            "make a plan from this model's own graph"
        )
    num_components = graph.group_of_component.numel()
    keep = torch.ones(num_components, dtype=torch.bool)
    for gid, channels in plan.drop.items():
        if gid < 0 or gid >= len(graph.groups):
            raise PlanError(f"plan names group {gid}, but the graph has {len(graph.groups)} groups")
        size = graph.groups[gid].size
        if plan.group_sizes and plan.group_sizes.get(gid) != size:
            raise PlanError(
                f"group {gid} has {size} channels here but {plan.group_sizes.get(gid)} in the plan"
            )
        index = torch.as_tensor(channels, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise PlanError(f"group {gid} has channels 0..{size - 1}; the plan drops {channels}")
        if index.numel() >= size:
            raise PlanError(f"the plan drops all {size} channels of group {gid}; keep at least one")
        keep[graph.group_components(gid)[index]] = False
    return keep


def atoms_kept(graph: DependencyGraph, keep: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Per atom: kept? Positions without an atom (-1) are always kept."""
    return (atoms < 0) | keep[graph.component[atoms.clamp(min=0)]]


def _copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree whose parameters and buffers are still the model's own.

    Why: a plain ``deepcopy`` copies every weight only for surgery to replace most of them with
    sliced ones, so the peak held the model twice plus the pruned model (2.3x a forward pass
    on VGG-16). Sharing first, slicing into new tensors, then copying only what was left whole
    (:func:`_own_the_rest`) holds the model once plus the pruned model.
    """
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


def _own_the_rest(original: nn.Module, pruned: nn.Module) -> None:
    """Give ``pruned`` its own copy of every tensor that surgery left shared with ``original``.

    Surgery never writes into a tensor (slices are new tensors), so the caller's model stays
    untouched either way; this makes the two models independent for training afterwards.
    Tensors tied in the original get one copy, so they stay tied.
    """
    shared = {id(t) for t in itertools.chain(original.parameters(), original.buffers())}
    copies: dict[int, object] = {}
    for module in pruned.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None and id(tensor) in shared:
                    store[name] = copy.deepcopy(tensor, copies)


def apply_plan(
    model: nn.Module,
    graph: DependencyGraph,
    plan: Plan,
    *,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Return a pruned deep copy of ``model``; ``model`` itself is not modified.

    Args:
        compensate: ``"constant"`` (default) folds removed channels whose output is constant
            into the biases of the layers that read them, so that removing a silenced channel
            changes nothing; ``"mean"`` folds every removed channel's mean over
            ``calibration``; ``"none"`` (or None) drops them as they are.
            See :mod:`regprune.surgery.compensate`.
        calibration: batches for ``compensate="mean"``: input tensors, or ``(inputs, targets)``
            pairs as a training loader yields them (``inputs`` a tensor, or a tuple of the
            model's positional tensors).
    """
    return apply_plan_with_report(
        model, graph, plan, compensate=compensate, calibration=calibration
    )[0]


def apply_plan_with_report(
    model: nn.Module,
    graph: DependencyGraph,
    plan: Plan,
    *,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
) -> tuple[nn.Module, CompensationReport]:
    """:func:`apply_plan`, also returning what the compensation found and folded."""
    calibration = list(calibration) if calibration is not None else None
    mode = check_compensate(compensate, bool(calibration))
    pruned, cuts = cut_model(model, graph, plan)
    report = compensate_cuts(model, pruned, graph, cuts, mode, calibration)
    return pruned, report


def compensate_cuts(
    model: nn.Module,
    pruned: nn.Module,
    graph: DependencyGraph,
    cuts: Cuts,
    mode: str,
    calibration: list[Any] | None = None,
    first_probe_stats: dict[str, InputStats] | None = None,
) -> CompensationReport:
    """Measure what the cut inputs carry in ``model`` and fold it into ``pruned`` (in place).

    Args:
        mode: a value :func:`~regprune.surgery.compensate.check_compensate` accepted.
        calibration: the batches of ``mode="mean"``.
        first_probe_stats: input statistics of (at least) every cut layer, already collected on
            the first probe batch, the example inputs (:class:`InputObserver`), so that only the
            perturbed probe runs here. Why: :func:`regprune.prune` runs the model on the example
            inputs anyway, to count its MACs. Ignored for ``mode="mean"``, which measures the
            calibration batches.
    """
    if any(p.is_meta for p in model.parameters()):
        # a meta model has shapes, no values: there is nothing to measure or fold
        report = CompensationReport(mode)
        report.not_foldable.append("the model is on the meta device (no values to fold)")
        return report
    if mode == "mean":
        batches, first_probe_stats = calibration, None
    elif graph.example_inputs is not None:
        batches = probe_inputs(graph.example_inputs)
        if first_probe_stats is not None:
            batches = batches[1:]
    else:
        raise PlanError(
            "compensate='constant' needs the example inputs the graph was traced with; "
            "trace with regprune.graph.trace_graph or pass compensate=None"
        )
    if not cuts:
        return CompensationReport(mode)
    if first_probe_stats is not None and not set(cuts) <= set(first_probe_stats):
        missing = sorted(set(cuts) - set(first_probe_stats))
        raise ValueError(f"first_probe_stats lacks cut layers {missing[:3]}")
    if (
        mode == "constant"
        and first_probe_stats is not None
        and not _any_constant(cuts, first_probe_stats)
    ):
        # a second batch widens every range, the kept channels' too, so a dropped input's
        # range relative to theirs can shrink, but not tenfold from one perturbed batch (our
        # margin): what varies this much on the example inputs is not constant, and the
        # perturbed probe (one more forward of the original) could fold nothing
        stats = {name: first_probe_stats[name] for name in cuts}
    else:
        stats = measure_inputs(model, graph, cuts, batches, first_probe_stats)
    return fold_removed_inputs(model, pruned, graph, cuts, mode, stats)


def _any_constant(cuts: Cuts, stats: dict[str, InputStats]) -> bool:
    """Whether any dropped input could be a constant worth folding by ``stats`` of the example
    inputs alone: its range within ten times ``CONSTANT_RTOL`` of the kept inputs' median
    range, and its values not all within that much of 0.

    An input that stays that close to 0 (a ReLU channel that is off, or nearly, for this image:
    common at batch 1 in late stages) folds next to nothing whether or not it is constant, so
    it does not call for the perturbed probe."""
    for name, (drop, _) in cuts.items():
        entry = stats[name]
        if entry.total is None or entry.low is None or entry.high is None:
            return True  # not seen: let the full measurement say
        low, high = entry.low.cpu(), entry.high.cpu()
        tolerance = 10 * CONSTANT_RTOL * entry.kept_scale(drop)
        flat = high - low <= tolerance
        away_from_zero = torch.maximum(low.abs(), high.abs()) > tolerance
        if bool((flat & away_from_zero)[drop].any()):
            return True
    return False


Cuts = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per layer that loses some of its inputs: (dropped inputs, kept outputs) masks."""


def inputs_cut(
    record: LayerRecord, keep_in: torch.Tensor, keep_out: torch.Tensor
) -> torch.Tensor | None:
    """The inputs a layer loses while outputs that read them stay (what compensation folds),
    None if there are none. A grouped conv that loses whole groups loses their inputs with
    the outputs that read them: nothing is left to fold into."""
    dropped = ~keep_in
    if record.groups > 1 and dropped.numel():
        alive = keep_out.reshape(record.groups, -1).any(1, keepdim=True)
        dropped = (dropped.reshape(record.groups, -1) & alive).reshape(-1)
    if not dropped.numel() or not bool(dropped.any()) or not bool(keep_in.any()):
        return None
    return dropped


def cut_model(model: nn.Module, graph: DependencyGraph, plan: Plan) -> tuple[nn.Module, Cuts]:
    """The physically smaller copy (no compensation), and where layers lost inputs."""
    keep = kept_components(graph, plan)
    pruned = _copy_sharing_tensors(model)
    touched: dict[str, nn.Module] = {}
    cuts: Cuts = {}
    sliced: set[str] = set()
    for record in graph.records:
        module = pruned.get_submodule(record.name)
        keep_in = atoms_kept(graph, keep, record.in_atoms)
        keep_out = atoms_kept(graph, keep, record.out_atoms)
        if bool(keep_in.all()) and bool(keep_out.all()):
            continue
        dropped = inputs_cut(record, keep_in, keep_out)
        if dropped is not None:
            cuts[record.name] = (dropped, keep_out)
        record.rule.slice_(module, keep_in, keep_out)
        sliced.add(record.name)
    kept_indices: dict[bytes, torch.Tensor | None] = {}
    for slicing in graph.free_slicings:
        # a norm's scale, shift and statistics index the same channels: one lookup for all
        key = slicing.component.numpy().tobytes()
        if key not in kept_indices:
            kept = (slicing.component < 0) | keep[slicing.component.clamp(min=0)]
            kept_indices[key] = None if bool(kept.all()) else torch.nonzero(kept).reshape(-1)
        kept_index = kept_indices[key]
        if kept_index is None:
            continue
        owner_name = slicing.param.module
        owner = pruned.get_submodule(owner_name) if owner_name else pruned
        old = getattr(owner, slicing.param.attr)
        new = old.detach().index_select(slicing.dim, kept_index.to(old.device))
        if isinstance(old, nn.Parameter):
            setattr(owner, slicing.param.attr, nn.Parameter(new, old.requires_grad))
        else:
            owner._buffers[slicing.param.attr] = new
        touched[owner_name] = owner
    for owner in touched.values():
        refresh_attributes(owner)
    _refresh_sizes_read_by_forward(model, pruned, sliced, graph.attention)
    _own_the_rest(model, pruned)
    _retie(model, pruned)
    return pruned, cuts


def _refresh_sizes_read_by_forward(
    model: nn.Module, pruned: nn.Module, sliced: set[str], unit: str
) -> None:
    """Head counts and widths that forwards and configs state as numbers follow the slicing.

    An attention module holding a sliced projection gets its head attributes refreshed (the
    rule table's :func:`~regprune.layers.rules.refresh_head_sizes`); a Hugging Face model gets
    its ``config`` refreshed so that ``save_pretrained`` / ``from_pretrained`` rebuild it, with
    a warning naming what the config cannot state (per-layer counts, a head size BERT derives
    from ``hidden_size``): such a model saves with :func:`regprune.surgery.save_pruned`.
    """
    if not sliced:
        return
    parents = {name.rpartition(".")[0] for name in sliced}
    for name in sorted(parents):
        refresh_head_sizes(pruned.get_submodule(name), unit)
    refresh_widths(pruned)
    problems = refresh_hf_config(model, pruned, unit)
    if problems:
        warnings.warn(
            f"the pruned {type(pruned).__name__}'s config cannot state its new sizes, so "
            "from_pretrained would not rebuild it from save_pretrained: "
            + "; ".join(problems)
            + ". Sizes that differ between layers: prune with scope='local' and a ratio (the "
            "same count in every layer); a head size the config derives from hidden_size "
            "(BERT, GPT-2): keep the heads and the residual width whole (ignore= the q/k/v "
            "projections and the token embedding). Or save "
            "with regprune.surgery.save_pruned / load_pruned",
            stacklevel=3,
        )


def _retie(original: nn.Module, pruned: nn.Module) -> None:
    """Weights tied in the original are one tensor again (they were sliced alike)."""
    first: dict[int, str] = {}
    for name, param in original.named_parameters(remove_duplicate=False):
        if id(param) not in first:
            first[id(param)] = name
            continue
        source = pruned.get_parameter(first[id(param)])
        module_name, _, attr = name.rpartition(".")
        owner = pruned.get_submodule(module_name) if module_name else pruned
        if getattr(owner, attr).shape != source.shape:
            raise PlanError(f"tied weights {first[id(param)]} and {name} were cut differently")
        setattr(owner, attr, source)


def zero_channels(model: nn.Module, graph: DependencyGraph, plan: Plan) -> nn.Module:
    """Return a copy of ``model`` whose planned channels are zeroed instead of removed.

    Every parameter and buffer entry that belongs to a dropped channel (producer filters and
    biases, BN/LN/GN parameters and statistics, layer scales ...) is set to zero, so the channel
    outputs exactly zero. For an exact group the pruned model must then compute the same
    function: this is the reference the exactness tests compare surgery against.
    """
    keep = kept_components(graph, plan)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for record in graph.records:
            drop_out = ~atoms_kept(graph, keep, record.out_atoms)
            if not bool(drop_out.any()):
                continue
            module = zeroed.get_submodule(record.name)
            weight = record.rule.weight(module).movedim(record.rule.out_dim, 0)
            weight[drop_out.to(weight.device)] = 0
            bias = record.rule.bias(module)
            if bias is not None:
                bias[drop_out.to(bias.device)] = 0
        for slicing in graph.free_slicings:
            dropped = (slicing.component >= 0) & ~keep[slicing.component.clamp(min=0)]
            if not bool(dropped.any()):
                continue
            owner = zeroed.get_submodule(slicing.param.module) if slicing.param.module else zeroed
            tensor = getattr(owner, slicing.param.attr).movedim(slicing.dim, 0)
            if tensor.is_floating_point():
                tensor[dropped.to(tensor.device)] = 0
    return zeroed


def silence_channels(model: nn.Module, graph: DependencyGraph, plan: Plan) -> nn.Module:
    """Return a copy of ``model`` whose planned channels output a constant instead of a signal.

    The producers' weights of every dropped channel are zeroed, their biases and every norm
    parameter kept: what a finished slimming leaves behind (gamma ~0, beta alive). The reference
    of the exactness contract's second clause: removing these channels with compensation must
    leave the outputs unchanged (:mod:`regprune.surgery.compensate`).
    """
    keep = kept_components(graph, plan)
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        for record in graph.records:
            drop_out = ~atoms_kept(graph, keep, record.out_atoms)
            if bool(drop_out.any()):
                weight = record.rule.weight(silenced.get_submodule(record.name))
                weight.movedim(record.rule.out_dim, 0)[drop_out.to(weight.device)] = 0
    return silenced
