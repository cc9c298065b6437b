"""Trace a model once and record how its channels are coupled.

The tracer runs one real forward pass under a ``TorchFunctionMode``: it sees every top-level
torch call with its concrete arguments, so data-dependent Python control flow is no obstacle
(unlike ``torch.fx``), and ops are known by the function that ran rather than guessed from the
names of autograd nodes (Torch-Pruning's approach, which silently treats unknown ops as
element-wise). Layers in the rule table (conv, linear, embedding) are recorded whole through
module hooks; everything else is followed function by function (see :mod:`regprune.graph.ops`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from regprune.graph.atoms import AtomTable, atoms_in
from regprune.graph.labels import channel_label, channel_vector, compact, constant_label
from regprune.graph.meta_shortcuts import shape_only_result
from regprune.graph.ops import ProductRecord, canonical_name, record_function, unit_dim
from regprune.inputs import as_call_args, iter_tensors, map_tensors
from regprune.layers.rules import (
    LayerRecord,
    LayerRule,
    opaque_reason,
    refreshed_head_sizes,
    rule_by_type,
    rule_for,
    stored_width_for,
)

ATTENTION_UNITS = ("heads", "head_dim")
"""How a channel dim reshaped into (heads, head_dim) may shrink; one per trace, because a
position belongs to one removable channel and whole heads and head_dim positions cut the same
grid two ways.

* ``"heads"`` (the default, our choice: it removes whole attention matmuls and needs no
  literal ``head_dim`` to change): one channel is one head: its head_dim rows in q, k and v
  and its columns of the output projection; under grouped-query attention a kv head with
  every query head that reads it.
* ``"head_dim"``: one channel is one head_dim position, removed alike in every head: of q and
  k together, and separately of v and the output projection. Exact only where the attention
  scale does not follow head_dim (an explicit ``scale``); groups are marked inexact otherwise.
"""


GROUPED_CONV_UNITS = ("channels", "groups")
"""How a grouped conv (``groups > 1``, more than one input and output channel per group) may
shrink; one per trace.

* ``"channels"`` (the default, our choice; Torch-Pruning does the same): one unit is one
  position inside a group, taken in every group alike (input position ``i`` of every group, and
  separately output position ``j``), so every group keeps the same width and the group count
  stays. At ratio 0.5 a RegNet's grouped 3x3 convs lose half their MACs twice over (inputs and
  outputs), as plain convs do.
* ``"groups"``: one unit is a whole group, its inputs with its outputs; the group count
  shrinks and the per-group layout is untouched.

Depthwise convs (one input channel per group) always lose whole groups, and so does a conv
whose positions inside a group end up all coupled (``graph._collapsed_inside_groups``).
"""


class ShapeInt(int):
    """A size read from a traced activation's shape (``B, C, H, W = x.shape``, ``x.size(1)``).

    It remembers the label of the tensor it was read from and the dim, so that a reshape that
    writes it unchanged (``x.view(B, C, H * W)``) is known to follow that dim when channels go,
    where a literal ``256`` would not. A number computed from it (``C // num_heads``) is a plain
    int that no removal keeps true: computing with a channel count pins those channels (our
    choice: the tracer cannot follow Python arithmetic, so it keeps what the arithmetic read).
    """

    label: torch.Tensor
    dim: int
    tracer: Tracer

    @classmethod
    def of(cls, value: int, label: torch.Tensor, dim: int, tracer: Tracer) -> ShapeInt:
        size = cls(value)
        size.label, size.dim, size.tracer = label, dim, tracer
        return size

    def pin_source(self, reason: str) -> None:
        """Keep the channels this size counts: the model uses the number where a removal
        cannot follow it."""
        self.tracer.pin_shape_source(self, reason)


def _in_torch(frame: Any) -> bool:
    """Whether the code computing is torch's own (stride checks, shape inference): what torch
    functions do with a size is their rule's business, not the model's arithmetic."""
    module = frame.f_globals.get("__name__", "")
    return module == "torch" or module.startswith("torch.")


def _pinning(op: str) -> Callable[..., Any]:
    method = getattr(int, op)

    def compute(self: ShapeInt, *args: Any) -> Any:
        if not _in_torch(sys._getframe(1)) and not self.tracer.busy:
            self.pin_source("its channel count is read from a shape and computed with")
        return method(self, *args)

    compute.__name__ = op
    return compute


for _op in (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
    "__rfloordiv__", "__truediv__", "__rtruediv__", "__mod__", "__rmod__", "__pow__",
    "__rpow__", "__neg__", "__divmod__", "__rdivmod__", "__lshift__", "__rshift__", "__float__",
):  # fmt: skip
    setattr(ShapeInt, _op, _pinning(_op))


SIZE_ARGUMENT_OPS = frozenset(
    [
        "view", "reshape", "expand", "broadcast_to", "repeat", "tile", "unflatten", "flatten",
        "permute", "transpose", "movedim", "narrow", "split", "chunk", "tensor_split", "select",
        "getitem", "setitem", "new_zeros", "new_ones", "new_empty", "zeros", "ones", "empty",
        "rand", "randn", "size", "unfold",
    ]
)  # fmt: skip
"""Torch functions whose integer arguments are sizes, dims or positions: a size read from a
shape passed to them is checked by the op's own rule (a reshape follows or locks it; a factory
sized by it makes a constant that locks what it meets). Any other torch function given a
channel count (``torch.tensor(C)``, ``x / C``) uses it as a value, which no removal keeps true:
those channels are pinned."""


def _shape_ints(value: Any) -> list[ShapeInt]:
    if isinstance(value, ShapeInt):
        return [value]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _shape_ints(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _shape_ints(v)]
    return []


def _sizes_with_source(size: torch.Size, label: torch.Tensor, tracer: Tracer) -> torch.Size:
    return torch.Size([ShapeInt.of(n, label, d, tracer) for d, n in enumerate(size)])


class TraceError(RuntimeError, ValueError):
    """The model's forward failed while being traced: most often example inputs the model does
    not accept, hence also a ValueError (the public API's contract for bad arguments)."""


@dataclass
class FreeParam:
    """A parameter or buffer used directly in the forward (BN scales, layer scales, tokens).

    ``atoms`` has the parameter's shape: one atom per element, so that however the value is
    broadcast, sliced or concatenated, each element couples with the channel it meets.
    """

    module: str
    attr: str
    atoms: torch.Tensor
    is_parameter: bool


def input_channel_atoms(
    rule: LayerRule, x_label: torch.Tensor, x: torch.Tensor, module: nn.Module
) -> torch.Tensor | None:
    """Atoms of the layer's input channels, or None if the input is not channel-structured."""
    if not rule.reads_channels:
        return torch.zeros(0, dtype=torch.long)
    return channel_vector(x_label, rule.input_channel_dim(x), rule.input_channels(module))


def output_label(rule: LayerRule, out_atoms: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return channel_label(out_atoms, rule.output_channel_dim(y), y.dim())


def _atoms_on_dim(record: LayerRecord, dim: int) -> torch.Tensor | None:
    if dim == record.rule.out_dim:
        return record.out_atoms
    if dim == record.rule.in_dim:
        return record.in_atoms
    return None


def tensors_on_meta(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by qualified name, floating ones on the ``meta``
    device (tied ones stay one tensor), for ``functional_call``.

    On the meta device a forward computes shapes only: tracing a ViT-H costs the label
    bookkeeping, not 167 GMACs. Integer buffers (index tables) stay real, since indexing with
    them must give real shapes.
    """
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors |= {n: b for n, b in model.named_buffers(remove_duplicate=False) if b is not None}
    converted: dict[int, torch.Tensor] = {}
    state = {}
    for name, tensor in tensors.items():
        if id(tensor) not in converted:
            converted[id(tensor)] = (
                tensor.detach().to("meta") if tensor.is_floating_point() else tensor
            )
        state[name] = converted[id(tensor)]
    return state


class Tracer(TorchFunctionMode):
    """Records atoms, coupling edges, layer records and free parameters during one forward."""

    def __init__(
        self,
        model: nn.Module,
        ignored: Iterable[str] = (),
        on_meta: bool = False,
        attention: str = "heads",
        grouped_conv: str = "channels",
        whole_groups: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_UNITS:
            raise ValueError(f"attention must be one of {ATTENTION_UNITS}, got {attention!r}")
        if grouped_conv not in GROUPED_CONV_UNITS:
            raise ValueError(
                f"grouped_conv must be one of {GROUPED_CONV_UNITS}, got {grouped_conv!r}"
            )
        self.grouped_conv = grouped_conv
        self.whole_groups = frozenset(whole_groups)
        """Grouped convs that lose whole groups whatever ``grouped_conv`` says (their positions
        collapsed into one channel in a first trace: ``graph._collapsed_inside_groups``)."""
        self.model = model
        self.attention = attention
        """The removable unit of a channel dim split into (heads, head_dim): see
        :data:`ATTENTION_UNITS`."""
        self.on_meta = on_meta
        self.atoms = AtomTable()
        self.labels: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.same_along: WeakIdKeyDictionary = WeakIdKeyDictionary()
        """Constants known to hold the same values along some dims (negative dim indices, so
        broadcasting aligns them): what a factory fills and element-wise ops keep, the only way
        to know it when tracing on ``meta``."""
        self.records: dict[str, LayerRecord] = {}
        self.products: list[ProductRecord] = []
        """Products between activations, in call order (their MACs follow kept heads)."""
        self.opaque: dict[str, str] = {}
        """Layers traced as black boxes (name -> reason), listed as kept whole."""
        self.free_params: dict[tuple[str, str], FreeParam] = {}
        self.ignored = tuple(ignored)
        self.module_stack: list[str] = [""]
        self._suppress = 0
        self._busy = False
        self._running = False
        self._owner: dict[int, tuple[str, str, bool]] = {}
        self._rule_modules: dict[str, LayerRule] = {}
        self._functionally_used_rule_modules: set[str] = set()
        self.state = self._state(model, on_meta)
        parameter_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        for qualified, tensor in self.state.items():
            module, _, attr = qualified.rpartition(".")
            self._owner.setdefault(id(tensor), (module, attr, qualified in parameter_names))
        for name, module in model.named_modules():
            rule = rule_for(module)
            if rule is not None:
                self._rule_modules[name] = rule
        self._tied = self._tied_modules(model)
        self._lock_when_read: WeakIdKeyDictionary = WeakIdKeyDictionary()

    @staticmethod
    def _tied_modules(model: nn.Module) -> list[list[tuple[str, str]]]:
        """Groups of (module, attr) that share one parameter tensor (tied weights)."""
        owners: dict[int, list[tuple[str, str]]] = {}
        for qualified, param in model.named_parameters(remove_duplicate=False):
            module, _, attr = qualified.rpartition(".")
            owners.setdefault(id(param), []).append((module, attr))
        return [names for names in owners.values() if len(names) > 1]

    def _couple_tied(self) -> None:
        """A shared weight is one tensor: its dims must be cut the same way in every layer.

        For each dim, the atoms the layers assign to it (a conv's outputs, a linear's inputs)
        are coupled; a dim that carries channels in one layer and none in another (an
        embedding's vocabulary vs. the tied output's rows) cannot shrink, so it is locked.
        """
        for names in self._tied:
            records = [self.records.get(module) for module, attr in names if attr == "weight"]
            if len(records) != len(names) or any(r is None or r.groups > 1 for r in records):
                for module, _ in names:
                    record = self.records.get(module)
                    if record is not None:
                        reason = "its weight is tied with a layer that cannot be cut alike"
                        self.atoms.lock(record.out_atoms, module, reason)
                        self.atoms.lock(record.in_atoms, module, reason)
                continue
            ndim = max(max(r.rule.in_dim, r.rule.out_dim) for r in records) + 1
            for dim in range(ndim):
                per_record = [_atoms_on_dim(r, dim) for r in records]
                present = [a for a in per_record if a is not None and a.numel()]
                if len(present) == len(records):
                    for other in present[1:]:
                        self.atoms.couple(present[0], other)
                else:
                    for atoms in present:
                        self.atoms.lock(atoms, names[0][0], "a dim of its tied weight is fixed")

    @staticmethod
    def _state(model: nn.Module, on_meta: bool) -> dict[str, torch.Tensor]:
        """The tensors the traced forward will see, by qualified name (on ``meta`` when
        ``on_meta``: :func:`tensors_on_meta`)."""
        if on_meta:
            return tensors_on_meta(model)
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors |= {n: b for n, b in model.named_buffers(remove_duplicate=False) if b is not None}
        return tensors

    @property
    def where(self) -> str:
        return self.module_stack[-1] or "<model>"

    def refreshed_sizes(self) -> dict[str, int]:
        """Sizes the running module's forward may write as numbers because surgery refreshes
        them (``{"heads": 4, "width": 256}`` in timm's ``Attention``, GPT-2's attention; see
        ``layers.rules.HEAD_LAYOUTS``): such a literal follows removed heads. Only with whole
        heads as the unit (our choice): a refreshed ``head_dim`` would have to serve q/k and v,
        which ``"head_dim"`` prunes apart."""
        if self.attention != "heads" or not self.module_stack[-1]:
            return {}
        return refreshed_head_sizes(self.model.get_submodule(self.module_stack[-1]))

    def is_scalar_parameter(self, tensor: torch.Tensor) -> bool:
        """A parameter or buffer of one element, used directly in the forward."""
        return tensor.numel() == 1 and id(tensor) in self._owner

    def stored_width_source(self, size: int) -> torch.Tensor | None:
        """The channel atoms that a width the running module stores follows
        (``layers.rules.StoredWidth``: surgery sets it after slicing), when its forward writes
        that width as the number ``size``; None otherwise."""
        name = self.module_stack[-1]
        module = self.model.get_submodule(name) if name else self.model
        spec = stored_width_for(module)
        if spec is None or spec.width(module) != int(size) or not spec.agrees(module):
            return None
        source = getattr(module, spec.source)
        if isinstance(source, nn.Module):
            record = self.records.get(f"{name}.{spec.source}" if name else spec.source)
            return None if record is None else record.out_atoms
        return self.label(source).reshape(-1)

    def is_ignored(self, name: str) -> bool:
        return any(name == i or name.startswith(i + ".") for i in self.ignored)

    # ---- labels -------------------------------------------------------------------------
    def label(self, tensor: torch.Tensor) -> torch.Tensor:
        """The label of a tensor; parameters used directly get one atom per element."""
        pending = self._lock_when_read.pop(tensor, None)
        if pending is not None:
            atoms, where, reason = pending
            self.atoms.lock(atoms, where, reason)
        known = self.labels.get(tensor)
        if known is not None:
            return known
        owner = self._owner.get(id(tensor))
        if owner is None:
            return constant_label(tensor.dim())
        module, attr, is_parameter = owner
        rule = self._rule_modules.get(module)
        if rule is not None and rule.trace_call is None:
            # a conv/linear weight used outside its own forward (a model's F.linear on a
            # layer's weight): the layer is kept whole, so one locked atom stands for the whole
            # tensor. A multi-weight rule (attention) labels its own parameters as free ones.
            self._functionally_used_rule_modules.add(module)
            reason = f"{attr} of {module} is used outside its forward"
            label = self.atoms.new_locked(module, reason).reshape((1,) * tensor.dim())
            self.labels[tensor] = label
            return label
        key = (module, attr)
        if key not in self.free_params:
            atoms = self.atoms.new(tensor.numel()).reshape(tensor.shape)
            self.free_params[key] = FreeParam(module, attr, atoms, is_parameter)
            if self.is_ignored(module):
                self.atoms.lock(atoms, module, "ignored by the user")
        label = self.free_params[key].atoms
        self.labels[tensor] = label
        return label

    def pin_shape_source(self, size: ShapeInt, reason: str) -> None:
        """Lock the channels along the dim a size was read from, if that dim can shrink (the
        batch and spatial dims of an activation hold no channels; the head_dim of a head grid
        whose unit is the head never shrinks). Only while tracing: a size the model kept in an
        attribute may be computed with later."""
        if not self._running:
            return
        with torch._C.DisableTorchFunction():
            label = compact(size.label)
            if size.dim >= label.dim() or label.size(size.dim) == 1:
                return  # a batch or spatial dim
            unit = unit_dim(self, label)
            if unit is not None and size.dim != unit:
                return  # a dim of a head grid that never shrinks (head_dim of whole heads)
            self.atoms.lock(atoms_in(label), self.where, reason)

    def has_atoms(self, tensor: torch.Tensor) -> bool:
        return tensor in self.labels or id(tensor) in self._owner

    def set_label(self, tensor: torch.Tensor, label: torch.Tensor) -> None:
        self.labels[tensor] = label

    def lock_inputs(self, tensors: Iterable[torch.Tensor], reason: str) -> None:
        for tensor in tensors:
            self.atoms.lock(self.label(tensor), self.where, reason)

    def lock_when_read(
        self, tensor: torch.Tensor, atoms: torch.Tensor, where: str, reason: str
    ) -> None:
        """Label ``tensor`` as a constant, and lock ``atoms`` if any later op (or the model's
        output) reads it: what a layer returns that a removal would change, but that callers
        mostly discard (``nn.MultiheadAttention``'s attention weights)."""
        self.set_label(tensor, constant_label(tensor.dim()))
        self._lock_when_read[tensor] = (atoms, where, reason)

    def input_atoms(self, name: str, inputs: Iterable[torch.Tensor], size: int) -> torch.Tensor:
        """The atoms of the channels along the last dim of ``inputs``, one weight column
        reading the same channel of each (coupled); locked ones when an input has no channel
        structure there."""
        inputs = list(inputs)
        found = [channel_vector(self.label(x), x.dim() - 1, size) for x in inputs]
        if any(atoms is None for atoms in found):
            reason = "its input has no channel structure"
            self.lock_inputs(inputs, reason)
            return self.atoms.new_locked(name, reason).expand(size).clone()
        for atoms in found[1:]:
            self.atoms.couple(found[0], atoms)
        return found[0]

    def new_record(
        self, name: str, rule: LayerRule, in_atoms: torch.Tensor, out_channels: int
    ) -> LayerRecord:
        """Record a layer (or one weight of a layer) with fresh output atoms."""
        record = LayerRecord(name, rule, in_atoms, self.atoms.new(out_channels))
        self.records[name] = record
        if self.is_ignored(name):
            self.atoms.lock(record.out_atoms, name, "ignored by the user")
        return record

    def label_channels(self, tensor: torch.Tensor, atoms: torch.Tensor, dim: int) -> None:
        self.set_label(tensor, channel_label(atoms, dim, tensor.dim()))

    def locked_label(self, tensor: torch.Tensor, reason: str) -> torch.Tensor:
        atom = self.atoms.new_locked(self.where, reason)
        return atom.reshape((1,) * tensor.dim())

    # ---- the mode -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether the tracer's own bookkeeping is running (not the model's code)."""
        return self._busy

    def _traced_label(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The label of an activation the model's own code is looking at, None otherwise."""
        if self._busy or self._suppress:
            return None
        return self.labels.get(tensor)

    def _read_shape(self, tensor: torch.Tensor) -> torch.Size:
        """``Tensor.shape`` while tracing: sizes of activations remember where they came from
        (:class:`ShapeInt`). The attribute is C code that no torch-function mode sees, hence
        a property on ``torch.Tensor`` for the duration of :meth:`run`."""
        size = torch._C.TensorBase.shape.__get__(tensor)
        label = self._traced_label(tensor)
        return size if label is None else _sizes_with_source(size, label, self)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = shape_only_result(func, args, kwargs) if self.on_meta else None
        if out is None:
            out = func(*args, **kwargs)
        if func is torch.Tensor.size and args:
            label = self._traced_label(args[0])
            if label is not None and isinstance(out, torch.Size):
                return _sizes_with_source(out, label, self)
            if label is not None:
                dim = args[1] if len(args) > 1 else kwargs["dim"]
                return ShapeInt.of(out, label, dim % args[0].dim(), self)
        if self._busy or self._suppress:
            return out
        if canonical_name(func) not in SIZE_ARGUMENT_OPS:
            for size in _shape_ints((args, kwargs)):
                size.pin_source(f"its channel count is used as a value by '{canonical_name(func)}'")
        self._busy = True
        try:
            record_function(self, func, args, kwargs, out)
        finally:
            self._busy = False
        return out

    # ---- module hooks -------------------------------------------------------------------
    def _pre_hook(self, name: str, module: nn.Module, args: tuple) -> None:
        self.module_stack.append(name)
        if self._suppress:
            self._suppress += 1
            return
        if name in self._rule_modules or opaque_reason(module) is not None:
            self._suppress += 1

    def _post_hook(
        self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        if self._suppress:
            self._suppress -= 1
            if not self._suppress:
                self._busy = True
                try:
                    # label arithmetic is not the model's: keep it out of this mode entirely
                    with torch._C.DisableTorchFunction():
                        rule = self._rule_modules.get(name)
                        if rule is not None and rule.trace_call is not None:
                            rule.trace_call(self, name, module, args, kwargs, output)
                        elif rule is not None:
                            self._record_layer(name, module, rule, args, output)
                        else:
                            self._record_opaque(module, args, output, name)
                finally:
                    self._busy = False
        self.module_stack.pop()

    def _record_layer(
        self, name: str, module: nn.Module, rule: LayerRule, args: tuple, output: Any
    ) -> None:
        x = args[0]
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            self._record_opaque(module, args, output, name)
            return
        x_label = self.label(x)
        in_atoms = input_channel_atoms(rule, x_label, x, module)
        if in_atoms is None and self._mixes_along_another_dim(name, module, rule, x, output):
            return
        if in_atoms is None:
            in_atoms = self.atoms.new_locked(name, "its input has no channel structure")
            in_atoms = in_atoms.expand(rule.input_channels(module)).clone()
            self.atoms.lock(atoms_in(x_label), name, "its input has no channel structure")
        record = self.records.get(name)
        if record is None:
            out_atoms = self.atoms.new(rule.output_channels(module))
            record = LayerRecord(name, rule, in_atoms, out_atoms, rule.groups(module))
            self.records[name] = record
            if self.is_ignored(name):
                self.atoms.lock(out_atoms, name, "ignored by the user")
            if record.groups > 1:
                self._couple_conv_groups(record)
        else:
            self.atoms.couple(record.in_atoms, in_atoms)
        if rule.inexact_inputs:
            self.atoms.mark_inexact(in_atoms)
        record.macs_unit += rule.macs_unit(module, x, output)
        self.set_label(output, output_label(rule, record.out_atoms, output))

    def layer_of_weight(self, tensor: Any) -> tuple[str, LayerRule] | None:
        """The single-weight layer whose own weight ``tensor`` is, and its rule, or None: a
        model's ``F.linear(x, layer.weight, bias)`` outside the layer's forward (EVA), or the
        forward of a layer class that overrides it (timm's ``Linear``)."""
        owner = self._owner.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
        if owner is None:
            return None
        module, attr, _ = owner
        rule = self._rule_modules.get(module) or rule_by_type(self.model.get_submodule(module))
        if rule is None or rule.trace_call is not None or attr != rule.weight_name:
            return None
        return module, rule

    def owns(self, module: str, attr: str, tensor: Any) -> bool:
        """Whether ``tensor`` is ``module``'s own parameter ``attr``."""
        return self._owner.get(id(tensor), (None, None))[:2] == (module, attr)

    def record_functional_call(
        self, name: str, rule: LayerRule, x: torch.Tensor, output: torch.Tensor
    ) -> LayerRecord | None:
        """Record ``output = layer(x)`` computed by a functional call on the layer's weight, as
        if the layer had been called (EVA's qkv: ``F.linear(x, qkv.weight, qkv_bias)``)."""
        module = self.model.get_submodule(name)
        if rule.input_channel_dim(x) != x.dim() - 1 or rule.groups(module) != 1:
            return None
        self._record_layer(name, module, rule, (x,), output)
        return self.records.get(name)

    def _mixes_along_another_dim(
        self, name: str, module: nn.Module, rule: LayerRule, x: torch.Tensor, output: torch.Tensor
    ) -> bool:
        """A linear layer applied along a dim that carries no channels while another dim does
        (MLP-Mixer's and gMLP's token mixing: ``proj(v.transpose(-1, -2))``): each channel's
        row is mixed on its own, so the channels pass through it, removable, and the layer
        itself has nothing to cut. Its MACs shrink with those channels: they are recorded as a
        product over them (:class:`ProductRecord`), not as a layer. With a bias, a zeroed
        channel leaves the layer as that bias (one value per token, which no consumer's bias
        can absorb), so those channels are marked inexact."""
        dim = rule.input_channel_dim(x)
        last = x.dim() - 1
        if dim != last or rule.output_channel_dim(output) != output.dim() - 1:
            return False
        if output.dim() != x.dim() or rule.groups(module) != 1:
            return False
        label = compact(self.label(x))
        if label.size(last) != 1 or not bool((label >= 0).any()):
            return False
        macs = rule.macs_unit(module, x, output) * rule.input_channels(module)
        macs *= rule.output_channels(module)
        grid = label.reshape(-1).clone()
        self.products.append(
            ProductRecord(name, grid, torch.full_like(grid, -1), macs / grid.numel())
        )
        if rule.bias(module) is not None:
            self.atoms.mark_inexact(atoms_in(label))
        self.set_label(output, label)
        return True

    def _couple_conv_groups(self, record: LayerRecord) -> None:
        """A grouped conv keeps every group alike (:data:`GROUPED_CONV_UNITS`): couple each
        position inside a group with the same position of every other group, or, for whole
        groups (and depthwise convs), every channel of a group with its inputs."""
        groups = record.groups
        out_atoms = record.out_atoms.reshape(groups, -1)
        in_atoms = record.in_atoms.reshape(groups, -1)
        inside = self.grouped_conv == "channels" and record.name not in self.whole_groups
        if inside and in_atoms.size(1) > 1 and out_atoms.size(1) > 1:
            record.inside_groups = True
            self.atoms.couple(out_atoms[:1].expand_as(out_atoms), out_atoms)
            self.atoms.couple(in_atoms[:1].expand_as(in_atoms), in_atoms)
            if bool((in_atoms < 0).any()):
                # a position that reads a fixed-size input in one group must stay in all
                self.atoms.lock(in_atoms, record.name, "a group reads a fixed-size input")
            return
        self.atoms.couple(out_atoms[:, :1].expand_as(out_atoms), out_atoms)
        self.atoms.couple(out_atoms[:, :1].expand_as(in_atoms), in_atoms)
        constant_input = (in_atoms < 0).any(dim=1)
        if bool(constant_input.any()):
            self.atoms.lock(
                out_atoms[constant_input], record.name, "a group reads a fixed-size input"
            )

    def _record_opaque(self, module: nn.Module, args: tuple, output: Any, name: str) -> None:
        reason = opaque_reason(module) or f"{type(module).__name__} cannot be traced into"
        self.opaque[name] = reason
        self.lock_inputs(iter_tensors(args), reason)
        for tensor in iter_tensors(output):
            self.set_label(tensor, self.locked_label(tensor, reason))

    # ---- running ------------------------------------------------------------------------
    def run(self, example_inputs: Any) -> Any:
        call = as_call_args(example_inputs)  # validate before any hook touches the model
        handles = []
        for name, module in self.model.named_modules():
            handles.append(
                module.register_forward_pre_hook(lambda m, a, name=name: self._pre_hook(name, m, a))
            )
            handles.append(
                module.register_forward_hook(
                    lambda m, a, k, o, name=name: self._post_hook(name, m, a, k, o),
                    with_kwargs=True,
                )
            )
        if self.on_meta:
            call = map_tensors(lambda x: x.to("meta") if x.is_floating_point() else x, call)
        shadowed = torch.Tensor.__dict__.get("shape")  # a tracer inside a tracer's run
        torch.Tensor.shape = property(self._read_shape)  # type: ignore[assignment]
        self._running = True
        try:
            with torch.no_grad(), self:
                if self.on_meta:
                    output = functional_call(
                        self.model, self.state, call.args, call.kwargs, tie_weights=False
                    )
                else:
                    output = self.model(*call.args, **call.kwargs)
        except Exception as error:
            where = self.module_stack[-1]
            if not where:  # the model's own forward: nothing to ignore, the inputs are wrong
                raise TraceError(
                    f"the model's forward failed on example_inputs while tracing: {error}. "
                    "Check that example_inputs are the model's positional arguments, with the "
                    "shapes and dtypes it expects"
                ) from error
            raise TraceError(
                f"the forward pass failed inside module '{where}' while tracing: {error}. "
                f"Check that example_inputs match what the model expects; if this module "
                f"cannot run under tracing, pass ignore=['{where}'] or replace it."
            ) from error
        finally:
            self._running = False
            if shadowed is None:
                del torch.Tensor.shape
            else:
                torch.Tensor.shape = shadowed  # type: ignore[assignment]
            for handle in handles:
                handle.remove()
        self._busy = True
        try:
            for tensor in iter_tensors(output):
                self.atoms.lock(atoms_in(self.label(tensor)), "<output>", "it is a model output")
            self._couple_tied()
            for name in self._functionally_used_rule_modules:
                record = self.records.get(name)
                if record is not None:
                    reason = "its weight is also used outside its forward"
                    self.atoms.lock(record.out_atoms, name, reason)
                    self.atoms.lock(record.in_atoms, name, reason)
        finally:
            self._busy = False
        return output
