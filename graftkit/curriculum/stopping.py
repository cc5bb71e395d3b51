"""Early stopping as state the phase loop consults: keep the best epoch's bridge by the phase's
metric (``loss`` = validation total), stop after ``patience`` epochs without improvement, and end
the phase on the best state (the paper's "best checkpoint" per phase)."""

from __future__ import annotations

from typing import Any

import torch

from graftkit.config import ConfigError, EarlyStoppingConfig


class EarlyStopper:
    """The best metric so far, the epochs since it improved and the bridge it was reached with.

    Its :meth:`state_dict` is saved with every epoch checkpoint (under the name :attr:`name`), so
    a resumed phase stops where the uninterrupted one would.
    """

    #: key of its state in an epoch checkpoint's callback states
    name = "early_stopping"

    def __init__(self, config: EarlyStoppingConfig):
        self.metric, self.mode, self.patience = config.metric, config.mode, config.patience
        self.best: float | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def value(self, number: int, row: dict[str, Any]) -> float:
        """The metric in an epoch's row (``loss`` is ``valid_total``; ``x`` also ``valid_x``)."""
        name = "valid_total" if self.metric == "loss" else self.metric
        metric = row.get(name, row.get(f"valid_{name}"))
        if metric is None:
            hint = " (declare the collapse_monitor callback)" if name.startswith("gen_f1") else ""
            raise ConfigError(
                f"phase {number}: early-stopping metric {self.metric!r} not in {sorted(row)}{hint}"
            )
        return metric

    def update(self, metric: float, glm) -> bool:
        """Record one epoch's metric (and the bridge when it improved); whether to stop."""
        improved = self.best is None or (
            metric > self.best if self.mode == "max" else metric < self.best
        )
        if improved:
            self.best, self.bad_epochs = metric, 0
            self.best_state = {k: v.detach().clone() for k, v in glm.bridge_state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore_best(self, glm) -> None:
        """Put the best epoch's bridge back (nothing when no epoch ran)."""
        if self.best_state is not None:
            glm.load_bridge_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.best_state = state.get("best_state")
