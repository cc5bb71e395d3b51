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
    assert tokenizer.decode(labels[supervised[0] : -1]) == RESPONSE
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
    assert prior_tokenizer.decode(prior[-2:]) == "<|assistant|>\n"
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
    assert tokenizer.decode(enc["labels"][first:-1]) == RESPONSE


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
