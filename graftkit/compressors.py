"""The compressor contract of ``register_compressors`` (docs/plugins.md).

A compressor maps slice embeddings ``[B, N, d]`` (+ ``z_mm``, ``mask``) to ``[B, K, d]`` zone
tokens. A plugin registers a **builder**::

    builder(dim: int, bridge: graftkit.config.BridgeConfig) -> torch.nn.Module

``dim`` is the slice-embedding width d_v; ``bridge`` is the run's ``bridge`` section, from which
the builder reads the compressor settings (:data:`COMPRESSOR_SETTINGS`): ``num_zones`` (the K
its module must output), ``num_heads``, ``num_global_layers``, ``dropout``, ``position_scale``,
``query_residual``, ``slice_norm``. A builder reads what it uses and ignores the rest, so new
bridge fields never break it.

A **preset** (:class:`CompressorPreset`) is a builder with some *architecture* settings fixed
(:data:`ARCHITECTURE_SETTINGS`: ``num_zones``, ``num_heads``, ``num_global_layers``,
``slice_norm``: what a checkpoint's tensors depend on), so that its name stands for one
architecture (CT-RATE's ``ct_rate-32``: the paper's 32 zones, 16 heads, one global layer). The
run chooses every setting the preset does not fix (always ``dropout``, ``position_scale`` and
``query_residual``). A run whose config sets a fixed setting to another value stops with a
:class:`~graftkit.config.ConfigError` naming both values: a preset is never silently overridden,
and never silently overrides the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graftkit.config import CompressorSettings

if TYPE_CHECKING:
    from torch import nn

    from graftkit.config import BridgeConfig

#: the ``bridge`` fields a compressor builder reads (:class:`graftkit.config.CompressorSettings`)
COMPRESSOR_SETTINGS = tuple(CompressorSettings.model_fields)
#: the settings a preset may fix: the compressor's architecture
ARCHITECTURE_SETTINGS = ("num_zones", "num_heads", "num_global_layers", "slice_norm")

CompressorBuilder = Callable[[int, "BridgeConfig"], "nn.Module"]


def zone_compressor(dim: int, bridge: BridgeConfig, **module_options: Any) -> nn.Module:
    """The core's ``zone`` builder: :class:`~graftkit.bridge.ZoneCompressor` with the run's
    compressor settings; ``module_options`` (``max_period``, ``ff_mult``, ``relative_z``) are
    for plugins that derive a builder with ``functools.partial``."""
    from graftkit.bridge import ZoneCompressor

    return ZoneCompressor(
        dim, **bridge.model_dump(include=set(COMPRESSOR_SETTINGS)), **module_options
    )


class CompressorPreset:
    """A registered builder with architecture settings fixed (module docstring).

    ``CompressorPreset(zone_compressor, num_zones=32, num_heads=16, num_global_layers=1)``.
    Called as a builder, it checks the run's ``bridge`` against the fixed settings and builds.
    """

    def __init__(self, builder: CompressorBuilder, description: str = "", **fixed: Any):
        unknown = sorted(set(fixed) - set(ARCHITECTURE_SETTINGS))
        if unknown:
            raise ValueError(
                f"a compressor preset may fix only {list(ARCHITECTURE_SETTINGS)}, not {unknown}: "
                "the other settings stay with the run"
            )
        if not fixed:
            raise ValueError("a compressor preset must fix at least one setting")
        self.builder = builder
        self.description = description
        self.fixed = dict(fixed)

    def check(self, bridge: BridgeConfig, name: str = "this preset") -> None:
        """Raise :class:`~graftkit.config.ConfigError` if the run sets a fixed setting otherwise."""
        from graftkit.config import ConfigError

        conflicts = {k: v for k, v in self.fixed.items() if getattr(bridge, k) != v}
        if conflicts:
            listing = ", ".join(
                f"bridge.{k}={getattr(bridge, k)!r} (fixed: {v!r})" for k, v in conflicts.items()
            )
            raise ConfigError(
                f"compressor {name!r} fixes {self.fixed}, but the run sets {listing}; drop those "
                "settings or pick a compressor that leaves them to the run (e.g. 'zone')"
            )

    def __call__(self, dim: int, bridge: BridgeConfig) -> nn.Module:
        self.check(bridge)
        return self.builder(dim, bridge)

    def __repr__(self) -> str:
        fixed = ", ".join(f"{k}={v!r}" for k, v in self.fixed.items())
        return f"CompressorPreset({getattr(self.builder, '__name__', self.builder)!r}, {fixed})"


def build_compressor(name: str, dim: int, bridge: BridgeConfig) -> nn.Module:
    """Build the registered compressor ``name`` for the run's ``bridge`` section.

    Checks a preset's fixed settings first (the error names the registered name) and that the
    module outputs ``bridge.num_zones`` tokens where it says how many it outputs.
    """
    from torch import nn

    from graftkit import plugins
    from graftkit.config import ConfigError

    builder = plugins.get("compressor", name)
    if isinstance(builder, CompressorPreset):
        builder.check(bridge, name)
    module = builder(dim, bridge)
    if not isinstance(module, nn.Module):
        owner = plugins.registry("compressor").owners.get(name, "?")
        raise plugins.PluginError(
            f"plugin {owner!r}: compressor {name!r} returned {type(module).__name__}, "
            "not a torch.nn.Module"
        )
    zones = getattr(module, "num_zones", bridge.num_zones)
    if zones != bridge.num_zones:
        raise ConfigError(
            f"compressor {name!r} built {zones} zone tokens, but bridge.num_zones is "
            f"{bridge.num_zones}: the graft expects that many"
        )
    return module
