"""Tiny Hugging Face models built from configs (nothing downloaded), shared by the engine's
attention tests and the Hugging Face round-trip tests. ``transformers`` is imported when a model
is built, so a test module that needs it says so with its own ``pytest.importorskip``."""

from __future__ import annotations

import torch
from torch import nn

from regprune.inputs import CallArgs


def token_ids() -> tuple[torch.Tensor]:
    return (torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0)),)


def tiny_hf_model(name: str, *, use_cache: bool = True) -> tuple[nn.Module, tuple]:
    """``bert``, ``llama`` (4 query / 2 kv heads), ``gpt2``, ``vit`` or ``t5`` (encoder-decoder,
    :func:`tiny_t5`): 2 layers, width 64, 4 heads of 16, MLP 128; eval mode, seeded; with
    example inputs."""
    import transformers

    torch.manual_seed(0)
    if name == "bert":
        config = transformers.BertConfig(
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            num_hidden_layers=2,
            vocab_size=100,
        )
        return transformers.BertModel(config).eval(), token_ids()
    if name == "llama":
        config = transformers.LlamaConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            num_hidden_layers=2,
            vocab_size=100,
            use_cache=use_cache,
        )
        return transformers.LlamaForCausalLM(config).eval(), token_ids()
    if name == "gpt2":
        config = transformers.GPT2Config(
            n_embd=64, n_head=4, n_layer=2, vocab_size=100, n_positions=32, bos_token_id=0
        )
        config.eos_token_id = 0
        return transformers.GPT2LMHeadModel(config).eval(), token_ids()
    if name == "t5":
        return tiny_t5()  # its example call returns no cache either way (compared: logits)
    if name != "vit":
        raise ValueError(f"no tiny model named {name!r}")
    config = transformers.ViTConfig(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
    )
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return transformers.ViTModel(config).eval(), (image,)


def tiny_t5() -> tuple[nn.Module, CallArgs]:
    """``T5ForConditionalGeneration``: 2 encoder and 2 decoder layers, width 64, 4 heads of 16,
    MLP 128; example inputs ``input_ids`` (12 tokens) and ``decoder_input_ids`` (8 tokens) by
    keyword, without the kv cache (the traced call compares logits, not caches)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        vocab_size=100,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    ids = torch.randint(2, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    decoder_ids = torch.randint(2, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    inputs = CallArgs(input_ids=ids, decoder_input_ids=decoder_ids, use_cache=False)
    return transformers.T5ForConditionalGeneration(config).eval(), inputs
