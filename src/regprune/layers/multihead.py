"""``nn.MultiheadAttention`` with fewer heads than its residual width holds.

``nn.MultiheadAttention`` derives ``head_dim = embed_dim // num_heads`` from the width of its
query input and asserts ``num_heads * head_dim == embed_dim``: once whole heads are removed
while the residual stream keeps its width, the class cannot state the module. Surgery therefore
gives the pruned copy this subclass (our choice), which keeps every parameter name and the
state_dict layout (``in_proj_weight`` packs the q, k and v rows, ``out_proj`` reads the heads)
and whose forward takes the attention's inner width from the parameters:
``in_proj_weight`` is ``(3 * num_heads * head_dim, embed_dim)`` and ``out_proj`` maps
``num_heads * head_dim`` back to ``out_proj.out_features``. It computes what
``F.multi_head_attention_forward`` computes (the explicit softmax path when the weights are
asked for, ``F.scaled_dot_product_attention`` otherwise), without the fused fast path, and with
the original ``1 / sqrt(head_dim)`` scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as the float mask that is added to the scores."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -torch.inf)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads may be fewer than ``embed_dim // head_dim``.

    Made by surgery from an ``nn.MultiheadAttention`` (:meth:`adopt`, never constructed
    directly): the attributes ``embed_dim`` (= ``kdim`` = ``vdim``, the width of the inputs),
    ``num_heads`` and ``head_dim`` say the pruned sizes; the parameters are those of the
    original class.
    """

    @classmethod
    def adopt(cls, module: nn.MultiheadAttention) -> None:
        """Give ``module`` (surgery's copy, or a model being loaded) this forward.

        ``_qkv_same_embed_dim`` becomes False: the q/k/v width is no longer ``embed_dim``, and
        that flag is what keeps ``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder``)
        off their fused fast paths, which read ``in_proj_weight`` as ``3 * embed_dim`` rows.
        """
        module.__class__ = cls
        module._qkv_same_embed_dim = False

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads, weights = attend(
            self,
            query,
            key,
            value,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
        )
        out = F.linear(heads, self.out_proj.weight, self.out_proj.bias)
        if query.dim() == 3 and not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def attend(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The heads' outputs, concatenated, that ``out_proj`` reads (batch first, or unbatched),
    and the attention weights (None unless ``need_weights``), of a multi-head attention with
    packed q/k/v: what :class:`PrunedMultiheadAttention` computes before ``out_proj``, for an
    ``nn.MultiheadAttention`` as well (compensation measures what ``out_proj`` reads with it).
    """
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)"
        )
    batched = query.dim() == 3
    if not batched:
        query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, target_len, _ = query.shape
    heads, head_dim = module.num_heads, module.head_dim
    w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (
        module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    )

    def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b).unflatten(-1, (heads, head_dim)).transpose(1, 2)

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    mask = _additive(attn_mask, q.dtype)
    if mask is not None:
        # 2-D: (L, S) for every head; 3-D: (batch * heads, L, S)
        mask = mask.reshape(-1, heads, target_len, mask.shape[-1]) if mask.dim() == 3 else mask
    if module.bias_k is not None and module.bias_v is not None:
        k = torch.cat(
            [k, module.bias_k.reshape(1, heads, 1, head_dim).expand(batch, -1, -1, -1)], 2
        )
        v = torch.cat(
            [v, module.bias_v.reshape(1, heads, 1, head_dim).expand(batch, -1, -1, -1)], 2
        )
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    if module.add_zero_attn:
        k = torch.cat([k, k.new_zeros(batch, heads, 1, head_dim)], 2)
        v = torch.cat([v, v.new_zeros(batch, heads, 1, head_dim)], 2)
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    padding = _additive(key_padding_mask, q.dtype)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    dropout_p = module.dropout if module.training else 0.0
    weights = None
    if need_weights:
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(torch.softmax(scores, dim=-1), dropout_p)
        out = weights @ v
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    out = out.transpose(1, 2).flatten(2)
    return (out if batched else out.squeeze(0)), weights


MULTIHEAD_FORMS: dict[type[nn.Module], type[nn.Module]] = {
    nn.MultiheadAttention: PrunedMultiheadAttention,
}
"""``nn.MultiheadAttention`` and the form surgery gives its pruned copy."""
