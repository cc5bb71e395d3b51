"""Import graftkit's bridge into your own PyTorch loop: no engine, no plugin, no dataset.

Run:  python examples/import_bridge.py          (a few seconds on one CPU core)

A frozen, randomly initialised tiny Llama (built from a config: nothing is downloaded) learns to
answer "which marker does this volume hold?" from grafted visual tokens alone. Each volume is a
variable number of noisy slice embeddings; one of three marker vectors is planted in the slices
of its lower third, so only the zones there carry the answer. The pieces used:

- ``ZoneCompressor``: slices ``[B, N, d_v]`` (padded, with ``mask``) -> K zone tokens;
- ``graft``: predictor + norm calibrator + placeholder scatter + gated cross-attention adapters
  around the unmodified Hugging Face model (docs/design.md, "Grafting into a Hugging Face decoder");
- ``graftkit.align.focal_loss`` on the classifier head and ``graftkit.align.mmd_imq`` pulling the
  visual tokens towards the embedding of the answer word, next to the LM loss.
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from graftkit.align import focal_loss, mmd_imq
from graftkit.bridge import GraftConfig, ZoneCompressor, graft

VISUAL_DIM, ZONES, CLASSES = 16, 4, 3
BOS, EOS, PAD = 1, 2, 0
PROMPT = [5, 6, 7]  # "which marker is this?"
ANSWERS = [10, 11, 12]  # one answer word per class


def make_volumes(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` volumes of 6-12 slices; class c plants marker c in the lower third of the slices."""
    markers = torch.randn(CLASSES, VISUAL_DIM, generator=torch.Generator().manual_seed(99))
    lengths = torch.randint(6, 13, (n,), generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    slices = torch.randn(n, 12, VISUAL_DIM, generator=generator) * 0.5
    mask = torch.arange(12) < lengths.unsqueeze(1)
    for i in range(n):
        lower = slice(int(lengths[i]) * 2 // 3, int(lengths[i]))
        slices[i, lower] += 2.0 * markers[labels[i]]
    slices = slices * mask.unsqueeze(-1)
    z_mm = torch.arange(12, dtype=torch.float32).expand(n, 12) * 1.5  # 1.5 mm slice spacing
    return {"slices": slices, "z_mm": z_mm, "mask": mask, "labels": labels}


def chat(visual_token_id: int, labels: torch.Tensor | None, n: int) -> dict[str, torch.Tensor]:
    """``BOS <visual>xK PROMPT [ANSWER EOS]``; LM labels on the answer and EOS only."""
    head = [BOS, *([visual_token_id] * ZONES), *PROMPT]
    if labels is None:
        return {"input_ids": torch.tensor([head] * n)}
    ids = torch.tensor([[*head, ANSWERS[int(c)], EOS] for c in labels])
    lm_labels = torch.full_like(ids, -100)
    lm_labels[:, -2:] = ids[:, -2:]
    return {"input_ids": ids, "labels": lm_labels}


def build(seed: int = 0):
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    )
    compressor = ZoneCompressor(
        VISUAL_DIM, num_zones=ZONES, num_heads=4, num_global_layers=1, dropout=0.0
    )
    config = GraftConfig(  # K, heads and dropout are the compressor's: graft reads them from it
        visual_dim=VISUAL_DIM,
        xattn_layers=[1],
        xattn_heads=4,
        num_classes=CLASSES,
        jepa_dim=8,
        lora=None,  # the LLM stays exactly as it was; only the bridge trains
    )
    glm = graft(llm, config, compressor=compressor)
    assert glm.config.num_zones == glm.num_visual_tokens == ZONES
    return glm


@torch.no_grad()
def answer_accuracy(glm, volumes: dict[str, torch.Tensor], zero_tokens: bool = False) -> float:
    """Greedy one-word answers from the grafted LLM (optionally with all visual tokens zeroed)."""
    glm.eval()
    _, tokens = glm.encode(volumes["slices"], volumes["z_mm"], volumes["mask"])
    if zero_tokens:
        tokens = torch.zeros_like(tokens)
    prompt = chat(glm.visual_token_id, None, len(tokens))["input_ids"]
    out = glm.generate(tokens, prompt, max_new_tokens=1, do_sample=False, pad_token_id=PAD)
    predicted = out[:, -1]
    truth = torch.tensor(ANSWERS)[volumes["labels"]]
    glm.train()
    return float((predicted == truth).float().mean())


def main(steps: int = 60, seed: int = 0) -> dict[str, float]:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    glm = build(seed)
    glm.set_trainable(["compressor", "predictor", "calibrator", "projectors", "xattn", "heads"])
    params = [p for p in glm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    answer_embeddings = glm.llm.get_input_embeddings().weight[ANSWERS].detach()
    valid = make_volumes(96, torch.Generator().manual_seed(seed + 1))
    before = answer_accuracy(glm, valid)
    glm.train()
    for _ in range(steps):
        batch = make_volumes(32, generator)
        _, tokens = glm.encode(batch["slices"], batch["z_mm"], batch["mask"])
        text = chat(glm.visual_token_id, batch["labels"], len(tokens))
        lm = glm(text["input_ids"], visual_tokens=tokens, labels=text["labels"]).loss
        onehot = torch.nn.functional.one_hot(batch["labels"], CLASSES).float()
        focal = focal_loss(glm.heads.cls(tokens), onehot, gamma=2.0)
        word = answer_embeddings[batch["labels"]].unsqueeze(1)  # [B, 1, d_l]
        mmd = mmd_imq(tokens, word, torch.ones(len(tokens), 1, dtype=torch.bool))
        loss = lm + focal + 0.5 * mmd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {
        "accuracy_before": before,
        "accuracy": answer_accuracy(glm, valid),
        "accuracy_zeroed_tokens": answer_accuracy(glm, valid, zero_tokens=True),
        "final_lm_loss": float(lm.detach()),
        "final_mmd": float(mmd.detach()),
        "final_focal": float(focal.detach()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(main(args.steps, args.seed), indent=2))
