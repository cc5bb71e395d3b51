import yaml

from graftkit import plugins
from graftkit.config import LaunchConfig
from graftkit.launch import accelerate_config, write_accelerate_config


def test_paper_8xh200_profile_renders_an_8_process_bf16_ddp_config(tmp_path):
    launch = plugins.get("profile", "paper-8xh200").launch
    path = write_accelerate_config(launch, tmp_path / "accelerate_config.yaml")
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["num_processes"] == 8 and config["num_machines"] == 1
    assert config["mixed_precision"] == "bf16" and config["use_cpu"] is False


def test_multi_node_and_fsdp_fields():
    config = accelerate_config(
        LaunchConfig(
            distributed_type="FSDP",
            num_processes=8,
            num_machines=2,
            main_process_ip="10.0.0.1",
            mixed_precision="bf16",
            fsdp_config={"fsdp_offload_params": True},
        )
    )
    assert config["num_processes"] == 16 and config["main_process_ip"] == "10.0.0.1"
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config["fsdp_config"]["fsdp_offload_params"] is True


def test_cpu_profile_uses_multi_cpu():
    launch = plugins.get("profile", "cpu-2proc").launch
    assert accelerate_config(launch)["distributed_type"] == "MULTI_CPU" and launch.use_cpu
