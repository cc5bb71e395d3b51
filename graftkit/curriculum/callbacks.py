"""Phase callbacks: the mechanics a phase names under ``callbacks:`` (docs/design.md, "Four-phase
curriculum"), as small objects with hooks the phase loop calls (the pattern of transformers'
``TrainerCallback``) and a ``state_dict`` that is saved with every epoch checkpoint.

The phase loop (:class:`graftkit.curriculum.trainer.PhaseTrainer`) calls, in declaration order:
``on_phase_begin`` (before the optimiser is built; a callback may declare a parameter penalty
with the objective there, as ``ewc`` does), ``on_epoch_begin``, ``on_before_optimizer_step`` /
``on_after_optimizer_step`` (around each step), ``on_evaluate`` (may add columns to the epoch's
row) and ``on_phase_end``. Plugins add callbacks through the ``register_callbacks`` hook
(docs/plugins.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from graftkit.curriculum.run import PhaseContext

if TYPE_CHECKING:
    from graftkit.config import PhaseConfig

__all__ = ["Callback", "PhaseContext", "build_callbacks", "check_callbacks"]


class Callback:
    """Base class: every hook does nothing; ``state_dict`` is empty."""

    name: ClassVar[str] = ""
    #: Option names of a callback that takes ``**options`` (e.g. ``lambda``, a Python keyword),
    #: so that a misspelt one is named with the closest; others are read from ``__init__``.
    option_names: ClassVar[tuple[str, ...]] = ()

    def on_phase_begin(self, ctx: PhaseContext) -> None: ...

    def on_epoch_begin(self, ctx: PhaseContext, epoch: int) -> None: ...

    def on_before_optimizer_step(self, ctx: PhaseContext) -> None: ...

    def on_after_optimizer_step(self, ctx: PhaseContext) -> None: ...

    def on_evaluate(self, ctx: PhaseContext, epoch: int, row: dict[str, Any]) -> None: ...

    def on_phase_end(self, ctx: PhaseContext) -> None: ...

    def final_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors kept in the phase's final checkpoint as group ``name`` (none by default)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class InitCompressor(Callback):
    """Fit the compressor's input standardisation and SVD-initialise its region queries from real
    training slices (docs/design.md, "Zone-constrained cross-attention"), on a fresh bridge only."""

    name = "init_compressor"

    def __init__(self, volumes: int = 64):
        self.volumes = volumes

    def on_phase_begin(self, ctx: PhaseContext) -> None:
        from graftkit.data import VolumeDataset

        run = ctx.run
        init = getattr(run.glm.compressor, "init_queries_from", None)
        if not ctx.fresh_bridge or init is None:
            return
        data = VolumeDataset(
            run.dataset, run.train[: self.volumes], run.cfg.data.max_slices, skip_unloadable=True
        )
        items = [item for item in (data[i] for i in range(len(data))) if isinstance(item, dict)]
        device = next(run.glm.compressor.parameters()).device
        init(torch.cat([item["slices"] for item in items]).to(device))
        ctx.echo(
            f"compressor: input standardisation and region queries initialised from "
            f"{len(items)} training volumes"
        )


class WarmBridge(Callback):
    """Start from the layer projectors, cross-attention adapters and LoRA of an earlier phase
    (paper Table VI), read from ``path`` or the run's ``--warm-bridge PATH``; a run folder
    means its ``phase{N}`` checkpoint of the same phase number. Skipped when resuming."""

    name = "warm_bridge"

    def __init__(self, path: str | None = None, groups: list[str] | None = None):
        self.path = Path(path) if path else None
        self.groups = groups or ["projectors", "xattn", "lora"]

    def on_phase_begin(self, ctx: PhaseContext) -> None:
        from graftkit.rundir import RunDir

        path = self.path or ctx.warm_bridge
        if path is None or ctx.resumed:
            return
        if RunDir(path).phase(ctx.number).is_dir():
            path = RunDir(path).phase(ctx.number)
        loaded = ctx.run.load(path, groups=self.groups)
        inv = ctx.run.glm.inventory()
        ctx.echo(
            f"warm bridge from {path}: loaded {len(loaded)} tensors ("
            + ", ".join(f"{g} {inv[g]['tensors']}" for g in self.groups)
            + ")"
        )


class FreezeLoRA(Callback):
    """Freeze LoRA after ``after_epoch`` epochs (paper: 6); the rest of the phase trains on."""

    name = "freeze_lora"

    def __init__(self, after_epoch: int):
        if after_epoch < 1:
            raise ValueError(f"freeze_lora: after_epoch must be >= 1, got {after_epoch}")
        self.after_epoch = after_epoch
        self.frozen = False

    def on_phase_begin(self, ctx: PhaseContext) -> None:
        self.frozen = False

    def on_epoch_begin(self, ctx: PhaseContext, epoch: int) -> None:
        if self.frozen or epoch >= self.after_epoch:
            for p in ctx.run.glm.parameter_groups().get("lora", {}).values():
                p.requires_grad_(False)
            if not self.frozen:
                ctx.echo(f"phase {ctx.number}: LoRA frozen from epoch {epoch + 1}")
            self.frozen = True

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen"))


class Recalibrate(Callback):
    """``NormCalibrator.recalibrate()`` every ``every`` epochs on a fixed sample of training
    volumes (docs/design.md, "Norm calibration")."""

    name = "recalibrate"

    def __init__(self, every: int = 1, volumes: int = 64):
        if every < 1:
            raise ValueError(f"recalibrate: every must be >= 1, got {every}")
        self.every, self.volumes = every, volumes

    def on_epoch_begin(self, ctx: PhaseContext, epoch: int) -> None:
        if epoch % self.every:
            return
        from graftkit.data import VolumeDataset, collate_volumes

        run = ctx.run
        data = VolumeDataset(
            run.dataset,
            run.train[: min(self.volumes, len(run.train))],
            run.cfg.data.max_slices,
            skip_unloadable=True,
        )
        batch = collate_volumes([data[i] for i in range(len(data))])  # recalibrate moves it
        was_training = run.glm.training
        run.glm.eval()
        with torch.no_grad(), run.accelerator.autocast():
            run.glm.recalibrate(batch["slices"], batch["z_mm"], batch["mask"])
        run.glm.train(was_training)


def lars_scale(params: list[torch.Tensor], low: float, high: float) -> float:
    """‖w‖ / ‖∇w‖ over ``params``, clamped to ``[low, high]``; 1 when there is no gradient.
    Sharded parameters (FSDP) give partial sums, reduced to the full ones (every process calls)."""
    from graftkit.distributed import full_tensors

    def squares(t: torch.Tensor) -> torch.Tensor:
        return full_tensors((t.detach().float() ** 2).sum())

    w = torch.sqrt(sum(squares(p) for p in params))
    g = torch.sqrt(sum(squares(p.grad) for p in params if p.grad is not None))
    return float((w / g.clamp_min(1e-12)).clamp(low, high)) if g > 0 else 1.0


class LarsProjectorLR(Callback):
    """Scale the layer projectors' learning rate by ‖w‖/‖∇w‖ (LARS), clamped to ``[min, max]``
    (paper: [1, 30]), for each step only."""

    name = "lars_projector_lr"

    def __init__(self, min: float = 1.0, max: float = 30.0):
        if not 0 < min <= max:
            raise ValueError(f"lars_projector_lr: need 0 < min <= max, got {min}, {max}")
        self.low, self.high = min, max
        self._restore: list[tuple[dict, float]] = []
        self.last_scale: float | None = None

    def on_before_optimizer_step(self, ctx: PhaseContext) -> None:
        self._restore = []
        for group in ctx.optimizer.param_groups:
            if group.get("group") != "projectors":
                continue
            self.last_scale = lars_scale(group["params"], self.low, self.high)
            self._restore.append((group, group["lr"]))
            group["lr"] = group["lr"] * self.last_scale

    def on_after_optimizer_step(self, ctx: PhaseContext) -> None:
        for group, lr in self._restore:
            group["lr"] = lr
        self._restore = []


class EWCPenalty(Callback):
    """L2-SP/EWC penalty λ·Σ(θ − θ*)² on LoRA towards its state at the phase's start (docs/design.md,
    "Four-phase curriculum", phase 4; Fisher = 1)."""

    name = "ewc"
    option_names = ("lambda",)

    def __init__(self, **options: float):
        lam = options.pop("lambda", None)
        if options or lam is None or lam < 0:
            raise ValueError(
                f"ewc: expected {{lambda: >= 0}}, got {dict(options, **{'lambda': lam})}"
            )
        self.lam = float(lam)
        self.ewc = None

    def on_phase_begin(self, ctx: PhaseContext) -> None:
        from graftkit.align import EWC

        glm = ctx.run.glm
        self.ewc = EWC(dict(glm.parameter_groups()["lora"]), lam=self.lam)
        self.ewc.snapshot()
        if self.lam > 0:
            ewc = self.ewc
            ctx.run.objective.add_penalty(
                "ewc", lambda: ewc.penalty(dict(glm.parameter_groups()["lora"]))
            )

    def final_tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors()

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.ewc.state_dict().items() if isinstance(v, torch.Tensor)}

    def state_dict(self) -> dict[str, Any]:
        return {"snapshot": self._tensors()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ewc.load_state_dict(state["snapshot"])


def build_callbacks(phase: PhaseConfig, number: int) -> list[Callback]:
    """The phase's declared callbacks, constructed from their options, in declaration order."""
    from graftkit import plugins
    from graftkit.config import ConfigError

    out = []
    for name, options in phase.active_callbacks.items():
        try:
            cls = plugins.get("callback", name)
        except plugins.UnknownNameError as err:
            raise ConfigError(f"phases.p{number}.callbacks: {err}") from None
        unknown = _unknown_options(cls, options)
        if unknown:
            raise ConfigError(f"phases.p{number}.callbacks.{name}: {unknown}")
        try:
            out.append(cls(**options))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"phases.p{number}.callbacks.{name}: {err}") from None
    return out


def check_callbacks(phases) -> None:
    """Build every phase's callbacks once, so a misspelt name or option stops the run before
    any work (with the closest names) rather than when its phase starts."""
    for number in phases.numbers:
        build_callbacks(phases.get(number), number)


def _unknown_options(cls: type, options: dict[str, Any]) -> str | None:
    """``unknown option 'x'; did you mean 'y'? (options: ...)`` when ``cls`` takes no ``x``."""
    import difflib
    import inspect

    params = inspect.signature(cls).parameters
    names = list(getattr(cls, "option_names", ()))
    if not names:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            return f"unknown option {key!r}{hint} (options: {', '.join(names) or 'none'})"
    return None
