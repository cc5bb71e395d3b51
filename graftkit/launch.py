"""Launch profiles -> accelerate config files (``accelerate launch --config_file``), and the
re-launch of a multi-process run under ``accelerate launch``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from graftkit.config import LaunchConfig

#: graftkit's FSDP settings (docs/distributed.md, "FSDP"), under ``launch.fsdp_config``'s keys
FSDP_DEFAULTS: dict[str, Any] = {
    "fsdp_version": 2,
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_state_dict_type": "SHARDED_STATE_DICT",
    # every process loads the LLM, builds the text space and grafts before the model is
    # sharded; with True, transformers would load it on the meta device outside rank 0
    "fsdp_cpu_ram_efficient_loading": False,
    "fsdp_reshard_after_forward": True,
}


def fsdp_config(launch: LaunchConfig) -> dict[str, Any]:
    """The FSDP settings of a launch profile: :data:`FSDP_DEFAULTS` updated by
    ``launch.fsdp_config``."""
    return {**FSDP_DEFAULTS, **launch.fsdp_config}


def accelerate_config(launch: LaunchConfig) -> dict[str, Any]:
    """The accelerate config dict (the format ``accelerate config`` writes) for a launch profile."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": launch.distributed_type,
        "num_processes": launch.num_processes * launch.num_machines,
        "num_machines": launch.num_machines,
        "machine_rank": launch.machine_rank,
        "mixed_precision": launch.mixed_precision,
        "use_cpu": launch.use_cpu,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "downcast_bf16": "no",
    }
    if launch.num_machines > 1:
        config["main_process_ip"] = launch.main_process_ip
        config["main_process_port"] = launch.main_process_port
    if launch.distributed_type == "FSDP":
        config["fsdp_config"] = fsdp_config(launch)
    return config


def write_accelerate_config(launch: LaunchConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(accelerate_config(launch), sort_keys=False))
    return path


def relaunch_if_needed(launch: LaunchConfig, config_path: Path) -> int | None:
    """Re-run this command under ``accelerate launch`` when the launch profile asks for more
    than one process and this is not already a launched process; its exit code, else ``None``.

    The profile's accelerate config is written to ``config_path`` first.
    """
    if launch.num_processes * launch.num_machines <= 1 or "LOCAL_RANK" in os.environ:
        return None
    path = write_accelerate_config(launch, config_path)
    command = ["accelerate", "launch", "--config_file", str(path), "-m", "graftkit", *sys.argv[1:]]
    print(f"launching {launch.num_processes} process(es): {' '.join(command)}", flush=True)
    env = dict(os.environ)
    if launch.use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.call(command, env=env)
