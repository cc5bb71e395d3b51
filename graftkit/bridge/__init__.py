"""The bridge between a frozen encoder and a decoder LLM (docs/design.md, "Data flow").

Stands alone: importing it loads no plugin and no dataset.

``ZoneCompressor`` (slices -> K region tokens), ``Predictor`` + ``NormCalibrator`` (-> LLM embedding
space), ``GatedCrossAttention`` adapters, ``BridgeHeads`` and :func:`graft`, which wires them into
any Hugging Face causal-LM decoder and returns a :class:`GraftedLM`.
"""

from graftkit.bridge.graft import (
    BRIDGE_GROUPS,
    VISUAL_TOKEN,
    GraftConfig,
    GraftedLM,
    LoraSettings,
    expand_visual_placeholders,
    find_decoder_layers,
    graft,
    resolve_xattn_layers,
)
from graftkit.bridge.heads import BridgeHeads, JepaHead
from graftkit.bridge.predictor import NormCalibrator, Predictor, mean_norm
from graftkit.bridge.xattn import (
    ContextSlot,
    GatedCrossAttention,
    VisualContext,
    VisualKV,
    identity_projector,
)
from graftkit.bridge.zones import (
    ZoneCompressor,
    ZoneCompressorConfig,
    sinusoidal_position_encoding,
    zone_bounds,
    zone_loop_reference,
    zone_mask,
)

__all__ = [
    "BRIDGE_GROUPS",
    "VISUAL_TOKEN",
    "BridgeHeads",
    "ContextSlot",
    "GatedCrossAttention",
    "GraftConfig",
    "GraftedLM",
    "JepaHead",
    "LoraSettings",
    "NormCalibrator",
    "Predictor",
    "VisualContext",
    "VisualKV",
    "ZoneCompressor",
    "ZoneCompressorConfig",
    "expand_visual_placeholders",
    "find_decoder_layers",
    "graft",
    "identity_projector",
    "mean_norm",
    "resolve_xattn_layers",
    "sinusoidal_position_encoding",
    "zone_bounds",
    "zone_loop_reference",
    "zone_mask",
]
