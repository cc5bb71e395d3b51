"""``graftkit generate --explain``: per generated sentence, the zones it relied on most.

Reliance is measured by occlusion: the rise of the sentence's teacher-forced NLL when one zone's
visual token is zeroed (zones ordered apex to base).
"""

from __future__ import annotations

import re

import torch

from graftkit.eval.evaluate import occlusion_rise
from graftkit.lm import ChatPrompt


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


@torch.inference_mode()
def explain_sentences(
    glm, tokenizer, prompt: str | ChatPrompt, tokens: torch.Tensor, text: str, top: int = 3
) -> list[tuple[str, list[int]]]:
    """``[(sentence, [zone indices, most relied-on first])]`` for one volume's tokens ``[K, d]``."""
    out = []
    for sentence in sentences(text):
        rise = occlusion_rise(glm, tokenizer, prompt, tokens, sentence)
        out.append((sentence, rise.argsort(descending=True)[:top].tolist()))
    return out
