"""Chat encoding for the curriculum: K visual placeholders in the user turn, loss on the response.

The user turn holds K copies of the visual placeholder before the prompt text; the embedding graft
later replaces them by the K calibrated visual tokens (docs/design.md, "Grafting into a Hugging Face
decoder"). Training encodings carry labels only on the assistant response and its end-of-turn
token (the LM loss of phases 3-4, docs/design.md "Four-phase curriculum"); generation encodings stop
at the generation prompt. The text goes through the tokenizer's own chat template, so the same
code serves the language prior and any instruct model (e.g. a Llama-3 template).

A prompt renders the same on every day: Llama-3.x Instruct templates write the day's date into
their system header (``strftime_now("%d %b %Y")``) unless a ``date_string`` is passed, so every
encoding passes the :class:`ChatPrompt`'s fixed ``date_string`` (by default
:data:`FIXED_DATE_STRING`, the date those templates fall back to without a clock), and a
template that stamps the date some other way is refused (:func:`check_date_independent`). A
run's :class:`ChatPrompt` comes from its config (``model.chat``), so evaluation and generation
repeat the prompt training saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import torch
from transformers import PreTrainedTokenizerBase

from graftkit.lm.tokenizer import VISUAL_TOKEN, single_token_id

IGNORE_INDEX = -100

#: The date Llama-3.x chat templates write when they have no clock (``strftime_now`` undefined).
FIXED_DATE_STRING = "26 Jul 2024"


@dataclass(frozen=True)
class ChatPrompt:
    """The user instruction of a visual chat turn and the fixed settings it renders with.

    ``system``: an optional system turn; ``date_string``: the date a date-stamping template
    (Llama-3.x) writes, fixed so that the prompt does not change with the day it is rendered.
    """

    text: str
    system: str | None = None
    date_string: str = FIXED_DATE_STRING


def check_date_independent(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a chat template that stamps the current date other than through a ``date_string``
    variable (which :func:`encode_chat` always passes): its prompt would change every day."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates
        template = "\n".join(template.values())
    if template and "strftime_now" in template and "date_string" not in template:
        raise ValueError(
            "the chat template writes the current date (strftime_now) without a date_string "
            "variable graftkit can fix: every prompt would change with the day it is rendered; "
            "give the model a chat template that takes date_string, or none that stamps a date"
        )


#: The most tokens one chat encoding (prompt, K placeholders and response) holds when nothing
#: smaller is declared: the token budget of the evaluation's teacher-forced passes, and of
#: training when the LLM is a real one (the language prior trains on ``prior.max_length``, its
#: pretraining window). A teacher-forced pass of a batch padded to its longest text holds
#: ``[B, T, vocab]`` logits and ``B × T²`` attention scores: one 50,000-character report (22,600
#: smoke-prior tokens) in a batch of 16 asked for 32.9 GB in the NLL ablation; with this budget
#: the evaluation's peak memory stops growing with report length (docs/benchmarks.md, "Text
#: budget"). The texts of every shipped profile fit under it (the longest smoke narrative is
#: 2,518 tokens), so their runs score exactly what they scored before.
MAX_TEXT_TOKENS = 4096


def text_budget(tokenizer: PreTrainedTokenizerBase, limit: int = MAX_TEXT_TOKENS) -> int:
    """The token budget of a chat encoding for ``tokenizer``'s model: its declared context
    (``model_max_length``, Hugging Face's convention for the longest input the model takes:
    131,072 for Llama-3.2; graftkit's language prior declares none) capped at ``limit``."""
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and declared > 0:
        return min(declared, limit)
    return limit


class ChatEncoding(TypedDict):
    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    #: response tokens dropped to fit ``max_length`` (0: the whole response is there)
    cut: int


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    return ids | set(tokenizer.all_special_ids)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own post-processor starts a plain encoding with BOS."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str, add_bos: bool) -> list[int]:
    """Token ids of rendered chat text with exactly one leading BOS where the model expects one.

    transformers 5 renders ``bos_token`` only where the chat template writes it and adds nothing
    itself; a template without it would leave a Llama-style model with no BOS, and a template with
    it plus the post-processor would give two.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        return ids
    while len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    if add_bos and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | ChatPrompt,
    response: str | None,
    num_visual_tokens: int,
    visual_token: str = VISUAL_TOKEN,
    max_length: int | None = None,
    *,
    system: str | None = None,
) -> ChatEncoding:
    """Encode one visual chat turn through the tokenizer's chat template.

    Args:
        tokenizer: a tokenizer with a chat template in which ``visual_token`` is one token.
        prompt: the user instruction (a :class:`ChatPrompt`, or its text with the defaults); the
            K placeholders come before it, then a newline.
        response: the assistant text to learn; ``None`` gives the generation prompt.
        num_visual_tokens: K, the number of placeholders (docs/design.md: K=32 zones).
        visual_token: the placeholder string.
        max_length: truncate the response so the encoding has at most this many tokens; a prompt
            alone longer than this is an error (the placeholders must all survive).
        system: a system turn (default: the prompt's own, if any).

    Returns:
        ``input_ids``, ``labels`` (``-100`` except on the response tokens and the end-of-turn token
        that follows them), ``attention_mask`` and ``cut`` (how many response tokens
        ``max_length`` dropped). With ``response=None`` the ids end with the
        template's generation prompt and every label is ``-100``.
    """
    if num_visual_tokens < 0:
        raise ValueError(f"num_visual_tokens must be >= 0, got {num_visual_tokens}")
    chat = prompt if isinstance(prompt, ChatPrompt) else ChatPrompt(prompt)
    prompt, system = chat.text, system if system is not None else chat.system
    for field, text in (("prompt", prompt), ("response", response), ("system", system)):
        if text is not None and visual_token in text:
            raise ValueError(
                f"encode_chat: the {field} text contains the placeholder {visual_token!r}"
            )
    if tokenizer.chat_template is None:
        raise ValueError(
            "encode_chat: the tokenizer has no chat template (load it with graftkit.lm.load_llm)"
        )
    visual_id = single_token_id(tokenizer, visual_token) if num_visual_tokens else None

    messages = [{"role": "system", "content": system}] if system is not None else []
    user = visual_token * num_visual_tokens + ("\n" + prompt if prompt else "")
    messages.append({"role": "user", "content": user})
    prompt_text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, date_string=chat.date_string
    )
    add_bos = _adds_bos(tokenizer)
    input_ids = _encode_text(tokenizer, prompt_text, add_bos)
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(
            f"encode_chat: the prompt alone is {len(input_ids)} tokens (K={num_visual_tokens} "
            f"placeholders included), more than max_length={max_length}"
        )
    labels = [IGNORE_INDEX] * len(input_ids)
    cut = 0

    if response is not None:
        messages.append({"role": "assistant", "content": response})
        full_text = tokenizer.apply_chat_template(
            messages, tokenize=False, date_string=chat.date_string
        )
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "encode_chat: the chat template does not render the generation prompt as a prefix "
                f"of the full conversation:\n{prompt_text!r}\nvs\n{full_text!r}"
            )
        # Tokenised on its own, the response is what the model emits after the generation prompt.
        reply = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        specials = _special_ids(tokenizer)
        ends = [i for i, t in enumerate(reply) if t in specials]
        if ends:
            reply = reply[: ends[-1] + 1]  # drop template whitespace after the end-of-turn token
        elif tokenizer.eos_token_id is not None:
            reply = [*reply, tokenizer.eos_token_id]
        else:
            raise ValueError(
                "encode_chat: the template closes no turn and the tokenizer has no EOS"
            )
        if max_length is not None and len(input_ids) + len(reply) > max_length:
            cut = len(input_ids) + len(reply) - max_length
            reply = reply[: max_length - len(input_ids)]
        input_ids = input_ids + reply
        labels = labels + reply

    if visual_id is not None:
        found = input_ids.count(visual_id)
        if found != num_visual_tokens:
            raise ValueError(
                f"encode_chat: expected {num_visual_tokens} {visual_token!r} tokens after the chat "
                f"template, found {found}"
            )
    return ChatEncoding(
        input_ids=input_ids, labels=labels, attention_mask=[1] * len(input_ids), cut=cut
    )


def pad_batch(
    encodings: Sequence[ChatEncoding],
    pad_id: int,
    side: Literal["left", "right"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad encodings to the longest: ``input_ids`` with ``pad_id``, ``labels`` with ``-100``,
    ``attention_mask`` with 0. Right padding for training, left padding for batched generation
    (every prompt then ends at the last position, where decoding continues).
    """
    if side not in ("left", "right"):
        raise ValueError(f"pad_batch: side must be 'left' or 'right', got {side!r}")
    if not encodings:
        raise ValueError("pad_batch: no encodings")
    for i, enc in enumerate(encodings):
        lengths = {key: len(enc[key]) for key in ("input_ids", "labels", "attention_mask")}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"pad_batch: encoding {i} has fields of different lengths {lengths}")
    width = max(len(enc["input_ids"]) for enc in encodings)
    fills = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out = {
        key: torch.full((len(encodings), width), fill, dtype=torch.long)
        for key, fill in fills.items()
    }
    for b, enc in enumerate(encodings):
        n = len(enc["input_ids"])
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        for key in fills:
            out[key][b, cols] = torch.tensor(enc[key], dtype=torch.long)
    return out
