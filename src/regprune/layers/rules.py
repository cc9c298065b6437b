"""The one table of layer-type knowledge: how each parametrized layer is traced and sliced.

Only layers that *create* channels (conv filters, linear rows, embedding dims, the heads of
``nn.MultiheadAttention``) need a rule here, and those that cannot be sliced at all (recurrent
layers) an entry in :data:`OPAQUE_LAYERS`. Per-channel layers (BatchNorm,
LayerNorm, GroupNorm, PReLU, ...) are traced through the functions they call, their parameters
handled like any parameter used in the forward; their rules here only refresh the size attributes
(``num_features`` ...) once those parameters were sliced.

A rule applies to a module when it is an instance of the rule's type *and* does not override its
``forward``: a subclass with its own forward is traced through the functions it calls instead.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from regprune.layers.multihead import PrunedMultiheadAttention, attend
from regprune.layers.window_attention import (
    WINDOW_FORMS,
    PrunedForm,
    RelativePositionalMultiHeadAttention,
    ShiftedWindowAttention,
    ShiftedWindowAttention3d,
    ShiftedWindowAttentionV2,
    attend_windows,
    head_count,
    window_geometry,
    window_geometry_3d,
)


@dataclass
class LayerRecord:
    """What tracing learned about one parametrized layer (summed over all its calls).

    ``in_atoms[i]`` is the atom feeding weight input index ``i`` (-1 when none), ``out_atoms[o]``
    the atom of output channel ``o``. ``macs_unit`` is the MACs of one (input, output) channel pair
    of one group, so ``macs = in_kept * out_kept / groups_kept * macs_unit`` (plus
    ``out_kept * out_macs_unit``).
    """

    name: str
    rule: LayerRule
    in_atoms: torch.Tensor
    out_atoms: torch.Tensor
    groups: int = 1
    macs_unit: float = 0.0
    out_macs_unit: float = 0.0
    """MACs of one output channel that no input channel scales (an attention's ``q k^T`` and
    ``attn v`` per q/k/v row of a head), so ``macs += out_kept * out_macs_unit``."""
    inside_groups: bool = False
    """A grouped conv that loses the same channels inside every group (the group count stays),
    rather than whole groups: ``macs = in_kept * out_kept / groups * macs_unit``."""


class LayerRule:
    """Base of the table: one layer type's tracing, slicing, counting and folding."""

    module_type: type[nn.Module] = nn.Module
    in_dim = 1
    out_dim = 0
    weight_name = "weight"
    bias_name = "bias"
    """The parameters whose ``out_dim`` rows are the layer's output channels."""
    reads_channels = True
    """False for layers that create channels from indices (embeddings): no input channels."""
    inexact_inputs = False
    """True where removing an input channel changes the output beyond zeroing it (a layer that
    normalises its weights over its inputs): the tracer marks those channels inexact."""

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type) and (
            type(module).forward is self.module_type.forward
        )

    def input_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def output_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def groups(self, module: nn.Module) -> int:
        return 1

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        raise NotImplementedError

    def output_channel_dim(self, y: torch.Tensor) -> int:
        return 1

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        """Slice the module's parameters in place (on the surgery's copy) and fix attributes."""
        raise NotImplementedError

    def input_channel_dim(self, x: torch.Tensor) -> int:
        """The dim of the layer's input that holds its input channels."""
        return 1

    def weight(self, module: nn.Module) -> torch.Tensor:
        return getattr(module, self.weight_name)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return getattr(module, self.bias_name, None)

    trace_call: Callable[..., None] | None = None
    """For a layer that is more than one weight (attention): ``trace_call(tracer, name, module,
    args, kwargs, output)`` records the call instead of the tracer's one-weight recording."""

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        """Per output channel, what the layer adds when input channel ``i`` holds ``values[i]``
        everywhere (bias excluded); None when no bias can stand for it (grouped layers)."""
        return None

    unfoldable_because = (
        "a strided or grouped transposed conv spreads a constant input unevenly; no bias can "
        "stand for it"
    )
    """Why :meth:`response_to_constant_input` gives None, for the compensation report."""

    def observe_inputs(
        self, model: nn.Module, name: str, collect: Callable[[torch.Tensor], None]
    ) -> RemovableHandle:
        """Hand every input of layer ``name`` of ``model`` to ``collect`` while the returned
        hook is registered (what compensation measures)."""

        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                collect(args[0])

        return model.get_submodule(name).register_forward_pre_hook(hook)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.name`` to ``value``, a tensor of its own (copied only if it is a view)."""
    old = getattr(module, name)
    value = value.detach()
    if value._is_view() or value.untyped_storage().data_ptr() == old.untyped_storage().data_ptr():
        value = value.clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, old.requires_grad))
    else:
        setattr(module, name, value)


def _kept(tensor: torch.Tensor, keep: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The slices of ``tensor`` along ``dim`` that the boolean ``keep`` marks, as a new tensor.

    ``index_select`` rather than boolean indexing (our choice): a few times faster on a
    512x512x3x3 conv weight (``python -m benchmarks.engine_parts``)."""
    index = keep.nonzero().reshape(-1).to(tensor.device)
    return tensor.detach().index_select(dim, index)


def _grouped_keep(
    keep_in: torch.Tensor, keep_out: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept groups and, inside each, the kept input and output positions of a grouped
    layer. Tracing makes every kept group keep the same positions (whole groups, or the same
    channels in every group), which is what lets the result stay one grouped layer."""
    kin, kout = keep_in.reshape(groups, -1), keep_out.reshape(groups, -1)
    alive = kout.any(1) & kin.any(1)
    if not bool(alive.any()):
        return alive, kin[0] & False, kout[0] & False
    inside_in, inside_out = kin[alive], kout[alive]
    alike = (inside_in == inside_in[:1]).all() & (inside_out == inside_out[:1]).all()
    if not bool(alike):
        raise ValueError("a plan keeps different channels in the groups of a grouped layer")
    return alive, inside_in[0], inside_out[0]


class ConvRule(LayerRule):
    """Conv1d/2d/3d, including grouped and depthwise ones.

    Grouped convs lose the same channels inside every group, or whole groups (tracing couples
    the channels accordingly, ``graph.tracer.GROUPED_CONV_UNITS``); either way every kept group
    keeps the same layout, so the result is one grouped conv: exact, and valid for depthwise
    convs, where a group is one channel.
    """

    module_type = nn.modules.conv._ConvNd

    def applies_to(self, module: nn.Module) -> bool:
        conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        return any(isinstance(module, t) and type(module).forward is t.forward for t in conv_types)

    def input_channels(self, module: nn.Module) -> int:
        return module.in_channels

    def output_channels(self, module: nn.Module) -> int:
        return module.out_channels

    def groups(self, module: nn.Module) -> int:
        return module.groups

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        per_output_value = module.weight[0, 0].numel()
        return float(y[:, :1].numel() * per_output_value)

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        if module.bias is not None:
            _replace(module, "bias", _kept(module.bias, keep_out))
        if module.groups == 1:
            _replace(module, "weight", _kept(_kept(module.weight, keep_out), keep_in, 1))
        else:
            alive, inside_in, inside_out = _grouped_keep(keep_in, keep_out, module.groups)
            weight = module.weight.unflatten(0, (module.groups, -1))[alive]
            weight = weight[:, inside_out][:, :, inside_in]
            _replace(module, "weight", weight.flatten(0, 1))
            module.groups = int(alive.sum())
        module.in_channels = int(keep_in.sum())
        module.out_channels = int(keep_out.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        # every tap of the kernel sees the constant, except taps in the zero padding at the
        # border: exact in the interior (docs/architecture.md, "Lossless removal")
        taps = module.weight.detach().flatten(2).sum(dim=2).to(values.dtype)
        if module.groups == 1:
            return taps.movedim(self.in_dim, 1) @ values  # (out, in) @ (in,)
        # output o of group k reads group k's inputs: (groups, out/g, in/g) @ (groups, in/g)
        per_group = taps.unflatten(0, (module.groups, -1))
        return (per_group @ values.reshape(module.groups, -1, 1)).reshape(-1)


class StandardizedConvRule(ConvRule):
    """timm's weight-standardized convs (``StdConv2d``, ``ScaledStdConv2d`` and their ``Same``
    forms: NFNets, BiT ResNets), whose forward standardizes each filter over its inputs and
    kernel taps, then calls ``F.conv2d`` on the result.

    Traced as the layer it is (its forward is not followed). Removing output channels leaves
    the other filters' statistics as they were: exact, with ``gain`` sliced alike. Removing
    input channels changes every filter's mean and variance: those channels are inexact, as
    a LayerNorm's are. ``scale`` (``gamma / sqrt(fan_in)``) keeps its value (our choice: the
    pruned layer computes what the original did on the kept inputs, up to the statistics).
    Matched by class name, without importing timm (our choice, as :class:`HeadLayout`).
    """

    type_names = frozenset(["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"])
    inexact_inputs = True
    unfoldable_because = (
        "a weight-standardized conv's effective weights change with its inputs; no bias can "
        "stand for a removed one"
    )

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d) and type(module).__name__ in self.type_names

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        super().slice_(module, keep_in, keep_out)
        gain = getattr(module, "gain", None)
        if isinstance(gain, torch.Tensor) and gain.shape[0] == keep_out.numel():
            _replace(module, "gain", _kept(gain, keep_out))

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        return None


class ConvTransposeRule(ConvRule):
    """ConvTranspose: weight is (in, out/groups, k...), the transpose of a conv's layout."""

    in_dim = 0
    out_dim = 1

    def applies_to(self, module: nn.Module) -> bool:
        types = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        return any(isinstance(module, t) and type(module).forward is t.forward for t in types)

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(x[:, :1].numel() * module.weight[0, 0].numel())

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        if module.bias is not None:
            _replace(module, "bias", _kept(module.bias, keep_out))
        if module.groups == 1:
            _replace(module, "weight", _kept(_kept(module.weight, keep_in), keep_out, 1))
        else:
            alive, inside_in, inside_out = _grouped_keep(keep_in, keep_out, module.groups)
            weight = module.weight.unflatten(0, (module.groups, -1))[alive]
            weight = weight[:, inside_in][:, :, inside_out]
            _replace(module, "weight", weight.flatten(0, 1))
            module.groups = int(alive.sum())
        module.in_channels = int(keep_in.sum())
        module.out_channels = int(keep_out.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        # a transposed conv spreads each input value over its kernel: interior outputs receive
        # every tap once per stride phase, so the fold is exact only for stride 1 (our choice:
        # strided transposed convs are not compensated)
        if any(s != 1 for s in module.stride) or module.groups != 1:
            return None
        return super().response_to_constant_input(module, values)


class LinearRule(LayerRule):
    """Linear layers: features are the last dim of input and output."""

    module_type = nn.Linear

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward

    def input_channels(self, module: nn.Module) -> int:
        return module.in_features

    def output_channels(self, module: nn.Module) -> int:
        return module.out_features

    def output_channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 1

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(x.numel() // module.in_features)

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        _replace(module, "weight", _kept(_kept(module.weight, keep_out), keep_in, 1))
        if module.bias is not None:
            _replace(module, "bias", _kept(module.bias, keep_out))
        module.in_features = int(keep_in.sum())
        module.out_features = int(keep_out.sum())

    def input_channel_dim(self, x: torch.Tensor) -> int:
        return x.dim() - 1

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        # only the columns of nonzero values: converting the whole weight to float64 held a
        # second, double-size copy of VGG's 400 MB classifier for columns that add zero
        used = torch.nonzero(values).reshape(-1)
        weight = module.weight.detach().index_select(1, used.to(module.weight.device))
        return weight.to(values.dtype) @ values[used]


class EmbeddingRule(LayerRule):
    """Embeddings create channels (the embedding dim) from indices; nothing comes in."""

    module_type = nn.Embedding
    in_dim = 0
    out_dim = 1
    reads_channels = False

    def input_channels(self, module: nn.Module) -> int:
        return 0

    def output_channels(self, module: nn.Module) -> int:
        return module.embedding_dim

    def output_channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 1

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return 0.0

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        _replace(module, "weight", module.weight[:, keep_out])
        module.embedding_dim = int(keep_out.sum())


def _hf_conv1d_type() -> type[nn.Module] | None:
    """Hugging Face's ``Conv1D`` class if transformers is loaded, without importing it: a model
    holding one was built by transformers, so the module is already in ``sys.modules``."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


class HFConv1DRule(LayerRule):
    """Hugging Face's ``Conv1D`` (GPT-2's projections): a linear layer whose weight is stored
    transposed, ``(in_features, out_features)``, applied with ``addmm``."""

    in_dim = 0
    out_dim = 1

    def applies_to(self, module: nn.Module) -> bool:
        conv1d = _hf_conv1d_type()
        return (
            conv1d is not None
            and isinstance(module, conv1d)
            and type(module).forward is conv1d.forward
        )

    def input_channels(self, module: nn.Module) -> int:
        return module.weight.shape[0]

    def output_channels(self, module: nn.Module) -> int:
        return module.nf

    def output_channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 1

    def input_channel_dim(self, x: torch.Tensor) -> int:
        return x.dim() - 1

    def macs_unit(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(x.numel() // module.weight.shape[0])

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        _replace(module, "weight", _kept(_kept(module.weight, keep_in), keep_out, 1))
        if module.bias is not None:
            _replace(module, "bias", _kept(module.bias, keep_out))
        module.nf = int(keep_out.sum())
        if hasattr(module, "nx"):
            module.nx = int(keep_in.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        used = torch.nonzero(values).reshape(-1)
        weight = module.weight.detach().index_select(0, used.to(module.weight.device))
        return weight.t().to(values.dtype) @ values[used]


def _call_arguments(function: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of one call by parameter name, defaults filled in."""
    bound = inspect.signature(function).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in list(bound.arguments.items())[1:]}  # without self


class MultiheadAttentionRule(LayerRule):
    """``nn.MultiheadAttention`` with packed q/k/v (``kdim == vdim == embed_dim``), pruned by
    whole heads.

    One record is the packed ``in_proj_weight``: its inputs are the residual channels (one
    column reads the same channel of query, key and value), its outputs the ``3 * embed_dim``
    q/k/v rows, those of one head coupled into one channel; a second record is ``out_proj``,
    whose inputs are the v rows (output channel ``c`` of the attention is ``attn @ v[:, c]``).
    Removing a head removes its q, k, v rows and its ``out_proj`` columns: exact, since a head
    whose rows are zero contributes nothing. Surgery turns the pruned copy into a
    :class:`~regprune.layers.multihead.PrunedMultiheadAttention`, whose forward takes fewer
    heads than ``embed_dim // head_dim``.

    Kept whole: separate q/k/v weights (``kdim``/``vdim`` differ), ``add_bias_kv`` (through
    :data:`OPAQUE_LAYERS`), a 3-D ``attn_mask`` (one mask per head) and head_dim positions as
    the unit (``attention="head_dim"``) keep the heads; attention weights that are read after
    the call (``need_weights=True`` and used) keep them too: averaged over heads, they change
    when one goes.
    """

    module_type = nn.MultiheadAttention
    weight_name = "in_proj_weight"
    bias_name = "in_proj_bias"
    unfoldable_because = (
        "its key and value inputs may differ from the query whose values were measured"
    )

    def applies_to(self, module: nn.Module) -> bool:
        if type(module) is PrunedMultiheadAttention:
            return module.bias_k is None
        return (
            type(module) is nn.MultiheadAttention
            and module._qkv_same_embed_dim
            and module.bias_k is None
        )

    def input_channels(self, module: nn.Module) -> int:
        return module.in_proj_weight.shape[1]

    def output_channels(self, module: nn.Module) -> int:
        return module.in_proj_weight.shape[0]

    def input_channel_dim(self, x: torch.Tensor) -> int:
        return x.dim() - 1

    def output_channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 1

    def slice_(self, module: nn.Module, keep_in: torch.Tensor, keep_out: torch.Tensor) -> None:
        weight = _kept(_kept(module.in_proj_weight, keep_out), keep_in, 1)
        _replace(module, "in_proj_weight", weight)
        if module.in_proj_bias is not None:
            _replace(module, "in_proj_bias", _kept(module.in_proj_bias, keep_out))
        module.embed_dim = module.kdim = module.vdim = int(keep_in.sum())
        module.num_heads = int(keep_out.sum()) // 3 // module.head_dim
        PrunedMultiheadAttention.adopt(module)

    def trace_call(
        self,
        tracer: Any,
        name: str,
        module: nn.Module,
        args: tuple,
        kwargs: dict,
        output: Any,
    ) -> None:
        call = _call_arguments(nn.MultiheadAttention.forward, args, kwargs)
        inputs = [call[n] for n in ("query", "key", "value")]
        embed, head_dim = self.input_channels(module), module.head_dim
        inner = self.output_channels(module) // 3
        in_atoms = tracer.input_atoms(name, inputs, embed)
        record = tracer.records.get(name)
        if record is None:
            record = tracer.new_record(name, self, in_atoms, 3 * inner)
            rows = record.out_atoms.reshape(3, inner // head_dim, head_dim).transpose(0, 1)
            heads = rows.reshape(inner // head_dim, -1)
            tracer.atoms.couple(heads[:, :1].expand_as(heads), heads)
            out_proj = module.out_proj
            tracer.new_record(
                f"{name}.out_proj",
                MultiheadOutProjRule(),
                record.out_atoms[2 * inner :],
                out_proj.out_features,
            )
            if tracer.attention != "heads":
                reason = "nn.MultiheadAttention is pruned by whole heads (attention='heads')"
                tracer.atoms.lock(record.out_atoms, name, reason)
        else:
            tracer.atoms.couple(record.in_atoms, in_atoms)
        out_record = tracer.records[f"{name}.out_proj"]
        mask = call["attn_mask"]
        if isinstance(mask, torch.Tensor) and mask.dim() == 3:
            reason = "a 3-D attn_mask holds one mask per head: its size is the head count"
            tracer.atoms.lock(record.out_atoms, name, reason)
        query, key = inputs[0], inputs[1]
        batched = query.dim() == 3
        batch = query.shape[0 if module.batch_first else 1] if batched else 1
        q_tokens, k_tokens = query.numel() // embed, key.numel() // embed
        source_len = k_tokens // batch
        record.macs_unit += (q_tokens + k_tokens + inputs[2].numel() // embed) / 3
        record.out_macs_unit += 2 * q_tokens * source_len / 3
        out_record.macs_unit += q_tokens
        attended, weights = output
        tracer.label_channels(attended, out_record.out_atoms, attended.dim() - 1)
        if isinstance(weights, torch.Tensor):
            reason = (
                "its attention weights (need_weights=True) are read: averaged over heads, "
                "they change when a head goes"
            )
            tracer.lock_when_read(weights, record.out_atoms, name, reason)


class MultiheadOutProjRule(LinearRule):
    """``nn.MultiheadAttention``'s ``out_proj``, recorded by :class:`MultiheadAttentionRule`:
    a linear layer that the attention applies inside its own forward (``F.linear`` on
    ``out_proj.weight``), so no hook on it sees its inputs, the heads' outputs."""

    def observe_inputs(
        self, model: nn.Module, name: str, collect: Callable[[torch.Tensor], None]
    ) -> RemovableHandle:
        """The heads' outputs, recomputed from the attention's call (one more attention per
        measured forward)."""

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            call = _call_arguments(nn.MultiheadAttention.forward, args, kwargs)
            collect(attend(module, **call)[0])

        owner = model.get_submodule(name.rpartition(".")[0])
        # first among the attention's hooks: a MACs counter's hook then counts the recomputed
        # attention inside the attention (whose MACs come from a formula), not beside it
        return owner.register_forward_hook(hook, with_kwargs=True, prepend=True)


class WindowLinearRule(LinearRule):
    """``qkv`` or ``proj`` of torchvision's Swin window attention, recorded by
    :class:`WindowAttentionRule`: the attention calls ``F.linear`` on their weights, so no hook
    on them sees their inputs. ``qkv`` reads what the attention receives; ``proj`` reads the
    heads' outputs, recomputed from it when measured."""

    def __init__(self, reads_heads: bool) -> None:
        self.reads_heads = reads_heads

    def observe_inputs(
        self, model: nn.Module, name: str, collect: Callable[[torch.Tensor], None]
    ) -> RemovableHandle:
        def hook(module: nn.Module, args: tuple) -> None:
            collect(attend_windows(module, args[0]) if self.reads_heads else args[0])

        return model.get_submodule(name.rpartition(".")[0]).register_forward_pre_hook(hook)


class PackedHeadsRule(LayerRule):
    """An attention module traced whole: one child projects the residual to packed q/k/v rows
    (``3 x heads x head_dim``), another maps the v rows' heads back to the residual, and the
    module's own forward (window partition, scores, position bias) sits between them.

    ``qkv`` is recorded with the residual channels as inputs, the rows of one head coupled into
    one channel together with the module's per-head parameters (:meth:`couple_heads`); the
    output child reads the v rows and writes the residual. Surgery slices both children and
    the per-head parameters, and the module's pruned form (``layers.window_attention``) takes
    the sizes from them. Its ``q k^T`` and ``attn v`` are ``out_macs_unit`` per q/k/v row, so
    removed heads are credited with them. Head_dim positions as the unit
    (``attention="head_dim"``) keep the heads whole.
    """

    qkv_name = "qkv"
    out_name = "proj"
    qkv_rule: LayerRule = LinearRule()
    out_rule: LayerRule = LinearRule()

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type) and (
            type(module) in WINDOW_FORMS or type(module) in WINDOW_FORMS.values()
        )

    def input_channels(self, module: nn.Module) -> int:
        return module.get_submodule(self.qkv_name).in_features

    def output_channels(self, module: nn.Module) -> int:
        return module.get_submodule(self.out_name).out_features

    def heads(self, module: nn.Module) -> int:
        return module.relative_position_bias_table.shape[1]

    def tokens(self, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        """How many tokens the projections see, and how many keys each query scores."""
        raise NotImplementedError

    def couple_heads(self, tracer: Any, name: str, module: nn.Module, heads: torch.Tensor) -> None:
        """Couple the module's per-head parameters with ``heads`` (one atom per head)."""
        table = tracer.label(module.relative_position_bias_table)
        tracer.atoms.couple(heads[None, :].expand_as(table), table)

    def trace_call(
        self,
        tracer: Any,
        name: str,
        module: nn.Module,
        args: tuple,
        kwargs: dict,
        output: Any,
    ) -> None:
        x = args[0] if args else kwargs["x"]
        heads = self.heads(module)
        inner = module.get_submodule(self.qkv_name).out_features // 3
        in_atoms = tracer.input_atoms(name, [x], self.input_channels(module))
        qkv = tracer.records.get(f"{name}.{self.qkv_name}")
        if qkv is None:
            qkv = tracer.new_record(f"{name}.{self.qkv_name}", self.qkv_rule, in_atoms, 3 * inner)
            rows = qkv.out_atoms.reshape(3, heads, -1).transpose(0, 1).reshape(heads, -1)
            tracer.atoms.couple(rows[:, :1].expand_as(rows), rows)
            self.couple_heads(tracer, name, module, rows[:, 0])
            out_channels = self.output_channels(module)
            v_rows = qkv.out_atoms[2 * inner :]
            tracer.new_record(f"{name}.{self.out_name}", self.out_rule, v_rows, out_channels)
            if tracer.attention != "heads":
                reason = f"{type(module).__name__} is pruned by whole heads (attention='heads')"
                tracer.atoms.lock(qkv.out_atoms, name, reason)
        else:
            tracer.atoms.couple(qkv.in_atoms, in_atoms)
        out = tracer.records[f"{name}.{self.out_name}"]
        tokens, keys = self.tokens(module, x)
        qkv.macs_unit += tokens
        qkv.out_macs_unit += 2 * tokens * keys / 3  # q k^T and attn v, per q/k/v row
        out.macs_unit += tokens
        tracer.label_channels(output, out.out_atoms, output.dim() - 1)


class WindowAttentionRule(PackedHeadsRule):
    """torchvision's Swin window attention (V1 and V2): ``F.linear`` on ``qkv.weight`` and
    ``proj.weight`` over padded, shifted windows, a head size derived from the input's width.
    A head's per-head parameters are its column of the relative position bias table (V1), or
    its ``logit_scale`` and its row of the position-bias MLP's last layer (V2)."""

    module_type = ShiftedWindowAttention
    weight_name = "qkv.weight"
    qkv_rule = WindowLinearRule(reads_heads=False)
    out_rule = WindowLinearRule(reads_heads=True)

    def heads(self, module: nn.Module) -> int:
        return head_count(module)

    def tokens(self, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        pad_h, pad_w, _ = window_geometry(module, x)
        return x.shape[0] * pad_h * pad_w, module.window_size[0] * module.window_size[1]

    def couple_heads(self, tracer: Any, name: str, module: nn.Module, heads: torch.Tensor) -> None:
        if not isinstance(module, ShiftedWindowAttentionV2):
            super().couple_heads(tracer, name, module, heads)
            return
        tracer.atoms.couple(heads, tracer.label(module.logit_scale).reshape(-1))
        mlp = f"{name}.cpb_mlp.2"
        hidden = module.cpb_mlp[2].in_features
        reason = "it computes the position bias from fixed coordinates"
        hidden_atoms = tracer.atoms.new_locked(mlp, reason).expand(hidden).clone()
        bias_mlp = tracer.new_record(mlp, LinearRule(), hidden_atoms, heads.numel())
        tracer.atoms.couple(heads, bias_mlp.out_atoms)
        bias_mlp.macs_unit += module.relative_coords_table.numel() / 2


class WindowAttention3dRule(WindowAttentionRule):
    """torchvision's video Swin window attention: the same packed heads over (T, H, W)
    windows; a head's per-head parameters are its column of the relative position bias
    table."""

    module_type = ShiftedWindowAttention3d

    def tokens(self, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        padded, window, _ = window_geometry_3d(module, x)
        return x.shape[0] * math.prod(padded), math.prod(window)


class RelativeAttentionRule(PackedHeadsRule):
    """MaxViT's ``RelativePositionalMultiHeadAttention``: ``to_qkv`` split with ``chunk``,
    scores by ``einsum`` with a relative position bias, the heads merged back to the input's
    width ``D`` before ``merge``. Its products are counted by the op counter inside the module
    (no formula)."""

    module_type = RelativePositionalMultiHeadAttention
    weight_name = "to_qkv.weight"
    qkv_name = "to_qkv"
    out_name = "merge"

    def tokens(self, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        return x.numel() // x.shape[-1], x.shape[-2]


LAYER_RULES: tuple[LayerRule, ...] = (
    ConvRule(),
    StandardizedConvRule(),
    ConvTransposeRule(),
    LinearRule(),
    EmbeddingRule(),
    HFConv1DRule(),
    MultiheadAttentionRule(),
    WindowAttentionRule(),
    WindowAttention3dRule(),
    RelativeAttentionRule(),
)

OPAQUE_LAYERS: dict[type[nn.Module], str] = {
    nn.MultiheadAttention: (
        "nn.MultiheadAttention with separate q/k/v weights (kdim/vdim != embed_dim), "
        "add_bias_kv or a forward of its own is kept whole (the MLP hidden dims around it are "
        "still pruned)"
    ),
    nn.LSTM: "recurrent layers are kept whole",
    nn.GRU: "recurrent layers are kept whole",
    nn.RNN: "recurrent layers are kept whole",
}
"""Layers traced as black boxes: everything they read or write is locked, with this reason."""


MacsFormula = Callable[[nn.Module, tuple, dict, Any], int]
"""``formula(module, args, kwargs, output) -> MACs`` of one call of a layer, from shapes only."""


def _conv_macs(module: nn.modules.conv._ConvNd, args: tuple, kwargs: dict, out: Any) -> int:
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        # Every input element is scattered through the kernel into out_channels/groups outputs;
        # counting from the output side would overcount by stride**dims.
        return args[0].numel() * (module.out_channels // module.groups) * kernel
    return out.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, args: tuple, kwargs: dict, out: Any) -> int:
    tokens = args[0].numel() // module.in_features  # every leading dim is a token
    return tokens * module.in_features * module.out_features


def _mha_macs(module: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any) -> int:
    call = _call_arguments(nn.MultiheadAttention.forward, args, kwargs)
    query, key, value = call["query"], call["key"], call["value"]
    embed = module.embed_dim
    inner = module.num_heads * module.head_dim  # embed_dim, unless heads were pruned
    q_tokens = query.numel() // embed  # batch * target length
    k_tokens = key.numel() // module.kdim  # batch * source length
    v_tokens = value.numel() // module.vdim
    batch_dim = 0 if module.batch_first else 1
    batch = query.shape[batch_dim] if query.dim() == 3 else 1  # 2-D query: unbatched
    target_len, source_len = q_tokens // batch, k_tokens // batch
    in_proj = (q_tokens * embed + k_tokens * module.kdim + v_tokens * module.vdim) * inner
    # Summed over heads, Q @ K^T and attn @ V each cost batch * L * S * num_heads * head_dim.
    attention = 2 * batch * target_len * source_len * inner
    out_proj = q_tokens * inner * module.out_proj.out_features
    return in_proj + attention + out_proj


def _window_attention_macs(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> int:
    """qkv, the two products of each window's heads, proj, over the padded windows (2-D, or
    (T, H, W) for video Swin); and
    Swin V2's position-bias MLP (run on its fixed coordinate table at every call)."""
    x = args[0] if args else kwargs["x"]
    if isinstance(module, ShiftedWindowAttention3d):
        padded, window, _ = window_geometry_3d(module, x)
        tokens, window_tokens = x.shape[0] * math.prod(padded), math.prod(window)
    else:
        pad_h, pad_w, _ = window_geometry(module, x)
        tokens = x.shape[0] * pad_h * pad_w
        window_tokens = module.window_size[0] * module.window_size[1]
    inner = module.qkv.out_features // 3
    macs = tokens * module.qkv.in_features * 3 * inner
    macs += 2 * tokens * window_tokens * inner + tokens * inner * module.proj.out_features
    if isinstance(module, ShiftedWindowAttentionV2):
        positions = module.relative_coords_table.numel() // 2
        for layer in (module.cpb_mlp[0], module.cpb_mlp[2]):
            macs += positions * layer.in_features * layer.out_features
    return macs


MACS_FORMULAS: dict[type[nn.Module], MacsFormula] = {
    nn.modules.conv._ConvNd: _conv_macs,
    nn.Linear: _linear_macs,
    nn.MultiheadAttention: _mha_macs,
    ShiftedWindowAttention: _window_attention_macs,
    ShiftedWindowAttention3d: _window_attention_macs,
}
"""The layers whose MACs :func:`regprune.count` takes from a formula rather than from the ops.

Why a formula: PyTorch's fused fast paths (``nn.MultiheadAttention`` in eval, CPU flash
attention) hide the matmuls from op-level counting, and a formula reads only the layer's
attributes and the call's shapes, so it also holds on the ``meta`` device. Keyed by type alone,
unlike :data:`LAYER_RULES`: slicing must know what a forward does with the weights (a subclass
with its own forward is traced through), while the count of a conv is the conv's, whoever calls
it. For the layers both tables cover, a rule's ``macs_unit`` is this formula per (input, output)
channel pair of one group (tests/metrics check the two agree).
"""


def macs_formula_for(module: nn.Module) -> MacsFormula | None:
    """The formula that gives ``module``'s MACs per call, or None to count its ops instead."""
    for layer_type, formula in MACS_FORMULAS.items():
        if isinstance(module, layer_type):
            return formula
    return None


PARAMETRIZED_REASON = (
    "its weight is parametrized (weight_norm, spectral_norm ...): the parametrization couples "
    "every channel (a norm over the whole weight), so the layer is kept whole"
)


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule that traces and slices ``module``, or None to trace through its forward."""
    if parametrize.is_parametrized(module):
        return None
    for rule in LAYER_RULES:
        if rule.applies_to(module):
            return rule
    return None


def rule_by_type(module: nn.Module) -> LayerRule | None:
    """The single-weight rule of the layer type ``module`` is an instance of, even when its
    class overrides ``forward`` (timm's ``Linear``): a functional call on its own weight, inside
    or outside that forward, is that layer's call (:meth:`Tracer.layer_of_weight`)."""
    if parametrize.is_parametrized(module):
        return None
    for rule in LAYER_RULES:
        if rule.trace_call is None and isinstance(module, rule.module_type):
            return rule
    return None


def opaque_reason(module: nn.Module) -> str | None:
    if parametrize.is_parametrized(module):
        return PARAMETRIZED_REASON
    for layer_type, reason in OPAQUE_LAYERS.items():
        if isinstance(module, layer_type):
            return reason
    return None


def _refresh_norm(module: nn.Module) -> None:
    size_source = module.weight if module.weight is not None else module.running_mean
    if size_source is not None:
        module.num_features = size_source.numel()


def _refresh_layer_norm(module: nn.Module) -> None:
    if module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)


def _refresh_group_norm(module: nn.Module) -> None:
    """Whole groups were removed (the tracer couples them), except under one group, which
    loses any channels and stays one group."""
    if module.weight is not None:
        channels_per_group = module.num_channels // module.num_groups
        module.num_channels = module.weight.numel()
        if module.num_groups > 1:
            module.num_groups = module.num_channels // channels_per_group


def _refresh_prelu(module: nn.Module) -> None:
    module.num_parameters = module.weight.numel()


ATTRIBUTE_REFRESHERS: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    nn.modules.batchnorm._NormBase: _refresh_norm,
    nn.LayerNorm: _refresh_layer_norm,
    nn.GroupNorm: _refresh_group_norm,
    nn.PReLU: _refresh_prelu,
}
"""After surgery sliced a per-channel layer's parameters, make its size attributes agree."""


def is_per_channel_layer(module: nn.Module) -> bool:
    """Layers whose parameters scale channels one by one (slimming's targets)."""
    return isinstance(module, tuple(ATTRIBUTE_REFRESHERS))


def refresh_attributes(module: nn.Module) -> None:
    for layer_type, refresh in ATTRIBUTE_REFRESHERS.items():
        if isinstance(module, layer_type):
            refresh(module)
            return


def _refresh_transformer(module: nn.Transformer) -> None:
    attention = next(
        (m for m in module.encoder.modules() if isinstance(m, nn.MultiheadAttention)), None
    )
    if attention is not None:
        module.d_model = attention.embed_dim


WIDTH_REFRESHERS: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    nn.Transformer: _refresh_transformer,
}
"""Containers whose forward checks a width they store (``nn.Transformer`` compares its inputs
with ``d_model``): after surgery it follows the residual width of the layers inside."""


def refresh_widths(model: nn.Module) -> None:
    """Make the widths that containers of ``model`` store agree with their sliced layers."""
    for module in model.modules():
        for container_type, refresh in WIDTH_REFRESHERS.items():
            if isinstance(module, container_type):
                refresh(module)
        stored = stored_width_for(module)
        if stored is not None:
            stored.refresh(module)


@dataclass(frozen=True)
class StoredWidth:
    """A module whose forward writes a width it stores as a number, which surgery can set.

    torchvision's ``VisionTransformer`` writes ``reshape(n, self.hidden_dim, n_h * n_w)`` after
    its patch conv; timm's MetaFormer ``Scale`` writes ``self.scale.view(self.shape)``. For the
    tracer such a size is a literal, which would keep the channels whole; since surgery sets
    the attribute from ``source`` (a child layer's output channels, or a parameter's length)
    after slicing, the tracer lets the literal follow ``source``'s channels instead (coupled
    with them, so the two cannot disagree). ``attr`` holds an int, or a shape tuple whose
    first entry is the width. Matched by class name and attributes, without importing the
    library (our choice, as :class:`HeadLayout`).
    """

    type_name: str
    attr: str
    source: str

    def applies_to(self, module: nn.Module) -> bool:
        # the structure only: after slicing the two differ until refresh() runs
        return (
            type(module).__name__ == self.type_name
            and isinstance(self.width(module), int)
            and self._source_width(getattr(module, self.source, None)) is not None
        )

    def agrees(self, module: nn.Module) -> bool:
        """Whether the stored width is the source's now (as built, before any slicing)."""
        return self._source_width(getattr(module, self.source)) == self.width(module)

    def width(self, module: nn.Module) -> int | None:
        stored = getattr(module, self.attr, None)
        return stored[0] if isinstance(stored, tuple) and stored else stored

    def refresh(self, module: nn.Module) -> None:
        width = self._source_width(getattr(module, self.source))
        stored = getattr(module, self.attr)
        setattr(module, self.attr, (width, *stored[1:]) if isinstance(stored, tuple) else width)

    @staticmethod
    def _source_width(source: Any) -> int | None:
        if isinstance(source, torch.Tensor) and source.dim() == 1:
            return source.numel()
        rule = rule_for(source) if isinstance(source, nn.Module) else None
        return rule.output_channels(source) if rule is not None else None


STORED_WIDTHS: tuple[StoredWidth, ...] = (
    StoredWidth("VisionTransformer", "hidden_dim", "conv_proj"),  # torchvision
    StoredWidth("Scale", "shape", "scale"),  # timm's MetaFormer (PoolFormer v2, CAFormer ...)
)


def stored_width_for(module: nn.Module) -> StoredWidth | None:
    """The :class:`StoredWidth` of ``module``, None for any other module."""
    return next((spec for spec in STORED_WIDTHS if spec.applies_to(module)), None)


@dataclass(frozen=True)
class HeadLayout:
    """Where an attention module keeps the sizes its forward reads as numbers.

    Such a module writes ``view(b, n, self.num_heads, self.head_dim)`` or
    ``split(self.split_size)``: literals for the tracer, but attributes that surgery can set
    after slicing. A layout names the query projection (a child; ``packed`` query-sized blocks
    in its rows: 3 for one q/k/v projection), the key projection when separate, and the
    attributes holding the head count, the kv head count, the head size, the query width and
    the query heads per kv head. Matched by these names, without importing the library that
    defines the module (our choice: HF and timm spell them alike across their models).
    """

    query: str
    head_dim: str
    key: str | None = None
    value: str | None = None
    packed: int = 1
    heads: tuple[str, ...] = ()
    kv_heads: tuple[str, ...] = ()
    width: tuple[str, ...] = ()
    kv_groups: str | None = None

    def applies_to(self, module: nn.Module) -> bool:
        query = getattr(module, self.query, None)
        key_ok = self.key is None or isinstance(getattr(module, self.key, None), nn.Module)
        return (
            isinstance(query, nn.Module)
            and rule_for(query) is not None
            and key_ok
            and isinstance(getattr(module, self.head_dim, None), int)
        )


HEAD_LAYOUTS: tuple[HeadLayout, ...] = (
    # HF Llama, Mistral, Qwen2, ViT, ... (q_proj / k_proj, head_dim)
    HeadLayout(
        "q_proj",
        "head_dim",
        key="k_proj",
        value="v_proj",
        heads=("num_heads", "num_attention_heads"),
        kv_heads=("num_key_value_heads",),
        kv_groups="num_key_value_groups",
    ),
    # HF BERT, RoBERTa, ... (query / key, attention_head_size)
    HeadLayout(
        "query",
        "attention_head_size",
        key="key",
        value="value",
        heads=("num_attention_heads",),
        width=("all_head_size",),
    ),
    # timm Attention (one qkv projection, reshape(B, N, 3, num_heads, head_dim), attn_dim);
    # Hiera's MaskUnitAttention spells them heads / dim_out
    HeadLayout(
        "qkv", "head_dim", packed=3, heads=("num_heads", "heads"), width=("attn_dim", "dim_out")
    ),
    # HF T5, mT5, ... (q / k / v / o, key_value_proj_dim; n_heads also sizes the zero position
    # bias of cross-attention and the relative_attention_bias embedding)
    HeadLayout(
        "q",
        "key_value_proj_dim",
        key="k",
        value="v",
        heads=("n_heads",),
        width=("inner_dim",),
    ),
    # HF GPT-2 (one c_attn Conv1D cut by split(split_size))
    HeadLayout("c_attn", "head_dim", packed=3, heads=("num_heads",), width=("split_size",)),
)
"""The attention modules whose head sizes surgery refreshes (:func:`refresh_head_sizes`)."""


def head_projections(module: nn.Module) -> tuple[str, ...]:
    """The children of a known attention module whose rows are heads (q, k, v projections)."""
    layout = head_layout_for(module)
    if layout is None:
        return ()
    names = (layout.query, layout.key, layout.value)
    return tuple(n for n in names if n is not None and hasattr(module, n))


def head_layout_for(module: nn.Module) -> HeadLayout | None:
    """The layout of an attention module whose head sizes surgery refreshes, or None."""
    if getattr(module, "is_cross_attention", False):
        return None  # GPT-2's cross attention packs k/v only; not covered
    for layout in HEAD_LAYOUTS:
        if layout.applies_to(module):
            return layout
    return None


def _rows(module: nn.Module, child: str) -> int:
    layer = module.get_submodule(child)
    return rule_for(layer).output_channels(layer)  # type: ignore[union-attr]


def head_sizes(module: nn.Module) -> dict[str, int] | None:
    """``heads``, ``kv_heads``, ``head_dim`` and ``width`` (heads x head_dim) of a module with a
    known :class:`HeadLayout`, read from its projections' rows and its ``head_dim`` attribute."""
    layout = head_layout_for(module)
    if layout is None:
        return None
    head_dim = getattr(module, layout.head_dim)
    width = _rows(module, layout.query) // layout.packed
    kv_width = _rows(module, layout.key) if layout.key else width
    return {
        "heads": width // head_dim,
        "kv_heads": kv_width // head_dim,
        "head_dim": head_dim,
        "width": width,
    }


def refreshed_head_sizes(module: nn.Module) -> dict[str, int]:
    """The sizes a known attention module's forward may write as numbers that surgery refreshes
    (``{"heads": 3, "width": 192}``); empty for any other module. The tracer lets such a literal
    follow removed heads."""
    layout = head_layout_for(module)
    if layout is None:
        return {}
    sizes = head_sizes(module)
    return {"heads": sizes["heads"], "width": sizes["width"]}  # type: ignore[index]


def refresh_head_sizes(module: nn.Module, unit: str = "heads") -> None:
    """After surgery sliced an attention module's projections, make its head attributes agree.

    With ``unit="heads"`` the head size is unchanged and the head counts follow the rows of the
    projections; with ``"head_dim"`` the counts are unchanged and the head size follows. The
    attention scale (``scaling``, ``scale``) is left as it was (our choice): the pruned module
    computes the same function, whatever a constructor would derive from the new sizes.
    """
    form = WINDOW_FORMS.get(type(module))
    if form is not None or isinstance(module, PrunedForm):
        (form or type(module)).refresh(module)  # type: ignore[attr-defined]
        return
    layout = head_layout_for(module)
    if layout is None:
        return
    head_dim = getattr(module, layout.head_dim)
    width = _rows(module, layout.query) // layout.packed
    kv_width = _rows(module, layout.key) if layout.key else width
    if unit == "head_dim":
        heads = next(
            (getattr(module, a) for a in layout.heads if isinstance(getattr(module, a, None), int)),
            None,
        )
        if heads is None:
            return  # nothing stored but head_dim, and the head count is not known here
        head_dim = width // heads
        setattr(module, layout.head_dim, head_dim)
    heads, kv_heads = width // head_dim, kv_width // head_dim
    for attr in layout.heads:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads)
    for attr in layout.kv_heads:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, kv_heads)
    for attr in layout.width:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, width)
    if layout.kv_groups and isinstance(getattr(module, layout.kv_groups, None), int):
        setattr(module, layout.kv_groups, heads // kv_heads)


WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""The layers whose weights unstructured methods and weight gates act on."""


def is_weight_layer(module: nn.Module) -> bool:
    """A conv (not transposed) or a linear layer: what "a weight" means to weight sparsity."""
    return isinstance(module, WEIGHT_LAYER_TYPES)


def is_plain_conv(module: nn.Module) -> bool:
    """A conv whose weight is ``[out, in / groups, k...]`` (transposed: ``[in, ...]``)."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def is_conv_like(module: nn.Module) -> bool:
    """Any conv, transposed ones included (for scans that must refuse what they cannot cover)."""
    return isinstance(module, nn.modules.conv._ConvNd)


def is_batch_norm(module: nn.Module) -> bool:
    """BatchNorm of any dimension (running statistics to re-estimate after surgery)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if is_weight_layer(m)}
