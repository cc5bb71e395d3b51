"""Fixtures for graftkit.lm: a small corpus, the prior's tokenizer, a Llama-3-style tokenizer."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from graftkit.config import PriorConfig
from graftkit.lm import train_tokenizer

#: The public Llama-3 chat format (header tokens, blank line, trimmed content, <|eot_id|>).
LLAMA3_STYLE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

SUBJECTS = ["The heart", "The liver", "The left kidney", "The trachea", "The aorta", "The spleen"]
STATES = ["is normal in size", "shows a small cyst", "is unremarkable", "has mild calcification"]
EXTRAS = ["No effusion is seen.", "Follow-up is advised.", "Appearance is stable.", ""]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """Short report-like documents from a small grammar (fixed seed)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = [
            f"{rng.choice(SUBJECTS)} {rng.choice(STATES)}." for _ in range(rng.randint(2, 5))
        ]
        docs.append(" ".join([*sentences, rng.choice(EXTRAS)]).strip())
    return docs


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared CPU, two threads spin and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(120)


@pytest.fixture(scope="session")
def tiny_prior_config() -> PriorConfig:
    return PriorConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        max_length=64,
        steps=5,
        batch_size=4,
        lr=1e-2,
    )


@pytest.fixture(scope="session")
def prior_tokenizer(corpus) -> PreTrainedTokenizerFast:
    return train_tokenizer(corpus, 320)


@pytest.fixture(scope="session")
def word_prior_tokenizer(corpus) -> PreTrainedTokenizerFast:
    """The prior's tokenizer with room for every merge of the corpus (it stops below 400): each
    word of the grammar is one or two tokens, as in a prior trained on a real cohort."""
    return train_tokenizer(corpus, 400)


def build_llama3_style_tokenizer(
    texts: list[str], with_template: bool = True
) -> PreTrainedTokenizerFast:
    """A Llama-3-Instruct-like tokenizer: BOS added by the post-processor, EOS = <|eot_id|>, no pad,
    no visual token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=LLAMA3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        extra_special_tokens=LLAMA3_SPECIALS[1:4],
        chat_template=LLAMA3_STYLE_TEMPLATE if with_template else None,
    )


@pytest.fixture(scope="session")
def llama3_factory():
    """``build_llama3_style_tokenizer`` for tests that need a fresh, unmodified one."""
    return build_llama3_style_tokenizer


@pytest.fixture(scope="session")
def llama3_tokenizer(corpus) -> PreTrainedTokenizerFast:
    tokenizer = build_llama3_style_tokenizer(corpus)
    tokenizer.add_special_tokens(
        {"extra_special_tokens": ["<|visual_region|>"]}, replace_extra_special_tokens=False
    )
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
