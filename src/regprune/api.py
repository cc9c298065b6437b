"""The one-call API: ``regprune.prune(model, example_inputs, ratio=... | target_macs=...)``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regprune.allocation import MacsModel, Plan, Target, allocate
from regprune.graph import DependencyGraph, trace_graph
from regprune.importance import Importance, get_importance
from regprune.inputs import as_input_tuple, iter_tensors
from regprune.metrics import count
from regprune.modes import eval_mode
from regprune.surgery import CompensationReport, apply_plan_with_report
from regprune.surgery.apply import kept_components


@dataclass
class PruneResult:
    """What one-shot pruning produced, for users who want more than the model."""

    model: nn.Module
    plan: Plan
    graph: DependencyGraph
    macs_before: int
    macs_after: int
    compensation: CompensationReport


def make_plan(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    importance: str | Importance = "l1",
    scope: str = "local",
    ignore: Iterable[nn.Module | str] = (),
    round_to: int = 1,
    max_ratio: float = 1.0,
    seed: int = 0,
    scores: dict[int, torch.Tensor] | None = None,
    graph: DependencyGraph | None = None,
    macs_model: MacsModel | None = None,
) -> tuple[DependencyGraph, Plan]:
    """Trace, score and allocate: the plan a one-shot prune would apply (nothing is modified).

    ``scores`` overrides the importance criterion (one score per channel of every group of
    ``graph``, which must then be given too). ``graph`` and ``macs_model`` reuse a trace and a
    count already made (:func:`prune_with_result` does, to count the model once).
    """
    target = Target(ratio, target_macs, scope, round_to, max_ratio)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if graph is None:
        graph = trace_graph(model, example_inputs, ignore=ignore)
    criterion = get_importance(importance, seed=seed)
    if scores is None:
        scores = criterion(model, graph)
    if target_macs is not None and macs_model is None:
        macs_model = MacsModel(graph, count(model, example_inputs).macs)
    plan = allocate(graph, scores, target, comparable=criterion.comparable, macs_model=macs_model)
    return graph, plan


def check_runs(model: nn.Module, example_inputs: Any, expected: Any) -> None:
    """Run the pruned model once; its outputs must have the original shapes."""
    try:
        with eval_mode(model), torch.no_grad():
            output = model(*as_input_tuple(example_inputs))
    except Exception as error:
        raise RuntimeError(
            f"the pruned model fails on the example inputs ({error}); please report this "
            "model, and pass ignore=[...] for the layer named in the error meanwhile"
        ) from error
    got = [t.shape for t in _tensors(output)]
    want = [t.shape for t in _tensors(expected)]
    if got != want:
        raise RuntimeError(f"the pruned model's outputs have shapes {got}, expected {want}")


def _tensors(value: Any) -> list[torch.Tensor]:
    return list(iter_tensors(value))


def prune_with_result(
    model: nn.Module,
    example_inputs: Any,
    *,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
    **kwargs: Any,
) -> PruneResult:
    """Like :func:`prune` but also returns the plan, the graph, the MACs before and after and
    what the compensation of removed channels found."""
    if "graph" in kwargs or "macs_model" in kwargs:
        raise TypeError("prune_with_result traces and counts the model itself")
    graph = trace_graph(model, example_inputs, ignore=kwargs.pop("ignore", ()))
    # one count of the model; the pruned model's MACs follow analytically from the plan
    # (the property tests check this equals a count of the pruned model)
    macs_model = MacsModel(graph, count(model, example_inputs).macs)
    graph, plan = make_plan(model, example_inputs, graph=graph, macs_model=macs_model, **kwargs)
    pruned, compensation = apply_plan_with_report(
        model, graph, plan, compensate=compensate, calibration=calibration
    )
    with eval_mode(model), torch.no_grad():
        expected = model(*as_input_tuple(example_inputs))
    check_runs(pruned, example_inputs, expected)
    macs_after = round(macs_model.macs(kept_components(graph, plan)))
    return PruneResult(pruned, plan, graph, round(macs_model.total), macs_after, compensation)


def prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    importance: str | Importance = "l1",
    scope: str = "local",
    ignore: Iterable[nn.Module | str] = (),
    round_to: int = 1,
    max_ratio: float = 1.0,
    seed: int = 0,
    compensate: str | None = "constant",
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """One-shot structural pruning of any traceable model.

    Args:
        model: the model to prune; it is left untouched.
        example_inputs: a tensor or tuple of tensors the model accepts (batch 1 is enough).
        ratio: fraction of channels to remove, in [0, 1).
        target_macs: fraction of the MACs to keep, in (0, 1]; met within 1%.
        importance: ``l1``, ``l2``, ``bn_scale``, ``fpgm``, ``random`` or an Importance.
        scope: ``local`` (same ratio in every group) or ``global`` (one ranking).
        ignore: modules (or their names) whose outputs must keep their width.
        round_to: kept widths are multiples of this.
        max_ratio: no channel group loses more than this fraction of its channels.
        seed: for the random criterion.
        compensate: what removed channels still send is folded into the biases of the layers
            that read them: ``"constant"`` (default, no data) for channels whose output is
            constant, ``"mean"`` for every removed channel's mean over ``calibration`` (mean
            replacement), ``"none"`` / None to drop them as they are.
        calibration: batches (``inputs`` or ``(inputs, targets)``) for ``compensate="mean"``.

    Returns:
        A new, physically smaller ``nn.Module`` with the same output shapes.

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
    ).model
