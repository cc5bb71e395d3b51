"""Build the grafted model of a run from its config: LLM (or language prior) + bridge."""

from __future__ import annotations

from pathlib import Path

from graftkit.bridge import GraftConfig, GraftedLM, graft
from graftkit.compressors import build_compressor
from graftkit.config import RunConfig


def graft_config(cfg: RunConfig, visual_dim: int, num_classes: int, jepa_dim: int) -> GraftConfig:
    """Map the run's ``bridge``/``model.lora`` sections onto the bridge's own config."""
    b = cfg.bridge
    return GraftConfig(
        visual_dim=visual_dim,
        num_zones=b.num_zones,
        num_heads=b.num_heads,
        num_global_layers=b.num_global_layers,
        compressor_dropout=b.dropout,
        predictor_dropout=b.predictor_dropout,
        xattn_layers=b.xattn_layers,
        paper_layers=b.paper_layers,
        paper_depth=b.paper_depth,
        xattn_heads=b.xattn_heads,
        num_classes=num_classes,
        jepa_dim=jepa_dim,
        lora=cfg.model.lora,
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
