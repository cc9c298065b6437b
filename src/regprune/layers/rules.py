"""The one table of layer-type knowledge: how each parametrized layer is traced and sliced.

Only layers that *create* channels (conv filters, linear rows, embedding dims) or that cannot be
sliced at all (attention with packed projections) need a rule here. Per-channel layers (BatchNorm,
LayerNorm, GroupNorm, PReLU, ...) are traced through the functions they call, their parameters
handled like any parameter used in the forward; their rules here only refresh the size attributes
(``num_features`` ...) once those parameters were sliced.

A rule applies to a module when it is an instance of the rule's type *and* does not override its
``forward``: a subclass with its own forward is traced through the functions it calls instead.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass
class LayerRecord:
    """What tracing learned about one parametrized layer (summed over all its calls).

    ``in_atoms[i]`` is the atom feeding weight input index ``i`` (-1 when none), ``out_atoms[o]``
    the atom of output channel ``o``. ``macs_unit`` is the MACs of one (input, output) channel pair
    of one group, so ``macs = in_kept * out_kept / groups_kept * macs_unit``.
    """

    name: str
    rule: LayerRule
    in_atoms: torch.Tensor
    out_atoms: torch.Tensor
    groups: int = 1
    macs_unit: float = 0.0


class LayerRule:
    """Base of the table. ``trace`` returns the output's label, or None to lock the layer."""

    module_type: type[nn.Module] = nn.Module
    in_dim = 1
    out_dim = 0
    reads_channels = True
    """False for layers that create channels from indices (embeddings): no input channels."""

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

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        """Per output channel, what the layer adds when input channel ``i`` holds ``values[i]``
        everywhere (bias excluded); None when no bias can stand for it (grouped layers)."""
        return None


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), old.requires_grad))
    else:
        setattr(module, name, value.detach().clone())


class ConvRule(LayerRule):
    """Conv1d/2d/3d, including grouped and depthwise ones.

    Grouped convs are pruned by whole groups (tracing couples every channel of a group), so the
    per-group weight layout is untouched and only the group count changes: exact, and valid for
    depthwise convs, where a group is one channel.
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
        out_per_group = module.out_channels // module.groups
        _replace(module, "weight", module.weight[keep_out])
        if module.bias is not None:
            _replace(module, "bias", module.bias[keep_out])
        if module.groups == 1:
            _replace(module, "weight", module.weight[:, keep_in])
        else:
            module.groups = int(keep_out.sum()) // out_per_group
        module.in_channels = int(keep_in.sum())
        module.out_channels = int(keep_out.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        # every tap of the kernel sees the constant, except taps in the zero padding at the
        # border: exact in the interior (docs/architecture.md, "Lossless removal")
        if module.groups != 1:
            return None
        taps = module.weight.detach().flatten(2).sum(dim=2).to(values.dtype)
        return taps.movedim(self.in_dim, 1) @ values  # (out, in) @ (in,)


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
        in_per_group = module.in_channels // module.groups
        _replace(module, "weight", module.weight[keep_in])
        if module.bias is not None:
            _replace(module, "bias", module.bias[keep_out])
        if module.groups == 1:
            _replace(module, "weight", module.weight[:, keep_out])
        else:
            module.groups = int(keep_in.sum()) // in_per_group
        module.in_channels = int(keep_in.sum())
        module.out_channels = int(keep_out.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        # a transposed conv spreads each input value over its kernel: interior outputs receive
        # every tap once per stride phase, so the fold is exact only for stride 1 (our choice:
        # strided transposed convs are not compensated)
        if any(s != 1 for s in module.stride):
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
        _replace(module, "weight", module.weight[keep_out][:, keep_in])
        if module.bias is not None:
            _replace(module, "bias", module.bias[keep_out])
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
        _replace(module, "weight", module.weight[keep_in][:, keep_out])
        if module.bias is not None:
            _replace(module, "bias", module.bias[keep_out])
        module.nf = int(keep_out.sum())
        if hasattr(module, "nx"):
            module.nx = int(keep_in.sum())

    def response_to_constant_input(
        self, module: nn.Module, values: torch.Tensor
    ) -> torch.Tensor | None:
        used = torch.nonzero(values).reshape(-1)
        weight = module.weight.detach().index_select(0, used.to(module.weight.device))
        return weight.t().to(values.dtype) @ values[used]


LAYER_RULES: tuple[LayerRule, ...] = (
    ConvRule(),
    ConvTransposeRule(),
    LinearRule(),
    EmbeddingRule(),
    HFConv1DRule(),
)

OPAQUE_LAYERS: dict[type[nn.Module], str] = {
    nn.MultiheadAttention: (
        "nn.MultiheadAttention packs q/k/v and ties head_dim to embed_dim; its inputs and "
        "outputs are kept whole (the MLP hidden dims around it are still pruned)"
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
    names = ("query", "key", "value")
    query, key, value = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
    embed = module.embed_dim
    q_tokens = query.numel() // embed  # batch * target length
    k_tokens = key.numel() // module.kdim  # batch * source length
    v_tokens = value.numel() // module.vdim
    batch_dim = 0 if module.batch_first else 1
    batch = query.shape[batch_dim] if query.dim() == 3 else 1  # 2-D query: unbatched
    target_len, source_len = q_tokens // batch, k_tokens // batch
    in_proj = (q_tokens * embed + k_tokens * module.kdim + v_tokens * module.vdim) * embed
    # Summed over heads, Q @ K^T and attn @ V each cost batch * L * S * embed_dim.
    attention = 2 * batch * target_len * source_len * embed
    out_proj = q_tokens * embed * embed
    return in_proj + attention + out_proj


MACS_FORMULAS: dict[type[nn.Module], MacsFormula] = {
    nn.modules.conv._ConvNd: _conv_macs,
    nn.Linear: _linear_macs,
    nn.MultiheadAttention: _mha_macs,
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
    if module.weight is not None:
        channels_per_group = module.num_channels // module.num_groups
        module.num_channels = module.weight.numel()
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
    # timm Attention (one qkv projection, reshape(B, N, 3, num_heads, head_dim), attn_dim)
    HeadLayout("qkv", "head_dim", packed=3, heads=("num_heads",), width=("attn_dim",)),
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
