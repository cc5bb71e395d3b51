"""Phase-3 training step time, split into the bridge's share and the LLM's share.

    python -m benchmarks --only step_time [--quick]

One phase-3 step (docs/design.md table: predictor, LoRA, adapters, projectors and heads train; LM +
focal + JEPA + 3.0·LLM-cls; batch 8) of the paper's bridge (K = 32 zones over d_v = 1,024 slice
embeddings, N up to 600 slices, 16 heads, adapters at the paper layers mapped by depth) grafted
into a small Llama-architecture LLM that fits this CPU, against the same LLM with the same LoRA
trained on the same token sequence without the graft. The difference is the bridge's share:
compressor and predictor forward, the three adapters and the heads, forward and backward. The
LLM here is small, so its share is far below the 3B paper model's; the FLOP count of
:func:`benchmarks.gpu_paper_scale.phase3_step_flops` gives the share at 3B (an estimate).

CPU seconds of one torch thread, float32, best of interleaved repeats (see :mod:`benchmarks`).
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from benchmarks import best_times, row, torch_threads
from benchmarks.gpu_paper_scale import (
    NUM_CLASSES,
    PAPER_SHAPES,
    TINY_SHAPES,
    graft_config,
    llama_config,
    make_batch,
    paper_profile,
    phase3_step_flops,
)
from graftkit.align import InfoNCE
from graftkit.bridge import graft
from graftkit.curriculum.objective import Objective

#: A Llama-3.2 family config small enough for a 2-core CPU (same layer types, fewer and narrower).
SMALL_LLM = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 8192,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def build(quick: bool, seed: int = 0):
    """(objective, its optimizer and parameters, plain LoRA LLM, its optimizer and parameters, batch)."""
    profile = paper_profile()
    shapes = TINY_SHAPES if quick else PAPER_SHAPES
    config = llama_config(tiny=True, overrides=None if quick else SMALL_LLM)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain = copy.deepcopy(base)
    glm = graft(base, graft_config(profile, shapes["visual_dim"]))
    glm.set_trainable(profile["p3"]["trainable"])
    objective = Objective(glm, InfoNCE(), torch.ones(NUM_CLASSES), mmd_alpha=4 * 5 / (2 * 256 - 3))
    objective.set_losses(profile["p3"]["losses"])
    objective.train()
    lora = profile["lora"]
    plain = get_peft_model(
        plain,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
        ),
    )
    plain.train()
    batch_size = int(profile["p3"]["batch_size"])
    batch = make_batch(glm, batch_size, shapes, torch.device("cpu"), seed)
    lr = float(profile["p3"]["lr"])
    graft_params = [p for p in objective.parameters() if p.requires_grad]
    plain_params = [p for p in plain.parameters() if p.requires_grad]
    return (
        objective,
        (torch.optim.AdamW(graft_params, lr=lr), graft_params),
        plain,
        (torch.optim.AdamW(plain_params, lr=lr), plain_params),
        batch,
        config,
        shapes,
    )


def run(quick: bool = False, threads: int = 1) -> list[dict]:
    """Time the grafted and the plain phase-3 step and the bridge's encode; one row each + shares."""
    with torch_threads(threads):
        objective, (g_opt, g_params), plain, (p_opt, p_params), batch, config, shapes = build(quick)
        glm = objective.glm
        plain_ids = batch["input_ids"].clone()
        k = glm.num_visual_tokens
        plain_ids[:, :k] = torch.randint(3, 100, (plain_ids.shape[0], k))
        plain_labels = batch["labels_lm"].clone()

        def grafted_step() -> None:
            terms = objective(batch)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(g_params, 1.0)
            g_opt.step()
            g_opt.zero_grad(set_to_none=True)

        def plain_step() -> None:
            out = plain(
                input_ids=plain_ids, attention_mask=batch["attention_mask"], labels=plain_labels
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(p_params, 1.0)
            p_opt.step()
            p_opt.zero_grad(set_to_none=True)

        def encode() -> None:
            glm.encode(batch["slices"], batch["z_mm"], batch["mask"])

        times = best_times(
            {"grafted": grafted_step, "plain": plain_step, "encode": encode},
            repeats=1 if quick else 2,
        )
    bsz, seq = batch["input_ids"].shape
    mean_n = float(batch["mask"].sum(1).float().mean())
    setting = (
        f"batch {bsz}, seq {seq} (K={k} + {seq - k} text), N {shapes['min_slices']}.."
        f"{shapes['max_slices']} (mean {mean_n:.0f}), d_v={shapes['visual_dim']}, "
        f"LLM d={config.hidden_size} x {config.num_hidden_layers} layers, CPU fp32 {threads} thread"
    )
    bridge_share = 1 - times["plain"] / times["grafted"]
    rows = [
        row(
            "phase-3 step, grafted vs plain LoRA LLM",
            setting,
            {
                "grafted_step_s": round(times["grafted"], 3),
                "plain_llm_step_s": round(times["plain"], 3),
                "bridge_share": round(bridge_share, 3),
                "llm_share": round(1 - bridge_share, 3),
                "encode_fwd_s": round(times["encode"], 3),
                "samples_per_s": round(bsz / times["grafted"], 2),
            },
        )
    ]
    paper = llama_config(tiny=quick)
    flops = phase3_step_flops(paper, bsz, seq, mean_n, shapes["visual_dim"], k, 3)
    total = flops["llm"] + flops["bridge"]
    rows.append(
        row(
            "phase-3 step FLOPs, Llama-3.2-3B + paper bridge"
            if not quick
            else "phase-3 step FLOPs, tiny config",
            f"batch {bsz}, seq {seq}, mean N {mean_n:.0f}, matmul FLOPs",
            {
                "step_TFLOP": round(total / 1e12, 4),
                "bridge_share": round(flops["bridge"] / total, 4),
                "llm_share": round(flops["llm"] / total, 4),
            },
            estimate=True,
        )
    )
    return rows
