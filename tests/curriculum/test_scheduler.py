"""The phase learning-rate schedules are transformers' and equal the former hand-written ones."""

from __future__ import annotations

import math

import pytest
import torch

from graftkit.config import PhaseConfig
from graftkit.curriculum.trainer import build_scheduler


def _former_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The engine's hand-written schedule before transformers'."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _lrs(schedule: str, warmup: int, epochs: int, steps_per_epoch: int) -> list[float]:
    cfg = PhaseConfig(
        name="p",
        trainable=["heads"],
        losses={"bce": 1.0},
        text="conditions",
        epochs=epochs,
        batch_size=4,
        lr=3e-4,
        schedule=schedule,
        warmup_steps=warmup,
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(3, 7), (20, 1), (1, 1)])
def test_without_warmup_the_schedule_is_bit_identical_to_the_former_one(
    schedule, epochs, steps_per_epoch
):
    total = epochs * steps_per_epoch
    former = [3e-4 * _former_factor(s, schedule, 0, total) for s in range(total)]
    assert _lrs(schedule, 0, epochs, steps_per_epoch) == former


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_with_warmup_the_ramp_starts_one_step_later(schedule):
    """transformers ramps step / W (first step at lr 0); the former code ramped (step + 1) / W.
    After the warm-up both are the same curve."""
    warmup, total = 4, 20
    got = _lrs(schedule, warmup, 4, 5)
    former = [3e-4 * _former_factor(s, schedule, warmup, total) for s in range(total)]
    assert got[0] == 0.0
    assert got[1 : warmup + 1] == pytest.approx(former[:warmup])
    assert got[warmup:] == pytest.approx(former[warmup:], rel=1e-12)
    assert got[-1] < 3e-4 if schedule == "cosine" else got[-1] == 3e-4
