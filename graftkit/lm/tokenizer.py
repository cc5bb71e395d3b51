"""The language prior's byte-level BPE tokenizer and chat template (docs/design.md, "Embedded default").

The tokenizer is trained on the cohort's raw reports with the ``tokenizers`` library and wrapped as
a Hugging Face fast tokenizer, so the prior directory loads with ``AutoTokenizer`` like any LLM's.
Besides BOS/EOS/PAD it holds the chat role markers and the visual placeholder
``<|visual_region|>`` as single special tokens: the K placeholders of the embedding graft
(docs/design.md, "Grafting into a Hugging Face decoder") must each be exactly one token.

Each text (each piece between special tokens) that does not start with a space gets one before
byte-level pre-tokenization (GPT-2's ``add_prefix_space``; sentencepiece's dummy prefix does the
same): a word is the same token at the start of a text as inside one (``"ĠA"``). The curriculum tokenizes a response
on its own after the generation prompt (:func:`graftkit.lm.encode_chat`); without the prefix its
first word would be the space-less variant (``"A"``), which a prior pretrained on whole reports
only ever saw for a report's first word: an untrained row of the tied embedding, which the
fine-tuned model cannot raise without raising every other untrained token (raw bytes, word
fragments), so sampling started responses with U+FFFD or half a word. Decoding keeps the prefix
space (``decode(encode("A b")) == " A b"``), so every token decodes to the text it stands for,
word boundary included: callers strip (``generate_reports``), and per-token decoding
(``split_nll``) still concatenates to the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
#: The placeholder whose K copies the embedding graft replaces by the visual tokens.
VISUAL_TOKEN = "<|visual_region|>"
#: Special tokens every prior tokenizer has, in id order (ids 0..6).
CORE_SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS.values(), VISUAL_TOKEN)

#: The prior's chat format: ``BOS <|role|>\\n content EOS`` per turn. EOS ends every turn, so
#: generation stops at the end of the assistant turn with the model's ordinary ``eos_token_id``.
PRIOR_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + (message['content'] | trim) + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: Given to a local LLM whose tokenizer has no chat template (a base model): plain role headers
#: in text, each turn closed by EOS, built only from tokens every tokenizer has.
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ':\\n' + (message['content'] | trim) }}"
    "{% if eos_token %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` for the language prior.

    Args:
        texts: training documents (raw reports).
        vocab_size: the largest vocabulary, special tokens and the 256 byte symbols included; a
            small corpus may stop below it.
        special_tokens: extra special tokens beyond :data:`CORE_SPECIAL_TOKENS` (BOS, EOS, PAD,
            role markers, :data:`VISUAL_TOKEN`), which are always present.
        min_frequency: the fewest occurrences for a merge.

    Returns:
        A fast tokenizer with ``padding_side="left"`` (batched generation), a post-processor that
        puts BOS before a plain encoding (as Llama's does), and :data:`PRIOR_CHAT_TEMPLATE`. A
        word encodes to the same tokens at the start of a text and after a space (module
        docstring); ``decode`` returns a text with that space in front.
    """
    extra = [t for t in dict.fromkeys(special_tokens) if t not in CORE_SPECIAL_TOKENS]
    specials = [*CORE_SPECIAL_TOKENS, *extra]
    floor = len(specials) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < floor:
        raise ValueError(
            f"vocab_size={vocab_size} is below {floor} (256 byte symbols + {len(specials)} special tokens)"
        )
    if not any(t.strip() for t in texts):
        raise ValueError("train_tokenizer: every text is empty")

    backend = Tokenizer(models.BPE())
    # a space before each piece that lacks one (module docstring)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer, length=len(texts))
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[*ROLE_TOKENS.values(), VISUAL_TOKEN, *extra],
        padding_side="left",
        chat_template=PRIOR_CHAT_TEMPLATE,
        model_max_length=1_000_000,
    )


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of ``token`` if the tokenizer encodes it as exactly one token, else a clear error."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"token {token!r} is not a single token of this tokenizer (it encodes to {len(ids)} ids "
            f"{ids}); add it with graftkit.lm.add_special_tokens(model, tokenizer, [{token!r}])"
        )
    return ids[0]
