"""torchvision's window attention (Swin, MaxViT) with fewer heads than its residual width holds.

``torchvision.models.swin_transformer.shifted_window_attention`` derives
``head_dim = C // num_heads`` from the width ``C`` of its input and reshapes the heads' outputs
back to ``C`` before ``proj``: once whole heads go while the residual stream keeps (or loses
other) channels, the function cannot state the module. Surgery therefore gives the pruned copy a
subclass (our choice, as for ``nn.MultiheadAttention``) that keeps every parameter name and the
state_dict layout and whose forward takes the heads' width from ``qkv`` (``3 * heads *
head_dim`` rows) and the head count from the per-head parameters (the relative position bias
table's columns; Swin V2's ``logit_scale``). It computes what torchvision computes: windows,
cyclic shift and its mask, the scaled (V1) or cosine (V2) scores plus the relative position
bias, the output projection, the reverse shift, the unpadding.

Video Swin's ``ShiftedWindowAttention3d`` does the same over (T, H, W) windows; its pruned form
reuses torchvision's own helpers for the window size, padding, shift mask and position bias.

MaxViT's ``RelativePositionalMultiHeadAttention`` reshapes the heads' outputs back to its input
width ``D`` before ``merge`` in the same way; its pruned form writes ``-1`` there and takes the
head count from its relative position bias table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
from torchvision.models.video.swin_transformer import (
    ShiftedWindowAttention3d,
    _compute_attention_mask_3d,
    _compute_pad_size_3d,
    _get_window_and_shift_size,
)


def window_geometry(module: ShiftedWindowAttention, x: torch.Tensor) -> tuple[int, int, list[int]]:
    """The padded height and width of ``x`` (B, H, W, C) and the shift the module applies: none
    along a dim that one window covers (torchvision's rule)."""
    window = module.window_size
    pad_h = math.ceil(x.shape[1] / window[0]) * window[0]
    pad_w = math.ceil(x.shape[2] / window[1]) * window[1]
    shift = list(module.shift_size)
    if window[0] >= pad_h:
        shift[0] = 0
    if window[1] >= pad_w:
        shift[1] = 0
    return pad_h, pad_w, shift


def _windows(x: torch.Tensor, window: list[int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window tokens, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def _shift_mask(
    pad_h: int, pad_w: int, window: list[int], shift: list[int], like: torch.Tensor
) -> torch.Tensor:
    """(windows, N, N): -100 between tokens that the cyclic shift brought together from
    different regions of the image, 0 elsewhere."""
    regions = like.new_zeros((pad_h, pad_w))
    h_cuts = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_cuts = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    for i, (h0, h1) in enumerate(h_cuts):
        for j, (w0, w1) in enumerate(w_cuts):
            regions[h0:h1, w0:w1] = i * len(w_cuts) + j
    regions = _windows(regions[None, :, :, None], window).squeeze(-1)
    differ = regions.unsqueeze(1) != regions.unsqueeze(2)
    return torch.zeros_like(differ, dtype=like.dtype).masked_fill(differ, -100.0)


def head_count(module: nn.Module) -> int:
    """The heads the module's per-head parameters hold."""
    if isinstance(module, ShiftedWindowAttentionV2):
        return module.logit_scale.shape[0]
    return module.relative_position_bias_table.shape[1]


def attend_windows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The heads' outputs, concatenated, that ``proj`` reads: (B * windows, N, heads x
    head_dim) for an input (B, H, W, C), or (B, T, H, W, C) for video Swin. What the pruned
    forms compute before ``proj``, for torchvision's modules as well (compensation measures
    ``proj``'s inputs with it)."""
    if isinstance(module, ShiftedWindowAttention3d):
        return _attend_windows_3d(module, x)
    pad_h, pad_w, shift = window_geometry(module, x)
    x = F.pad(x, (0, 0, 0, pad_w - x.shape[2], 0, pad_h - x.shape[1]))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    batch = x.shape[0]
    tokens = _windows(x, module.window_size)
    heads = head_count(module)
    head_dim = module.qkv.weight.shape[0] // 3 // heads
    qkv_bias = module.qkv.bias
    v2 = isinstance(module, ShiftedWindowAttentionV2)
    if v2 and qkv_bias is not None:  # V2 has no key bias (torchvision zeroes it per call)
        qkv_bias = qkv_bias.clone()
        qkv_bias[heads * head_dim : 2 * heads * head_dim] = 0
    qkv = F.linear(tokens, module.qkv.weight, qkv_bias)
    q, k, v = qkv.unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)
    if v2:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(module.logit_scale, max=math.log(100.0)).exp()
    else:
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    scores = scores + module.get_relative_position_bias()
    if sum(shift) > 0:
        mask = _shift_mask(pad_h, pad_w, module.window_size, shift, x)
        windows = mask.shape[0]
        scores = scores.unflatten(0, (batch, windows)) + mask[None, :, None]
        scores = scores.flatten(0, 1)
    weights = F.dropout(
        F.softmax(scores, dim=-1), p=module.attention_dropout, training=module.training
    )
    return (weights @ v).transpose(1, 2).flatten(2)


def _forward(self: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    pad_h, pad_w, shift = window_geometry(self, x)
    out = F.linear(attend_windows(self, x), self.proj.weight, self.proj.bias)
    out = F.dropout(out, p=self.dropout, training=self.training)
    window = self.window_size
    out = out.reshape(b, pad_h // window[0], pad_w // window[1], window[0], window[1], -1)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, -1)
    if sum(shift) > 0:
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


def window_geometry_3d(
    module: ShiftedWindowAttention3d, x: torch.Tensor
) -> tuple[list[int], list[int], list[int]]:
    """The padded (T, H, W) of ``x`` (B, T, H, W, C), the window and the shift the module
    uses: torchvision's rules (a window never larger than the input, no shift where it covers
    it)."""
    size = list(x.shape[1:4])
    window, shift = _get_window_and_shift_size(
        list(module.shift_size), size, list(module.window_size)
    )
    pad = _compute_pad_size_3d(tuple(size), tuple(window))
    return [n + p for n, p in zip(size, pad, strict=True)], window, shift


def _attend_windows_3d(module: ShiftedWindowAttention3d, x: torch.Tensor) -> torch.Tensor:
    padded, window, shift = window_geometry_3d(module, x)
    b, t, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - t))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(-n for n in shift), dims=(1, 2, 3))
    grid = [n // k for n, k in zip(padded, window, strict=True)]
    tokens = x.view(b, grid[0], window[0], grid[1], window[1], grid[2], window[2], c)
    tokens = tokens.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, math.prod(window), c)
    heads = head_count(module)
    head_dim = module.qkv.weight.shape[0] // 3 // heads
    qkv = F.linear(tokens, module.qkv.weight, module.qkv.bias)
    q, k, v = qkv.unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)
    scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    scores = scores + module.get_relative_position_bias(window)
    if sum(shift) > 0:
        mask = _compute_attention_mask_3d(tokens, tuple(padded), tuple(window), tuple(shift))
        scores = scores.unflatten(0, (b, mask.shape[0])) + mask[None, :, None]
        scores = scores.flatten(0, 1)
    weights = F.dropout(
        F.softmax(scores, dim=-1), p=module.attention_dropout, training=module.training
    )
    return (weights @ v).transpose(1, 2).flatten(2)


def _forward_3d(self: ShiftedWindowAttention3d, x: torch.Tensor) -> torch.Tensor:
    b, t, h, w, _ = x.shape
    padded, window, shift = window_geometry_3d(self, x)
    out = F.linear(attend_windows(self, x), self.proj.weight, self.proj.bias)
    out = F.dropout(out, p=self.dropout, training=self.training)
    grid = [n // k for n, k in zip(padded, window, strict=True)]
    out = out.reshape(b, *grid, *window, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    out = out.reshape(b, *padded, -1)
    if sum(shift) > 0:
        out = torch.roll(out, shifts=tuple(shift), dims=(1, 2, 3))
    return out[:, :t, :h, :w, :].contiguous()


class PrunedForm:
    """What the pruned forms share: surgery's copy (or a model being loaded) takes the form's
    forward by :meth:`adopt`; after slicing, :meth:`refresh` also sets the head count it holds
    (loading restores it from the saved sizes instead)."""

    @classmethod
    def adopt(cls, module: nn.Module) -> None:
        module.__class__ = cls

    @classmethod
    def refresh(cls, module: nn.Module) -> None:
        cls.adopt(module)
        module.num_heads = head_count(module)


class PrunedShiftedWindowAttention(PrunedForm, ShiftedWindowAttention):
    """Swin (V1) window attention whose heads may be fewer than its width // head_dim; made
    by surgery (never constructed directly), ``num_heads`` says the pruned count."""

    forward = _forward


class PrunedShiftedWindowAttentionV2(PrunedForm, ShiftedWindowAttentionV2):
    """Swin V2 window attention (cosine scores, continuous position bias) whose heads may be
    fewer than its width // head_dim; see :class:`PrunedShiftedWindowAttention`."""

    forward = _forward


class PrunedShiftedWindowAttention3d(PrunedForm, ShiftedWindowAttention3d):
    """Video Swin window attention whose heads may be fewer than its width // head_dim; see
    :class:`PrunedShiftedWindowAttention`."""

    forward = _forward_3d


class PrunedRelativePositionalMultiHeadAttention(PrunedForm, RelativePositionalMultiHeadAttention):
    """MaxViT's attention whose heads may be fewer than its width // head_dim: the heads'
    outputs are merged back with ``-1`` rather than the input's width, and ``n_heads`` is the
    pruned count (the columns of the relative position bias table). The score scale
    (``scale_factor``, from the original width) is kept: the same function."""

    @classmethod
    def refresh(cls, module: nn.Module) -> None:
        cls.adopt(module)
        module.n_heads = module.relative_position_bias_table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        q, k, v = (t.transpose(2, 3) for t in (q, k, v))  # (B, G, H, P, DH)
        scores = q @ (k * self.scale_factor).transpose(-2, -1)
        weights = F.softmax(scores + self.get_relative_positional_bias(), dim=-1)
        out = (weights @ v).transpose(2, 3).reshape(b, g, p, -1)
        return self.merge(out)


WINDOW_FORMS: dict[type[nn.Module], type[nn.Module]] = {
    ShiftedWindowAttention: PrunedShiftedWindowAttention,
    ShiftedWindowAttentionV2: PrunedShiftedWindowAttentionV2,
    ShiftedWindowAttention3d: PrunedShiftedWindowAttention3d,
    RelativePositionalMultiHeadAttention: PrunedRelativePositionalMultiHeadAttention,
}
"""torchvision's window attention classes and the forms surgery gives their pruned copies
(each with ``adopt``, for loading, and ``refresh``, after slicing)."""
