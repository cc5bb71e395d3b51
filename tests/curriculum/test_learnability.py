"""Learnability of the graft: a noise-free copy task through the public bridge API.

Each volume has K = 8 zones of one slice each; class c is present when zone c carries the fixed
pattern ``P[c]`` (absent: small noise). The target text names the present classes in class order.
A language prior pretrained on such texts knows the words but not which ones a volume needs, so
only a decoder that reads the visual tokens can write the right ones. Trained with the declared
phase-3 trainable groups and the phase-3 LM loss (``paper.yaml``), the graft must reach a high
macro F1 with the real tokens and fall back to what the prior writes with zeroed tokens, through
the placeholder path alone, the cross-attention path alone, and both, for every decoder family
:func:`graftkit.bridge.graft` supports. A wiring bug (an adapter not fired, a scatter at the wrong
rows, a frozen group that should train) fails here in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from graftkit.align import InfoNCE
from graftkit.bridge import GraftConfig, graft
from graftkit.config import default_config_path, load_yaml
from graftkit.curriculum.objective import Objective
from graftkit.eval.metrics import multilabel_scores
from graftkit.lm import encode_chat, pad_batch, train_tokenizer

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
K, D, PROMPT = 8, 16, "Name the findings."
NONE_TEXT = "none"
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}
PATTERNS = torch.nn.functional.normalize(
    torch.randn(len(NAMES), D, generator=torch.Generator().manual_seed(7)), dim=-1
) * (D**0.5)


def target_text(labels: np.ndarray) -> str:
    names = [NAMES[c] for c in np.flatnonzero(labels)]
    return " ".join(names) if names else NONE_TEXT


def copy_task(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``slices [n, K, D]`` and ``labels [n, C]``: zone c carries ``P[c]`` when class c is present."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(NAMES))) < 0.35).astype(np.int64)
    slices = 0.1 * torch.randn(n, K, D, generator=torch.Generator().manual_seed(seed))
    for c in range(len(NAMES)):
        slices[torch.as_tensor(labels[:, c] > 0), c] += PATTERNS[c]
    return slices, labels


def predicted(texts: list[str]) -> np.ndarray:
    return np.array([[int(name in text.split()) for name in NAMES] for text in texts])


@pytest.fixture(scope="module")
def tokenizer():
    _, labels = copy_task(400, seed=1)
    return train_tokenizer([target_text(row) for row in labels], vocab_size=300, min_frequency=1)


def pretrained_prior(family: str, tokenizer, steps: int = 120) -> torch.nn.Module:
    """A 2-layer decoder of ``family`` pretrained on the task's texts (the language prior)."""
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = model_cls(config)
    _, labels = copy_task(512, seed=2)
    encodings = [
        encode_chat(tokenizer, PROMPT, target_text(row), num_visual_tokens=0) for row in labels
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = pad_batch(encodings[(step * 32) % 512 :][:32], tokenizer.pad_token_id, "right")
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def encode_batch(tokenizer, labels: np.ndarray | None, placeholders: int) -> dict:
    rows = [None] if labels is None else [target_text(row) for row in labels]
    encodings = [encode_chat(tokenizer, PROMPT, text, placeholders) for text in rows]
    side = "left" if labels is None else "right"
    return pad_batch(encodings, tokenizer.pad_token_id, side)


def train_graft(family: str, path: str, tokenizer, steps: int = 240):
    """Graft, then train the declared phase-3 groups on the phase-3 LM loss; returns the model."""
    phase3 = load_yaml(default_config_path())["phases"][2]  # the paper's phase 3
    xattn_layers = [] if path == "placeholders" else [0, 1]
    glm = graft(
        pretrained_prior(family, tokenizer),
        GraftConfig(
            visual_dim=D,
            num_zones=K,
            num_heads=2,
            num_global_layers=0,
            compressor_dropout=0.0,
            predictor_dropout=0.0,
            xattn_layers=xattn_layers,
            xattn_heads=4,
            num_classes=len(NAMES),
            jepa_dim=8,
            lora={"r": 4, "alpha": 8, "dropout": 0.0},
        ),
        tokenizer=tokenizer,
    )
    placeholders = 0 if path == "xattn" else K
    objective = Objective(glm, InfoNCE(), torch.ones(len(NAMES)), mmd_alpha=0.1)
    objective.set_losses({"lm": phase3["losses"]["lm"]})
    glm.set_trainable(phase3["trainable"])
    slices, labels = copy_task(steps * 16, seed=3)
    glm.recalibrate(slices[:64])
    params = [p for p in glm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    glm.train()
    for step in range(steps):
        rows = slice(step * 16, (step + 1) * 16)
        text = encode_batch(tokenizer, labels[rows], placeholders)
        batch = {
            "slices": slices[rows],
            "z_mm": torch.arange(K, dtype=torch.float32).expand(16, K),
            "mask": torch.ones(16, K, dtype=torch.bool),
            "labels": torch.as_tensor(labels[rows], dtype=torch.float32),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "labels_lm": text["labels"],
        }
        objective(batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return glm.eval(), placeholders


@torch.inference_mode()
def generation_f1(glm, tokenizer, placeholders: int, zeroed: bool) -> float:
    slices, labels = copy_task(96, seed=4)
    tokens = glm.encode(slices)[1]
    if zeroed:
        tokens = torch.zeros_like(tokens)
    prompt = encode_batch(tokenizer, None, placeholders)
    out = glm.generate(
        visual_tokens=tokens,
        input_ids=prompt["input_ids"].expand(len(slices), -1),
        attention_mask=prompt["attention_mask"].expand(len(slices), -1),
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    return multilabel_scores(labels, predicted(texts), NAMES)["macro_f1"]


#: Measured at these sizes: both paths and cross-attention alone 0.99-1.0; the placeholder path
#: alone learns more slowly (0.82 after 240 steps), as it did at the issue's larger size (0.72).
FLOOR = {"both": 0.9, "xattn": 0.9, "placeholders": 0.7}


@pytest.mark.parametrize(
    "family, path",
    [
        ("llama", "both"),
        ("llama", "placeholders"),
        ("llama", "xattn"),
        ("qwen2", "both"),
        ("mistral", "both"),
    ],
)
def test_graft_learns_to_read_the_visual_tokens(tokenizer, family, path):
    torch.manual_seed(0)
    glm, placeholders = train_graft(family, path, tokenizer)
    real = generation_f1(glm, tokenizer, placeholders, zeroed=False)
    zero = generation_f1(glm, tokenizer, placeholders, zeroed=True)
    assert real >= FLOOR[path], (
        f"{family}/{path}: F1 {real:.3f} with real tokens (zeroed {zero:.3f})"
    )
    assert zero <= real - 0.4, f"{family}/{path}: zeroed tokens still give F1 {zero:.3f}"
