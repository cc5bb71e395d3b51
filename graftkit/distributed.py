"""Sharded tensors (FSDP2's ``DTensor``) as the rest of graftkit meets them: gathered to full
tensors before they are written or reduced, laid out again as the parameter a loaded tensor goes
into, and one gradient norm over sharded and replicated gradients.

Every function is the identity (or plain torch) when nothing is sharded, communicates nothing
then, and imports ``torch.distributed`` only when first needed. The maths
(:mod:`graftkit.align.ewc`), checkpoints and the engine's FSDP integration
(:mod:`graftkit.curriculum.fsdp`) use these; none of them imports the others for it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def sharded_types() -> tuple[type, ...]:
    """The sharded tensor class (FSDP2's DTensor), imported when first needed; none in a torch
    build without torch.distributed."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return ()
    return (DTensor,)


def full_tensors(obj: Any) -> Any:
    """``obj`` (a tensor, or nested dicts, lists and tuples of them) with every sharded tensor
    (an FSDP2 ``DTensor``) replaced by the full tensor; anything else is returned as it is.

    Gathering is collective: where ``obj`` holds sharded tensors every process must call this,
    in the same order. Without sharding it communicates nothing.
    """
    if isinstance(obj, sharded_types()):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def shard_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value``, a full tensor, laid out as ``target``: this process's shard of it when
    ``target`` is sharded (every process holds the same ``value``, so nothing is sent), else
    ``value`` itself."""
    sharded = sharded_types()
    if not isinstance(target, sharded) or isinstance(value, sharded):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        value.to(target.device), target.device_mesh, target.placements, src_data_rank=None
    )


def shard_optimizer_state(state: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """An optimiser ``state_dict`` of full tensors with each per-parameter tensor of a
    parameter's shape (Adam's moments) laid out as that parameter (:func:`shard_like`)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, sharded_types()) for p in params):
        return state
    per_param = {
        index: {
            k: shard_like(v, params[int(index)])
            if isinstance(v, torch.Tensor) and v.shape == params[int(index)].shape
            else v
            for k, v in values.items()
        }
        for index, values in state["state"].items()
    }
    return {**state, "state": per_param}


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over ``params`` (which have gradients), also when some
    gradients are sharded and some replicated: one total norm over all of them."""
    sharded = sharded_types()
    if not any(isinstance(p.grad, sharded) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    split = (
        [p.grad for p in params if isinstance(p.grad, sharded)],
        [p.grad for p in params if not isinstance(p.grad, sharded)],
    )
    norms = [torch.nn.utils.get_total_norm(grads) for grads in split if grads]
    # a norm of sharded gradients is partial on each process: full_tensor() reduces it
    total = torch.linalg.vector_norm(
        torch.stack([n.full_tensor() if isinstance(n, sharded) else n for n in norms])
    )
    coef = float((max_norm / (total + 1e-6)).clamp(max=1.0))
    for grads in split:
        for g in grads:
            g.mul_(coef)
    return total
