"""Built-in plugin of the core: the generic zone compressor, registered like any plugin's."""

from __future__ import annotations

from graftkit.compressors import zone_compressor
from graftkit.hookspecs import hookimpl

__all__ = ["register_compressors", "zone_compressor"]


@hookimpl
def register_compressors(register):
    register("zone", zone_compressor)
