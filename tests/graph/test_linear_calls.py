"""Linear layers called in ways other than ``layer(x)``: along a dim that carries no channels
(MLP-Mixer's token mixing: the channels on the other dim pass through it, removable, and its
MACs shrink with them), as ``F.linear`` on the layer's own weight outside its forward (EVA), and
from a subclass's own forward (timm's ``Linear``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regprune as rp
from regprune.graph import trace_graph
from tests.exactness import check_exact

X = torch.randn(2, 3, 16, 16)


class TokenMixer(nn.Module):
    """Patch embedding (16 channels over 16 tokens), a token-mixing linear, a channel MLP."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.tokens = nn.Linear(16, 16, bias=bias)
        self.channels = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2)  # (B, C, N): tokens on the last dim
        x = x + self.tokens(x)  # mixes tokens, channel by channel
        x = torch.relu(self.channels(x.transpose(1, 2)))  # (B, N, hidden)
        return self.head(x.mean(1))


def test_channels_pass_through_a_token_mixing_linear_and_prune_exactly() -> None:
    torch.manual_seed(0)
    model = TokenMixer().eval()
    graph = trace_graph(model, X)
    sizes = {tuple(g.producers): g.size for g in graph.groups}
    assert sizes[("embed",)] == 16  # the embedding's channels are removable
    assert "tokens" not in {r.name for r in graph.records}  # nothing of it is cut
    assert not [u for u in graph.unprunable if u.layer in ("embed", "tokens")]
    pruned, _ = check_exact(model, X, 0.5)
    assert pruned.tokens.weight.shape == (16, 16)  # the token mixer keeps its shape
    assert pruned.embed.out_channels < 16


def test_with_a_bias_the_channels_through_the_mixer_are_inexact() -> None:
    """A zeroed channel leaves a biased token mixer as the bias, one value per token."""
    torch.manual_seed(0)
    model = TokenMixer(bias=True).eval()
    graph = trace_graph(model, X)
    embed = next(g for g in graph.groups if g.producers == ["embed"])
    assert not embed.exact


@pytest.mark.parametrize("bias", [False, True])
def test_the_token_mixers_macs_follow_the_removed_channels(bias: bool) -> None:
    torch.manual_seed(0)
    model = TokenMixer(bias).eval()
    result = rp.prune_with_result(model, X, ratio=0.5, ignore=[model.head])
    assert result.macs_before == rp.count(model, X).macs
    assert result.macs_after == pytest.approx(rp.count(result.model, X).macs, rel=1e-9)
    assert result.macs_after < result.macs_before


class FunctionalQKV(nn.Module):
    """EVA's attention input: ``F.linear`` on a layer's own weight with a bias concatenated from
    two parameters and a zero buffer, the layer itself never called."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 12)
        self.qkv = nn.Linear(12, 3 * 6, bias=False)
        self.q_bias = nn.Parameter(torch.randn(6))
        self.register_buffer("k_bias", torch.zeros(6), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(6))
        self.head = nn.Linear(18, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        h = torch.relu(nn.functional.linear(self.embed(x), weight=self.qkv.weight, bias=bias))
        return self.head(h)


def test_a_functional_linear_on_a_layers_weight_is_that_layers_call() -> None:
    torch.manual_seed(0)
    model = FunctionalQKV().eval()
    x = torch.randn(3, 8)
    graph = trace_graph(model, x)
    assert "qkv" in {r.name for r in graph.records}
    assert not graph.unprunable or all("qkv" not in u.layer for u in graph.unprunable)
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.qkv.weight.shape[0] < 18 and pruned.qkv.weight.shape[1] < 12
    assert (
        pruned.q_bias.numel() + pruned.k_bias.numel() + pruned.v_bias.numel()
        == (pruned.qkv.weight.shape[0])
    )


class OwnForwardLinear(nn.Linear):
    """timm's ``Linear``: a subclass whose forward calls ``F.linear`` on its own parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def test_a_linear_subclass_with_its_own_forward_prunes_like_a_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), OwnForwardLinear(16, 12), nn.ReLU())
    model.append(nn.Linear(12, 4))
    x = torch.randn(3, 8)
    graph = trace_graph(model, x)
    assert {"0", "2", "4"} <= {r.name for r in graph.records}
    assert not graph.unprunable or all(u.layer == "4" for u in graph.unprunable)
    pruned, _ = check_exact(model.eval(), x, 0.5)
    assert pruned[2].weight.shape[0] < 12 and pruned[2].bias.shape == pruned[2].weight.shape[:1]
    assert pruned[2].out_features == pruned[2].weight.shape[0]
