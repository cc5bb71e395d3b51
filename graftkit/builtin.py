"""Built-in plugin of the core: the generic zone compressor and the engine's phase callbacks,
registered like any plugin's."""

from __future__ import annotations

from graftkit.compressors import zone_compressor
from graftkit.hookspecs import hookimpl

__all__ = ["register_callbacks", "register_compressors", "zone_compressor"]


@hookimpl
def register_compressors(register):
    register("zone", zone_compressor)


@hookimpl
def register_callbacks(register):
    # by reference: listing plugins imports neither torch nor graftkit.eval
    for name, attr in (
        ("init_compressor", "InitCompressor"),
        ("warm_bridge", "WarmBridge"),
        ("freeze_lora", "FreezeLoRA"),
        ("recalibrate", "Recalibrate"),
        ("lars_projector_lr", "LarsProjectorLR"),
        ("ewc", "EWCPenalty"),
    ):
        register(name, f"graftkit.curriculum.callbacks:{attr}")
    register("collapse_monitor", "graftkit.curriculum.monitor:CollapseMonitor")
