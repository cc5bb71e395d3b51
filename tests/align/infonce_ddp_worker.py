"""Worker for test_align_infonce.py::test_gathered_infonce_matches_single_process.

Run as ``torchrun --standalone --nproc_per_node 2 infonce_ddp_worker.py OUT_DIR`` (gloo, CPU).
Each rank encodes its shard of a fixed problem, computes InfoNCE with negatives gathered across
ranks, back-propagates, averages gradients over ranks as DistributedDataParallel does, and writes
its results to ``OUT_DIR/rank{r}.pt``. The test compares them with one process on the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from graftkit.align import InfoNCE

PER_RANK = 3
IN_A, IN_B, DIM = 6, 5, 4


def make_problem(
    world_size: int,
) -> tuple[nn.Module, nn.Module, InfoNCE, torch.Tensor, torch.Tensor]:
    """Two linear encoders, the loss module and the global batch, identical on every rank."""
    generator = torch.Generator().manual_seed(1234)
    encoder_a, encoder_b = nn.Linear(IN_A, DIM).double(), nn.Linear(IN_B, DIM).double()
    with torch.no_grad():
        for parameter in [*encoder_a.parameters(), *encoder_b.parameters()]:
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    loss = InfoNCE(init_temperature=0.2).double()
    xa = torch.randn(world_size * PER_RANK, IN_A, generator=generator, dtype=torch.float64)
    xb = torch.randn(world_size * PER_RANK, IN_B, generator=generator, dtype=torch.float64)
    return encoder_a, encoder_b, loss, xa, xb


def uneven_shard(rank: int, world: int) -> slice:
    """Rank 0 gets one row more than the others, rank 1 one fewer (a volume skipped at load)."""
    sizes = [PER_RANK] * world
    sizes[0], sizes[1] = PER_RANK + 1, PER_RANK - 1
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def ddp_step(
    shard: slice, world: int
) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor, int]:
    """This rank's loss on ``shard`` of a fresh problem, the mean loss over ranks, the gradients
    averaged over ranks as DistributedDataParallel does, the input gradient, the batch seen."""
    encoder_a, encoder_b, loss_fn, xa, xb = make_problem(world)
    xa_local = xa[shard].clone().requires_grad_(True)
    loss = loss_fn(encoder_a(xa_local), encoder_b(xb[shard]))
    loss.backward()
    modules = {"a": encoder_a, "b": encoder_b, "loss": loss_fn}
    grads = {}
    for prefix, module in modules.items():
        for name, parameter in module.named_parameters():
            grad = parameter.grad.clone()
            dist.all_reduce(grad)
            grads[f"{prefix}.{name}"] = grad / world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return loss.detach(), mean_loss / world, grads, xa_local.grad, loss_fn.effective_batch_size


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    loss, mean_loss, grads, input_grad, effective = ddp_step(shard, world)
    _, uneven_mean, uneven_grads, _, uneven_effective = ddp_step(uneven_shard(rank, world), world)
    encoder_a, encoder_b, _, xa, xb = make_problem(world)

    ungathered = InfoNCE(init_temperature=0.2, gather=False).double()
    ungathered(encoder_a(xa[shard]), encoder_b(xb[shard]))
    torch.save(
        {
            "loss": loss,
            "mean_loss": mean_loss,
            "grads": grads,
            "input_grad": input_grad,
            "effective_batch_size": effective,
            "ungathered_effective_batch_size": ungathered.effective_batch_size,
            "uneven_mean_loss": uneven_mean,
            "uneven_grads": uneven_grads,
            "uneven_effective_batch_size": uneven_effective,
            "world_size": world,
        },
        out_dir / f"rank{rank}.pt",
    )
    # A gloo worker thread frees the last collective's work (and its tensors' Python objects)
    # after the collective returns; exiting before it takes the GIL aborts the process at
    # interpreter shutdown (SIGABRT, seen ~1 run in 25). The barrier lets it finish first.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
