"""The loss constants of the run config reach the loss terms."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from graftkit.align import focal_loss
from graftkit.config import ObjectiveConfig
from graftkit.curriculum.objective import LOSSES, Objective


def test_focal_gamma_comes_from_the_objective():
    logits = torch.tensor([[2.0, -1.0, 0.3], [-0.5, 1.5, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    for gamma in (0.0, 2.0, 3.5):
        state = SimpleNamespace(
            objective=SimpleNamespace(focal_gamma=gamma),
            cls_logits=logits,
            batch={"labels": labels},
        )
        assert torch.equal(LOSSES["focal"].compute(state), focal_loss(logits, labels, gamma=gamma))


def test_objective_defaults_to_the_configs_focal_gamma():
    objective = Objective(torch.nn.Identity(), torch.nn.Identity(), torch.ones(2), 0.04)
    assert objective.focal_gamma == ObjectiveConfig().focal_gamma == 2.0
