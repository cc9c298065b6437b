"""MACs, FLOPs and parameters of a model, measured on one forward pass.

Convention (the one pruning papers use, and the one behind torchvision's published "GFLOPS",
which are in fact GMACs): count the multiply-accumulates of convolutions, linear layers and the
matmuls of attention, nothing else. Norm layers (BatchNorm / LayerNorm / GroupNorm / InstanceNorm),
activations, pooling and element-wise adds are *not* counted: they are cheap, can be folded, and
counting them is what makes peer tools disagree in the second digit. FLOPs are always ``2 * MACs``;
the two names are never used for the same number.

How, in one ``torch.no_grad()`` forward in eval mode:

- Forward hooks on the modules that have a MACs formula (:data:`regprune.layers.MACS_FORMULAS`:
  conv, linear, multi-head attention; layer-type knowledge lives in the layer package) give
  their MACs from shapes. The formula wins inside such a module, because PyTorch's fused fast
  paths (``nn.MultiheadAttention`` in eval, CPU flash attention) hide the matmuls from op-level
  counting. A module with a formula is not descended into (MHA owns ``out_proj`` but calls it
  functionally).
- Everywhere else, matrix multiplies and convolutions are counted at the op level with
  torch's own formulas (:class:`OpFlops`), so MACs that a model computes functionally
  (torchvision's Swin calls ``F.linear`` on ``qkv.weight``; MaxViT's attention is
  ``torch.matmul``) are not lost. Inside a leaf module they are that layer's MACs; in the forward
  code of a container they are reported as :attr:`ModelCount.unattributed_macs`.

The model may live on the ``meta`` device: counting a large model then allocates and computes
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

from regprune.inputs import ExampleInputs, as_call_args
from regprune.layers import MacsFormula, macs_formula_for
from regprune.modes import eval_mode


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of CPU flash attention (shapes ``(..., L, E)``, ``(..., S, E)``, ``(..., S, Ev)``).

    FlopCounterMode knows the CUDA attention kernels but not this one, so scaled-dot-product
    attention on CPU would otherwise count as zero.
    """
    *batch, target_len, embed = query
    source_len, value_embed = key[-2], value[-1]
    return 2 * math.prod(batch) * target_len * source_len * (embed + value_embed)


# Op-level formulas torch lacks (given shapes, not tensors, as torch's own).
EXTRA_OP_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
}


class OpFlops(TorchDispatchMode):
    """The FLOPs of the matmuls and convolutions run while active, by torch's own formulas
    (``torch.utils.flop_counter.flop_registry``) and :data:`EXTRA_OP_FORMULAS`.

    Why not ``FlopCounterMode`` itself (our choice, timed by ``python -m benchmarks.engine_parts``):
    it costs a forward up to twice its time (MobileNetV2 at batch 1), this mode a fraction of
    that: per op a try at decomposing it (which also runs
    batch norm as its Python decomposition), pytree walks and per-module bookkeeping that
    :class:`MacsCounter` does not use (it attributes MACs with its own hooks). The formulas
    are torch's: an op is counted here exactly when ``FlopCounterMode`` counts it; the only op
    it decomposed in torchvision's classifiers (``native_batch_norm``) has no formula either
    way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def get_total_flops(self) -> int:
        return self.flops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            on_shapes, takes_shapes = formula
            if takes_shapes:
                args, kwargs = _shapes(args), {k: _shapes(v) for k, v in kwargs.items()}
                self.flops += on_shapes(*args, out_shape=_shapes(out), **kwargs)
            else:
                self.flops += on_shapes(*args, **kwargs, out_val=out)
        return out


_SHAPE_WRAPPER = shape_wrapper(lambda: None).__code__


def _unwrapped(formula: Callable[..., int]) -> tuple[Callable[..., int], bool]:
    """A registry formula as ``(function, takes shapes)``: torch wraps most formulas in
    ``shape_wrapper``, whose pytree walk over every argument cost more than the formula (a
    tenth of a counted MobileNetV2 forward); the wrapped function is called on shapes made by
    :func:`_shapes` instead. The few formulas torch registers raw get the tensors."""
    if getattr(formula, "__code__", None) is _SHAPE_WRAPPER:
        return formula.__wrapped__, True  # type: ignore[attr-defined]
    return formula, False


def _shapes(value: Any) -> Any:
    """``shape_wrapper``'s conversion: every tensor, also inside lists and tuples, its shape."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if type(value) in (list, tuple):
        return type(value)(_shapes(item) for item in value)
    return value


_FORMULAS: dict[Any, tuple[Callable[..., int], bool]] = {
    **{op: _unwrapped(formula) for op, formula in flop_registry.items()},
    **{op: (formula, True) for op, formula in EXTRA_OP_FORMULAS.items()},
}
"""Op -> its FLOPs formula, torch's and :data:`EXTRA_OP_FORMULAS`."""


@dataclass(frozen=True)
class LayerCount:
    """What one module cost during the counted forward.

    Attributes:
        name: qualified module name (as in ``model.named_modules()``).
        type_name: the module's class name.
        macs: multiply-accumulates, summed over all calls of the module.
        params: parameters owned by the module (a tied parameter counts at its first owner only).
        output_shape: shape of the module's (first tensor) output at its first call.
        calls: how many times the module ran (a shared module runs more than once).
    """

    name: str
    type_name: str
    macs: int
    params: int
    output_shape: tuple[int, ...]
    calls: int = 1

    @property
    def flops(self) -> int:
        """``2 * macs``."""
        return 2 * self.macs


@dataclass(frozen=True)
class ModelCount:
    """Cost of a whole model for one forward of the example inputs.

    Attributes:
        macs: total multiply-accumulates: the layers' MACs plus ``unattributed_macs``.
        params: unique parameters of the model (tied weights once), whether or not they ran.
        per_layer: one entry per counted module that ran (modules with a MACs formula and leaf
            modules), in first-call order; empty unless asked for.
        unattributed_macs: MACs of matmuls and convolutions run in the forward code of container
            modules rather than inside a counted module (functional attention, for example).
    """

    macs: int
    params: int
    per_layer: tuple[LayerCount, ...] = ()
    unattributed_macs: int = 0

    @property
    def flops(self) -> int:
        """``2 * macs``: one multiply-accumulate is two floating-point operations."""
        return 2 * self.macs

    def table(self) -> str:
        """A plain-text table: one row per layer (if counted per layer) and a total row."""
        header = ("layer", "type", "output", "MACs", "FLOPs", "params")
        rows = [
            _row(
                layer.name or "(model)",
                layer.type_name,
                layer.output_shape,
                layer.macs,
                layer.params,
            )
            for layer in self.per_layer
        ]
        if self.unattributed_macs:
            rows.append(_row("(outside layers)", "", (), self.unattributed_macs, 0))
        total = _row("total", "", (), self.macs, self.params)
        widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(len(header))]

        def render(row: tuple[str, ...]) -> str:
            left = [cell.ljust(width) for cell, width in zip(row[:3], widths[:3], strict=True)]
            right = [cell.rjust(width) for cell, width in zip(row[3:], widths[3:], strict=True)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(render(header))
        return "\n".join([render(header), rule, *map(render, rows), rule, render(total)])


def _row(
    name: str, type_name: str, shape: tuple[int, ...], macs: int, params: int
) -> tuple[str, ...]:
    shape_text = "x".join(map(str, shape))
    return (
        name,
        type_name,
        shape_text,
        format_count(macs),
        format_count(2 * macs),
        format_count(params),
    )


def format_count(n: int | float) -> str:
    """A count with an SI suffix and two decimals: ``4.09 G``, ``25.56 M``, ``1.50 K``, ``512``."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def count(model: nn.Module, example_inputs: ExampleInputs, per_layer: bool = False) -> ModelCount:
    """Count the MACs and parameters of ``model`` on ``example_inputs``.

    The model runs once, in eval mode under ``torch.no_grad()`` (so BN uses running statistics
    and dropout is off, as at deployment); every module's train/eval flag is restored afterwards,
    so counting inside a training loop changes nothing. MACs scale with the batch size of the
    example inputs. See the module docstring for what is counted.

    Args:
        model: any ``nn.Module``; may be on any device, including ``meta``.
        example_inputs: the model's arguments as :func:`regprune.prune` takes them: a tensor,
            a tuple of positional arguments of any nesting (``([img],)``), or a CallArgs.
        per_layer: also return a :class:`LayerCount` for every counted module that ran.

    Returns:
        A :class:`ModelCount`; ``.flops`` is ``2 * .macs``.

    Example::

        cost = count(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
        format_count(cost.macs), format_count(cost.params)  # ('1.81 G', '11.69 M')
    """
    call = as_call_args(example_inputs)
    with eval_mode(model), torch.no_grad(), MacsCounter(model) as counter:
        model(*call.args, **call.kwargs)
    return counter.result(per_layer=per_layer)


class MacsCounter:
    """Count the MACs of the forward pass that runs while this context is active.

    Why a context besides :func:`count`: :func:`regprune.prune` runs the original model on the
    example inputs anyway (to measure what the removed channels send), so it counts that forward
    instead of running one more. Hooks and the op counter are installed on entry and removed on
    exit, whatever happens in between. The caller chooses the mode (``count`` uses eval mode
    under ``torch.no_grad()``); run one forward per counter, since a second adds to the first.

    Example::

        with eval_mode(model), torch.no_grad(), MacsCounter(model) as counter:
            output = model(x)
        counter.result().macs  # == count(model, x).macs
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._hooked = _hooked_modules(model)
        self._op_counter = OpFlops()
        self._call_order: list[str] = []
        self._records = {
            name: _Record(name, formula, self._op_counter, self._call_order)
            for name, _, formula in self._hooked
        }
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> MacsCounter:
        try:
            for name, module, _ in self._hooked:
                record = self._records[name]
                self._handles.append(module.register_forward_pre_hook(record.before))
                self._handles.append(module.register_forward_hook(record.after, with_kwargs=True))
            self._op_counter.__enter__()
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._op_counter.__exit__(exc_type, exc, traceback)
        finally:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self, per_layer: bool = False) -> ModelCount:
        """What the counted forward cost (see :func:`count` for ``per_layer``)."""
        inside_macs = sum(record.op_macs for record in self._records.values())
        unattributed_macs = max(0, self._op_counter.get_total_flops() // 2 - inside_macs)
        layers = _layer_counts(self._hooked, self._records, self._call_order)
        return ModelCount(
            macs=sum(layer.macs for layer in layers) + unattributed_macs,
            params=sum(p.numel() for p in self.model.parameters()),
            per_layer=layers if per_layer else (),
            unattributed_macs=unattributed_macs,
        )


class _Record:
    """Hook pair for one module: MACs from its formula, else the op counter's delta in its call."""

    def __init__(
        self,
        name: str,
        formula: MacsFormula | None,
        op_counter: OpFlops,
        call_order: list[str],
    ) -> None:
        self.name = name
        self.formula = formula
        self.op_counter = op_counter
        self.call_order = call_order
        self.macs = 0
        self.op_macs = 0  # op-level MACs seen inside the module, formula or not
        self.calls = 0
        self.output_shape: tuple[int, ...] = ()
        self._op_macs_at_entry = 0

    def before(self, module: nn.Module, args: tuple) -> None:
        self._op_macs_at_entry = self.op_counter.get_total_flops() // 2

    def after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        op_macs = self.op_counter.get_total_flops() // 2 - self._op_macs_at_entry
        self.op_macs += op_macs
        self.macs += self.formula(module, args, kwargs, output) if self.formula else op_macs
        if self.calls == 0:
            self.call_order.append(self.name)
            self.output_shape = _first_shape(output)
        self.calls += 1


def _layer_counts(
    hooked: list[tuple[str, nn.Module, MacsFormula | None]],
    records: dict[str, _Record],
    call_order: list[str],
) -> tuple[LayerCount, ...]:
    """One LayerCount per module that ran, first-call order; tied params go to the first owner."""
    params_seen: set[int] = set()
    params_of: dict[str, int] = {}
    for name, module, formula in hooked:
        # A formula module's cost includes its children (MHA's out_proj), so do its parameters.
        owned = [
            p for p in module.parameters(recurse=formula is not None) if id(p) not in params_seen
        ]
        params_seen.update(id(p) for p in owned)
        params_of[name] = sum(p.numel() for p in owned)
    modules = {name: module for name, module, _ in hooked}
    return tuple(
        LayerCount(
            name=name,
            type_name=type(modules[name]).__name__,
            macs=records[name].macs,
            params=params_of[name],
            output_shape=records[name].output_shape,
            calls=records[name].calls,
        )
        for name in call_order
    )


def _hooked_modules(model: nn.Module) -> list[tuple[str, nn.Module, MacsFormula | None]]:
    """Modules with a formula (not descended into) and every other leaf, in registration order.

    A module registered under two names (shared) is hooked once, under its first name, as in
    ``named_modules()``.
    """
    hooked: list[tuple[str, nn.Module, MacsFormula | None]] = []
    seen: set[int] = set()

    def walk(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        formula = macs_formula_for(module)
        children = list(module.named_children())
        if formula is not None or not children:
            hooked.append((name, module, formula))
            return
        for child_name, child in children:
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return hooked


def _first_shape(output: Any) -> tuple[int, ...]:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, tuple | list):
        for item in output:
            if isinstance(item, torch.Tensor):
                return tuple(item.shape)
    return ()
