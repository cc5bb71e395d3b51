"""Language models for the graft: the language prior, local LLM loading and chat encoding.

Generic for any dataset (docs/design.md, "Embedded default" and "Grafting into a Hugging Face decoder").
"""

from graftkit.lm.chat import (
    FIXED_DATE_STRING,
    IGNORE_INDEX,
    ChatEncoding,
    ChatPrompt,
    check_date_independent,
    encode_chat,
    pad_batch,
)
from graftkit.lm.loading import LLMLoadError, add_special_tokens, load_llm
from graftkit.lm.prior import (
    PRIOR_VERSION,
    build_or_load_prior,
    language_model_loss,
    prior_cache_key,
    train_prior,
)
from graftkit.lm.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    FALLBACK_CHAT_TEMPLATE,
    PAD_TOKEN,
    PRIOR_CHAT_TEMPLATE,
    VISUAL_TOKEN,
    single_token_id,
    train_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "FALLBACK_CHAT_TEMPLATE",
    "FIXED_DATE_STRING",
    "IGNORE_INDEX",
    "PAD_TOKEN",
    "PRIOR_CHAT_TEMPLATE",
    "PRIOR_VERSION",
    "VISUAL_TOKEN",
    "ChatEncoding",
    "ChatPrompt",
    "LLMLoadError",
    "add_special_tokens",
    "build_or_load_prior",
    "check_date_independent",
    "encode_chat",
    "language_model_loss",
    "load_llm",
    "pad_batch",
    "prior_cache_key",
    "single_token_id",
    "train_prior",
    "train_tokenizer",
]
