"""Paper-scale graft on one GPU: phase-3 training throughput, peak memory, generation speed.

    python benchmarks/gpu_paper_scale.py --output gpu_paper_scale.json   # one H100/H200, < 8 min
    python benchmarks/gpu_paper_scale.py --tiny --output tiny.json       # CPU, tiny config (CI)

The model is the published Llama-3.2-3B-Instruct architecture (``graftkit/configs/
llama-3.2-3b-instruct.json``, randomly initialised: no weights are needed to time it) in bf16,
grafted with the paper's bridge from ``graftkit/configs/paper.yaml``: K = 32 zones over
d_v = 1,024 slice embeddings, gated cross-attention adapters before layers 7/14/21, LoRA r = 16 on
q, k, v, o, gate, up and down of all 28 layers (docs/design.md, "Four-phase curriculum").

Measured, in this order:

1. generation tokens/s of the plain model, batch 1 and 8, KV cache on, greedy, 64 new tokens
   after a prompt of 32 + 32 text tokens;
2. phase-3 training, one step at a time, the step of
   :class:`graftkit.curriculum.trainer.PhaseTrainer` composed from the same calls (the paper's
   phase 3 from ``paper.yaml`` with its trainable groups, losses and step-level callbacks,
   model/optimiser/schedule through ``accelerator.prepare``, bf16 autocast with the bridge in
   float32 on CUDA, the objective's loss, gradient clipping, AdamW, the schedule), batch 8, N up
   to 600 slices, ~300 text tokens: samples/s and peak GPU memory;
3. generation tokens/s of the grafted model (LoRA merged, adapters active, 32 visual tokens in
   place of the 32 plain prompt tokens), batch 1 and 8, same lengths.

Alongside, :func:`phase3_step_flops` counts the step's matmul FLOPs so the result can be compared
with the H100/H200 peak (and, without a GPU, stands as an estimate). ``--tiny`` swaps in a
4-layer, 64-wide config of the same family, d_v = 32 and short sequences, and runs the same code.
This file imports only graftkit, accelerate, torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

import graftkit
from graftkit.align import InfoNCE
from graftkit.bridge import GraftConfig, GraftedLM, graft
from graftkit.config import PhaseConfig
from graftkit.curriculum.callbacks import PhaseContext, build_callbacks
from graftkit.curriculum.engine import bridge_to_float32
from graftkit.curriculum.objective import Objective
from graftkit.curriculum.trainer import Schedule, build_optimizer, build_scheduler, param_groups
from graftkit.distributed import clip_grad_norm_

CONFIGS = Path(graftkit.__file__).parent / "configs"
LLAMA_3B = CONFIGS / "llama-3.2-3b-instruct.json"
PAPER = CONFIGS / "paper.yaml"
#: Width of the LeJEPA/DALE-CT slice embeddings (docs/design.md, "CT-RATE, as its own files lay it out").
VISUAL_DIM = 1024
NUM_CLASSES = 18
#: Dense bf16 tensor-core peak (no sparsity), TFLOP/s: NVIDIA's H100 SXM and H200 data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}
#: HBM bandwidth, TB/s: H100 SXM 3.35, H200 4.8 (same data sheets).
HBM_TBPS = {"H100": 3.35, "H200": 4.8}
#: Model FLOP utilisation assumed for the estimates (a typical figure for LoRA fine-tuning of a
#: 3B decoder at this sequence length with eager attention; a measured run replaces it).
ASSUMED_MFU = 0.40

PAPER_SHAPES = {
    "visual_dim": VISUAL_DIM,
    "max_slices": 600,
    "min_slices": 100,
    "text_tokens": 300,
    "prompt_tokens": 32,
    "new_tokens": 64,
}
TINY_SHAPES = {
    "visual_dim": 32,
    "max_slices": 40,
    "min_slices": 8,
    "text_tokens": 24,
    "prompt_tokens": 8,
    "new_tokens": 4,
}
TINY_OVERRIDES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def paper_profile() -> dict[str, Any]:
    """The bridge, LoRA and phase-3 sections of ``paper.yaml`` (every paper number lives there)."""
    cfg = yaml.safe_load(PAPER.read_text())
    return {"bridge": cfg["bridge"], "lora": cfg["model"]["lora"], "p3": cfg["phases"][2]}


def llama_config(tiny: bool = False, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The published Llama-3.2-3B config (keys starting with ``_`` dropped); ``tiny`` shrinks it
    to :data:`TINY_OVERRIDES`, ``overrides`` replaces further fields."""
    raw = {k: v for k, v in json.loads(LLAMA_3B.read_text()).items() if not k.startswith("_")}
    if tiny:
        raw.update(TINY_OVERRIDES)
    raw.update(overrides or {})
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


def graft_config(profile: dict[str, Any], visual_dim: int) -> GraftConfig:
    b = profile["bridge"]
    return GraftConfig(
        visual_dim=visual_dim,
        num_zones=b["num_zones"],
        num_heads=b["num_heads"] if visual_dim % b["num_heads"] == 0 else 4,
        num_global_layers=b["num_global_layers"],
        paper_layers=b["paper_layers"],
        paper_depth=b["paper_depth"],
        num_classes=NUM_CLASSES,
        jepa_dim=b["whitening_components"],
        lora=profile["lora"],
    )


# -- FLOP model --------------------------------------------------------------------------------
def decoder_matmul_params(config: PretrainedConfig) -> int:
    """Weights that multiply every token: q, k, v, o, gate, up, down of each layer, and the LM head."""
    d, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * inner
    return config.num_hidden_layers * per_layer + d * config.vocab_size


def decoder_forward_flops(
    config: PretrainedConfig, batch: int, seq_len: int, causal: bool = True
) -> float:
    """Matmul FLOPs (2 per multiply-add) of one decoder forward over ``batch`` x ``seq_len``
    tokens: every weight once per token, plus attention scores and values (2·2·T²·d_attn per
    layer and sequence; half of it with ``causal`` masking skipped)."""
    d = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    attn_width = config.num_attention_heads * head_dim
    attention = 2 * 2 * seq_len * seq_len * attn_width * (0.5 if causal else 1.0)
    return 2.0 * decoder_matmul_params(config) * batch * seq_len + (
        config.num_hidden_layers * batch * attention
    )


def phase3_step_flops(
    config: PretrainedConfig,
    batch: int,
    seq_len: int,
    mean_slices: float,
    visual_dim: int = VISUAL_DIM,
    num_zones: int = 32,
    adapters: int = 3,
) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one phase-3 step, split into LLM and bridge.

    LLM: the base weights are frozen, so the backward pass computes activation gradients (as many
    FLOPs as the forward) but no weight gradients: 2 x forward. LoRA (r << d) is left out. Causal
    attention scores and values: 2·2·T²·d_attn/2 per layer forward. Bridge: the compressor is
    frozen in phase 3 (forward only: K/V projections of every slice, K queries, one global
    layer); the adapters train (q/o on every text token, K/V on K tokens; forward + both backward
    passes: 3 x forward).
    """
    d = config.hidden_size
    tokens = batch * seq_len
    llm_fwd = decoder_forward_flops(config, batch, seq_len, causal=True)
    slices = batch * mean_slices
    compressor = 2 * slices * visual_dim * 2 * visual_dim + 2 * 2 * batch * num_zones * slices
    compressor += 2 * batch * num_zones * (4 * visual_dim**2 + 8 * visual_dim**2)
    predictor = 2 * batch * num_zones * visual_dim * d
    adapter = adapters * (2 * tokens * 2 * d * d + 2 * batch * num_zones * 2 * d * d)
    adapter += adapters * 2 * 2 * tokens * num_zones * d
    return {
        "llm": 2.0 * llm_fwd,
        "bridge": float(compressor + 3 * predictor + 3 * adapter),
    }


def estimate_step(config: PretrainedConfig, gpu: str, **shape: Any) -> dict[str, float]:
    """ESTIMATE of the phase-3 step on one ``gpu`` (``"H100"``/``"H200"``) at ``ASSUMED_MFU``."""
    flops = phase3_step_flops(config, **shape)
    total = flops["llm"] + flops["bridge"]
    seconds = total / (PEAK_BF16_TFLOPS[gpu] * 1e12 * ASSUMED_MFU)
    return {
        "step_tflop": total / 1e12,
        "bridge_flop_share": flops["bridge"] / total,
        "step_s": seconds,
        "samples_per_s": shape["batch"] / seconds,
    }


def estimate_decode_tokens_per_s(config: PretrainedConfig, gpu: str, batch: int) -> float:
    """ESTIMATE, upper bound: one decode step reads every bf16 weight once from HBM."""
    weight_bytes = 2 * decoder_matmul_params(config)
    return batch * HBM_TBPS[gpu] * 1e12 / weight_bytes


# -- measurements ------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(
    glm: GraftedLM, batch: int, shapes: dict[str, int], device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A phase-3 batch: slices ``[B, N_max, d_v]`` (N in min..max, one item at max), K
    placeholders + prompt + ``text_tokens`` response tokens, labels, whitened text targets, in
    the bridge's dtype."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(glm.compressor.parameters()).dtype
    n_max, k = shapes["max_slices"], glm.num_visual_tokens
    lengths = torch.randint(shapes["min_slices"], n_max + 1, (batch,), generator=gen)
    lengths[0] = n_max
    mask = torch.arange(n_max) < lengths[:, None]
    slices = torch.randn(batch, n_max, shapes["visual_dim"], generator=gen) * mask[..., None]
    z_mm = torch.arange(n_max, dtype=torch.float32).expand(batch, -1) * 1.5
    vocab = glm.llm.get_input_embeddings().weight.shape[0]
    prompt = torch.randint(
        3, min(vocab, 20_000) - 1, (batch, shapes["prompt_tokens"]), generator=gen
    )
    text = torch.randint(3, min(vocab, 20_000) - 1, (batch, shapes["text_tokens"]), generator=gen)
    placeholders = torch.full((batch, k), glm.visual_token_id)
    input_ids = torch.cat([placeholders, prompt, text], dim=1)
    labels_lm = input_ids.clone()
    labels_lm[:, : k + shapes["prompt_tokens"]] = -100
    text_emb = torch.nn.functional.normalize(
        torch.randn(batch, glm.config.jepa_dim, generator=gen), dim=-1
    )
    out = {
        "slices": slices.to(dtype),
        "z_mm": z_mm,
        "mask": mask,
        "labels": (torch.rand(batch, NUM_CLASSES, generator=gen) < 0.3).to(dtype),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels_lm": labels_lm,
        "text_emb": text_emb.to(dtype),
    }
    return {name: t.to(device) for name, t in out.items()}


def time_generation(
    generate, visual: torch.Tensor | None, ids: torch.Tensor, new_tokens: int, repeats: int
) -> float:
    """Best wall seconds of ``generate`` producing exactly ``new_tokens`` greedy tokens."""
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    best = float("inf")
    for attempt in range(repeats + 1):  # the first call is the warm-up
        _sync(ids.device)
        start = time.perf_counter()
        out = generate(visual, ids, **kwargs)
        _sync(ids.device)
        if attempt:
            best = min(best, time.perf_counter() - start)
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(
                f"generation gave {out.shape[1] - ids.shape[1]} new tokens, expected {new_tokens}"
            )
    return best


def _peak_memory(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def run(
    tiny: bool = False,
    device: str | None = None,
    dtype: str = "bfloat16",
    steps: int | None = None,
    warmup_steps: int | None = None,
    repeats: int | None = None,
    checkpointing: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, train a few phase-3 steps and generate; returns every figure as a JSON-able dict."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not tiny and dev.type != "cuda":
        raise RuntimeError(
            "gpu_paper_scale: the full 3B run needs a CUDA device; use --tiny on a CPU"
        )
    shapes = TINY_SHAPES if tiny else PAPER_SHAPES
    steps = steps or (2 if tiny else 10)
    warmup_steps = warmup_steps or (1 if tiny else 2)
    repeats = repeats or (1 if tiny else 3)
    torch_dtype = getattr(torch, dtype)
    profile = paper_profile()
    batch = int(profile["p3"]["batch_size"])
    config = llama_config(tiny)
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.eval()
    build_s = time.perf_counter() - started
    k = int(profile["bridge"]["num_zones"])
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "tiny": tiny,
        "dtype": dtype,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "shapes": dict(shapes, batch=batch, num_zones=k),
        "parameters_base": sum(p.numel() for p in model.parameters()),
        "parameter_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "build_s": round(build_s, 2),
    }

    # 1. plain generation (the base model before grafting)
    gen = torch.Generator().manual_seed(seed + 1)
    prompts = {
        b: torch.randint(
            3, min(config.vocab_size, 1000), (b, k + shapes["prompt_tokens"]), generator=gen
        ).to(dev)
        for b in (1, 8)
    }
    generation: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for b, ids in prompts.items():
            seconds = time_generation(
                lambda _v, i, **kw: model.generate(input_ids=i, **kw),
                None,
                ids,
                shapes["new_tokens"],
                repeats,
            )
            generation[f"batch{b}"] = {"plain_tokens_per_s": b * shapes["new_tokens"] / seconds}

    # 2. phase-3 training, one engine step at a time
    glm = graft(model, graft_config(profile, shapes["visual_dim"]))
    accelerator = Accelerator(
        cpu=dev.type == "cpu",
        mixed_precision="bf16" if dev.type == "cuda" and torch_dtype == torch.bfloat16 else "no",
        step_scheduler_with_optimizer=False,
    )
    if accelerator.mixed_precision != "no":
        bridge_to_float32(glm)
    if checkpointing:
        glm.gradient_checkpointing_enable({"use_reentrant": False})
    objective = Objective(glm, InfoNCE(), torch.ones(NUM_CLASSES), mmd_alpha=4 * 5 / (2 * 256 - 3))
    phase = PhaseConfig.model_validate(profile["p3"])
    objective.set_losses(phase.losses)
    glm.set_trainable(phase.trainable)
    # the phase's callbacks that act on every step (the others act per epoch or need a dataset)
    callbacks = [cb for cb in build_callbacks(phase, 3) if cb.name == "lars_projector_lr"]
    optimizer = build_optimizer(phase, param_groups(objective, phase))
    scheduler = build_scheduler(phase, optimizer, steps_per_epoch=warmup_steps + steps)
    model_, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    schedule = Schedule(scheduler, per_epoch=phase.schedule == "plateau")
    ctx = PhaseContext(SimpleNamespace(accelerator=accelerator, glm=glm), 3, phase, optimizer)

    def train_step(batch: dict[str, Any], model_=model_, optimizer=optimizer) -> dict[str, Any]:
        """PhaseTrainer.train_epoch's step (one process: no gradient sync to do)."""
        with accelerator.autocast():
            terms = model_(batch)
            loss = objective.loss(terms)
        accelerator.backward(loss)
        if phase.grad_clip:
            clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None],
                phase.grad_clip,
            )
        for cb in callbacks:
            cb.on_before_optimizer_step(ctx)
        optimizer.step()
        for cb in callbacks:
            cb.on_after_optimizer_step(ctx)
        optimizer.zero_grad(set_to_none=True)
        schedule.after_step()
        return terms

    inventory = glm.inventory()
    result["trainable_parameters"] = sum(g["trainable"] for g in inventory.values())
    result["lora_tensors"] = inventory["lora"]["tensors"]
    result["xattn_layers"] = glm.xattn_layers
    result["bridge_dtype"] = str(next(glm.compressor.parameters()).dtype).removeprefix("torch.")
    result["mixed_precision"] = accelerator.mixed_precision
    data = make_batch(glm, batch, shapes, dev, seed)
    model_.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    losses = []
    step_times = []
    for step in range(warmup_steps + steps):
        _sync(dev)
        start = time.perf_counter()
        terms = train_step(data)
        _sync(dev)
        if step >= warmup_steps:
            step_times.append(time.perf_counter() - start)
        losses.append(float(terms["total"].detach()))
    if not all(torch.isfinite(torch.tensor(losses))):
        raise FloatingPointError(f"gpu_paper_scale: non-finite phase-3 loss {losses}")
    step_s = sorted(step_times)[len(step_times) // 2]
    seq_len = data["input_ids"].shape[1]
    mean_slices = float(data["mask"].sum(1).float().mean())
    flops = phase3_step_flops(
        config,
        batch,
        seq_len,
        mean_slices,
        shapes["visual_dim"],
        k,
        len(glm.xattn_layers),
    )
    total_flops = flops["llm"] + flops["bridge"]
    result["train"] = {
        "steps_timed": steps,
        "step_s_median": step_s,
        "samples_per_s": batch / step_s,
        "seq_len": seq_len,
        "mean_slices": mean_slices,
        "loss_first_last": [losses[0], losses[-1]],
        "step_tflop": total_flops / 1e12,
        "bridge_flop_share": flops["bridge"] / total_flops,
        "achieved_tflops": total_flops / step_s / 1e12,
        "peak_memory_gib": _peak_memory(dev),
        "activation_checkpointing": checkpointing,
    }
    del optimizer, scheduler, model_, data
    accelerator.free_memory()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # 3. grafted generation: LoRA merged, adapters active (a closed gate would cost the same)
    objective.eval()
    glm.merge_lora()
    with torch.no_grad():
        for adapter in glm.xattn.values():
            adapter.gate.fill_(0.5)
        visual = torch.randn(8, k, glm.hidden_size, generator=gen).to(dev, torch_dtype)
        for b, ids in prompts.items():
            grafted_ids = ids.clone()
            grafted_ids[:, :k] = glm.visual_token_id
            seconds = time_generation(
                lambda v, i, **kw: glm.generate(v, input_ids=i, **kw),
                visual[:b],
                grafted_ids,
                shapes["new_tokens"],
                repeats,
            )
            row = generation[f"batch{b}"]
            row["grafted_tokens_per_s"] = b * shapes["new_tokens"] / seconds
            row["grafted_over_plain_time"] = row["plain_tokens_per_s"] / row["grafted_tokens_per_s"]
    result["generation"] = generation
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def estimates(tiny: bool = False) -> dict[str, Any]:
    """FLOP/bandwidth ESTIMATES for one H100 and one H200 at the paper shapes (not measured)."""
    config = llama_config(tiny)
    shapes = TINY_SHAPES if tiny else PAPER_SHAPES
    batch = int(paper_profile()["p3"]["batch_size"])
    seq_len = 32 + shapes["prompt_tokens"] + shapes["text_tokens"]
    mean_slices = (shapes["min_slices"] + shapes["max_slices"]) / 2
    out: dict[str, Any] = {"assumed_mfu": ASSUMED_MFU, "seq_len": seq_len}
    for gpu in PEAK_BF16_TFLOPS:
        step = estimate_step(
            config,
            gpu,
            batch=batch,
            seq_len=seq_len,
            mean_slices=mean_slices,
            visual_dim=shapes["visual_dim"],
        )
        step["decode_tokens_per_s_upper_bound_batch1"] = estimate_decode_tokens_per_s(
            config, gpu, 1
        )
        step["decode_tokens_per_s_upper_bound_batch8"] = estimate_decode_tokens_per_s(
            config, gpu, 8
        )
        out[gpu] = step
    return out


def rows(result: dict[str, Any]) -> list[dict]:
    """The result as rows of the benchmark table (:mod:`benchmarks`)."""
    where = f"{'tiny config, ' if result['tiny'] else ''}{result['device']}, {result['dtype']}"
    train = result["train"]
    out = [
        {
            "benchmark": "gpu_paper_scale: phase-3 training",
            "setting": f"{where}, batch {result['shapes']['batch']}, seq {train['seq_len']}, "
            f"N<= {result['shapes']['max_slices']}",
            "results": {
                "samples_per_s": round(train["samples_per_s"], 3),
                "step_s": round(train["step_s_median"], 4),
                "peak_GiB": None
                if train["peak_memory_gib"] is None
                else round(train["peak_memory_gib"], 2),
                "TFLOP/s": round(train["achieved_tflops"], 3),
            },
            "target": "",
            "met": None,
            "estimate": False,
        }
    ]
    for key, gen in result["generation"].items():
        out.append(
            {
                "benchmark": f"gpu_paper_scale: generation {key}",
                "setting": f"{where}, KV cache, {result['shapes']['new_tokens']} new tokens, "
                "LoRA merged",
                "results": {
                    "plain_tok_s": round(gen["plain_tokens_per_s"], 1),
                    "grafted_tok_s": round(gen["grafted_tokens_per_s"], 1),
                    "time_ratio": round(gen["grafted_over_plain_time"], 3),
                },
                "target": "" if result["tiny"] else "time_ratio <= 1.10",
                "met": None if result["tiny"] else gen["grafted_over_plain_time"] <= 1.10,
                "estimate": False,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (CI)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed generations per case")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        tiny=args.tiny,
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        repeats=args.repeats,
        checkpointing=args.checkpointing,
    )
    result["estimates"] = estimates(args.tiny)
    text = json.dumps(result, indent=1)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
