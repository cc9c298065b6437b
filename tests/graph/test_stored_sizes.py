"""Sizes a model stores and reads alike for every channel: a width its forward writes as a
number that surgery refreshes (torchvision's ViT ``hidden_dim``, timm's MetaFormer ``Scale``),
a GroupNorm of one group, and a one-element parameter (StarReLU). None of them may keep the
channels whole."""

from __future__ import annotations

import torch
import torchvision
from timm.models.metaformer import Scale
from torch import nn

import regprune as rp
from regprune.graph import trace_graph
from tests.exactness import check_exact


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=24,
        num_classes=5,
    ).eval()


def test_vit_hidden_dim_follows_the_patch_conv_and_is_refreshed() -> None:
    """``_process_input`` writes ``reshape(n, self.hidden_dim, n_h * n_w)``; it used to keep the
    whole residual width (every layer's output) whole."""
    model, x = tiny_vit(), torch.randn(2, 3, 32, 32)
    graph = trace_graph(model, x)
    assert [u.layer for u in graph.unprunable] == ["heads.head"]
    pruned = rp.prune(model, x, ratio=0.5)
    assert pruned.conv_proj.out_channels == pruned.hidden_dim == 8
    assert pruned.class_token.shape == (1, 1, 8) and model.hidden_dim == 16  # caller's model
    assert pruned(x).shape == (2, 5)
    check_exact(model, x, 0.5)  # the MLP widths (the residual width is LayerNorm-coupled)


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.scale, self.conv2 = nn.Conv2d(3, 8, 3), Scale(8), nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.scale(self.conv1(x))))


def test_metaformer_scale_shape_follows_its_parameter() -> None:
    """timm's ``Scale`` writes ``self.scale.view(self.shape)``, ``shape = (dim, 1, 1)``."""
    model, x = ScaledNet().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.scale.scale.uniform_(0.5, 2.0)
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.conv1.out_channels == pruned.scale.scale.numel() == 4
    assert pruned.scale.shape == (4, 1, 1) and model.scale.shape == (8, 1, 1)


class GroupNorm1Net(nn.Module):
    """PoolFormer's norm: GroupNorm over one group; and StarReLU's one-element scale and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm, self.conv2 = (
            nn.Conv2d(3, 8, 3),
            nn.GroupNorm(1, 8),
            nn.Conv2d(8, 6, 3),
        )
        self.alpha, self.beta = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([0.1]))
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.norm(self.conv1(x)))
        return self.conv3(self.alpha * torch.relu(y) ** 2 + self.beta)


def test_one_group_norm_and_one_element_parameters_leave_channels_their_own() -> None:
    model, x = GroupNorm1Net().eval(), torch.randn(2, 3, 8, 8)
    graph = trace_graph(model, x)
    sizes = {tuple(g.producers): (g.size, g.exact) for g in graph.groups}
    # one channel per removable unit, not the whole layer as one; the GroupNorm's inexact
    assert sizes == {("conv1",): (8, False), ("conv2",): (6, False)}
    pruned = rp.prune(model, x, ratio=0.5)
    assert pruned.norm.num_groups == 1 and pruned.norm.num_channels == pruned.conv1.out_channels
    assert pruned.conv1.out_channels == 4 and pruned.conv2.out_channels == 3
    assert pruned.alpha.shape == (1,) and pruned(x).shape == (2, 4, 4, 4)
    # a silenced conv2 channel still sends beta (so its group is inexact); folded, its removal
    # is lossless all the same (the L1 criterion picks the three silenced ones)
    with torch.no_grad():
        model.conv2.weight[3:] = 0.0
        model.conv2.bias[3:] = 0.0
        expected = model(x)
    folded = rp.prune(model, x, ratio=0.5, ignore=["conv1"])
    assert folded.conv2.out_channels == 3
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
