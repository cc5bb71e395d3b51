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
    from graftkit.curriculum.callbacks import BUILTIN_CALLBACKS
    from graftkit.curriculum.monitor import CollapseMonitor

    for cls in (*BUILTIN_CALLBACKS, CollapseMonitor):
        register(cls.name, cls)
