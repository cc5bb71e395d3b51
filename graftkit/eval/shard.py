"""Evaluation on every process: the work is cut into fixed units, each process computes its
share, and the results are merged in unit order (docs/distributed.md, "Evaluation").

A unit is what one process computes in one piece: a batch of volumes (visual tokens, features,
generated reports, teacher-forced NLL) or one finding's volume (zone grounding). The units are
the ones a one-process evaluation uses, cut at the same boundaries (batch b holds volumes
``b·B .. (b + 1)·B - 1`` of the evaluated list whatever the number of processes), and unit u goes
to process ``u mod world``. Each unit is computed exactly as in one process, from the same inputs
in a batch of the same size and, for sampling, with a seed that is a function of the unit's
index only (:func:`unit_seed`), so the merged result equals the one-process result bit for bit.

When the model is sharded (FSDP), every forward of the LLM is collective: each process must run
as many forwards as the others. ``synced`` evaluations give every process the same number of
units (the short ones repeat their last unit and drop its result) and generation runs with
``synced_gpus``, so a process whose reports ended keeps joining the others' decoding steps.
Bridge-only work (encoding, heads) needs no collective and is not padded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Sharding:
    """This process's place among ``world`` evaluating processes (rank 0 is the main one).

    ``synced``: the model is sharded (FSDP), so LLM forwards are collective (module docstring).
    ``gather`` merges one object per process into the list of every process's object, rank
    order (``torch.distributed.all_gather_object`` by default); one process never calls it.
    """

    rank: int = 0
    world: int = 1
    synced: bool = False
    gather: Callable[[Any], list[Any]] | None = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"sharding: rank {self.rank} is not in 0..{self.world - 1}")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def units(self, count: int, collective: bool = False) -> list[int]:
        """The unit indices this process computes out of ``count``; with ``collective`` and a
        ``synced`` model, padded by repeating the last one to the largest share."""
        mine = list(range(self.rank, count, self.world))
        if collective and self.synced and self.world > 1:
            most = -(-count // self.world)
            if not mine and count:
                mine = [count - 1]  # any unit: its result is dropped
            mine += [mine[-1]] * (most - len(mine)) if mine else []
        return mine

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        if self.gather is not None:
            return self.gather(obj)
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def map(self, fn: Callable[[int], T], count: int, collective: bool = False) -> list[T]:
        """``[fn(0), .., fn(count - 1)]``, each unit computed by one process and the results
        merged on every process in unit order."""
        results: dict[int, T] = {}
        for unit in self.units(count, collective):
            value = fn(unit)  # a padding unit (another process's) runs for the collectives only
            if unit % self.world == self.rank:
                results[unit] = value
        if self.world == 1:
            return [results[u] for u in range(count)]
        merged: dict[int, T] = {}
        for part in self.all_gather(results):
            merged.update(part)
        missing = [u for u in range(count) if u not in merged]
        if missing:
            raise RuntimeError(f"sharded evaluation: no process computed unit(s) {missing}")
        return [merged[u] for u in range(count)]


#: One process: compute every unit here, nothing to merge.
SINGLE = Sharding()


def batch_spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of consecutive batches of ``batch_size`` over ``n`` items (the last
    one shorter): the units of a batched evaluation stage."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def map_batches(
    sharding: Sharding | None,
    n: int,
    batch_size: int,
    fn: Callable[[int, int, int], T],
    collective: bool = False,
) -> list[T]:
    """``fn(index, start, stop)`` of every batch (:func:`batch_spans`), merged in batch order."""
    spans = batch_spans(n, batch_size)
    return (sharding or SINGLE).map(lambda b: fn(b, *spans[b]), len(spans), collective)


def unit_seed(seed: int, unit: int) -> int:
    """The sampling seed of unit ``unit`` of an evaluation seeded ``seed``: ``seed`` itself for
    the first unit (so an evaluation in one batch samples as it always did), for the others a
    value of ``numpy.random.SeedSequence((seed, unit))``: a function of the unit alone, not of
    what was sampled before it, so any process can draw it."""
    if unit == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence((int(seed), int(unit))).generate_state(1, np.uint64)[0] >> 1)


def concat(parts: Sequence[Any]):
    """Batched tensors merged in order (``torch.cat``) or lists chained."""
    import torch

    if parts and isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts))
    return [x for part in parts for x in part]


def from_accelerator(accelerator: Any, synced: bool | None = None) -> Sharding:
    """The :class:`Sharding` of an ``accelerate.Accelerator``'s process; ``synced`` defaults to
    whether the run shards its model (FSDP2)."""
    world = int(accelerator.num_processes)
    if synced is None:
        synced = bool(getattr(accelerator, "is_fsdp2", False)) and world > 1
    return Sharding(rank=int(accelerator.process_index), world=world, synced=synced)
