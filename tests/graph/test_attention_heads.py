"""Attention heads and head_dim positions as removable channels.

A channel dim reshaped into (heads, head_dim) is prunable by whole heads (q, k, v rows of a
head and its output-projection columns together; a kv head with every query head that reads
it) or, with ``attention="head_dim"``, by head_dim positions removed alike in every head.
Each test builds a tiny real module and checks the groups the tracer finds, that removing them
saves MACs beyond the MLP, and the exactness contract (zeroed channels removed by surgery leave
the outputs unchanged).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regprune as rp
from regprune.api import make_plan
from regprune.graph import trace_graph
from regprune.surgery import apply_plan, zero_channels
from tests.exactness import check_exact
from tests.hf_models import tiny_hf_model

DIM, HEADS, HEAD_DIM = 32, 4, 8


class Attention(nn.Module):
    """Multi-head attention written the way models write it.

    Args:
        kv_heads: key/value heads (grouped-query attention when fewer than ``heads``).
        path: ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"explicit"``
            (``softmax(q @ k^T * scale) @ v``) or ``"expand"`` (SDPA after repeating the kv
            heads with expand + flatten, HF's ``repeat_kv`` with the merged size left to torch).
        free: which size the head split writes as -1: ``"heads"`` (``view(b, n, -1, head_dim)``,
            what HF writes) or ``"head_dim"`` (``view(b, n, heads, -1)``).
        scale: an explicit attention scale; None uses SDPA's default ``1/sqrt(head_dim)``.
    """

    def __init__(
        self,
        kv_heads: int = HEADS,
        path: str = "sdpa",
        free: str = "heads",
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.path, self.free, self.scale = (
            HEADS,
            kv_heads,
            path,
            free,
            scale,
        )
        self.q = nn.Linear(DIM, HEADS * HEAD_DIM)
        self.k = nn.Linear(DIM, kv_heads * HEAD_DIM)
        self.v = nn.Linear(DIM, kv_heads * HEAD_DIM)
        self.o = nn.Linear(HEADS * HEAD_DIM, DIM)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = x.shape
        shape = (b, n, -1, HEAD_DIM) if self.free == "heads" else (b, n, heads, -1)
        return x.view(shape).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self._split(self.q(x), self.heads)
        k = self._split(self.k(x), self.kv_heads)
        v = self._split(self.v(x), self.kv_heads)
        repeat = self.heads // self.kv_heads
        if repeat > 1 and self.path in ("explicit", "expand"):
            k = k[:, :, None].expand(b, k.shape[1], repeat, n, k.shape[-1]).flatten(1, 2)
            v = v[:, :, None].expand(b, v.shape[1], repeat, n, v.shape[-1]).flatten(1, 2)
        if self.path == "explicit":
            scale = self.scale if self.scale is not None else HEAD_DIM**-0.5
            y = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
        else:
            gqa = repeat > 1 and self.path == "sdpa"
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=gqa)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + self.fc2(F.gelu(self.fc1(x)))


class Net(nn.Module):
    """Two attention blocks between an input and an output projection."""

    def __init__(self, make_attention=Attention, **kwargs) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, DIM)
        self.blocks = nn.Sequential(*[Block(make_attention(**kwargs)) for _ in range(2)])
        self.out = nn.Linear(DIM, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def tokens() -> torch.Tensor:
    return torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))


def head_groups(graph):
    return [g for g in graph.groups if any(p.endswith(".q") for p in g.producers)]


def mlp_only_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs after pruning at ratio 0.5 with every attention projection ignored (the state
    before heads were prunable)."""
    ignore = [n for n, _ in model.named_modules() if n.endswith((".q", ".k", ".v"))]
    return rp.prune_with_result(model, (x,), ratio=0.5, ignore=ignore).macs_after


PATHS = [
    pytest.param({}, id="sdpa"),
    pytest.param({"path": "explicit"}, id="explicit"),
    pytest.param({"kv_heads": 2}, id="gqa-sdpa"),
    pytest.param({"kv_heads": 2, "path": "expand"}, id="gqa-repeat-kv"),
    pytest.param({"kv_heads": 2, "path": "explicit"}, id="gqa-explicit"),
]


@pytest.mark.parametrize("kwargs", PATHS)
def test_whole_heads_are_one_group_per_attention(kwargs: dict) -> None:
    model = Net(**kwargs).eval()
    graph = trace_graph(model, (tokens(),))
    groups = head_groups(graph)
    kv_heads = kwargs.get("kv_heads", HEADS)
    assert len(groups) == 2  # one per block
    for group in groups:
        assert group.size == kv_heads  # one channel per kv head, with the q heads reading it
        block = group.producers[0].rsplit(".", 1)[0]
        assert group.producers == [f"{block}.q", f"{block}.k", f"{block}.v"]
        # the output projection reads the heads: its input columns are in the group
        consumers = {(s.module, s.role) for s in group.slices}
        assert (f"{block}.o", "in") in consumers


@pytest.mark.parametrize("kwargs", PATHS)
def test_heads_prune_exactly_and_save_macs_beyond_the_mlp(kwargs: dict) -> None:
    model, x = Net(**kwargs).eval(), tokens()
    pruned, _ = check_exact(model, (x,), 0.5)
    attention = pruned.blocks[0].attention
    kv_heads = kwargs.get("kv_heads", HEADS)
    assert attention.k.out_features == kv_heads // 2 * HEAD_DIM
    assert attention.q.out_features == HEADS // 2 * HEAD_DIM  # heads stay whole
    assert attention.o.in_features == attention.q.out_features
    result = rp.prune_with_result(model, (x,), ratio=0.5)
    assert result.macs_after < 0.85 * mlp_only_macs(model, x)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("path", ["sdpa", "expand", "explicit"])
def test_gqa_removes_a_kv_head_only_with_the_query_heads_reading_it(path: str, seed: int) -> None:
    kv_heads, repeat = 2, HEADS // 2
    model, x = Net(kv_heads=kv_heads, path=path).eval(), tokens()
    graph, plan = make_plan(model, (x,), ratio=0.5, importance="random", seed=seed)
    pruned = apply_plan(model, graph, plan, compensate=None)
    reference = zero_channels(model, graph, plan)
    for original, zeroed, cut in zip(model.blocks, reference.blocks, pruned.blocks, strict=True):
        q_alive = zeroed.attention.q.weight.reshape(HEADS, -1).abs().sum(1) > 0
        k_alive = zeroed.attention.k.weight.reshape(kv_heads, -1).abs().sum(1) > 0
        assert torch.equal(q_alive, k_alive.repeat_interleave(repeat))
        assert cut.attention.q.out_features == int(q_alive.sum()) * HEAD_DIM
        assert original.attention.q.out_features == HEADS * HEAD_DIM  # the caller's model
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-4)


def test_head_dim_unit_removes_positions_alike_in_every_head() -> None:
    model, x = Net(free="head_dim", path="explicit", scale=0.3).eval(), tokens()
    graph = trace_graph(model, (x,), attention="head_dim")
    by_producers = {tuple(g.producers): g for g in graph.groups}
    qk = by_producers[("blocks.0.attention.q", "blocks.0.attention.k")]
    v = by_producers[("blocks.0.attention.v",)]
    assert qk.size == v.size == HEAD_DIM
    q_rows = next(s for s in qk.slices if s.module == "blocks.0.attention.q" and s.role == "out")
    # channel d is position d of every head
    assert torch.equal(q_rows.channel_of, torch.arange(HEAD_DIM).repeat(HEADS))
    _, plan = make_plan(model, (x,), ratio=0.5, importance="random", graph=graph)
    pruned = apply_plan(model, graph, plan, compensate=None)
    assert pruned.blocks[0].attention.q.out_features == HEADS * HEAD_DIM // 2
    with torch.no_grad():
        expected = zero_channels(model, graph, plan)(x)
        torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("path", "scale"), [("sdpa", None), ("explicit", None)])
def test_head_dim_of_q_and_k_is_inexact_when_the_scale_may_follow_it(path, scale) -> None:
    """SDPA's default scale is 1/sqrt(head_dim); an explicit path's scale is a Python number
    the tracer cannot see. Either may change with head_dim, so those groups are inexact."""
    model = Net(free="head_dim", path=path, scale=scale).eval()
    graph = trace_graph(model, (tokens(),), attention="head_dim")
    exact = {tuple(g.producers): g.exact for g in graph.groups}
    assert exact[("blocks.0.attention.q", "blocks.0.attention.k")] is False
    assert exact[("blocks.0.attention.v",)] is True


def test_sdpa_with_an_explicit_scale_keeps_head_dim_exact() -> None:
    model = Net(free="head_dim", scale=0.3).eval()
    graph = trace_graph(model, (tokens(),), attention="head_dim")
    exact = {tuple(g.producers): g.exact for g in graph.groups}
    assert exact[("blocks.0.attention.q", "blocks.0.attention.k")] is True


def test_a_literal_size_on_the_shrinking_dim_keeps_heads_whole_and_says_why() -> None:
    """``view(b, n, heads, -1)`` writes the head count: removing heads would break it. The
    reason names the fix."""
    model = Net(free="head_dim").eval()
    graph = trace_graph(model, (tokens(),))  # heads are the unit
    assert not head_groups(graph)
    reasons = {u.layer: u.reason for u in graph.unprunable}
    assert "write it as -1" in reasons["blocks.0.attention.q"]


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="attention must be one of"):
        trace_graph(Net().eval(), (tokens(),), attention="rows")


class RotaryAttention(Attention):
    """Attention with rotary position embeddings computed from a buffer, as Llama does: every
    head reads the same cos/sin over head_dim, and rotate_half cuts head_dim in two."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        freqs = torch.arange(n, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        angle = torch.cat([freqs, freqs], dim=-1)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * angle.cos() + rotated * angle.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self._rotate(self._split(self.q(x), self.heads))
        k = self._rotate(self._split(self.k(x), self.kv_heads))
        v = self._split(self.v(x), self.kv_heads)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.kv_heads < self.heads)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_rotary_tables_shared_by_every_head_do_not_couple_the_heads() -> None:
    model, x = Net(RotaryAttention, kv_heads=2).eval(), tokens()
    groups = head_groups(trace_graph(model, (x,)))
    assert [g.size for g in groups] == [2, 2]
    check_exact(model, (x,), 0.5)


def test_rotary_pins_head_dim_so_head_dim_positions_stay_whole() -> None:
    """rotate_half pairs position d with d + head_dim/2: head_dim positions cannot go."""
    model = Net(RotaryAttention, free="head_dim").eval()
    graph = trace_graph(model, (tokens(),), attention="head_dim")
    assert not [g for g in graph.groups if "blocks.0.attention.q" in g.producers]
    assert [g for g in graph.groups if g.producers == ["blocks.0.attention.v"]]


class BiasedAttention(Attention):
    """Attention with an additive per-head bias built from its head count, as T5's
    cross-attention builds its zero position bias: ``n_heads`` and ``key_value_proj_dim`` are
    the attributes surgery refreshes (``layers.rules.HEAD_LAYOUTS``, T5's names).

    Args:
        bias: ``"zeros"`` (the same in every head: it may shrink with the heads) or
            ``"per_head"`` (ALiBi-like slopes, one value per head: a rebuilt one would differ).
    """

    def __init__(self, bias: str = "zeros") -> None:
        super().__init__()
        self.bias, self.n_heads, self.key_value_proj_dim = bias, HEADS, HEAD_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (self._split(proj(x), self.n_heads) for proj in (self.q, self.k, self.v))
        if self.bias == "zeros":
            mask = torch.zeros(1, self.n_heads, n, n)
        else:
            mask = torch.arange(self.n_heads, dtype=x.dtype).view(1, -1, 1, 1).expand(1, -1, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.contiguous())
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_a_bias_the_same_in_every_head_shrinks_with_the_heads() -> None:
    model = Net(BiasedAttention, bias="zeros").eval()
    assert len(head_groups(trace_graph(model, tokens()))) == 2
    pruned, _ = check_exact(model, tokens(), 0.5)
    attention = pruned.blocks[0].attention
    assert (attention.n_heads, attention.q.out_features) == (2, 2 * HEAD_DIM)


def test_a_bias_that_differs_between_heads_keeps_them_whole() -> None:
    graph = trace_graph(Net(BiasedAttention, bias="per_head").eval(), tokens())
    assert head_groups(graph) == []
    reasons = [u.reason for u in graph.unprunable if u.layer.endswith("attention.q")]
    assert reasons and all("fixed-size constant" in r for r in reasons)


# ---- Hugging Face models built from tiny configs (nothing downloaded) ---------------------------
transformers = pytest.importorskip("transformers")


def _hf(name: str) -> tuple[nn.Module, tuple]:
    return tiny_hf_model(name, use_cache=False)


HF_HEADS = {
    # model: (query projection name in layer 0, heads per group channel, kv heads)
    "bert": ("encoder.layer.0.attention.self.query", 1, 4),
    "llama": ("model.layers.0.self_attn.q_proj", 2, 2),
    "vit": ("layers.0.attention.q_proj", 1, 4),
}


@pytest.mark.parametrize("name", sorted(HF_HEADS))
def test_hugging_face_heads_prune_exactly(name: str) -> None:
    model, x = _hf(name)
    query, heads_per_channel, kv_heads = HF_HEADS[name]
    graph = trace_graph(model, x)
    group = next(g for g in graph.groups if query in g.producers)
    assert group.size == kv_heads
    pruned, _ = check_exact(model, x, 0.5)
    q_rows = pruned.get_submodule(query).out_features
    assert q_rows == kv_heads // 2 * heads_per_channel * 16  # head_dim 16, half the kv heads


def test_gpt2_split_by_a_refreshed_size_prunes_whole_heads_exactly() -> None:
    """GPT-2's projections are HF Conv1D layers (weight stored (in, out), applied by addmm);
    its q/k/v come from one projection cut by ``split(self.split_size)``, a size surgery
    refreshes: the three chunks lose the same heads, and the attributes follow."""
    config = transformers.GPT2Config(
        n_embd=64, n_head=4, n_layer=2, vocab_size=100, n_positions=32, use_cache=False
    )
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    ids = (torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0)),)
    graph = trace_graph(model, ids)
    sizes = {tuple(g.producers): g.size for g in graph.groups}
    assert sizes[("h.0.attn.c_attn",)] == 4  # one channel per head, across q, k and v
    assert sizes[("h.0.mlp.c_fc",)] == 256
    with pytest.warns(UserWarning, match="derives the head size"):
        pruned, _ = check_exact(model, ids, 0.5)
    attention = pruned.h[0].attn
    assert (attention.num_heads, attention.split_size) == (2, 32)
    assert pruned.h[0].mlp.c_fc.weight.shape == (64, 128)
    assert pruned.h[0].mlp.c_proj.weight.shape == (128, 64)


def test_gpt2_split_stays_locked_with_head_dim_as_the_unit() -> None:
    """A refreshed ``head_dim`` would have to serve q/k and v, which ``"head_dim"`` prunes
    apart: literal sizes are only followed with whole heads as the unit."""
    config = transformers.GPT2Config(n_embd=64, n_head=4, n_layer=1, vocab_size=100)
    model = transformers.GPT2Model(config).eval()
    graph = trace_graph(model, (torch.zeros(1, 6, dtype=torch.long),), attention="head_dim")
    assert not [g for g in graph.groups if "h.0.attn.c_attn" in g.producers]
    reasons = {u.layer: u.reason for u in graph.unprunable}
    assert "'split' selects or reorders channels" in reasons["h.0.attn.c_attn"]


timm = pytest.importorskip("timm")


def test_timm_attention_heads_prune_exactly_and_refresh_num_heads() -> None:
    """timm's Attention writes ``reshape(B, N, 3, self.num_heads, self.head_dim)`` and
    ``reshape(B, N, self.attn_dim)``: literals surgery refreshes."""
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5
    ).eval()
    x = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    graph = trace_graph(model, x)
    assert {tuple(g.producers): g.size for g in graph.groups}[("blocks.0.attn.qkv",)] == 4
    pruned, _ = check_exact(model, x, 0.5)
    attention = pruned.blocks[0].attn
    assert (attention.num_heads, attention.head_dim, attention.attn_dim) == (2, 16, 32)
    assert attention.qkv.out_features == 3 * 32
    assert model.blocks[0].attn.num_heads == 4  # the caller's model
