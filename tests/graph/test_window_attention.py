"""torchvision's Swin (V1 and V2) and MaxViT attention pruned by whole heads and along the
residual width, and channel counts read from a shape (``B, C, H, W = x.shape``) followed by
reshapes.

Each test builds a tiny real model and checks the exactness contract (zeroed channels and heads
removed leave the outputs unchanged), the sizes surgery leaves, the MACs the counter and the
allocation see, and the save/load round trip.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.maxvit import MaxVit, RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, SwinTransformer3d

import regprune as rp
from regprune.graph import trace_graph
from regprune.layers import PRUNED_FORMS
from regprune.metrics import count
from regprune.surgery import load_pruned, save_pruned
from tests.exactness import check_exact
from tests.method_steps import sparsify

HEADS = [2, 4]


def with_signal(model: nn.Module, *names: str) -> nn.Module:
    """Random biases and per-head tables (zero at init), so that every part carries signal;
    in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", *names)):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def tiny_swin(v2: bool) -> nn.Module:
    """Two stages (2 and 4 heads of 8), windows of 4 on a 4x5 token grid after patching (so
    the second block's shifted windows and the padding both run)."""
    torch.manual_seed(0)
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=HEADS,
        window_size=[4, 4],
        stochastic_depth_prob=0.0,
        num_classes=5,
        **extra,
    )
    return with_signal(model, "relative_position_bias_table", "logit_scale")


def attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ShiftedWindowAttention)]


def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("shift", [[0, 0], [2, 2]])
@pytest.mark.parametrize("size", [(8, 8), (6, 11)])
def test_pruned_form_computes_what_torchvision_computes(v2: bool, shift, size) -> None:
    cls = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    torch.manual_seed(0)
    assert_form_matches(cls(16, [4, 4], shift, 2).eval(), torch.randn(2, *size, 16))


def assert_form_matches(module: nn.Module, x: torch.Tensor) -> None:
    """The module's pruned form, adopted by an unpruned copy, computes the same, bit for bit."""
    form = copy.deepcopy(module)
    PRUNED_FORMS[type(module)].adopt(form)
    assert type(form) is not type(module)
    with torch.no_grad():
        torch.testing.assert_close(form(x), module(x), atol=0, rtol=0)


@pytest.mark.parametrize("v2", [False, True])
def test_swin_heads_and_residual_are_removed_exactly(v2: bool) -> None:
    model, x = tiny_swin(v2), images()
    graph = trace_graph(model, x)
    qkv = [g for g in graph.groups if any(p.endswith("attn.qkv") for p in g.producers)]
    # one group per attention: its heads, each of 3 x 8 rows
    assert sorted(g.size for g in qkv) == sorted(h for h in HEADS for _ in range(2))
    assert not graph.unprunable or all("output" in str(u) for u in graph.unprunable)
    pruned, _ = check_exact(model, x, 0.5)  # heads only: the residual is LayerNorm-coupled
    for before, after in zip(attentions(model), attentions(pruned), strict=True):
        assert after.num_heads == before.num_heads // 2
        assert after.qkv.out_features == 3 * after.num_heads * 8
    assert all(a.num_heads in HEADS for a in attentions(model))  # the caller's model
    # the residual width (LayerNorm-coupled, so not in the exactness check) prunes as well
    both = rp.prune(model, x, ratio=0.5)
    for before, after in zip(attentions(model), attentions(both), strict=True):
        assert after.qkv.in_features < before.qkv.in_features
        assert after.proj.out_features == after.qkv.in_features


@pytest.mark.parametrize("v2", [False, True])
def test_swin_macs_follow_the_plan_and_the_target_is_met(v2: bool) -> None:
    model, x = tiny_swin(v2), images()
    result = rp.prune_with_result(model, x, target_macs=0.5)
    assert 0.49 <= result.macs_after / result.macs_before <= 0.5
    assert result.macs_after == count(result.model, x).macs


@pytest.mark.parametrize("v2", [False, True])
def test_pruned_swin_saves_loads_and_prunes_again(v2: bool, tmp_path) -> None:
    model, x = tiny_swin(v2), images()
    pruned = rp.prune(model, x, ratio=0.5)
    save_pruned(pruned, tmp_path / "pruned.pt")
    loaded = load_pruned(tiny_swin(v2), tmp_path / "pruned.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)
    assert [a.num_heads for a in attentions(loaded)] == [a.num_heads for a in attentions(pruned)]
    check_exact(pruned, x, 0.5)


# ---- MaxViT --------------------------------------------------------------------------------


def tiny_maxvit() -> nn.Module:
    """Two stages of MBConv + block and grid attention (heads of 8: 2 and 4 heads)."""
    torch.manual_seed(0)
    model = MaxVit(
        input_size=(32, 32),
        stem_channels=16,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )
    return with_signal(model, "relative_position_bias_table")


def relative_attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, RelativePositionalMultiHeadAttention)]


def test_maxvit_pruned_form_computes_what_torchvision_computes() -> None:
    torch.manual_seed(0)
    module = RelativePositionalMultiHeadAttention(32, 8, 16).eval()
    x = torch.randn(2, 3, 16, 32)
    form = copy.deepcopy(module)
    PRUNED_FORMS[RelativePositionalMultiHeadAttention].adopt(form)
    with torch.no_grad():
        torch.testing.assert_close(form(x), module(x), atol=1e-6, rtol=1e-6)


def test_maxvit_heads_and_widths_are_removed_exactly_and_counted(tmp_path) -> None:
    model, x = tiny_maxvit(), torch.randn(2, 3, 32, 32)
    graph = trace_graph(model, x)
    assert [str(u) for u in graph.unprunable if "output" not in str(u)] == []
    pruned, _ = check_exact(model, x, 0.5)
    for before, after in zip(relative_attentions(model), relative_attentions(pruned), strict=True):
        assert after.n_heads == before.n_heads // 2
        assert after.to_qkv.out_features == 3 * after.n_heads * 8
    result = rp.prune_with_result(model, x, target_macs=0.5)
    assert 0.49 <= result.macs_after / result.macs_before <= 0.5
    assert result.macs_after == count(result.model, x).macs
    save_pruned(result.model, tmp_path / "pruned.pt")
    loaded = load_pruned(tiny_maxvit(), tmp_path / "pruned.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), atol=0, rtol=0)


# ---- channel counts read from a shape ---------------------------------------------------


class Windows(nn.Module):
    """A conv net whose forward partitions its features into windows with sizes read from
    the input's shape (MaxViT's and Swin's partition), in one of three spellings."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.spelling = spelling
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        b, c, h, w = x.shape
        if self.spelling == "shape":
            y = x.reshape(b, c, h // 2, 2, w // 2, 2)
        elif self.spelling == "size":
            y = x.reshape(x.size(0), x.size(1), h // 2, 2, w // 2, 2)
        elif self.spelling == "literal":
            y = x.reshape(b, 8, h // 2, 2, w // 2, 2)
        else:  # the count computed with: no removal keeps c // 2 * 2 a count of the channels
            y = x.reshape(b, c // 2 * 2, h // 2, 2, w // 2, 2)
        y = self.mix(y.permute(0, 2, 4, 3, 5, 1)).mean((1, 2, 3, 4))
        return self.head(y)


@pytest.mark.parametrize("spelling", ["shape", "size"])
def test_a_channel_count_read_from_the_shape_follows_removal(spelling: str) -> None:
    model, x = Windows(spelling).eval(), torch.randn(2, 3, 8, 8)
    graph = trace_graph(model, x)
    assert [g.size for g in graph.groups if "conv" in g.producers] == [8]
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.conv.out_channels == 4


@pytest.mark.parametrize("spelling", ["literal", "computed"])
def test_a_literal_or_computed_channel_count_keeps_the_channels(spelling: str) -> None:
    model, x = Windows(spelling).eval(), torch.randn(2, 3, 8, 8)
    graph = trace_graph(model, x)
    assert not [g for g in graph.groups if "conv" in g.producers]
    reasons = " ".join(str(u) for u in graph.unprunable)
    assert "conv" in reasons and ("fixes the channel dim" in reasons or "computed" in reasons)
    pruned = rp.prune(model, x, ratio=0.5)  # the rest still prunes, and the copy runs
    assert pruned.conv.out_channels == 8


class ScaledByWidth(nn.Module):
    """RAFT's correlation divides by ``sqrt(torch.tensor(num_channels))``; a hand-written mean
    divides by ``x.shape[1]``: the channel count used as a value."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.spelling = spelling
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.spelling == "tensor":
            x = x / torch.sqrt(torch.tensor(x.shape[1]))
        else:
            x = x / x.shape[1]
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("spelling", ["tensor", "divide"])
def test_a_channel_count_used_as_a_value_keeps_the_channels(spelling: str) -> None:
    graph = trace_graph(ScaledByWidth(spelling).eval(), torch.randn(2, 3, 8, 8))
    assert not [g for g in graph.groups if "conv" in g.producers]
    assert "used as a value" in " ".join(str(u) for u in graph.unprunable)


def test_a_count_read_from_another_tensor_couples_the_two() -> None:
    """``y.view(b, x.size(1), -1)``: y's channels must shrink with x's for the size to hold."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            flat = b.reshape(b.shape[0], a.shape[1], -1).mean(-1)
            return self.head(torch.cat([a.mean((2, 3)), flat], 1))

    model, x = Two().eval(), torch.randn(2, 3, 4, 4)
    graph = trace_graph(model, x)
    coupled = [g for g in graph.groups if {"a", "b"} <= set(g.producers)]
    assert len(coupled) == 1
    check_exact(model, x, 0.5)


def test_shape_reading_is_restored_after_tracing() -> None:
    model, x = Windows("shape").eval(), torch.randn(2, 3, 8, 8)
    trace_graph(model, x)
    assert "shape" not in torch.Tensor.__dict__
    assert type(x.shape[1]) is int


@pytest.mark.parametrize("name", ["group_lasso", "l0_channel", "greg1"])
def test_regularization_methods_remove_whole_heads_of_a_swin(name: str) -> None:
    """Methods on Swin's heads: a head is one channel of its group (qkv rows, bias-table
    column, proj columns), so a few steps in budget mode and prune remove whole heads."""
    model, x = tiny_swin(v2=False).train(), images()
    method = rp.methods.get(name, model, x[:1], target_macs=0.6, total_steps=20)
    sparsify(model, method, x, torch.arange(2), steps=20)
    small = method.prune().eval()
    heads = [a.num_heads for a in attentions(small)]
    assert heads and any(h < full for h, full in zip(heads, [2, 2, 4, 4], strict=True))
    for attention in attentions(small):
        assert attention.qkv.out_features == 3 * 8 * attention.num_heads
    assert small(x).shape == (2, 5)
    assert rp.count(small, x[:1]).macs <= 0.6 * rp.count(model.eval(), x[:1]).macs


def test_a_width_read_from_the_input_is_not_the_attentions_refreshed_width() -> None:
    """MetaFormer's attention merges its heads with ``reshape(B, N, C)``, ``C`` the block
    input's width (equal in number to the attention's own): heads that shrank would no longer
    fill ``C``, so the heads and that width stay whole and the pruned model runs."""
    Attention = pytest.importorskip("timm.models.metaformer").Attention

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), Attention(64, head_dim=16), nn.Linear(64, 4)).eval()
    x = torch.randn(2, 5, 8)
    graph = trace_graph(model, x)
    assert not [g for g in graph.groups if any(p.endswith("qkv") for p in g.producers)]
    assert rp.prune(model, x, ratio=0.5)(x).shape == (2, 5, 4)


# ---- video Swin ----------------------------------------------------------------------------


def tiny_swin3d() -> nn.Module:
    """Two stages (2 and 4 heads of 8), windows of 2x4x4 on a 2x4x5 token grid after patching:
    the second block's shifted windows, the padding and a window clipped to the input all run."""
    torch.manual_seed(0)
    model = SwinTransformer3d(
        patch_size=[2, 4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=HEADS,
        window_size=[2, 4, 4],
        stochastic_depth_prob=0.0,
        num_classes=5,
    )
    return with_signal(model, "relative_position_bias_table")


def clips() -> torch.Tensor:
    return torch.randn(2, 3, 4, 16, 20, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shift", [[0, 0, 0], [1, 2, 2]])
@pytest.mark.parametrize("size", [(2, 8, 8), (3, 6, 11)])
def test_video_swin_pruned_form_computes_what_torchvision_computes(shift, size) -> None:
    torch.manual_seed(0)
    module = ShiftedWindowAttention3d(16, [2, 4, 4], shift, 2).eval()
    assert_form_matches(module, torch.randn(2, *size, 16))


def test_video_swin_heads_and_residual_prune_exactly_counted_and_reload(tmp_path) -> None:
    model, x = tiny_swin3d(), clips()
    graph = trace_graph(model, x)
    assert [str(u) for u in graph.unprunable] == [
        "head: 5/5 channels kept whole (it is a model output, at <output>)"
    ]
    check_exact(model, x, 0.5)
    # round_to=1: aligned to 8, the 16-wide residual would keep all or half of itself
    result = rp.prune_with_result(model, x, target_macs=0.5, round_to=1)
    assert 0.49 <= result.macs_after / result.macs_before <= 0.5
    assert result.macs_before == count(model, x).macs
    assert result.macs_after == count(result.model, x).macs
    before = [m for m in model.modules() if isinstance(m, ShiftedWindowAttention3d)]
    after = [m for m in result.model.modules() if isinstance(m, ShiftedWindowAttention3d)]
    pairs = list(zip(before, after, strict=True))
    assert any(new.num_heads < old.num_heads for old, new in pairs)
    assert all(new.qkv.in_features < old.qkv.in_features for old, new in pairs)
    save_pruned(result.model, tmp_path / "pruned.pt")
    loaded = load_pruned(tiny_swin3d(), tmp_path / "pruned.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), atol=0, rtol=0)
