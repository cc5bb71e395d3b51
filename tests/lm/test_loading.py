"""load_llm: offline loading of any local causal-LM directory, with the curriculum's guarantees."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from graftkit.lm import (
    FALLBACK_CHAT_TEMPLATE,
    VISUAL_TOKEN,
    LLMLoadError,
    encode_chat,
    load_llm,
    pad_batch,
)


def _save_llama(path, tokenizer, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.fixture
def instruct_dir(tmp_path, corpus, llama3_factory):
    """A tiny Llama saved with a Llama-3-style tokenizer that has no pad and no visual token."""
    path = tmp_path / "instruct"
    model = _save_llama(path, llama3_factory(corpus))
    return path, model


def test_adds_pad_visual_token_and_keeps_the_model(instruct_dir, corpus):
    path, original = instruct_dir
    model, tokenizer = load_llm(path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.padding_side == "left"
    assert (
        model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    )
    assert not model.training
    visual_id = tokenizer.convert_tokens_to_ids(VISUAL_TOKEN)
    assert visual_id == len(tokenizer) - 1 == model.get_input_embeddings().num_embeddings - 1
    assert tokenizer(VISUAL_TOKEN * 3, add_special_tokens=False)["input_ids"] == [visual_id] * 3
    # Growing the vocabulary leaves the LLM's logits over the old vocabulary unchanged.
    ids = torch.tensor([tokenizer(corpus[0])["input_ids"]])
    with torch.no_grad():
        before = original(input_ids=ids).logits
        after = model(input_ids=ids).logits[..., : before.shape[-1]]
    torch.testing.assert_close(after, before)


def test_left_padded_batch_generates_like_single_prompts(instruct_dir):
    model, tokenizer = load_llm(path := instruct_dir[0])
    assert path.is_dir()
    prompts = ["Describe.", "Describe the heart and the aorta in detail, please."]
    encodings = [encode_chat(tokenizer, p, None, 4) for p in prompts]
    assert len({len(e["input_ids"]) for e in encodings}) == 2
    batch = pad_batch(encodings, tokenizer.pad_token_id, side="left")
    kwargs = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": None}
    batched = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
    )[:, batch["input_ids"].shape[1] :]
    for row, enc in zip(batched, encodings):
        single = model.generate(input_ids=torch.tensor([enc["input_ids"]]), **kwargs)[
            0, len(enc["input_ids"]) :
        ]
        assert row.tolist() == single.tolist()


def test_base_model_gets_the_fallback_template(tmp_path, corpus, llama3_factory):
    path = tmp_path / "base"
    _save_llama(path, llama3_factory(corpus, with_template=False))
    _, tokenizer = load_llm(path, dtype="bfloat16")
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    enc = encode_chat(tokenizer, "Describe.", "The heart is normal.", 3)
    start = next(i for i, label in enumerate(enc["labels"]) if label != -100)
    assert tokenizer.decode(enc["labels"][start:]) == "The heart is normal.<|eot_id|>"
    assert tokenizer.decode(enc["input_ids"][:start]).endswith("Describe.<|eot_id|>\nAssistant:\n")


def test_dtype_and_visual_token_options(instruct_dir):
    model, tokenizer = load_llm(instruct_dir[0], dtype="bfloat16", visual_token=None)
    assert model.dtype == torch.bfloat16
    assert VISUAL_TOKEN not in tokenizer.get_vocab()
    with pytest.raises(LLMLoadError, match="dtype 'int8' is not one of"):
        load_llm(instruct_dir[0], dtype="int8")


def test_clear_errors_for_paths_that_are_not_models(tmp_path):
    with pytest.raises(LLMLoadError, match="does not exist"):
        load_llm(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LLMLoadError, match="is a file"):
        load_llm(tmp_path / "file.txt")
    with pytest.raises(LLMLoadError, match=r"has no config\.json"):
        load_llm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LLMLoadError, match="holds no model weights"):
        load_llm(tmp_path)
