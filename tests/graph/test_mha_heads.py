"""``nn.MultiheadAttention`` pruned by whole heads.

A head is its q, k and v rows of the packed ``in_proj_weight`` / ``in_proj_bias`` and its
columns of ``out_proj``; the residual width is a separate group. Each test builds a tiny real
model and checks the exactness contract (removed heads zeroed in the original give the pruned
model's outputs), the sizes surgery leaves, and the MACs the counter and the budget see.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import regprune as rp
from regprune.allocation.macs_model import MacsModel
from regprune.api import make_plan
from regprune.graph import trace_graph
from regprune.inputs import CallArgs
from regprune.layers.multihead import PrunedMultiheadAttention
from regprune.metrics import count
from regprune.surgery import (
    apply_plan,
    apply_plan_with_report,
    load_pruned,
    save_pruned,
    silence_channels,
)
from regprune.surgery.apply import kept_components
from tests.exactness import check_exact
from tests.method_steps import sparsify

DIM, HEADS, HEAD_DIM, TOKENS = 32, 4, 8, 6


class Net(nn.Module):
    """An input projection, one attention block with a residual add, an MLP and a head.

    Args:
        batch_first: the attention's layout (the input is transposed to it).
        need_weights: asked of the attention; the weights are discarded unless
            ``return_weights``.
        return_weights: return the attention weights as a second output.
        cross: key and value come from a second projection of the input (cross-attention).
    """

    def __init__(
        self,
        batch_first: bool = True,
        need_weights: bool = False,
        return_weights: bool = False,
        cross: bool = False,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first, self.need_weights = batch_first, need_weights
        self.return_weights, self.cross = return_weights, cross
        self.inp = nn.Linear(8, DIM)
        self.memory = nn.Linear(8, DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first)
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.out = nn.Linear(DIM, 5)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.inp(x)
        kv = self.memory(x) if self.cross else h
        if not self.batch_first:
            h, kv = h.transpose(0, 1), kv.transpose(0, 1)
        mixed, weights = self.attn(
            h,
            kv,
            kv,
            key_padding_mask=key_padding_mask,
            need_weights=self.need_weights,
            attn_mask=attn_mask,
        )
        h = h + mixed
        h = h + self.fc2(F.gelu(self.fc1(h)))
        if not self.batch_first:
            h = h.transpose(0, 1)
        y = self.out(h)
        return (y, weights) if self.return_weights else y


def tokens(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, TOKENS, 8, generator=torch.Generator().manual_seed(1))


def attentions(model: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def head_groups(graph, model: nn.Module) -> list:
    """The groups whose channels are heads (produced by the attention's in_proj rows)."""
    mha = {name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [g for g in graph.groups if mha & set(g.producers)]


def assert_heads_pruned(pruned: nn.Module, heads: int = HEADS) -> None:
    for attn in attentions(pruned):
        assert type(attn) is PrunedMultiheadAttention
        assert attn.num_heads < heads
        inner = attn.num_heads * attn.head_dim
        assert attn.in_proj_weight.shape == (3 * inner, attn.embed_dim)
        assert attn.out_proj.in_features == inner


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
def test_heads_are_removed_exactly(batch_first: bool, need_weights: bool) -> None:
    model = Net(batch_first=batch_first, need_weights=need_weights)
    x = tokens()
    graph = trace_graph(model, x)
    (heads,) = head_groups(graph, model)
    assert heads.size == HEADS and heads.exact
    rows = next(s for s in heads.slices if s.param == "in_proj_weight")
    # channel h holds q rows h*8..h*8+7, and the same rows of k and v
    assert rows.channel_of.tolist() == [h for _ in range(3) for h in range(HEADS) for _ in range(8)]
    columns = next(s for s in heads.slices if s.module == "attn.out_proj" and s.role == "in")
    assert columns.channel_of.tolist() == [h for h in range(HEADS) for _ in range(HEAD_DIM)]
    pruned, _ = check_exact(model, x, 0.5)
    assert_heads_pruned(pruned)
    # the residual width is its own group, cut in the attention's inputs and out_proj's rows
    assert pruned.attn.embed_dim == pruned.inp.out_features < DIM
    assert pruned.attn.out_proj.out_features == pruned.attn.embed_dim


def test_masks_are_followed_exactly() -> None:
    model, x = Net(), tokens()
    padding = torch.zeros(2, TOKENS, dtype=torch.bool)
    padding[0, -2:] = True
    causal = torch.ones(TOKENS, TOKENS, dtype=torch.bool).triu(1)  # True: not attended
    pruned, _ = check_exact(model, (x, padding, causal), 0.5)
    assert_heads_pruned(pruned)
    with torch.no_grad():
        unmasked = pruned(x)
        masked = pruned(x, padding, causal)
    assert not torch.allclose(unmasked, masked)  # the masks reached the pruned attention


def test_cross_attention_couples_query_and_memory_channels() -> None:
    model = Net(cross=True)
    graph = trace_graph(model, tokens())
    # one in_proj column reads the same channel of the query and of the key/value input
    assert any({"inp", "memory"} <= set(g.producers) for g in graph.groups)
    pruned, _ = check_exact(model, tokens(), 0.5)
    assert_heads_pruned(pruned)


def test_read_attention_weights_keep_the_heads() -> None:
    model = Net(need_weights=True, return_weights=True)
    graph = trace_graph(model, tokens())
    assert not head_groups(graph, model)
    reasons = " ".join(u.reason for u in graph.unprunable)
    assert "attention weights (need_weights=True) are read" in reasons


def test_per_head_mask_keeps_the_heads() -> None:
    per_head = torch.zeros(2 * HEADS, TOKENS, TOKENS)
    model = Net()
    graph = trace_graph(model, (tokens(), None, per_head))
    assert not head_groups(graph, model)
    assert "3-D attn_mask" in " ".join(u.reason for u in graph.unprunable)


def test_head_dim_unit_keeps_the_heads_and_prunes_the_residual() -> None:
    model = Net()
    graph = trace_graph(model, tokens(), attention="head_dim")
    assert not head_groups(graph, model)
    assert any("attn.out_proj" in g.producers for g in graph.groups)


def test_silenced_heads_fold_into_out_proj() -> None:
    """A head whose q/k/v weights are zero outputs its v bias: a constant that compensation
    measures (out_proj is applied inside the attention) and folds into out_proj's bias."""
    model, x = Net().eval(), tokens()
    with torch.no_grad():  # nn.MultiheadAttention starts with zero biases
        model.attn.in_proj_bias.copy_(
            torch.rand(3 * DIM, generator=torch.Generator().manual_seed(2)) + 0.2
        )
    graph, plan = make_plan(model, x, ratio=0.5)
    heads = head_groups(graph, model)[0]
    plan = type(plan)({heads.id: plan.drop[heads.id]}, plan.group_sizes, plan.model_type)
    silenced = silence_channels(model, graph, plan).eval()
    folded, report = apply_plan_with_report(silenced, graph, plan)
    assert report.consumers == 1 and report.folded_inputs == len(plan.drop[heads.id]) * HEAD_DIM
    dropped = apply_plan(silenced, graph, plan, compensate=None)
    with torch.no_grad():
        reference = silenced(x)
        assert (dropped(x) - reference).abs().max() > 1e-2  # the v biases mattered
        torch.testing.assert_close(folded(x), reference, atol=1e-5, rtol=1e-5)


def encoder(norm_first: bool, batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        DIM, HEADS, 2 * DIM, dropout=0.0, batch_first=batch_first, norm_first=norm_first
    )
    stack = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return nn.Sequential(nn.Linear(8, DIM), stack).eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_layer_heads_are_removed_exactly(norm_first: bool) -> None:
    model, x = encoder(norm_first), tokens()
    graph = trace_graph(model, x)
    assert len(head_groups(graph, model)) == 2
    # eval under no_grad is when the layer takes its fused fast path: the pruned copy must
    # stay off it (the fast path reads in_proj_weight as 3 * embed_dim rows)
    pruned, _ = check_exact(model, x, 0.5)
    assert_heads_pruned(pruned)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
    ).eval()


def test_torchvision_vit_heads_are_removed_exactly() -> None:
    model, x = small_vit(), torch.randn(2, 3, 32, 32)
    graph = trace_graph(model, x)
    assert len(head_groups(graph, model)) == 2
    pruned, _ = check_exact(model, x, 0.5)
    assert_heads_pruned(pruned)
    mlp_only = rp.prune(model, x, ratio=0.5, ignore=[m for m in attentions(model)])
    assert count(pruned, x).macs < count(mlp_only, x).macs


def mha_macs(batch: int, tokens: int, embed: int, inner: int, out: int) -> int:
    """q, k, v projections, q k^T and attn v over every kept head, out_proj."""
    return (
        3 * batch * tokens * embed * inner
        + 2 * batch * tokens**2 * inner
        + (batch * tokens * inner * out)
    )


@pytest.mark.parametrize("batch_first", [True, False])
def test_macs_of_the_pruned_attention_follow_the_formula(batch_first: bool) -> None:
    model, x = Net(batch_first=batch_first), tokens()
    pruned = rp.prune(model, x, ratio=0.5)
    attn = pruned.attn
    inner = attn.num_heads * attn.head_dim
    assert inner < DIM
    shape = (2, TOKENS, attn.embed_dim) if batch_first else (TOKENS, 2, attn.embed_dim)
    h = torch.randn(shape)
    got = count(attn, CallArgs(h, h, h, need_weights=False)).macs
    assert got == mha_macs(2, TOKENS, attn.embed_dim, inner, attn.out_proj.out_features)
    # the allocation's model of the traced layers predicts the same total without surgery
    graph, plan = make_plan(model, x, ratio=0.5)
    before = count(model, x).macs
    macs_model = MacsModel(graph, before)
    assert macs_model.other == 0  # the heads' matmuls are traced, not a constant
    after = count(apply_plan(model, graph, plan, compensate=None), x).macs
    assert macs_model.macs(kept_components(graph, plan)) == after


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_target_macs_is_met(target: float) -> None:
    model, x = small_vit(), torch.randn(2, 3, 32, 32)
    result = rp.prune_with_result(model, x, target_macs=target)
    share = result.macs_after / result.macs_before
    assert target - 0.01 <= share <= target
    assert result.macs_after == count(result.model, x).macs
    # heads and the residual width are both candidates (the width follows conv_proj, and the
    # model's hidden_dim with it); which go is the allocation's choice
    vit = result.model
    assert any(a.num_heads < HEADS for a in attentions(vit)) or vit.hidden_dim < 64
    assert vit.hidden_dim == vit.conv_proj.out_channels


def test_pruned_model_saves_loads_and_prunes_again(tmp_path) -> None:
    model, x = encoder(norm_first=True), tokens()
    pruned = rp.prune(model, x, ratio=0.5)
    assert set(pruned.state_dict()) == set(model.state_dict())
    assert all(type(a) is nn.MultiheadAttention for a in attentions(model))  # caller's model
    assert all(a.in_proj_weight.shape == (3 * DIM, DIM) for a in attentions(model))
    save_pruned(pruned, tmp_path / "pruned.pt")
    loaded = load_pruned(encoder(norm_first=True), tmp_path / "pruned.pt").eval()
    assert_heads_pruned(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))
    # a pruned attention is traced and pruned like the original one
    again, _ = check_exact(pruned, x, 0.5)
    assert all(
        a.num_heads < b.num_heads
        for a, b in zip(attentions(again), attentions(pruned), strict=True)
    )


def test_unbatched_input_is_followed() -> None:
    class Unbatched(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.inp = nn.Linear(8, DIM)
            self.attn = nn.MultiheadAttention(DIM, HEADS)
            self.out = nn.Linear(DIM, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(h + self.attn(h, h, h, need_weights=False)[0])

    pruned, _ = check_exact(Unbatched(), tokens(1)[0], 0.5)
    assert_heads_pruned(pruned)


class Seq2Seq(nn.Module):
    """``nn.Transformer``: self-attention (a causal mask in the decoder) and cross-attention."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.src, self.tgt = nn.Linear(8, DIM), nn.Linear(8, DIM)
        self.transformer = nn.Transformer(DIM, HEADS, 2, 2, 2 * DIM, dropout=0.0, batch_first=True)
        self.out = nn.Linear(DIM, 5)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(target.shape[1])
        mixed = self.transformer(self.src(source), self.tgt(target), tgt_mask=causal)
        return self.out(mixed)


def test_nn_transformer_prunes_heads_exactly_and_its_d_model_follows_the_residual() -> None:
    model, x = Seq2Seq().eval(), (tokens(), tokens()[:, :4])
    graph = trace_graph(model, x)
    assert len(head_groups(graph, model)) == 6  # 2 encoder, 2 x 2 decoder attentions
    pruned, _ = check_exact(model, x, 0.5)
    assert_heads_pruned(pruned)
    # a budget also cuts the residual width (LayerNorm-coupled, so not in the exact check):
    # nn.Transformer compares its inputs' width with d_model, which surgery refreshes
    result = rp.prune_with_result(model, x, target_macs=0.6)
    assert result.model.transformer.d_model == result.model.src.out_features < DIM


@pytest.mark.parametrize("name", ["group_lasso", "l0_channel", "greg1", "slimming"])
def test_regularization_methods_remove_whole_heads_of_a_vit(name: str) -> None:
    """Issue 16, methods on heads: a head is one channel of its group, so group lasso's norm
    and an L0 gate cover its q, k, v rows and out_proj columns together; a few training steps
    in budget mode, then prune removes whole heads (head_dim unchanged) and the model runs."""
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64
    )
    x = torch.randn(4, 3, 32, 32)
    method = rp.methods.get(name, model, x[:1], target_macs=0.7, total_steps=20)
    sparsify(model, method, x, torch.arange(4), steps=20)
    small = method.prune().eval()
    heads = [m.num_heads for m in small.modules() if isinstance(m, nn.MultiheadAttention)]
    assert heads and min(heads) < 4  # whole heads went
    for module in small.modules():
        if isinstance(module, nn.MultiheadAttention):
            assert module.head_dim == 8
            assert module.in_proj_weight.shape[0] == 3 * 8 * module.num_heads
    assert small(x).shape == (4, 1000)
    assert rp.count(small, x[:1]).macs <= 0.7 * rp.count(model, x[:1]).macs
