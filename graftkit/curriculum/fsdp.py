"""FSDP2 in the engine (docs/distributed.md, "LLMs that do not fit one GPU: FSDP").

``launch.distributed_type: FSDP`` gives the Accelerator a ``FullyShardedDataParallelPlugin``
built from the run's launch config (:func:`fsdp_plugin`), however the processes were started
(``accelerate launch``, ``torchrun``). The first ``accelerator.prepare`` of the phase objective
then shards it with ``fully_shard``: each decoder layer of the LLM (LoRA included) is one unit,
everything else (embeddings, head, the bridge) the root unit. Parameters become DTensors. What
that changes for the engine is here, and every function is a no-op without FSDP:

- :func:`prepare`: names the decoder-layer class to wrap, leaves the modules holding a scalar
  parameter, which ``fully_shard`` refuses (the calibrator's α, the InfoNCE temperature, each
  cross-attention adapter with its tanh gate), replicated, and prints what this process holds;
- :func:`sync_replicated_grads`: averages those replicated parameters' gradients, as DDP would;
- :func:`resharded`: FSDP keeps the root unit gathered after a no-grad forward until the next
  backward; the engine puts it back in its shards, so the bridge is read and loaded in one layout;
- :func:`unsharded`: the root unit gathered for what runs outside the objective's forward (the
  calibrator refresh, the collapse monitor's generation), and what a callback wrote to it kept.

The tensor-level helpers (gathering, laying out, one gradient norm over sharded and replicated
gradients) are in :mod:`graftkit.distributed`: checkpoints hold full tensors, as in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from graftkit.config import ConfigError, LaunchConfig
from graftkit.distributed import sharded_types

#: accelerate config keys (``fsdp_config``, as graftkit.launch renders it) -> plugin fields
_PLUGIN_FIELDS = {
    "fsdp_version": "fsdp_version",
    "fsdp_transformer_layer_cls_to_wrap": "transformer_cls_names_to_wrap",
    "fsdp_offload_params": "cpu_offload",
}


def fsdp_plugin(launch: LaunchConfig):
    """accelerate's ``FullyShardedDataParallelPlugin`` for the launch config's ``fsdp_config``
    (the same settings ``RUN/accelerate_config.yaml`` holds)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from graftkit.launch import fsdp_config

    options = {
        _PLUGIN_FIELDS.get(key, key.removeprefix("fsdp_")): value
        for key, value in fsdp_config(launch).items()
    }
    try:
        return FullyShardedDataParallelPlugin(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"launch.fsdp_config: {err}") from None


def enable_on_cpu(accelerator: Accelerator, plugin) -> None:
    """accelerate turns FSDP on only for accelerator devices: CPU processes (gloo) would run DDP
    instead, silently. FSDP2 itself runs on CPU, so there the state is switched to it: in the
    process state too, which every later ``AcceleratorState()`` copies its type from."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (the phase objective)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def prepare(accelerator: Accelerator, objective: nn.Module, *objects: Any) -> tuple[Any, ...]:
    """``accelerator.prepare(objective, *objects)``. Under FSDP the first call shards the
    objective: the LLM's decoder-layer class is the unit (unless ``launch.fsdp_config`` names
    one), modules holding a scalar parameter stay replicated (all their parameters: accelerate
    ignores whole modules); a line says what this process holds."""
    if not accelerator.is_fsdp2 or is_sharded(objective):
        return accelerator.prepare(objective, *objects)
    from graftkit.bridge import find_decoder_layers

    plugin = accelerator.state.fsdp_plugin
    llm = objective.glm.llm
    if not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = [type(find_decoder_layers(llm)[0]).__name__]
    scalars = [
        m for m in objective.modules() if any(p.dim() == 0 for p in m.parameters(recurse=False))
    ]
    plugin.ignored_modules = scalars
    prepared = accelerator.prepare(objective, *objects)
    sharded = sharded_types()
    params = list(llm.parameters())
    local = sum(p.to_local().numel() if isinstance(p, sharded) else p.numel() for p in params)
    total = sum(p.numel() for p in params)
    units = sum(is_sharded(m) for m in objective.modules())
    from graftkit.curriculum.run import echo

    echo(
        accelerator,
        f"fsdp: {units} units ({', '.join(plugin.transformer_cls_names_to_wrap)} + root) over "
        f"{accelerator.num_processes} processes; this process holds {local} of the LLM's "
        f"{total} parameters ({local / max(1, total):.0%}); "
        f"{sum(p.numel() for m in scalars for p in m.parameters())} parameters replicated "
        f"({len(scalars)} modules with a scalar parameter)",
    )
    return prepared


def sync_replicated_grads(accelerator: Accelerator, model: nn.Module) -> None:
    """Average the gradients of the parameters FSDP leaves replicated (not sharded) across
    processes, as DDP does for every parameter; FSDP reduces the sharded ones itself."""
    if not accelerator.is_fsdp2:
        return
    sharded = sharded_types()
    for p in model.parameters():
        if p.grad is not None and not isinstance(p, sharded):
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(accelerator.num_processes)


@contextlib.contextmanager
def unsharded(glm: nn.Module, model: nn.Module) -> Iterator[None]:
    """The root unit's parameters gathered, for code that uses the model outside the objective's
    forward (each decoder layer gathers its own in its forward), then sharded again. The root
    unit's bridge tensors, as the code left them, are copied into the shards: a callback may
    write the bridge (the calibrator refresh does) as in one process."""
    if not is_sharded(model):
        yield
        return
    # the root is decided by the first forward: a decoder layer must not run first
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    yield
    sharded = sharded_types()
    kept = {
        n: t.detach().clone()
        for n, t in glm.bridge_state_dict().items()
        if not isinstance(t, sharded)
    }
    resharded(model)
    glm.load_bridge_state_dict(kept, strict=False)


def resharded(model: nn.Module) -> None:
    """Every FSDP unit of ``model`` back in its sharded state (a no-op for those already
    sharded, and without FSDP)."""
    if not is_sharded(model):
        return
    for module in model.modules():
        if is_sharded(module):
            module.reshard()
