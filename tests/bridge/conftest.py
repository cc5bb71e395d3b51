"""Fixtures of the bridge tests; the models and tokenizer they build are in ``tiny_decoders``."""

from __future__ import annotations

import pytest
from tiny_decoders import make_tokenizer
from transformers import PreTrainedTokenizerFast


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()
