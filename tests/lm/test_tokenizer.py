"""The prior's byte-level BPE tokenizer: special tokens, round trip through save/AutoTokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from graftkit.lm import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    PRIOR_CHAT_TEMPLATE,
    VISUAL_TOKEN,
    single_token_id,
    train_tokenizer,
)
from graftkit.lm.tokenizer import CORE_SPECIAL_TOKENS


def test_special_tokens_are_single_ids_in_order(prior_tokenizer):
    for expected_id, token in enumerate(CORE_SPECIAL_TOKENS):
        assert single_token_id(prior_tokenizer, token) == expected_id
    assert (prior_tokenizer.bos_token, prior_tokenizer.eos_token, prior_tokenizer.pad_token) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )
    assert prior_tokenizer.padding_side == "left"
    # K placeholders written back to back stay K tokens (no merge across them).
    ids = prior_tokenizer(VISUAL_TOKEN * 5, add_special_tokens=False)["input_ids"]
    assert ids == [prior_tokenizer.convert_tokens_to_ids(VISUAL_TOKEN)] * 5


def test_vocab_learned_merges_and_bos(prior_tokenizer, corpus):
    assert 270 < len(prior_tokenizer) <= 320
    text = corpus[0]
    ids = prior_tokenizer(text)["input_ids"]
    assert ids[0] == prior_tokenizer.bos_token_id
    assert len(ids) - 1 < len(text.encode()) / 2  # merges compress the training domain
    # the prefix space that makes a text's first word an in-text word is decoded too
    assert prior_tokenizer.decode(ids, skip_special_tokens=True) == f" {text}"


def test_a_word_is_the_same_token_at_the_start_of_a_text_and_inside_it(word_prior_tokenizer):
    """A response is tokenized on its own, after the generation prompt, while the prior learns
    its words inside whole reports. Byte-level BPE without a prefix space gives a text's first
    word its space-less variant ("No" instead of "ĠNo"), a token the prior never trains."""
    alone = word_prior_tokenizer("No effusion is seen.", add_special_tokens=False)["input_ids"]
    inside = word_prior_tokenizer(
        "The heart is normal in size. No effusion is seen.", add_special_tokens=False
    )["input_ids"]
    assert inside[-len(alone) :] == alone
    assert word_prior_tokenizer.convert_ids_to_tokens(alone)[0].startswith("Ġ")  # "Ġ" = the space
    # each token decodes to the text it stands for, its word boundary included, so the pieces
    # of a response concatenate to it (the evaluation's finding-word NLL decodes token by token)
    pieces = [word_prior_tokenizer.decode([i]) for i in alone]
    assert "".join(pieces) == word_prior_tokenizer.decode(alone) == " No effusion is seen."


def test_byte_level_covers_unseen_characters(prior_tokenizer):
    text = "Nodule 4×3 mm, ~12 µSv; naïve ✓"
    ids = prior_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert prior_tokenizer.unk_token_id not in ids or prior_tokenizer.unk_token_id is None
    assert prior_tokenizer.decode(ids) == f" {text}"


def test_round_trip_through_auto_tokenizer(prior_tokenizer, corpus, tmp_path):
    prior_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == PRIOR_CHAT_TEMPLATE
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(reloaded).__name__ == "TokenizersBackend"
    assert reloaded.padding_side == "left"
    assert reloaded.chat_template == PRIOR_CHAT_TEMPLATE
    assert reloaded.convert_tokens_to_ids(VISUAL_TOKEN) == prior_tokenizer.convert_tokens_to_ids(
        VISUAL_TOKEN
    )
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (0, 1, 2)
    sample = [*corpus[:5], f"{VISUAL_TOKEN}{VISUAL_TOKEN} left"]
    assert reloaded(sample)["input_ids"] == prior_tokenizer(sample)["input_ids"]
    batch = reloaded(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0][0] == reloaded.pad_token_id  # left padding survives the reload


def test_extra_special_tokens_and_errors(corpus):
    tokenizer = train_tokenizer(corpus, 330, ["<|ecg_beat|>", VISUAL_TOKEN])
    assert single_token_id(tokenizer, "<|ecg_beat|>") == len(CORE_SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="vocab_size=200 is below"):
        train_tokenizer(corpus, 200)
    with pytest.raises(ValueError, match="every text is empty"):
        train_tokenizer(["", "  "], 320)
    with pytest.raises(ValueError, match="not a single token"):
        single_token_id(tokenizer, "<|not_added|>")
