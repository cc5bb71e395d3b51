"""Sharded evaluation units (``graftkit.eval.shard``): which process computes which unit, and a
merge in unit order that equals the one-process list, whatever the number of processes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from graftkit.eval.shard import Sharding, batch_spans, map_batches, unit_seed


def _processes(world: int, synced: bool = False) -> list[Sharding]:
    """``world`` shardings whose gather exchanges objects between threads (a stand-in for
    ``all_gather_object``: every process gets every process's object, in rank order)."""
    slots: list = [None] * world
    barrier = threading.Barrier(world)

    def gather_for(rank):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

        return gather

    return [Sharding(r, world, synced, gather_for(r)) for r in range(world)]


def _run(shardings, fn):
    results, threads = [None] * len(shardings), []
    for rank, sharding in enumerate(shardings):

        def work(rank=rank, sharding=sharding):
            results[rank] = fn(sharding)

        threads.append(threading.Thread(target=work))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_units_are_dealt_round_robin_and_padded_only_for_a_synced_collective():
    # 5 units over 2 processes: 0, 2, 4 and 1, 3
    assert Sharding(0, 2).units(5) == [0, 2, 4] and Sharding(1, 2).units(5) == [1, 3]
    # a sharded model: process 1 repeats its last unit so both run 3 collective forwards
    assert Sharding(1, 2, synced=True).units(5, collective=True) == [1, 3, 3]
    assert Sharding(1, 2, synced=True).units(5) == [1, 3]  # bridge-only work is not padded
    # a process with no unit of its own still joins the collectives
    assert Sharding(2, 3, synced=True).units(2, collective=True) == [1]
    with pytest.raises(ValueError, match=r"rank 2 is not in 0\.\.1"):
        Sharding(2, 2)


def test_batches_are_cut_as_in_one_process():
    assert batch_spans(16, 6) == [(0, 6), (6, 12), (12, 16)]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batch_spans(3, 0)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("synced", [False, True])
def test_every_process_gets_the_one_process_result(world, synced):
    data = np.arange(17.0)
    calls = [[] for _ in range(world)]

    def stage(sharding):
        def batch(index, start, stop):
            calls[sharding.rank].append(index)
            return [float(x) ** 2 + index for x in data[start:stop]]

        return [
            x for part in map_batches(sharding, len(data), 5, batch, collective=True) for x in part
        ]

    want = [float(x) ** 2 + i // 5 for i, x in enumerate(data)]  # batch index = position // 5
    for got in _run(_processes(world, synced), stage):
        assert got == want
    # each batch was computed by its own process (plus padding repeats under a synced model)
    owners = {b: r for r, made in enumerate(calls) for b in made if b % world == r}
    assert sorted(owners) == [0, 1, 2, 3]
    if synced:
        assert len({len(made) for made in calls}) == 1  # as many forwards on every process


def test_unit_seeds_depend_on_the_unit_alone():
    assert unit_seed(7, 0) == 7  # one batch samples as before
    seeds = [unit_seed(7, u) for u in range(1, 50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [unit_seed(7, u) for u in range(1, 50)]
    assert unit_seed(8, 1) != unit_seed(7, 1)
