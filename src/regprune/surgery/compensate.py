"""Lossless removal: fold what the removed channels still send into the layers that read them.

Why: a channel that a regularizer silenced is rarely zero. Slimming and MaskSparsity drive the BN
scale gamma to ~0 but leave the shift beta, so the channel emits the constant ``act(beta)``;
dropping the channel drops that constant from every layer that reads it, and on ResNet-20 that
alone cost 35 points of accuracy right after pruning. A consumer ``y = W x + b`` whose input
channel ``c`` holds the constant ``v_c`` computes the same without that channel when
``b' = b + sum_c v_c * sum_taps W[:, c]``: exact for linear layers and 1x1 convs, exact away from
the border for k x k convs with zero padding (a border output's padded taps saw zero, not
``v_c``; the error is measured in docs/architecture.md). Whatever lies between the producer and
the consumer (activations, residual adds, concatenation, pooling, flatten) is handled by measuring
the values *at the consumer's input*, in the original model.

Modes:

* ``"constant"`` (the default, no data needed): fold the removed channels whose value at the
  consumer is constant. Constancy is measured on the example inputs plus a perturbed copy (a
  constant is constant on any input): a channel is constant when its range over both is at most
  :data:`CONSTANT_RTOL` times the median range of the channels the consumer keeps (our choice).
* ``"mean"``: mean replacement (Evci et al., "Mean Replacement Pruning", 2018): fold the mean over
  calibration batches of *every* removed channel, for removals the regularizer did not finish
  (one-shot criteria). Needs data.
* ``"none"``: drop the channels as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from regprune.inputs import CallArgs, as_call_args, map_tensors
from regprune.modes import eval_mode

if TYPE_CHECKING:
    from regprune.graph.dependency import DependencyGraph
    from regprune.layers.rules import LayerRecord

COMPENSATION_MODES = ("constant", "mean", "none")

CONSTANT_RTOL = 1e-3
"""A removed channel is constant when its range is at most this share of the kept channels'."""

SILENT_RTOL = 0.1
"""A removed channel is silent (its removal costs little even unfolded) when its range is at
most this share of the kept channels' (our choice; what the methods' warnings use)."""


def check_compensate(compensate: str | None, has_data: bool) -> str:
    """Validate a ``compensate`` argument; None means ``"none"``."""
    mode = "none" if compensate is None else compensate
    if not isinstance(mode, str) or mode not in COMPENSATION_MODES:
        raise ValueError(
            f"compensate must be one of {COMPENSATION_MODES} or None, got {compensate!r}"
        )
    if mode == "mean" and not has_data:
        raise ValueError(
            "compensate='mean' folds the mean of each removed channel over calibration data; "
            "pass calibration=[batch, ...] (or data= to a method's prune), or use 'constant'"
        )
    return mode


@dataclass
class CompensationReport:
    """What the fold did, and how silent the removed channels were where they are read.

    ``max_relative_range`` is the largest range of a removed channel at a consumer's input
    relative to the median range of the channels that consumer keeps: ~0 means the removal set
    was silenced (a constant or zero), ~1 means it carried as much signal as what stays.
    """

    mode: str
    removed_inputs: int = 0
    constant_inputs: int = 0
    silent_inputs: int = 0
    folded_inputs: int = 0
    consumers: int = 0
    max_relative_range: float = 0.0
    median_relative_range: float = 0.0
    not_foldable: list[str] = field(default_factory=list)

    @property
    def silent_share(self) -> float:
        """Share of the removed consumer inputs that were silent (:data:`SILENT_RTOL`)."""
        return self.silent_inputs / self.removed_inputs if self.removed_inputs else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "removed_inputs": self.removed_inputs,
            "constant_inputs": self.constant_inputs,
            "silent_inputs": self.silent_inputs,
            "folded_inputs": self.folded_inputs,
            "consumers": self.consumers,
            "silent_share": self.silent_share,
            "max_relative_range": self.max_relative_range,
            "median_relative_range": self.median_relative_range,
            "not_foldable": list(self.not_foldable),
        }

    def __str__(self) -> str:
        text = (
            f"{self.constant_inputs} of {self.removed_inputs} removed consumer inputs constant, "
            f"{self.silent_inputs} silent (relative range median "
            f"{self.median_relative_range:.2e}, largest {self.max_relative_range:.2e}); "
            f"compensate={self.mode!r} folded {self.folded_inputs} into {self.consumers} layers"
        )
        if self.not_foldable:
            text += f"; not foldable: {', '.join(self.not_foldable[:3])}"
        return text


@dataclass
class InputStats:
    """Running per-channel statistics of one consumer's input (float64)."""

    total: torch.Tensor | None = None
    count: int = 0
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    def add(self, x: torch.Tensor, dim: int) -> None:
        """Add one call's input. An empty one (a detector's head when no box survived) carries
        no evidence and is skipped, as if the layer had not been called."""
        if x.numel() == 0:
            return
        x = x.detach()
        dim = dim % x.dim()
        others = [d for d in range(x.dim()) if d != dim]
        if others:
            # reductions over the other dims in place: no channel-first copy and no float64
            # copy of the activation (peak memory of the measuring forward). The sum
            # accumulates in float32 (our choice): torch's CPU reduction sums pairwise, so a
            # channel's sum keeps ~1e-7 relative error, and summing into float64 converts
            # every element on the way, several times the cost, twice per ``rp.prune``
            accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
            total = x.sum(dim=others, dtype=accumulate).double()
            low, high = x.amin(dim=others).double(), x.amax(dim=others).double()
        else:
            total = low = high = x.double()
        if self.total is None:
            self.total, self.low, self.high = total, low, high
        else:
            self.total += total
            self.low = torch.minimum(self.low, low)
            self.high = torch.maximum(self.high, high)
        self.count += x.numel() // x.shape[dim]

    def kept_scale(self, drop: torch.Tensor) -> float:
        """The median range of the channels not in ``drop`` (0 when none is kept)."""
        kept = (self.high - self.low).cpu()[~drop]
        return float(kept.median()) if kept.numel() else 0.0

    def relative_range(self, drop: torch.Tensor) -> torch.Tensor:
        """Range of every input channel over the median range of the channels not in ``drop``."""
        spread = (self.high - self.low).cpu()
        scale = self.kept_scale(drop)
        if scale > 0:
            return spread / scale
        return torch.where(spread > 0, torch.inf, 0.0).double()


def probe_inputs(example_inputs: Any, seed: int = 0) -> list[tuple[CallArgs, None]]:
    """The example inputs and a perturbed copy, as ``(inputs, None)`` batches: enough to tell a
    constant from a signal.

    Every floating tensor inside the arguments is perturbed, wherever it is nested (a
    detector's list of images); integer tensors (token ids, labels) and constants are kept.
    """
    call = as_call_args(example_inputs)
    generator = torch.Generator().manual_seed(seed)

    def perturb(x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            return x
        std = float(x.std()) if x.numel() > 1 else 0.0
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + noise * (std if std > 0 else 1.0)

    return [(call, None), (map_tensors(perturb, call), None)]


def _batch_inputs(batch: Any) -> CallArgs:
    """A calibration batch is an input tensor, or ``(inputs, targets)`` as the training data
    yields it (CalibrationData), where ``inputs`` is what :func:`regprune.prune` takes as
    example inputs (``((x1, x2), y)`` for a model of two inputs, ``(CallArgs(...), y)``)."""
    if isinstance(batch, torch.Tensor):
        return as_call_args(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs = batch[0]
        # PyTorch's default DataLoader collation turns every tuple into a list, so
        # ``((x1, x2), y)`` arrives as ``[[x1, x2], y]``; a list here can only be that tuple
        # (example inputs refuse bare lists as ambiguous, but a loader cannot yield anything else)
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        return as_call_args(inputs)
    raise TypeError(
        "calibration batches must be input tensors or (inputs, targets) pairs, got "
        f"{type(batch).__name__}"
    )


def consumers_that_may_lose_inputs(graph: DependencyGraph) -> list[str]:
    """The layers a plan can cut inputs from: those whose compensation needs input statistics.

    Grouped convs that lose whole groups lose inputs with their outputs (nothing left to fold
    into), and a layer whose inputs are all locked loses none, whatever the plan.
    """
    names = []
    for record in graph.records:
        atoms = record.in_atoms[record.in_atoms >= 0]
        if (record.groups == 1 or record.inside_groups) and bool(
            (graph.group_of_component[graph.component[atoms]] >= 0).any()
        ):
            names.append(record.name)
    return names


class InputObserver:
    """Collect per-channel statistics of some layers' inputs over the forwards run meanwhile.

    Why a context: :func:`regprune.prune` runs the original model on the example inputs anyway
    (to count its MACs), before the plan says which layers lose inputs; observing every layer
    that may lose some during that forward spares the compensation one forward of its own. The
    caller runs the model (eval mode, no grad, inputs on the model's device); hooks are removed
    on exit.

    Attributes:
        stats: layer name -> :class:`InputStats` (empty until the layer is called).
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph, names: Iterable[str]) -> None:
        records = {r.name: r for r in graph.records}
        self.model = model
        self.stats = {name: InputStats() for name in names}
        self._records = {name: records[name] for name in self.stats}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _collector(self, name: str, record: LayerRecord) -> Any:
        def collect(x: torch.Tensor) -> None:
            self.stats[name].add(x, record.rule.input_channel_dim(x))

        return collect

    def __enter__(self) -> InputObserver:
        try:
            for name, record in self._records.items():
                collect = self._collector(name, record)
                self._handles.append(record.rule.observe_inputs(self.model, name, collect))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def measure_inputs(
    model: nn.Module,
    graph: DependencyGraph,
    names: Iterable[str],
    batches: Iterable[Any],
    stats: dict[str, InputStats] | None = None,
) -> dict[str, InputStats]:
    """Run ``model`` (eval mode, no grad) on ``batches``; every named layer's input statistics.

    ``stats``, when given, are statistics of earlier batches that these batches add to.
    """
    names = list(names)
    device = next(iter(model.parameters()), torch.zeros(())).device
    observer = InputObserver(model, graph, names)
    if stats is not None:
        observer.stats = {name: stats[name] for name in names}
    with eval_mode(model), torch.no_grad(), observer:
        for batch in batches:
            call = map_tensors(lambda x: x.to(device), _batch_inputs(batch))
            model(*call.args, **call.kwargs)
    return observer.stats


def fold_removed_inputs(
    original: nn.Module,
    pruned: nn.Module,
    graph: DependencyGraph,
    cuts: dict[str, tuple[torch.Tensor, torch.Tensor]],
    mode: str,
    stats: dict[str, InputStats],
) -> CompensationReport:
    """Fold the removed channels' values into the biases of ``pruned``'s consumer layers.

    ``cuts`` maps each consumer that loses some (not all) of its inputs to its
    ``(dropped inputs, kept outputs)`` masks; ``stats`` holds every such consumer's input
    statistics in ``original`` (:func:`measure_inputs`).
    """
    report = CompensationReport(mode)
    ranges = []
    records = {r.name: r for r in graph.records}
    for name, (drop, _) in cuts.items():
        entry, rule = stats[name], records[name].rule
        if entry.total is None:
            report.not_foldable.append(f"{name} (not called in the measuring forward)")
            continue
        relative = entry.relative_range(drop)[drop]
        constant = relative <= CONSTANT_RTOL
        report.removed_inputs += int(drop.sum())
        report.constant_inputs += int(constant.sum())
        report.silent_inputs += int((relative <= SILENT_RTOL).sum())
        ranges.append(relative)
        if mode == "none":
            continue
        fold = drop.clone()
        if mode == "constant":
            fold[drop] = constant
        if not bool(fold.any()):
            continue
        values = torch.where(fold, entry.total.cpu() / entry.count, 0.0)
        source = original.get_submodule(name)
        response = rule.response_to_constant_input(source, values.to(rule.weight(source).device))
        if response is None:
            report.not_foldable.append(
                f"{name} (a {type(source).__name__}: {rule.unfoldable_because})"
            )
            continue
        keep_out = cuts[name][1].to(response.device)
        _add_to_bias(pruned.get_submodule(name), response[keep_out])
        report.folded_inputs += int(fold.sum())
        report.consumers += 1
    if ranges:
        every = torch.cat(ranges)
        report.max_relative_range = float(every.max())
        report.median_relative_range = float(every.median())
    return report


def _add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``module.bias += delta``; a layer built without a bias gets one (a new Parameter),
    unless ``delta`` is zero (dead ReLU channels): a bias of zeros would only change the
    architecture (``from_pretrained`` of a bias-less layer drops it)."""
    weight = module.weight
    delta = delta.to(dtype=weight.dtype, device=weight.device)
    if module.bias is None and not bool(delta.any()):
        return
    with torch.no_grad():
        if module.bias is None:
            module.bias = nn.Parameter(delta.clone(), requires_grad=weight.requires_grad)
        else:
            module.bias = nn.Parameter(
                module.bias.detach() + delta, requires_grad=module.bias.requires_grad
            )
