"""The compressor contract: builder(dim, bridge); a preset fixes its architecture, the run the rest."""

from __future__ import annotations

import pytest
import torch

from graftkit import plugins
from graftkit.compressors import ARCHITECTURE_SETTINGS, CompressorPreset, build_compressor
from graftkit.config import BridgeConfig, ConfigError
from graftkit.hookspecs import hookimpl


def test_zone_takes_every_compressor_setting_from_the_run():
    bridge = BridgeConfig(num_zones=8, num_heads=2, num_global_layers=0, dropout=0.2)
    update = {"position_scale": 0.1, "query_residual": False, "slice_norm": False}
    module = build_compressor("zone", 16, bridge.model_copy(update=update))
    c = module.config
    assert (c.num_zones, c.num_heads, c.num_global_layers) == (8, 2, 0)
    assert (c.dropout, c.position_scale, c.query_residual, c.slice_norm) == (0.2, 0.1, False, False)
    assert module(torch.randn(2, 5, 16)).shape == (2, 8, 16)


def test_ct_rate_32_fixes_the_papers_architecture_and_refuses_another():
    paper = BridgeConfig(compressor="ct_rate-32", dropout=0.05, position_scale=0.5)
    c = build_compressor("ct_rate-32", 32, paper).config
    assert (c.num_zones, c.num_heads, c.num_global_layers) == (32, 16, 1)
    assert (c.dropout, c.position_scale) == (0.05, 0.5)  # non-architecture settings: the run's
    # `--set bridge.num_zones=8` used to give an 8-zone "ct_rate-32" that was just `zone`
    with pytest.raises(ConfigError) as err:
        build_compressor("ct_rate-32", 32, paper.model_copy(update={"num_zones": 8}))
    assert "'ct_rate-32'" in str(err.value) and "bridge.num_zones=8 (fixed: 32)" in str(err.value)


def test_a_preset_may_fix_only_the_architecture():
    def build(dim, bridge):
        return torch.nn.Identity()

    assert ARCHITECTURE_SETTINGS == ("num_zones", "num_heads", "num_global_layers", "slice_norm")
    with pytest.raises(ValueError, match=r"not \['dropout'\]"):
        CompressorPreset(build, dropout=0.0)
    with pytest.raises(ValueError, match="at least one"):
        CompressorPreset(build)


def test_a_builder_must_return_a_module_of_bridge_num_zones_tokens():
    class Wrong(torch.nn.Module):
        num_zones = 3

    class P:
        @hookimpl
        def register_compressors(self, register):
            register("not-a-module", lambda dim, bridge: "tokens")
            register("wrong-k", lambda dim, bridge: Wrong())

    plugins.load_plugins()
    plugins.pm.register(P(), name="test-bad-compressors")
    try:
        with pytest.raises(plugins.PluginError, match=r"'test-bad-compressors'.*not a torch"):
            build_compressor("not-a-module", 8, BridgeConfig())
        with pytest.raises(ConfigError, match=r"built 3 zone tokens, but bridge\.num_zones is 32"):
            build_compressor("wrong-k", 8, BridgeConfig())
    finally:
        plugins.pm.unregister(name="test-bad-compressors")
