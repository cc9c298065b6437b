"""Growing L2 regularization: GReg-1 and GReg-2.

Source: Wang, Qin, Zhang, Fu, "Neural Pruning via Growing Regularization", ICLR 2021; code
MingSun-Tse/Regularization-Pruning, ``pruner/reg_pruner.py`` (``IncReg`` is GReg-1, ``AdaReg`` is
GReg-2). The penalty on a unit ``w`` (a channel or a single weight) is ``0.5 * lambda * ||w||^2``,
applied as the gradient edit ``grad += lambda * w`` on top of weight decay, and ``lambda`` grows on
the units to prune until they carry (almost) nothing; removing them is then nearly lossless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup
from regprune.regularizers._slices import (
    along,
    index_groups,
    sum_except,
    writable_grad,
    zero_like_model,
)
from regprune.regularizers.protocol import Regularizer

LayerKey = int | str
Targets = Sequence[ChannelGroup] | Mapping[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]]
Phase = Literal["picking", "growing", "stabilizing", "done"]
LayerStatus = Literal["picking", "growing", "stopped"]


class GrowingL2(Regularizer):
    """GReg-1 / GReg-2 as a state machine over "layers" (a channel group, or one parameter).

    Units and slices:

    * **Structured** (``targets`` are :class:`ChannelGroup` s): a unit is one channel of a group
      and a "layer" is the group. The penalty goes on every ``"out"`` slice (the producers'
      filters and biases) and every ``"norm"`` slice (BN scale *and* shift) of the channel --
      **our choice**: the code penalizes conv filters only, but when a BN follows the conv, its
      batch statistics undo any shrinking of the filter, so the channel's output only vanishes
      once ``gamma`` and ``beta`` shrink too. Consumer ``"in"`` slices are not penalized (as in
      the code): once the channel's output is zero they multiply nothing. The magnitude of a
      channel (for ranking, picking and the kept / pruned ratio) is its mean ``|w|`` over the
      ``"out"`` slices, the code's ``w.abs().mean(dim=[1, 2, 3])`` per filter.
    * **Unstructured** (``targets`` are named parameters, e.g.
      ``{n: p for n, p in model.named_parameters() if p.dim() > 1}``; only their names and
      shapes are kept): a unit is one weight, a "layer" is the parameter, the magnitude is
      ``|w|``, and the prune set is a boolean mask of the parameter's shape.

    Schedule (docs/specs/METHODS.md; counts in optimizer steps, i.e. calls of :meth:`step`):

    * ``"picking"`` (GReg-2 only): every ``update_every`` steps, ``lambda += pick_delta`` on all
      units of the layer; once it reaches ``pick_ceiling`` the ``pick_ratio`` fraction with the
      smallest magnitude becomes the prune set ``S`` (``min(ceil(r * n), n - 1)`` units, as in
      the code) and the layer starts growing from there: ``lambda_S`` goes on from the picking
      lambda, ``lambda_kept`` becomes ``kept_lambda`` at the next update (as in the code).
    * ``"growing"``: every ``update_every`` steps, first the EMA of ``mean|w| kept / mean|w| S``
      is updated (``ema = ema_momentum * ema + (1 - ema_momentum) * ratio``, the first value is
      the ratio itself), then ``lambda_S += delta`` and ``lambda_kept = kept_lambda``; the layer
      stops when its largest lambda exceeds ``tau`` or its EMA reaches ``ratio_stop`` (per
      layer, as docs/specs/METHODS.md says and the code's GReg-2 does; the code's GReg-1 waits
      for the EMA of every layer).
    * ``"stabilizing"``: once every layer stopped, lambdas are held ``stabilize_iters`` steps,
      then the phase is ``"done"`` (lambdas stay held until the caller prunes).

    A layer whose prune set is empty (ratio 0) stops at once with lambda 0, as in the code.
    **Our choice**: an update happens in :meth:`step` after every ``update_every``-th optimizer
    step (the code updates before the first backward of such an iteration; the schedule is the
    same, shifted by one interval); lambdas are computed from integer update counts, so ten
    thousand increments of 1e-4 do not drift; the EMA restarts when a GReg-2 layer picks its set.

    Args:
        targets: channel groups (structured) or named parameters (unstructured), not mixed.
        prune_set: GReg-1: ``{layer key: BoolTensor}`` (True = prune), with the group id or
            parameter name as key and shape ``(group.size,)`` or the parameter's shape. See
            :func:`l1_prune_set` for the paper's L1-norm ranking.
        pick_ratio: GReg-2: fraction to pick per layer (float or ``{layer key: float}``).
            Exactly one of ``prune_set`` and ``pick_ratio`` is given.
        update_every: ``K_u`` (10 on CIFAR).
        delta: growth of ``lambda_S`` per update (1e-4).
        tau: ceiling on lambda (1.0).
        ratio_stop: magnitude-ratio EMA that stops a layer (1000).
        ema_momentum: EMA momentum (0.9).
        stabilize_iters: ``K_s`` (10000 on CIFAR).
        kept_lambda: lambda of kept units while pushing; default 0 for GReg-1 and -1e-4 for
            GReg-2.
        pick_delta: lambda growth per update while picking (1e-5).
        pick_ceiling: lambda at which picking ends (1e-2).

    Example::

        reg = GrowingL2(groups, prune_set=l1_prune_set(model, groups, 0.5))
        while not reg.done:
            loss = criterion(model(x), y)
            loss.backward()
            reg.apply_to_grads(model)
            optimizer.step()
            reg.step(model)
    """

    edits_gradients = True
    strength_attr = None

    def __init__(
        self,
        targets: Targets,
        prune_set: Mapping[LayerKey, torch.Tensor] | None = None,
        *,
        pick_ratio: float | Mapping[LayerKey, float] | None = None,
        update_every: int = 10,
        delta: float = 1e-4,
        tau: float = 1.0,
        ratio_stop: float = 1000.0,
        ema_momentum: float = 0.9,
        stabilize_iters: int = 10000,
        kept_lambda: float | None = None,
        pick_delta: float = 1e-5,
        pick_ceiling: float = 1e-2,
    ) -> None:
        if (prune_set is None) == (pick_ratio is None):
            raise ValueError(
                "give exactly one of prune_set (GReg-1: the set to prune is fixed) and "
                "pick_ratio (GReg-2: the set is picked after a growing-penalty phase)"
            )
        _check_positive_int("update_every", update_every)
        _check_nonnegative_int("stabilize_iters", stabilize_iters)
        for name, value in (("delta", delta), ("pick_delta", pick_delta)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not 0 <= ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        for name, value in (
            ("tau", tau),
            ("ratio_stop", ratio_stop),
            ("pick_ceiling", pick_ceiling),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.targets = _make_targets(targets)
        self.update_every = int(update_every)
        self.delta = float(delta)
        self.tau = float(tau)
        self.ratio_stop = float(ratio_stop)
        self.ema_momentum = float(ema_momentum)
        self.stabilize_iters = int(stabilize_iters)
        self.pick_delta = float(pick_delta)
        self.pick_ceiling = float(pick_ceiling)
        self.greg2 = pick_ratio is not None
        default_kept = -1e-4 if self.greg2 else 0.0
        self.kept_lambda = float(default_kept if kept_lambda is None else kept_lambda)
        # Integer count of picking updates that reaches the ceiling (1e-2 / 1e-5 in floats is
        # 1000.0000000000001, which must still mean 1000 updates).
        self._pick_updates_needed = max(1, math.ceil(pick_ceiling / pick_delta - 1e-9))
        self.iteration = 0
        self._layers: dict[LayerKey, _LayerState] = {}
        if prune_set is not None:
            _check_keys("prune_set", prune_set, self.targets)
            for key, target in self.targets.items():
                mask = _check_mask(target, prune_set[key])
                status: LayerStatus = "growing" if bool(mask.any()) else "stopped"
                self._layers[key] = _LayerState(status=status, pick_ratio=0.0, mask=mask)
        else:
            ratios = _per_layer("pick_ratio", pick_ratio, self.targets)
            for key, ratio in ratios.items():
                if ratio > 0:
                    self._layers[key] = _LayerState(status="picking", pick_ratio=ratio)
                else:
                    empty = torch.zeros(self.targets[key].shape, dtype=torch.bool)
                    self._layers[key] = _LayerState(status="stopped", pick_ratio=0.0, mask=empty)
        self._stabilize_start: int | None = None
        self._maybe_start_stabilizing()

    @property
    def phase(self) -> Phase:
        """``"picking"`` | ``"growing"`` | ``"stabilizing"`` | ``"done"``."""
        statuses = {layer.status for layer in self._layers.values()}
        if "picking" in statuses:
            return "picking"
        if "growing" in statuses:
            return "growing"
        assert self._stabilize_start is not None
        if self.iteration - self._stabilize_start >= self.stabilize_iters:
            return "done"
        return "stabilizing"

    @property
    def done(self) -> bool:
        """True once the stabilization phase is over: time to remove the prune set."""
        return self.phase == "done"

    def layer_status(self) -> dict[LayerKey, LayerStatus]:
        """Per layer: ``"picking"``, ``"growing"`` or ``"stopped"``."""
        return {key: layer.status for key, layer in self._layers.items()}

    def lambdas(self) -> dict[LayerKey, tuple[float, float]]:
        """Per layer ``(lambda on the prune set, lambda on the kept units)``.

        All units of a set share one lambda (they start together and grow together), so two
        numbers per layer are the whole state; while picking both are the picking lambda.
        """
        return {key: self._layer_lambdas(layer) for key, layer in self._layers.items()}

    def prune_set(self) -> dict[LayerKey, torch.Tensor]:
        """``{layer key: BoolTensor}``, True on the units to remove.

        Raises:
            RuntimeError: while GReg-2 is still picking (no set exists yet).
        """
        if self.phase == "picking":
            raise RuntimeError("GReg-2 is still picking; the prune set does not exist yet")
        return {
            key: layer.mask_on(torch.device("cpu")).clone() for key, layer in self._layers.items()
        }

    def apply_to_grads(self, model: nn.Module) -> None:
        """``grad += lambda * w`` in place on every penalized unit (after backward, before step)."""
        for key, layer in self._layers.items():
            lams = self._layer_lambdas(layer)
            if lams != (0.0, 0.0):
                self.targets[key].add_grad(model, layer, lams)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Loss-term form ``sum 0.5 * lambda * w^2``; its gradient equals :meth:`apply_to_grads`.

        Use one form or the other. The code uses the gradient edit; the loss form is offered for
        loops that cannot edit gradients (its value also serves for logging).
        """
        total: torch.Tensor | None = None
        for key, layer in self._layers.items():
            lams = self._layer_lambdas(layer)
            term = self.targets[key].penalty(model, layer, lams) if lams != (0.0, 0.0) else None
            if term is not None:
                total = term if total is None else total + term
        return total if total is not None else zero_like_model(model)

    def step(self, model: nn.Module) -> None:
        """Advance one optimizer step; every ``update_every`` steps update lambdas and phases.

        Needs the model because picking and the stop rule read the current weight magnitudes.
        """
        self.iteration += 1
        if self.iteration % self.update_every or self.phase not in ("picking", "growing"):
            return
        for key, layer in self._layers.items():
            if layer.status == "stopped":
                continue
            target = self.targets[key]
            with torch.no_grad():
                magnitude = target.magnitudes(model)
            if layer.status == "picking":
                layer.pick_updates += 1
                if layer.pick_updates >= self._pick_updates_needed:
                    layer.set_mask(_smallest(magnitude, layer.pick_ratio).reshape(target.shape))
                    layer.status = "growing"
            else:
                mask = layer.mask_on(magnitude.device).flatten()
                ratio = float(magnitude[~mask].mean() / magnitude[mask].mean())
                m = self.ema_momentum
                layer.ema = ratio if layer.ema is None else m * layer.ema + (1 - m) * ratio
                layer.grow_updates += 1
                if layer.ema >= self.ratio_stop or max(self._layer_lambdas(layer)) > self.tau:
                    layer.status = "stopped"
        self._maybe_start_stabilizing()

    def stats(self, model: nn.Module | None = None) -> dict[str, float]:
        """Scalars for the training log: largest lambda, layers still active, smallest EMA."""
        emas = [layer.ema for layer in self._layers.values() if layer.ema is not None]
        lams = [max(self._layer_lambdas(layer)) for layer in self._layers.values()]
        return {
            "greg_lambda_max": max(lams, default=0.0),
            "greg_layers_active": float(
                sum(layer.status != "stopped" for layer in self._layers.values())
            ),
            "greg_ratio_ema_min": min(emas, default=float("nan")),
        }

    def state_dict(self) -> dict[str, Any]:
        """Iteration, stabilization start and every layer's counters, EMA and prune set."""
        return {
            "iteration": self.iteration,
            "stabilize_start": self._stabilize_start,
            "layers": {key: layer.to_state() for key, layer in self._layers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_keys("state['layers']", state["layers"], self.targets)
        self.iteration = int(state["iteration"])
        start = state["stabilize_start"]
        self._stabilize_start = None if start is None else int(start)
        self._layers = {key: _LayerState.from_state(state["layers"][key]) for key in self.targets}

    def _layer_lambdas(self, layer: _LayerState) -> tuple[float, float]:
        picked = layer.pick_updates * self.pick_delta
        if layer.grow_updates == 0:
            return picked, picked
        return picked + layer.grow_updates * self.delta, self.kept_lambda

    def _maybe_start_stabilizing(self) -> None:
        if self._stabilize_start is None and all(
            layer.status == "stopped" for layer in self._layers.values()
        ):
            self._stabilize_start = self.iteration


def budget_schedule(total_steps: int, silence_at: float, variant: int) -> dict[str, Any]:
    """GReg's schedule sized to a budget (our choice): about 50 lambda updates; GReg-2 picks
    in the first tenth, lambda grows to tau = 1 by half of ``silence_at`` (the magnitude-ratio
    stop may end it earlier: the schedule reacts to what it sees), then holds to ``silence_at``
    of the budget; the rest is left for the network to adapt with the set silenced."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    update_every = max(1, total_steps // 50)
    pick = round(0.1 * total_steps) if variant == 2 else 0
    done = silence_at * total_steps
    grow_updates = max(2, int((0.5 * done - pick) / update_every))
    schedule = {
        "update_every": update_every,
        # lambda exceeds tau (the stop) at the grow_updates-th update
        "delta": 1.0 / (grow_updates - 1),
        "tau": 1.0,
        "stabilize_iters": max(1, int(done - pick - grow_updates * update_every)),
    }
    if variant == 2:
        schedule["pick_delta"] = 1e-2 / max(1.0, pick / update_every)
        schedule["pick_ceiling"] = 1e-2
    return schedule


def greg_for(
    targets: Targets, masks: Mapping[LayerKey, torch.Tensor], variant: int, **schedule: Any
) -> GrowingL2:
    """GReg-1 or GReg-2 over ``targets`` given a first allocation ``masks`` (True = remove).

    GReg-1 regularizes exactly ``masks``; GReg-2 keeps only their per-layer counts and picks
    which units itself: ``(d - 0.5) / n`` makes the picking's ``ceil(ratio * n)`` take exactly
    ``d`` of ``n`` units. Shared by the structured and the unstructured method.
    """
    if variant not in (1, 2):
        raise ValueError(f"variant must be 1 (GReg-1) or 2 (GReg-2), got {variant!r}")
    if variant == 1:
        return GrowingL2(targets, prune_set=masks, **schedule)
    ratios = {key: max(float(m.sum()) - 0.5, 0.0) / m.numel() for key, m in masks.items()}
    return GrowingL2(targets, pick_ratio=ratios, **schedule)


def l1_prune_set(
    model: nn.Module,
    targets: Targets,
    ratio: float | Mapping[LayerKey, float],
) -> dict[LayerKey, torch.Tensor]:
    """GReg-1's prune set: per layer, the ``ratio`` fraction of units with the smallest L1 norm.

    The paper fixes the set "by L1-norm ranking, layer by layer". Structured units are ranked by
    the mean ``|w|`` of their ``"out"`` slices (the same order as the filter L1 norm of Li et al.
    when a group has one producer), unstructured units by ``|w|``. ``min(ceil(ratio * n), n - 1)``
    units are taken per layer, as in the code (a layer is never emptied).

    Args:
        model: the model whose weights are ranked.
        targets: the same targets given to :class:`GrowingL2`.
        ratio: fraction in [0, 1) per layer (a float for all, or ``{layer key: float}``).
    """
    resolved = _make_targets(targets)
    ratios = _per_layer("ratio", ratio, resolved)
    with torch.no_grad():
        return {
            key: _smallest(target.magnitudes(model), ratios[key]).reshape(target.shape)
            for key, target in resolved.items()
        }


@dataclass
class _LayerState:
    status: LayerStatus
    pick_ratio: float
    mask: torch.Tensor | None = None
    pick_updates: int = 0
    grow_updates: int = 0
    ema: float | None = None
    _mask_on: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)

    def set_mask(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self._mask_on = {}

    def mask_on(self, device: torch.device) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("this layer has no prune set yet")
        cached = self._mask_on.get(device)
        if cached is None:
            cached = self.mask.to(device)
            self._mask_on[device] = cached
        return cached

    def unit_lambdas(
        self, lam_pruned: float, lam_kept: float, like: torch.Tensor
    ) -> torch.Tensor | float:
        """One lambda for all units (a float) or a tensor shaped like the mask."""
        if lam_pruned == lam_kept:
            return lam_pruned
        mask = self.mask_on(like.device)
        lam = torch.full(mask.shape, lam_kept, dtype=like.dtype, device=like.device)
        return lam.masked_fill_(mask, lam_pruned)

    def to_state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pick_ratio": self.pick_ratio,
            "mask": None if self.mask is None else self.mask.clone(),
            "pick_updates": self.pick_updates,
            "grow_updates": self.grow_updates,
            "ema": self.ema,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _LayerState:
        mask = state["mask"]
        return cls(
            status=state["status"],
            pick_ratio=float(state["pick_ratio"]),
            mask=None if mask is None else torch.as_tensor(mask).to("cpu", torch.bool).clone(),
            pick_updates=int(state["pick_updates"]),
            grow_updates=int(state["grow_updates"]),
            ema=None if state["ema"] is None else float(state["ema"]),
        )


class _GroupTarget:
    """A channel group: units are channels, penalized over its "out" and "norm" slices."""

    def __init__(self, group: ChannelGroup) -> None:
        self.group = group
        self.shape: tuple[int, ...] = (group.size,)
        self.penalized = [s for s in group.slices_with_role("out", "norm")]
        self.ranked = [s for s in group.slices_with_role("out")]
        if not self.ranked:
            raise ValueError(
                f"group {group.id} has no 'out' slice, so its channels have no magnitude to "
                "rank or to compare; leave it out of the GReg targets"
            )

    def describe(self) -> str:
        return f"group {self.group.id}"

    def magnitudes(self, model: nn.Module) -> torch.Tensor:
        """Mean |w| per channel over the "out" slices (float64)."""
        total = torch.zeros(self.group.size, dtype=torch.float64)
        count = torch.zeros(self.group.size, dtype=torch.float64)
        seen = False
        for index in self.ranked:
            tensor = index.weight_in(model)
            if tensor is None:
                continue
            seen = True
            dim = index.axis(tensor)
            positions, channels = index.positions_on(tensor.device)
            per_index = sum_except(tensor.detach().abs(), dim).index_select(0, positions)
            entries = tensor.numel() // max(tensor.shape[dim], 1) if tensor.dim() else 1
            entries_per_index = torch.full_like(per_index, float(entries), dtype=torch.float64)
            total = total.to(tensor.device).index_add(0, channels, per_index.double())
            count = count.to(tensor.device).index_add(0, channels, entries_per_index)
        if not seen:
            raise ValueError(f"group {self.group.id}: its 'out' slices are all buffers")
        return total / count.clamp_min(1.0)

    def add_grad(self, model: nn.Module, layer: _LayerState, lams: tuple[float, float]) -> None:
        for index in self.penalized:
            param = index.weight_in(model, leaf=True)
            if param is None:
                continue
            grad = writable_grad(param)
            if grad is None:
                continue
            dim = index.axis(param)
            positions, channels = index.positions_on(param.device)
            weights = param.detach().index_select(dim, positions)
            grad.index_add_(
                dim, positions, weights * self._lambdas_at(layer, lams, param, dim, channels)
            )

    def penalty(
        self, model: nn.Module, layer: _LayerState, lams: tuple[float, float]
    ) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for index in self.penalized:
            param = index.weight_in(model)
            if param is None:
                continue
            dim = index.axis(param)
            positions, channels = index.positions_on(param.device)
            weights = param.index_select(dim, positions)
            lam = self._lambdas_at(layer, lams, param, dim, channels)
            term = 0.5 * (lam * weights.square()).sum()
            total = term if total is None else total + term
        return total

    @staticmethod
    def _lambdas_at(
        layer: _LayerState,
        lams: tuple[float, float],
        param: torch.Tensor,
        dim: int,
        channels: torch.Tensor,
    ) -> torch.Tensor | float:
        lam = layer.unit_lambdas(*lams, like=param)
        if isinstance(lam, float):
            return lam
        return along(lam[channels], dim, param.dim())


class _ParamTarget:
    """One parameter: units are its single weights."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape

    def describe(self) -> str:
        return f"parameter {self.name!r}"

    def param(self, model: nn.Module) -> nn.Parameter:
        try:
            param = model.get_parameter(self.name)
        except AttributeError as error:
            raise ValueError(f"{self.name!r} is not a parameter of the model") from error
        if tuple(param.shape) != self.shape:
            raise ValueError(
                f"{self.name!r} has shape {tuple(param.shape)} in the model but {self.shape} "
                "in the targets"
            )
        return param

    def magnitudes(self, model: nn.Module) -> torch.Tensor:
        return self.param(model).detach().abs().flatten().double()

    def add_grad(self, model: nn.Module, layer: _LayerState, lams: tuple[float, float]) -> None:
        param = self.param(model)
        grad = writable_grad(param)
        if grad is not None:
            grad.add_(layer.unit_lambdas(*lams, like=param) * param.detach())

    def penalty(
        self, model: nn.Module, layer: _LayerState, lams: tuple[float, float]
    ) -> torch.Tensor | None:
        param = self.param(model)
        return 0.5 * (layer.unit_lambdas(*lams, like=param) * param.square()).sum()


_Target = _GroupTarget | _ParamTarget


def _make_targets(targets: Targets) -> dict[LayerKey, _Target]:
    if isinstance(targets, Mapping):
        items: list[Any] = list(targets.items())
    else:
        items = list(targets)
    if items and all(isinstance(t, ChannelGroup) for t in items):
        groups, _ = index_groups(items)
        return {g.id: _GroupTarget(g) for g in groups}
    if all(
        isinstance(t, tuple)
        and len(t) == 2
        and isinstance(t[0], str)
        and isinstance(t[1], torch.Tensor)
        for t in items
    ):
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            raise ValueError("parameter names in targets must be unique")
        return {name: _ParamTarget(name, tuple(p.shape)) for name, p in items}
    raise TypeError(
        "targets must be ChannelGroup objects (structured) or named parameters -- a "
        "{name: parameter} mapping or (name, parameter) pairs, as from "
        "model.named_parameters() -- (unstructured), not a mix"
    )


def _check_mask(target: _Target, mask: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask).detach().to("cpu")
    if mask.dtype != torch.bool or tuple(mask.shape) != target.shape:
        raise ValueError(
            f"prune set of {target.describe()} must be a BoolTensor of shape {target.shape}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask.numel() and bool(mask.all()):
        raise ValueError(
            f"the prune set of {target.describe()} covers every unit; a layer cannot be emptied "
            "(and the kept / pruned magnitude ratio would be undefined)"
        )
    return mask.clone()


def _smallest(magnitude: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mask of the ``min(ceil(ratio * n), n - 1)`` smallest entries (stable order on ties)."""
    n = magnitude.numel()
    # The tolerance keeps ceil(0.3 * 10) at 3 despite 0.3 * 10 == 3.0000000000000004.
    k = min(math.ceil(ratio * n - 1e-9), n - 1) if ratio > 0 else 0
    mask = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        order = torch.sort(magnitude.flatten().cpu(), stable=True).indices
        mask[order[:k]] = True
    return mask


def _per_layer(
    name: str, value: float | Mapping[LayerKey, float], targets: Mapping[LayerKey, _Target]
) -> dict[LayerKey, float]:
    if isinstance(value, Mapping):
        _check_keys(name, value, targets)
        ratios = {key: float(value[key]) for key in targets}
    else:
        ratios = dict.fromkeys(targets, float(value))
    for key, ratio in ratios.items():
        if not 0 <= ratio < 1:
            raise ValueError(f"{name} of layer {key!r} must be in [0, 1), got {ratio}")
    return ratios


def _check_keys(name: str, given: Mapping[Any, Any], targets: Mapping[LayerKey, Any]) -> None:
    unknown = [k for k in given if k not in targets]
    missing = [k for k in targets if k not in given]
    if unknown or missing:
        raise ValueError(
            f"{name} must have one entry per target layer (group id or parameter name); "
            f"unknown: {unknown}, missing: {missing}"
        )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_nonnegative_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
