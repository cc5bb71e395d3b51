"""Chat encoding: visual placeholders, label mask on the response only, BOS, padding."""

from __future__ import annotations

import pytest
import torch

from graftkit.lm import IGNORE_INDEX, VISUAL_TOKEN, encode_chat, pad_batch

PROMPT = "Describe the findings."
RESPONSE = "The heart is normal in size. The aorta has mild calcification."
K = 6


@pytest.fixture(params=["prior", "llama3"])
def tokenizer(request, prior_tokenizer, llama3_tokenizer):
    return {"prior": prior_tokenizer, "llama3": llama3_tokenizer}[request.param]


def _text(tokenizer, ids: list[int]) -> str:
    """The decoded text without the prior tokenizer's prefix space (a no-op for Llama-3's)."""
    return tokenizer.decode(ids).removeprefix(" ")


def _end_of_turn(tokenizer) -> int:
    return tokenizer.eos_token_id  # <|end_of_text|> for the prior, <|eot_id|> for Llama-3


def test_labels_cover_exactly_the_response(tokenizer):
    enc = encode_chat(tokenizer, PROMPT, RESPONSE, K)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels) == len(enc["attention_mask"]) and all(enc["attention_mask"])
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    # One contiguous span at the end, equal to the input ids there.
    assert supervised == list(range(supervised[0], len(ids)))
    assert [ids[i] for i in supervised] == [labels[i] for i in supervised]
    assert labels[-1] == _end_of_turn(tokenizer)
    assert _text(tokenizer, labels[supervised[0] : -1]) == RESPONSE
    # Nothing of the prompt is supervised: the tokens before the span decode to the generation prompt.
    generation = encode_chat(tokenizer, PROMPT, None, K)
    assert ids[: supervised[0]] == generation["input_ids"]
    assert all(label == IGNORE_INDEX for label in generation["labels"])


def test_visual_tokens_and_single_bos(tokenizer):
    visual_id = tokenizer.convert_tokens_to_ids(VISUAL_TOKEN)
    for response in (RESPONSE, None):
        ids = encode_chat(tokenizer, PROMPT, response, K)["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == visual_id]
        assert len(positions) == K
        assert positions == list(range(positions[0], positions[0] + K))  # contiguous block
        assert tokenizer.decode(ids[positions[-1] + 1 :]).lstrip().startswith(PROMPT)
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_generation_prompt_ends_with_assistant_header(prior_tokenizer, llama3_tokenizer):
    prior = encode_chat(prior_tokenizer, PROMPT, None, K)["input_ids"]
    # the prior's tokenizer puts its prefix space before the "\n" that follows the role marker
    assert prior_tokenizer.convert_ids_to_tokens(prior[-3:]) == ["<|assistant|>", "Ġ", "Ċ"]
    llama = encode_chat(llama3_tokenizer, PROMPT, None, K)["input_ids"]
    assert llama3_tokenizer.decode(llama).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_bos_added_when_the_template_omits_it(corpus, llama3_factory):
    tokenizer = llama3_factory(corpus)
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [VISUAL_TOKEN]}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = tokenizer.chat_template.replace("{{- bos_token }}", "")
    ids = encode_chat(tokenizer, PROMPT, RESPONSE, K)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_system_turn_and_zero_visual_tokens(tokenizer):
    enc = encode_chat(tokenizer, PROMPT, RESPONSE, 0, system="You are a radiologist.")
    assert tokenizer.convert_tokens_to_ids(VISUAL_TOKEN) not in enc["input_ids"]
    assert "You are a radiologist." in tokenizer.decode(enc["input_ids"])
    first = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE_INDEX)
    assert _text(tokenizer, enc["labels"][first:-1]) == RESPONSE


def test_max_length_truncates_the_response_only(tokenizer):
    full = encode_chat(tokenizer, PROMPT, RESPONSE, K)
    prompt_len = len(encode_chat(tokenizer, PROMPT, None, K)["input_ids"])
    cut = encode_chat(tokenizer, PROMPT, RESPONSE, K, max_length=prompt_len + 3)
    assert cut["input_ids"] == full["input_ids"][: prompt_len + 3]
    assert cut["labels"] == full["labels"][: prompt_len + 3]
    with pytest.raises(ValueError, match="the prompt alone is"):
        encode_chat(tokenizer, PROMPT, RESPONSE, K, max_length=prompt_len - 1)


def test_bad_inputs(tokenizer, corpus, llama3_factory):
    with pytest.raises(ValueError, match="the prompt text contains the placeholder"):
        encode_chat(tokenizer, f"look {VISUAL_TOKEN}", RESPONSE, K)
    with pytest.raises(ValueError, match="the response text contains"):
        encode_chat(tokenizer, PROMPT, VISUAL_TOKEN, K)
    with pytest.raises(ValueError, match="not a single token"):
        encode_chat(llama3_factory(corpus), PROMPT, RESPONSE, K)


def test_pad_batch_right_and_left():
    a = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]}
    b = {"input_ids": [8], "labels": [8], "attention_mask": [1]}
    right = pad_batch([a, b], pad_id=2, side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_batch([a, b], pad_id=2, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert all(t.dtype == torch.long for t in left.values())
    with pytest.raises(ValueError, match="side must be"):
        pad_batch([a], 0, side="middle")
    with pytest.raises(ValueError, match="encoding 0 has fields of different lengths"):
        pad_batch([{"input_ids": [1, 2], "labels": [1], "attention_mask": [1, 1]}], 0)


#: The date logic of the Llama-3.1/3.2/3.3 Instruct templates (their system header writes
#: "Today Date: " + date_string, date_string = strftime_now("%d %b %Y") unless given).
DATED_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    '{%- set date_string = strftime_now("%d %b %Y") %}'
    '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}'
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- for m in messages %}{%- if m['role'] != 'system' %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


class _Clock:
    """A stand-in for ``datetime`` whose ``now()`` is a chosen day."""

    def __init__(self, day):
        self.day = day

    def now(self, tz=None):
        return self.day


def _on_day(monkeypatch, day, render):
    """``render()`` as if run on ``day``: transformers' ``strftime_now`` reads ``datetime.now``."""
    import datetime

    from transformers.utils import chat_template_utils

    monkeypatch.setattr(chat_template_utils, "datetime", _Clock(datetime.datetime(*day)))
    return render()


def test_a_date_stamping_template_renders_the_same_prompt_on_every_day(
    llama3_tokenizer, monkeypatch
):
    import copy

    from graftkit.config import ChatConfig
    from graftkit.lm import FIXED_DATE_STRING, ChatPrompt

    tokenizer = copy.deepcopy(llama3_tokenizer)
    tokenizer.chat_template = DATED_TEMPLATE
    messages = [{"role": "user", "content": PROMPT}]

    def plain():  # the template as transformers renders it with no date given
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ours():
        return encode_chat(tokenizer, PROMPT, RESPONSE, K)["input_ids"]

    # the template does stamp the day (so the check below could fail) ...
    assert "Today Date: 01 Jan 2026" in _on_day(monkeypatch, (2026, 1, 1, 23, 59), plain)
    assert "Today Date: 02 Jan 2026" in _on_day(monkeypatch, (2026, 1, 2, 0, 1), plain)
    # ... graftkit's encoding is the same either side of midnight, with the fixed date
    before = _on_day(monkeypatch, (2026, 1, 1, 23, 59), ours)
    after = _on_day(monkeypatch, (2026, 1, 2, 0, 1), ours)
    assert before == after
    assert f"Today Date: {FIXED_DATE_STRING}" in tokenizer.decode(before)
    assert ChatConfig().date_string == FIXED_DATE_STRING  # the config's default is that date
    # a run's own system turn and date are rendered, and only those
    chat = ChatPrompt(PROMPT, system="You are a radiologist.", date_string="01 Mar 2026")
    text = tokenizer.decode(encode_chat(tokenizer, chat, None, K)["input_ids"])
    assert "Today Date: 01 Mar 2026" in text and "You are a radiologist." in text


def test_a_template_stamping_the_date_without_date_string_is_refused(llama3_tokenizer):
    import copy

    from graftkit.lm import check_date_independent

    tokenizer = copy.deepcopy(llama3_tokenizer)
    check_date_independent(tokenizer)  # no date at all: fine
    tokenizer.chat_template = DATED_TEMPLATE
    check_date_independent(tokenizer)  # the date through date_string: fine
    tokenizer.chat_template = (
        "{{ strftime_now('%Y-%m-%d') }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    with pytest.raises(ValueError, match="without a date_string"):
        check_date_independent(tokenizer)


def test_an_exported_template_renders_its_run_date_without_graftkit(llama3_tokenizer, monkeypatch):
    """``graftkit export`` pins the run's date into a date-stamping template, so any program
    rendering the exported tokenizer's template writes the same prompt on every day."""
    import copy

    from graftkit.export import pin_date

    tokenizer = copy.deepcopy(llama3_tokenizer)
    tokenizer.chat_template = pin_date(DATED_TEMPLATE, "01 Mar 2026")
    messages = [{"role": "user", "content": PROMPT}]

    def plain():
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    first = _on_day(monkeypatch, (2026, 5, 1, 12, 0), plain)
    assert first == _on_day(monkeypatch, (2027, 1, 1, 12, 0), plain)
    assert "Today Date: 01 Mar 2026" in first
    # a caller's own date still wins
    assert "Today Date: 02 Feb 2026" in tokenizer.apply_chat_template(
        messages, tokenize=False, date_string="02 Feb 2026"
    )


# -- the first word of a response --------------------------------------------------------------
def test_every_response_token_is_one_the_prior_trains_on(word_prior_tokenizer, corpus):
    """Phase-3 responses are sentences from inside the reports. Each of their tokens, the first
    one included, must occur in the prior's pretraining documents: a token that never occurs
    there has an untrained (tied) embedding, and sampling then starts the response with one of
    the hundreds of untrained tokens (a lone byte, U+FFFD, or half a word)."""
    from graftkit.lm.prior import _documents

    documents, _ = _documents(word_prior_tokenizer, corpus)
    trained = {t for doc in documents for t in doc}
    # never a document's first sentence in the corpus (conftest.make_corpus), only inside one
    for response in ("No effusion is seen.", "Follow-up is advised.", "Appearance is stable."):
        assert any(response in doc for doc in corpus)
        assert not any(doc.startswith(response) for doc in corpus)
        enc = encode_chat(word_prior_tokenizer, PROMPT, response, K)
        reply = [t for t in enc["labels"] if t != IGNORE_INDEX]
        untrained = [
            word_prior_tokenizer.convert_ids_to_tokens(t) for t in reply if t not in trained
        ]
        assert untrained == [], response


def build_sentencepiece_style_tokenizer(texts: list[str]):
    """A Llama-2/Mistral-like tokenizer: Metaspace (a "▁" before every word, the first one
    included), BOS from the post-processor, no chat template of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from graftkit.lm.tokenizer import FALLBACK_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    specials = ["<unk>", "<s>", "</s>", VISUAL_TOKEN]
    alphabet = sorted(set("".join([*texts, PROMPT, "\n:"])))  # the template's "\n" and ":"
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=[VISUAL_TOKEN],
        padding_side="left",
        chat_template=FALLBACK_CHAT_TEMPLATE,
    )


class _EchoLM:
    """Stands in for a grafted LM whose generation is exactly the training target: ``generate``
    returns the prompt followed by the given response ids (EOS, then padding, included)."""

    def __init__(self, new_ids: list[int]):
        self.new = torch.tensor([new_ids])

    def eval(self):
        return self

    def generate(self, visual_tokens, input_ids, attention_mask, **kwargs):
        assert input_ids.shape[0] == visual_tokens.shape[0] == attention_mask.shape[0]
        return torch.cat([input_ids, self.new.expand(input_ids.shape[0], -1)], dim=1)


@pytest.mark.parametrize("kind", ["prior", "llama3", "sentencepiece"])
def test_generated_reports_keep_their_first_word(kind, prior_tokenizer, llama3_tokenizer, corpus):
    """What the model learns to emit after the generation prompt (``encode_chat``'s response
    tokens) comes back from ``generate_reports`` as the response text, first bytes included,
    for a byte-level BPE with and without a prefix space and a sentencepiece-style tokenizer."""
    from graftkit.eval.generation import generate_reports

    tokenizer = {
        "prior": lambda: prior_tokenizer,
        "llama3": lambda: llama3_tokenizer,
        "sentencepiece": lambda: build_sentencepiece_style_tokenizer(corpus),
    }[kind]()
    enc = encode_chat(tokenizer, PROMPT, RESPONSE, K)
    reply = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert reply[-1] == tokenizer.eos_token_id
    glm = _EchoLM([*reply, tokenizer.pad_token_id, tokenizer.pad_token_id])
    texts = generate_reports(glm, tokenizer, PROMPT, torch.zeros(3, K, 4), {}, batch_size=2)
    assert texts == [RESPONSE] * 3


def test_finding_words_are_found_token_by_token(word_prior_tokenizer):
    """The evaluation's finding-word NLL (``split_nll``) decodes a response token by token and
    looks for the words in the concatenated pieces: the prior's tokens must decode with their
    spaces. "Ġheart" is one token of this vocabulary: one finding token, the others not."""
    from graftkit.eval.evaluate import split_nll

    enc = encode_chat(word_prior_tokenizer, PROMPT, RESPONSE, K)
    reply = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert word_prior_tokenizer.convert_tokens_to_ids("Ġheart") in reply
    per_token = [
        [
            (t, 2.0 if t == word_prior_tokenizer.convert_tokens_to_ids("Ġheart") else 1.0)
            for t in reply
        ]
    ]
    split = split_nll(word_prior_tokenizer, per_token, {"heart"})
    assert split == {
        "finding": 2.0,
        "other": 1.0,
        "finding_tokens": 1,
        "other_tokens": len(reply) - 1,
    }
