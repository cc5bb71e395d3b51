"""graftkit's benchmark suite; run it with ``python -m benchmarks [--quick]``.

Every benchmark module exposes ``run(quick: bool) -> list[dict]``; the runner
(:mod:`benchmarks.__main__`) turns the rows into one table. Rows written by the modules of this
package carry ``benchmark``, ``setting``, a ``results`` dict and optionally ``target``, ``met``
(``True``/``False``/``None``) and ``estimate`` (``True`` for FLOP-based figures that were not
measured). Results with the command, machine and date that produced them: ``docs/benchmarks.md``.

Timing on the shared development CPU follows one rule: compute is timed in process CPU seconds
with one torch thread (the neighbours' load does not enter it), best of interleaved repeats;
anything that uses other processes (DataLoader workers) is timed in wall seconds and is then a
lower bound on the rate of an unshared machine.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time
from collections.abc import Callable, Iterator

import torch


def best_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: bool = True,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, float]:
    """Best time (s) of each function over ``repeats`` interleaved rounds, after one warm-up call.

    Interleaving keeps a change of machine load from favouring one variant.
    """
    if warmup:
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    return best


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def machine() -> str:
    """One line naming this machine: CPU model, logical cores, load average, torch version."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    load = (
        ", load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    )
    return f"{model}, {os.cpu_count()} logical cores{load}, torch {torch.__version__}"


def today() -> str:
    return datetime.date.today().isoformat()


def row(
    benchmark: str,
    setting: str,
    results: dict[str, object],
    target: str = "",
    met: bool | None = None,
    estimate: bool = False,
) -> dict:
    """One table row in this package's format (see the module docstring)."""
    return {
        "benchmark": benchmark,
        "setting": setting,
        "results": results,
        "target": target,
        "met": met,
        "estimate": estimate,
    }
