"""Build the grafted model of a run from its config: LLM (or language prior) + bridge."""

from __future__ import annotations

from pathlib import Path

from graftkit.bridge import GraftConfig, GraftedLM, graft
from graftkit.compressors import build_compressor
from graftkit.config import BridgeSettings, RunConfig


def graft_config(cfg: RunConfig, visual_dim: int, num_classes: int, jepa_dim: int) -> GraftConfig:
    """The bridge's config: the run's ``bridge`` section *is* a :class:`BridgeSettings`, handed
    over whole; the graft adds the data's width and classes, the text space's width and LoRA."""
    settings = cfg.bridge.model_dump(include=set(BridgeSettings.model_fields))
    settings["jepa_dim"] = jepa_dim
    return GraftConfig(
        **settings, visual_dim=visual_dim, num_classes=num_classes, lora=cfg.model.lora
    )


def build_grafted(
    cfg: RunConfig, llm, tokenizer, visual_dim: int, num_classes: int, jepa_dim: int
) -> GraftedLM:
    """Graft the registered compressor and the bridge into ``llm``."""
    compressor = build_compressor(cfg.bridge.compressor, visual_dim, cfg.bridge)
    gcfg = graft_config(cfg, visual_dim, num_classes, jepa_dim)
    return graft(llm, gcfg, tokenizer=tokenizer, compressor=compressor)


def text_embedding_layer(llm, fraction: float) -> int:
    """Index into ``hidden_states`` (0 = embeddings) at ``fraction`` of the decoder depth."""
    depth = llm.config.num_hidden_layers
    return max(1, min(depth, round(fraction * depth)))


def resolve_llm_path(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        from graftkit.config import ConfigError

        raise ConfigError(f"--llm {path}: not a local model directory (no config.json)")
    return path
