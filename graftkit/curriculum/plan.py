"""``graftkit plan``: the per-phase inventory of a run, built on the meta device (no weights).

For the paper profile (Llama-3.2-3B-Instruct architecture shipped as JSON, LoRA on the seven
projections of all 28 layers, adapters at 7/14/21, K=32, d_v=1024 -> d_l=3072) this reports
392 LoRA tensors without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from graftkit.config import ConfigError, RunConfig
from graftkit.curriculum.objective import check_losses, needs_text_targets, needs_tokens

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _llm_config(cfg: RunConfig):
    from transformers import AutoConfig, LlamaConfig

    if cfg.model.llm is not None and (Path(cfg.model.llm) / "config.json").is_file():
        return AutoConfig.from_pretrained(cfg.model.llm, local_files_only=True)
    if cfg.model.architecture:
        path = Path(cfg.model.architecture)
        if not path.is_file():
            path = Path(__file__).parents[1] / "configs" / f"{cfg.model.architecture}.json"
        if not path.is_file():
            raise ConfigError(f"model.architecture {cfg.model.architecture!r}: no such config file")
        data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        return AutoConfig.for_model(data.pop("model_type"), **data)
    p = cfg.model.prior
    return LlamaConfig(
        vocab_size=p.vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        max_position_embeddings=p.max_position_embeddings,
    )


def _base_parameters(llm, llm_config) -> int:
    """Parameters of the base LLM (LoRA excluded), each shared tensor once.

    With ``tie_word_embeddings`` the output head *is* the input embedding matrix, as in the real
    model. On the meta device transformers leaves the two untied, so the head is counted once
    here, by hand (Llama-3.2-3B: 3.21 B, not 3.61 B).
    """
    unique = {id(p): p.numel() for n, p in llm.named_parameters() if "lora_" not in n}
    total = sum(unique.values())
    head, embedding = llm.get_output_embeddings(), llm.get_input_embeddings()
    tied = getattr(llm_config, "tie_word_embeddings", False)
    if tied and head is not None and head.weight is not embedding.weight:
        total -= unique.get(id(head.weight), 0)
    return total


def _data_shape(cfg: RunConfig) -> tuple[int, int]:
    """The number of classes and d_v of the run's data, with no model built: from the dataset
    class and ``bridge.visual_dim`` (or the synthetic cohort's ``dim``, else the paper's 1024)
    when the class declares its classes; else from an instance, which opens its data (a dataset
    whose classes are its label columns)."""
    from graftkit import plugins

    dataset_cls = plugins.get("dataset", cfg.dataset)
    try:
        return len(dataset_cls.class_names), cfg.bridge.visual_dim or int(
            cfg.data.synth.get("dim", 1024)
        )
    except ConfigError:
        from graftkit.curriculum.engine import cache_root

        dataset = dataset_cls(cfg.data, workdir=cache_root(cfg) / "data" / cfg.dataset)
        return len(dataset.class_names), cfg.bridge.visual_dim or dataset.embedding_dim


def plan(cfg: RunConfig, num_classes: int | None = None) -> dict[str, Any]:
    """Inventory per phase and an estimate of memory per GPU for the run's launch profile."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from graftkit.curriculum.model import build_grafted

    check_losses(cfg.phases)
    llm_config = _llm_config(cfg)
    data_classes, visual_dim = _data_shape(cfg)
    num_classes = num_classes or data_classes
    jepa_dim = cfg.bridge.whitening_components  # the text space's width, as in a run
    with init_empty_weights(include_buffers=False), torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_config)
        glm = build_grafted(cfg, llm, None, visual_dim, num_classes, jepa_dim)
    inventory = glm.inventory()
    base_params = _base_parameters(glm.llm, llm_config)
    d_l = llm_config.hidden_size
    phases = {}
    world = cfg.launch.num_processes * cfg.launch.num_machines
    dtype_bytes = BYTES[cfg.model.dtype]
    for n, phase in enumerate(cfg.phases, 1):
        trainable = {g: inventory[g] for g in phase.trainable if g in inventory}
        frozen = {g: inventory[g] for g in inventory if g not in phase.trainable}
        t_params = sum(v["parameters"] for v in trainable.values())
        # the frozen LLM is held for every phase that reads text (its text targets are its own
        # hidden states); its activations only where a loss runs it on chat tokens
        uses_llm = needs_tokens(phase.losses) or needs_text_targets(phase.losses)
        seq = glm.num_visual_tokens + 300
        activations = (
            phase.batch_size * seq * d_l * llm_config.num_hidden_layers * 34 * dtype_bytes / 2
            if needs_tokens(phase.losses)
            else 0
        )
        memory = base_params * dtype_bytes * uses_llm + t_params * 16 + activations
        phases[str(n)] = {
            "name": phase.name,
            "trainable": {g: v["parameters"] for g, v in trainable.items()},
            "trainable_tensors": sum(v["tensors"] for v in trainable.values()),
            "trainable_parameters": t_params,
            "frozen": {g: v["parameters"] for g, v in frozen.items()},
            "frozen_parameters": sum(v["parameters"] for v in frozen.values()) + base_params,
            "per_gpu_batch": phase.batch_size,
            "estimated_memory_gib_per_gpu": round(memory / 2**30, 2),
        }
    return {
        "dataset": cfg.dataset,
        "profile": cfg.profile,
        "llm": {
            "model_type": llm_config.model_type,
            "layers": llm_config.num_hidden_layers,
            "hidden_size": d_l,
            "parameters": base_params,
        },
        "visual_tokens": glm.num_visual_tokens,
        "visual_dim": visual_dim,
        "text_dim": d_l,
        "adapter_layers": list(glm.xattn_layers),
        "lora_tensors": inventory.get("lora", {}).get("tensors", 0),
        "inventory": inventory,
        "phases": phases,
        "launch": {"processes": world, "mixed_precision": cfg.launch.mixed_precision},
        "memory_note": "estimate: frozen base in model dtype + 16 B per trainable parameter (fp32 weight, grad, AdamW moments) + activations ~34*b*s*h*L bytes (bf16)",
    }


def format_plan(result: dict[str, Any]) -> str:
    lines = [
        f"plan for {result['dataset']} (profile {result['profile']}): {result['llm']['model_type']} "
        f"{result['llm']['layers']} layers, d_l={result['text_dim']}, {result['llm']['parameters']:,} base parameters",
        f"visual tokens K={result['visual_tokens']}, d_v={result['visual_dim']} -> d_l={result['text_dim']}; "
        f"adapters at layers {result['adapter_layers']}; LoRA tensors {result['lora_tensors']}",
        f"{result['launch']['processes']} process(es), mixed precision {result['launch']['mixed_precision']}",
    ]
    for n, p in result["phases"].items():
        groups = ", ".join(f"{g} {v:,}" for g, v in p["trainable"].items())
        lines.append(
            f"phase {n} ({p['name']}): trains {p['trainable_tensors']} tensors / {p['trainable_parameters']:,} params "
            f"[{groups}]; frozen {p['frozen_parameters']:,}; ~{p['estimated_memory_gib_per_gpu']} GiB/GPU at batch {p['per_gpu_batch']}"
        )
    return "\n".join(lines)
