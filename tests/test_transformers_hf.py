"""Hugging Face models pruned end to end: exact, saved and reloaded, generating.

Tiny configs built in code (nothing downloaded). A pruned model is only useful to HF users if
``save_pretrained`` / ``from_pretrained`` rebuild it and ``generate`` runs: surgery refreshes the
attention modules' head attributes and the config, and warns, naming the cause, where the config
cannot state the pruned sizes (BERT derives its head size from ``hidden_size``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import regprune as rp
from regprune.api import make_plan
from regprune.surgery import apply_plan, load_pruned, save_pruned, zero_channels
from tests.exactness import check_exact, exact_plan
from tests.hf_models import tiny_hf_model

transformers = pytest.importorskip("transformers")


def _model(name: str) -> tuple[torch.nn.Module, tuple]:
    return tiny_hf_model(name)


def _first(output) -> torch.Tensor:
    return output[0]


def _prune(model, inputs) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # GPT-2's config (tested below)
        return rp.prune(model, inputs, ratio=0.5)


def _gpt2_mlp_only(model) -> list[str]:
    """GPT-2's config derives head_dim from n_embd / n_head: its heads and its residual width
    (the token embedding's) stay whole to round-trip."""
    heads = [n for n, _ in model.named_modules() if n.endswith("attn.c_attn")]
    return [*heads, "transformer.wte"]


@pytest.mark.parametrize("name", ["vit", "llama", "gpt2"])
def test_save_pretrained_and_from_pretrained_rebuild_the_pruned_model(name, tmp_path) -> None:
    model, inputs = _model(name)
    ignore = _gpt2_mlp_only(model) if name == "gpt2" else []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a config that cannot state it fails here
        pruned = rp.prune(model, inputs, ratio=0.5, ignore=ignore)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    pruned.save_pretrained(tmp_path)
    reloaded = type(pruned).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(_first(reloaded(*inputs)), _first(pruned(*inputs)))
    # the caller's model and its config are untouched
    assert model.config.num_attention_heads == 4
    assert model.config.to_dict() != pruned.config.to_dict()


def test_the_config_states_the_pruned_sizes() -> None:
    model, inputs = _model("llama")
    pruned = _prune(model, inputs)
    attention = pruned.model.layers[0].self_attn
    q_heads = attention.q_proj.out_features // attention.head_dim
    kv_heads = attention.k_proj.out_features // attention.head_dim
    assert (q_heads, kv_heads) == (2, 1)
    assert pruned.config.num_attention_heads == q_heads
    assert pruned.config.num_key_value_heads == kv_heads
    assert attention.num_key_value_groups == q_heads // kv_heads == 2  # the GQA ratio kept
    assert pruned.config.head_dim == attention.head_dim == 16
    assert pruned.config.intermediate_size == pruned.model.layers[0].mlp.up_proj.out_features
    assert pruned.config.hidden_size == pruned.model.embed_tokens.embedding_dim


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generate_runs_after_pruning(name) -> None:
    model, inputs = _model(name)
    pruned = _prune(model, inputs)
    greedy = pruned.generate(inputs[0], max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert greedy.shape == (1, 18)
    # with the kv cache and without it, the pruned decoder predicts the same tokens
    uncached = pruned.generate(
        inputs[0], max_new_tokens=6, do_sample=False, min_new_tokens=6, use_cache=False
    )
    assert torch.equal(greedy, uncached)


def test_gpt2_heads_are_removed_and_its_attributes_follow() -> None:
    """GPT-2 cuts q/k/v by ``split(self.split_size)`` and writes ``self.head_dim``: literals
    surgery refreshes, so whole heads go; its config derives head_dim, and says so."""
    model, inputs = _model("gpt2")
    model.config.use_cache = False  # compare logits, not caches
    with pytest.warns(UserWarning, match="derives the head size from hidden_size"):
        pruned, _ = check_exact(model, inputs, 0.5)
    attention = pruned.transformer.h[0].attn
    assert attention.c_attn.nf == 3 * 32
    assert (attention.num_heads, attention.split_size, attention.head_dim) == (2, 32, 16)


def test_bert_warns_that_its_config_derives_the_head_size_and_saves_with_regprune(
    tmp_path,
) -> None:
    """BertConfig has no head size: BertSelfAttention takes hidden_size / num_attention_heads,
    so 2 heads of 16 in a 64-wide model cannot be stated. Surgery says so; save_pruned works."""
    model, inputs = _model("bert")
    with pytest.warns(UserWarning, match="derives the head size from hidden_size"):
        pruned = rp.prune(model, inputs, ratio=0.5)
    attention = pruned.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.all_head_size) == (2, 32)
    save_pruned(pruned, tmp_path / "bert.pt")
    fresh, _ = _model("bert")
    reloaded = load_pruned(fresh, tmp_path / "bert.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(_first(reloaded(*inputs)), _first(pruned(*inputs)))


def test_per_layer_counts_warn_that_the_config_holds_one_value() -> None:
    model, inputs = _model("vit")
    graph, plan = make_plan(model, inputs, ratio=0.5)
    heads = [g.id for g in graph.groups if "layers.0.attention.q_proj" in g.producers]
    plan.drop[heads[0]] = plan.drop[heads[0]][:1]  # layer 0 keeps 3 heads, layer 1 keeps 2
    with pytest.warns(UserWarning, match=r"heads differ between layers \(\[3, 2\]\)"):
        apply_plan(model, graph, plan, compensate=None)


@pytest.mark.parametrize("name", ["bert", "vit", "llama", "gpt2"])
@pytest.mark.parametrize("seed", range(3))
def test_removed_heads_match_zeroed_heads_and_keep_the_gqa_ratio(name, seed) -> None:
    model, inputs = _model(name)
    # exact groups only: Llama's residual stream is also prunable, through an RMSNorm (inexact)
    graph, plan = exact_plan(model, inputs, 0.5, importance="random", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # BERT's, GPT-2's configs (tested above)
        pruned = apply_plan(model, graph, plan, compensate=None)
    reference = zero_channels(model, graph, plan)
    with torch.no_grad():
        expected, got = _first(reference(*inputs)), _first(pruned(*inputs))
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    if name == "llama":
        for layer in pruned.model.layers:
            attention = layer.self_attn
            q_heads = attention.q_proj.out_features // attention.head_dim
            kv_heads = attention.k_proj.out_features // attention.head_dim
            assert q_heads == 2 * kv_heads


# ---- an encoder-decoder: T5 -----------------------------------------------------------------


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs.args, **inputs.kwargs).logits


@pytest.mark.parametrize("seed", range(3))
def test_t5_heads_and_mlp_widths_prune_exactly(seed) -> None:
    """Self-attention heads (coupled across layers by the shared relative position bias),
    cross-attention heads (whose zero position bias is built from ``n_heads``) and the MLP
    widths all shrink; removed equals zeroed."""
    model, inputs = _model("t5")
    pruned, _ = check_exact(model, inputs, 0.5, seed=seed)
    for stack in (pruned.encoder, pruned.decoder):
        for block in stack.block:
            attention = block.layer[0].SelfAttention
            assert (attention.n_heads, attention.q.out_features) == (2, 32)
            assert block.layer[-1].DenseReluDense.wi.out_features == 64
    for block in pruned.decoder.block:
        cross = block.layer[1].EncDecAttention
        assert (cross.n_heads, cross.inner_dim, cross.k.out_features) == (2, 32, 32)
    # the relative position bias keeps one column per kept head
    bias = pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert bias.weight.shape[1] == 2


def test_t5_keeps_its_residual_stream_and_says_why() -> None:
    model, inputs = _model("t5")
    result = rp.prune_with_result(model, inputs, ratio=0.5)
    reasons = {u.layer: u.reason for u in result.graph.unprunable}
    assert "model output" in reasons["encoder.embed_tokens"]  # encoder_last_hidden_state
    assert "tied" in reasons["decoder.embed_tokens"]
    assert rp.count(result.model, inputs).macs < 0.6 * result.macs_before


def test_t5_config_states_the_pruned_sizes_and_round_trips(tmp_path) -> None:
    model, inputs = _model("t5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a config that cannot state it fails here
        pruned = rp.prune(model, inputs, ratio=0.5)
    assert (pruned.config.num_heads, pruned.config.d_kv, pruned.config.d_ff) == (2, 16, 64)
    assert (model.config.num_heads, model.config.d_ff) == (4, 128)  # the caller's untouched
    pruned.save_pretrained(tmp_path)
    reloaded = type(pruned).from_pretrained(tmp_path).eval()
    assert set(reloaded.state_dict()) == set(pruned.state_dict())
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(pruned, inputs))


def test_t5_generates_after_pruning_with_and_without_the_cache() -> None:
    model, inputs = _model("t5")
    pruned = rp.prune(model, inputs, ratio=0.5)
    ids = inputs.kwargs["input_ids"]
    greedy = pruned.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert greedy.shape == (1, 7)  # the decoder start token and 6 new ones
    uncached = pruned.generate(
        ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False
    )
    assert torch.equal(greedy, uncached)
