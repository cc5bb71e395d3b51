"""The bridge's settings are defined once: the run's ``bridge`` section, the
graft's config and the compressor's config share one definition, and a run setting reaches the
component that uses it without a field copied by hand."""

from __future__ import annotations

import pytest

from graftkit.bridge import GraftConfig, ZoneCompressor, ZoneCompressorConfig
from graftkit.compressors import zone_compressor
from graftkit.config import BridgeConfig, BridgeSettings, CompressorSettings, build_config
from graftkit.curriculum.model import graft_config


def test_defaults_agree_everywhere():
    """K = 32 and dropout 0.1 (the run's effective values) whichever way a compressor is made."""
    run = BridgeConfig()
    graft = GraftConfig(visual_dim=16)
    module = ZoneCompressor(16, num_heads=2)
    for config in (run, graft, ZoneCompressorConfig(dim=16), module.config):
        assert (config.num_zones, config.dropout) == (32, 0.1)
    assert module.num_zones == 32 and module.global_layers[0].dropout.p == 0.1


NON_DEFAULT = {
    "num_zones": 5,
    "num_heads": 2,
    "num_global_layers": 2,
    "dropout": 0.25,
    "position_scale": 0.5,
    "query_residual": False,
    "slice_norm": False,
    "predictor_dropout": 0.3,
    "xattn_layers": [0, 1],
    "paper_layers": [3, 6],
    "paper_depth": 12,
    "xattn_heads": 2,
}


def test_every_bridge_setting_of_the_run_reaches_the_components():
    """A ``--set bridge.X`` for each of the bridge's settings arrives in the graft's config and,
    for the compressor's settings, in the built module's config."""
    assert set(NON_DEFAULT) == set(BridgeSettings.model_fields)
    cfg = build_config("ct_rate", overrides={f"bridge.{k}": v for k, v in NON_DEFAULT.items()})
    graft = graft_config(cfg, visual_dim=16, num_classes=3, jepa_dim=7)
    assert {k: getattr(graft, k) for k in NON_DEFAULT} == NON_DEFAULT
    assert (graft.visual_dim, graft.num_classes, graft.jepa_dim) == (16, 3, 7)
    module = zone_compressor(16, cfg.bridge)
    assert {k: getattr(module.config, k) for k in CompressorSettings.model_fields} == {
        k: NON_DEFAULT[k] for k in CompressorSettings.model_fields
    }


def test_a_graft_saved_with_the_old_field_name_still_loads():
    config = GraftConfig.model_validate({"visual_dim": 8, "compressor_dropout": 0.2})
    assert config.dropout == 0.2
    with pytest.raises(ValueError, match="nonsense"):
        GraftConfig.model_validate({"visual_dim": 8, "nonsense": 1})
