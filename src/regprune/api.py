"""The one-call API: ``regprune.prune(model, example_inputs, ratio=... | target_macs=...)``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from regprune.allocation import MacsModel, Plan, Target, allocate
from regprune.graph import DependencyGraph, trace_graph
from regprune.graph.tracer import tensors_on_meta
from regprune.importance import Importance, get_importance
from regprune.inputs import as_call_args, call_model, map_tensors
from regprune.metrics import MacsCounter, count
from regprune.modes import eval_mode
from regprune.structures import structure_mismatch
from regprune.surgery import CompensationReport
from regprune.surgery.apply import compensate_cuts, cut_model, kept_components
from regprune.surgery.compensate import (
    InputObserver,
    InputStats,
    check_compensate,
    consumers_that_may_lose_inputs,
)


@dataclass
class PruneResult:
    """What one-shot pruning produced, for users who want more than the model.

    ``phase_s`` is where the call's time went, in seconds: ``trace`` (shapes only, on the meta
    device), ``measure`` (the one forward of the original model: its MACs, its output shapes and
    the compensation's first probe), ``plan``, ``surgery`` (the smaller copy),
    ``compensation`` (the perturbed probe and the fold) and ``check`` (one forward of the
    pruned model).
    """

    model: nn.Module
    plan: Plan
    graph: DependencyGraph
    macs_before: int
    macs_after: int
    compensation: CompensationReport
    phase_s: dict[str, float] = field(default_factory=dict)


def make_plan(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    importance: str | Importance = "l1",
    scope: str = "local",
    ignore: Iterable[nn.Module | str] = (),
    round_to: int | str | None = None,
    max_ratio: float | None = None,
    seed: int = 0,
    scores: dict[int, torch.Tensor] | None = None,
    graph: DependencyGraph | None = None,
    macs_model: MacsModel | None = None,
    attention: str = "heads",
    grouped_conv: str = "channels",
) -> tuple[DependencyGraph, Plan]:
    """Trace, score and allocate: the plan a one-shot prune would apply (nothing is modified).

    ``attention`` is what a channel of a dim split into (heads, head_dim) is: ``"heads"``
    (whole heads, the default) or ``"head_dim"`` (:data:`regprune.graph.ATTENTION_UNITS`);
    ``grouped_conv`` what a grouped conv loses: ``"channels"`` (the same channels inside every
    group, the default) or ``"groups"`` (whole groups); both are ignored when ``graph`` is
    given. ``scores`` overrides the importance criterion (one score
    per channel of every group of ``graph``, which must then be given too). ``graph`` and
    ``macs_model`` reuse a trace and a count already made (:func:`prune_with_result` does, to
    count the model once).
    """
    target = Target(ratio, target_macs, scope, round_to, max_ratio)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if graph is None:
        graph = trace_graph(
            model, example_inputs, ignore=ignore, attention=attention, grouped_conv=grouped_conv
        )
    criterion = get_importance(importance, seed=seed)
    if scores is None:
        scores = criterion(model, graph)
    if target_macs is not None and macs_model is None:
        macs_model = MacsModel(graph, count(model, example_inputs).macs)
    plan = allocate(graph, scores, target, comparable=criterion.comparable, macs_model=macs_model)
    return graph, plan


META_CHECK_MACS = 5e9
"""From this many MACs of the pruned model on, its check runs on the ``meta`` device first
(our choice, measured in docs/engine_speed.md): below, a real forward costs less than the
meta one's overhead (moving every tensor's description to ``meta``, ``functional_call``). Only
for a model whose trace ran on ``meta``: one that needed real values (a detector's NMS) fails
there again, after most of a forward, before the real one."""


def check_runs(model: nn.Module, example_inputs: Any, expected: Any, on_meta: bool = False) -> None:
    """Run the pruned model once; its outputs must have the structure of ``expected`` (the
    original outputs, or the same structure of meta tensors: only shapes are compared).
    ``on_meta`` tries the forward on the meta device first (shapes only, see
    :func:`_output_on_meta`).

    The same containers, keys and lengths, and at every tensor the same dtype and shape, except
    the first dim: a detector returns as many boxes as its weights find, so a pruned detector's
    count may differ (``rows_may_vary``); the pruned width shows in the other dims.

    Raises:
        RuntimeError: the pruned model fails on the example inputs, or its outputs differ in
            structure, naming where (``at [0]['boxes']: shape (3, 5), expected (3, 4)``).
    """
    output = _output_on_meta(model, example_inputs) if on_meta else None
    try:
        if output is None:
            with eval_mode(model), torch.no_grad():
                output = call_model(model, example_inputs)
    except Exception as error:
        raise RuntimeError(
            f"the pruned model fails on the example inputs ({error}); please report this "
            "model, and pass ignore=[...] for the layer named in the error meanwhile"
        ) from error
    problem = structure_mismatch(output, expected, rows_may_vary=True)
    if problem is not None:
        raise RuntimeError(
            f"the pruned model's outputs differ from the original's {problem}; please report "
            "this model, and pass ignore=[...] for the layer that produces that output meanwhile"
        )


def _output_on_meta(model: nn.Module, example_inputs: Any) -> Any | None:
    """The model's output computed on the ``meta`` device (shapes only, no arithmetic), or None
    when its forward cannot run there (values read by Python control flow, an op without a meta
    kernel, or a real error, which the real forward then reports).

    Why: the check after surgery only compares structures and shapes, and a meta forward costs
    the Python of one forward, not its MACs. The model is put back as it was (``eval_mode``
    restores what a forward caches: meta tensors must not stay in the pruned model).
    """
    if any(p.is_meta for p in model.parameters()):
        return None  # a meta model is checked by the plain forward, which is on meta anyway
    call = as_call_args(example_inputs)
    call = map_tensors(lambda x: x.to("meta") if x.is_floating_point() else x, call)
    try:
        with eval_mode(model), torch.no_grad():
            return functional_call(
                model, tensors_on_meta(model), call.args, call.kwargs, tie_weights=False
            )
    except Exception:
        return None


@dataclass
class _OriginalRun:
    """What the one forward of the original model on the example inputs told."""

    macs: int
    outputs: Any  # the output's structure, tensors on the meta device: the check needs no values
    input_stats: dict[str, InputStats] | None


def _run_original(
    model: nn.Module, graph: DependencyGraph, example_inputs: Any, observe_inputs: bool
) -> _OriginalRun:
    """One forward of ``model`` that counts its MACs and, with ``observe_inputs``, collects the
    input statistics of every layer a plan may cut (the compensation's first probe).

    Why one: the count, the compensation's probe of the example inputs and the shapes the check
    compares with all come from the same forward, which used to run three times.
    """
    on_meta = any(p.is_meta for p in model.parameters())
    observer = (
        InputObserver(model, graph, consumers_that_may_lose_inputs(graph))
        if observe_inputs and not on_meta
        else None
    )
    with (
        eval_mode(model),
        torch.no_grad(),
        MacsCounter(model) as counter,
        observer or contextlib.nullcontext(),
    ):
        output = call_model(model, example_inputs)
    return _OriginalRun(
        macs=counter.result().macs,
        outputs=map_tensors(lambda t: t.to("meta"), output),
        input_stats=observer.stats if observer is not None else None,
    )


def prune_with_result(
    model: nn.Module,
    example_inputs: Any,
    *,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
    **kwargs: Any,
) -> PruneResult:
    """Like :func:`prune` but also returns the plan, the graph, the MACs before and after, what
    the compensation of removed channels found, and where the time went.

    The original model runs forward once on the example inputs (its MACs, its output shapes
    and the compensation's first probe), twice with the default compensation (the perturbed
    probe); the pruned model runs once (the check). The pruned model's MACs follow from the plan
    (the property tests check they equal a count of the pruned model).
    """
    if "graph" in kwargs or "macs_model" in kwargs:
        raise TypeError("prune_with_result traces and counts the model itself")
    calibration = list(calibration) if calibration is not None else None
    mode = check_compensate(compensate, bool(calibration))
    phase_s: dict[str, float] = {}
    start = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        phase_s[name] = now - start
        start = now

    graph = trace_graph(
        model,
        example_inputs,
        ignore=kwargs.pop("ignore", ()),
        attention=kwargs.pop("attention", "heads"),
        grouped_conv=kwargs.pop("grouped_conv", "channels"),
    )
    phase("trace")
    original = _run_original(model, graph, example_inputs, observe_inputs=mode != "mean")
    macs_model = MacsModel(graph, original.macs)
    phase("measure")
    graph, plan = make_plan(model, example_inputs, graph=graph, macs_model=macs_model, **kwargs)
    phase("plan")
    pruned, cuts = cut_model(model, graph, plan)
    phase("surgery")
    compensation = compensate_cuts(
        model, pruned, graph, cuts, mode, calibration, first_probe_stats=original.input_stats
    )
    phase("compensation")
    macs_after = round(macs_model.macs(kept_components(graph, plan)))
    on_meta = graph.traced_on_meta and macs_after >= META_CHECK_MACS
    check_runs(pruned, example_inputs, original.outputs, on_meta=on_meta)
    phase("check")
    return PruneResult(
        pruned, plan, graph, round(macs_model.total), macs_after, compensation, phase_s
    )


def prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    importance: str | Importance = "l1",
    scope: str = "local",
    ignore: Iterable[nn.Module | str] = (),
    round_to: int | str | None = None,
    max_ratio: float | None = None,
    seed: int = 0,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
    attention: str = "heads",
    grouped_conv: str = "channels",
) -> nn.Module:
    """One-shot structural pruning of any traceable model.

    Args:
        model: the model to prune; it is left untouched.
        example_inputs: the model's arguments, as ``torch.export`` takes them (batch 1 is
            enough): a tensor for ``model(x)``; a tuple of positional arguments, each a tensor
            or any nesting of lists, tuples and dicts of tensors (``(x, mask)``, or ``([img],)``
            for a torchvision detector, whose one argument is a list of images);
            ``CallArgs(x, mask=m)`` for keyword arguments. A bare list is refused: ``[x]``
            could mean either of the first two. See :mod:`regprune.inputs`.
        ratio: fraction of channels to remove, in [0, 1).
        target_macs: fraction of the MACs to keep, in (0, 1]; met within 1%.
        importance: ``l1``, ``l2``, ``bn_scale``, ``fpgm``, ``random`` or an Importance.
        scope: ``local`` (same ratio in every group) or ``global`` (one ranking).
        ignore: modules (or their names) whose outputs must keep their width.
        round_to: kept widths are multiples of this; ``"auto"``: multiples of 8
            (:data:`regprune.allocation.target.AUTO_MULTIPLE`, the width CPU vector units and
            GPU tensor cores run without padded tails) in groups of 16 channels or more,
            relaxed to wider groups only, then to none, where a MACs target cannot be met
            within 1 % otherwise (:data:`regprune.allocation.target.AUTO_MIN_GROUPS`). An
            integer is kept as given. ``None`` (default): ``"auto"`` with ``target_macs``, 1
            with ``ratio`` (a ratio asks for a number of channels). The methods keep 1: their
            penalty has already chosen which channels go, and aligning widths would remove
            some it left alive.
        max_ratio: no channel group loses more than this fraction of its channels (default
            0.8, :data:`regprune.allocation.target.DEFAULT_MAX_RATIO`; 1.0 for no cap).
        seed: for the random criterion.
        compensate: what removed channels still send is folded into the biases of the layers
            that read them: ``"constant"`` (default, no data) for channels whose output is
            constant, ``"mean"`` for every removed channel's mean over ``calibration`` (mean
            replacement), ``"none"`` / None to drop them as they are.
        calibration: batches (``inputs`` or ``(inputs, targets)``) for ``compensate="mean"``.
        attention: where a channel dim is split into (heads, head_dim), what one removable
            channel is: ``"heads"`` (whole heads; under grouped-query attention a kv head with
            the query heads reading it; the default) or ``"head_dim"`` (one position of every
            head). See docs/transformers.md.
        grouped_conv: what a grouped conv (ResNeXt, RegNet) loses: ``"channels"`` (the same
            channels inside every group, so the group count stays; the default) or
            ``"groups"`` (whole groups). Depthwise convs always lose whole groups, and so does
            a grouped conv whose positions something else couples (GroupNorm over its groups).

    Returns:
        A new, physically smaller ``nn.Module`` whose outputs have the original's structure
        and shapes (a detector's number of boxes may differ: it depends on the weights).

    Example:
        >>> small = regprune.prune(model, torch.randn(1, 3, 32, 32), target_macs=0.5)
    """
    return prune_with_result(
        model,
        example_inputs,
        ratio=ratio,
        target_macs=target_macs,
        importance=importance,
        scope=scope,
        ignore=ignore,
        round_to=round_to,
        max_ratio=max_ratio,
        seed=seed,
        compensate=compensate,
        calibration=calibration,
        attention=attention,
        grouped_conv=grouped_conv,
    ).model
