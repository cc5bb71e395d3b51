"""Tiny Llama / Qwen2 / Mistral decoders and a word-level tokenizer, built from configs (no download).

A module of its own name, not ``conftest``: tests import from it, and ``conftest`` is a different
module when pytest is given several test folders at once."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from graftkit.bridge import GraftConfig

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from threads

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = [f"w{i}" for i in range(56)]
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def make_model(family: str = "llama", seed: int = 0, layers: int = 4, hidden: int = 32):
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger logits than the default init: fewer near-ties in greedy tests
        model.get_output_embeddings().weight.mul_(20)
    return model


def small_graft_config(**overrides) -> GraftConfig:
    fields = dict(
        visual_dim=16,
        num_zones=4,
        num_heads=2,
        num_global_layers=1,
        compressor_dropout=0.0,
        predictor_dropout=0.0,
        xattn_heads=4,
        num_classes=3,
        jepa_dim=8,
        lora={"r": 2, "alpha": 4, "dropout": 0.0},
    )
    fields.update(overrides)
    return GraftConfig(**fields)
