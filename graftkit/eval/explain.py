"""``graftkit generate --explain``: per generated sentence, the zones it relied on most.

Reliance is measured by occlusion: the rise of the sentence's teacher-forced NLL when one zone's
visual token is zeroed (zones ordered apex to base).
"""

from __future__ import annotations

import re

import torch

from graftkit.eval.evaluate import token_nll


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


@torch.inference_mode()
def explain_sentences(
    run, tokens: torch.Tensor, text: str, top: int = 3
) -> list[tuple[str, list[int]]]:
    """``[(sentence, [zone indices, most relied-on first])]`` for one volume's tokens ``[K, d]``."""
    k = tokens.shape[0]
    variants = tokens.unsqueeze(0).repeat(k + 1, 1, 1)
    for z in range(k):
        variants[z + 1, z] = 0
    out = []
    for sentence in sentences(text):
        nll = token_nll(
            run.glm,
            run.tokenizer,
            run.dataset.prompt,
            [sentence] * (k + 1),
            variants,
            batch_size=k + 1,
        )
        mean = torch.tensor([sum(n for _, n in seq) / max(1, len(seq)) for seq in nll])
        rise = mean[1:] - mean[0]
        out.append((sentence, rise.argsort(descending=True)[:top].tolist()))
    return out
