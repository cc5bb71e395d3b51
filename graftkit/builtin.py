"""Built-in plugin of the core: the generic zone compressor, registered like any plugin's."""

from __future__ import annotations

from graftkit.hookspecs import hookimpl


def zone_compressor(dim: int, **options):
    """``ZoneCompressor`` with the options of the run's ``bridge`` section."""
    from graftkit.bridge import ZoneCompressor

    return ZoneCompressor(dim, **options)


@hookimpl
def register_compressors(register):
    register("zone", zone_compressor)
