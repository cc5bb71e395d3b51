"""The FSDP plugin the engine hands to accelerate is built from the same settings the launch
profile renders into ``RUN/accelerate_config.yaml`` (one source, whatever starts the processes)."""

import pytest

from graftkit import plugins
from graftkit.config import ConfigError, LaunchConfig
from graftkit.curriculum.fsdp import fsdp_plugin
from graftkit.launch import accelerate_config


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch):
    # the plugin exports FSDP_CPU_RAM_EFFICIENT_LOADING for transformers: undone after each test
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "unset")


def test_plugin_follows_the_rendered_fsdp_config():
    launch = plugins.get("profile", "cpu-2proc-fsdp").launch
    rendered = accelerate_config(launch)
    assert rendered["distributed_type"] == "FSDP" and launch.num_processes == 2
    plugin = fsdp_plugin(launch)
    config = rendered["fsdp_config"]
    assert plugin.fsdp_version == config["fsdp_version"] == 2
    assert plugin.reshard_after_forward is config["fsdp_reshard_after_forward"] is True
    # every process builds the text space from the whole LLM before it is sharded
    assert plugin.cpu_ram_efficient_loading is config["fsdp_cpu_ram_efficient_loading"] is False
    assert plugin.transformer_cls_names_to_wrap is None  # found from the layer list at prepare


def test_launch_fsdp_config_overrides_and_rejects():
    launch = LaunchConfig(
        distributed_type="FSDP",
        fsdp_config={"fsdp_transformer_layer_cls_to_wrap": "MyBlock", "fsdp_version": 2},
    )
    assert fsdp_plugin(launch).transformer_cls_names_to_wrap == ["MyBlock"]
    with pytest.raises(ConfigError, match=r"launch\.fsdp_config"):
        fsdp_plugin(LaunchConfig(distributed_type="FSDP", fsdp_config={"fsdp_no_such": 1}))
