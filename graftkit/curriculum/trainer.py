"""One phase of the curriculum: :class:`PhaseTrainer` (docs/design.md, "Four-phase curriculum").

A phase is declared data (:class:`~graftkit.config.PhaseConfig`): what trains, its losses, text,
optimiser, schedule, epochs, early stopping and its mechanics as named callbacks. The trainer
sets it up (callbacks' ``on_phase_begin``, trainable groups, optimiser and schedule through
``accelerator.prepare``, resume state), fits it (one epoch loop, the step inline) and saves it
(an atomic epoch checkpoint after every epoch, the best epoch's bridge at the end).

Placement is accelerate's, for one process as for eight: the model, optimiser and schedule go
through ``accelerator.prepare``, batches are sent to ``accelerator.device``, every step runs
under ``accelerator.autocast()``, loss sums stay on the device until the epoch's reduction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

from graftkit.checkpoint import (
    CheckpointError,
    flatten_state,
    is_complete,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from graftkit.config import ConfigError, PhaseConfig
from graftkit.curriculum import fsdp
from graftkit.curriculum.batches import PhaseCollator, loaded, make_loader
from graftkit.curriculum.callbacks import build_callbacks
from graftkit.curriculum.objective import Objective, needs_text_targets, needs_tokens
from graftkit.curriculum.run import PhaseContext, Run, echo
from graftkit.curriculum.stopping import EarlyStopper
from graftkit.distributed import clip_grad_norm_, full_tensors, shard_optimizer_state


def param_groups(objective: Objective, phase: PhaseConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups of ``phase``: each declared trainable bridge group that
    has parameters requiring a gradient, plus the InfoNCE temperature when the phase uses it."""
    groups = objective.glm.parameter_groups()
    out = []
    for name in phase.trainable:
        params = [p for p in groups.get(name, {}).values() if p.requires_grad]
        if params:
            out.append({"params": params, "lr": phase.lr, "group": name})
    if "infonce" in phase.losses:
        out.append(
            {"params": list(objective.infonce.parameters()), "lr": phase.lr, "group": "temperature"}
        )
    return out


def build_optimizer(phase: PhaseConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=0.9, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=phase.weight_decay)


def phase_epochs(phase: PhaseConfig, steps_per_epoch: int) -> int:
    """The epochs phase ``phase`` runs: ``epochs``, or with a budget of ``steps`` optimizer steps
    ``ceil(steps / steps_per_epoch)`` (the step budget does not shrink with the cohort)."""
    if phase.steps is None:
        return phase.epochs
    return max(1, math.ceil(phase.steps / steps_per_epoch))


def build_scheduler(phase: PhaseConfig, optimizer, steps_per_epoch: int):
    """The phase's learning-rate schedule: stepped once per optimizer step, or (``plateau``) once
    per epoch on the early-stopping metric (:class:`Schedule` knows which).

    ``cosine`` and ``constant`` are transformers' schedules; with ``warmup_steps=0`` (every
    shipped profile) they equal graftkit's former hand-written ones bit for bit. With a
    warm-up, transformers ramps ``step / warmup_steps`` (the first step at lr 0) where the
    former code ramped ``(step + 1) / warmup_steps``: the ramp starts one step later.
    """
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if phase.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=phase.early_stopping.mode,
            factor=phase.plateau_factor,
            patience=phase.plateau_patience,
        )
    if phase.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, phase.warmup_steps)
    # a process never takes more than steps_per_epoch steps an epoch (make_loader shards
    # floor(n / world) volumes), so the cosine ends at 0 and never turns back up
    return get_cosine_schedule_with_warmup(
        optimizer,
        phase.warmup_steps,
        max(1, steps_per_epoch * phase_epochs(phase, steps_per_epoch)),
    )


@dataclasses.dataclass
class Schedule:
    """A prepared learning-rate schedule and when it steps: after every optimizer step, or after
    every epoch on the early-stopping metric (``plateau``)."""

    scheduler: Any
    per_epoch: bool

    def after_step(self) -> None:
        if not self.per_epoch:
            self.scheduler.step()

    def after_epoch(self, metric: float) -> None:
        if self.per_epoch:
            self.scheduler.step(metric)


def any_process_lacks(acc: Accelerator, batch: dict[str, Any] | None) -> bool:
    """Whether some process has no batch for this step (every volume of it failed to load,
    recorded in ``dataset.skips``). A step's backward all-reduces the gradients across
    processes (DDP), so one process cannot skip a step alone: the others would wait for it
    forever. One process needs no collective, and pays for none."""
    if acc.num_processes == 1:
        return batch is None
    lacks = torch.tensor([float(batch is None)], device=acc.device)
    return bool(acc.reduce(lacks, "max").item())


def phase_loader(run: Run, number: int, split: str, epoch: int, shuffle: bool):
    """This process's loader of ``split`` for phase ``number``: training volumes are sharded
    across processes, every process validates all validation volumes (so the monitor and early
    stopping agree)."""
    phase = run.cfg.phases.get(number)
    volumes = run.train if split == "train" else run.valid
    collator = PhaseCollator(
        run.dataset,
        volumes,
        run.targets[split] if needs_text_targets(phase.losses) else None,
        run.tokenizer if needs_tokens(phase.losses) else None,
        phase.text,
        run.glm.num_visual_tokens,
        run.cfg.seed,
        max_length=run.cfg.model.prior.max_length if run.cfg.model.llm is None else None,
        finding_weight=phase.finding_weight,
        prompt=run.prompt,
    )
    acc = run.accelerator
    return make_loader(
        run.dataset,
        volumes,
        collator,
        phase.batch_size,
        shuffle,
        run.cfg.seed + 1000 * number,
        epoch,
        rank=acc.process_index if split == "train" else 0,
        world=acc.num_processes if split == "train" else 1,
        max_slices=run.cfg.data.max_slices,
        num_workers=run.cfg.data.num_workers,
        drop_last=split == "train" and acc.num_processes > 1,
    )


class PhaseTrainer:
    """Phase ``number`` of ``run.cfg.phases``, trained from the model's current state.

    ``resume``: continue from the phase's epoch checkpoint when it is complete;
    ``fresh_bridge``: nothing was loaded into the bridge (the compressor may be initialised from
    data); ``warm_bridge``: the invocation's ``--warm-bridge PATH``.
    """

    def __init__(
        self,
        run: Run,
        number: int,
        *,
        resume: bool = False,
        fresh_bridge: bool = False,
        warm_bridge: Path | None = None,
        progress: Any = None,
    ):
        self.run, self.number, self.phase = run, number, run.cfg.phases.get(number)
        self.acc: Accelerator = run.accelerator
        self.progress = progress
        self.checkpoint_path = run.rundir.epoch_checkpoint(number)
        last = self.checkpoint_path
        if resume and not is_complete(last) and last.exists():
            raise CheckpointError(f"{last} is incomplete or corrupted; refusing to resume from it")
        self.callbacks = build_callbacks(self.phase, number)
        self.stopper = EarlyStopper(self.phase.early_stopping)
        self.ctx = PhaseContext(
            run,
            number,
            self.phase,
            resumed=resume and is_complete(last),
            fresh_bridge=fresh_bridge,
            warm_bridge=warm_bridge,
        )
        self.start_epoch = self._setup()

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> int:
        """Losses, trainable groups, callbacks' ``on_phase_begin``, optimiser and schedule through
        ``accelerator.prepare``, then the resume state; returns the first epoch to run."""
        run, phase, number = self.run, self.phase, self.number
        run.objective.set_losses(phase.losses)
        run.glm.set_trainable(phase.trainable)
        for p in run.objective.infonce.parameters():
            p.requires_grad_("infonce" in phase.losses)
        for cb in self.callbacks:
            cb.on_phase_begin(self.ctx)
        groups = param_groups(run.objective, phase)
        if not groups:
            raise ConfigError(
                f"phase {number}: no trainable parameters in groups {phase.trainable}"
            )
        optimizer = build_optimizer(phase, groups)
        steps_per_epoch = max(
            1, math.ceil(len(run.train) / self.acc.num_processes / phase.batch_size)
        )
        scheduler = build_scheduler(phase, optimizer, steps_per_epoch)
        self.epochs = phase_epochs(phase, steps_per_epoch)
        self.model, self.optimizer, scheduler = fsdp.prepare(
            self.acc, run.objective, optimizer, scheduler
        )
        self.schedule = Schedule(scheduler, per_epoch=phase.schedule == "plateau")
        self.ctx = dataclasses.replace(self.ctx, optimizer=self.optimizer)
        start = 0
        if self.ctx.resumed:
            start = self.restore()
            echo(self.acc, f"phase {number}: resumed after epoch {start}")
        echo(
            self.acc,
            f"phase {number} ({phase.name}): trains {phase.trainable}; losses {phase.losses}; "
            f"text {phase.text}",
        )
        if "infonce" in phase.losses:
            echo(
                self.acc,
                f"phase {number}: effective contrastive batch "
                f"{phase.batch_size * self.acc.num_processes} "
                f"({self.acc.num_processes} process(es) x {phase.batch_size})",
            )
        return start

    # -- fit -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Every remaining epoch (train, validate, callbacks' evaluation, early stopping, epoch
        checkpoint), then the best epoch's bridge saved as ``RUN/phase{N}``."""
        run, number, ctx = self.run, self.number, self.ctx
        stopped_early = False
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.time()
            torch.manual_seed(run.cfg.seed * 7919 + number * 101 + epoch)
            with fsdp.unsharded(run.glm, self.model):
                for cb in self.callbacks:
                    cb.on_epoch_begin(ctx, epoch)
            row = {"phase": number, "epoch": epoch + 1, **self.train_epoch(epoch)}
            row.update(self.validate())
            with fsdp.unsharded(run.glm, self.model):
                for cb in self.callbacks:
                    cb.on_evaluate(ctx, epoch, row)
            metric = self.stopper.value(number, row)
            self.schedule.after_epoch(metric)
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["seconds"] = round(time.time() - t0, 2)
            stop = self.stopper.update(metric, run.glm)
            row["best"] = self.stopper.best
            run.history(row)
            echo(self.acc, format_row(row))
            self.save(epoch)
            self.acc.wait_for_everyone()
            if stop and epoch + 1 < self.epochs:
                echo(
                    self.acc,
                    f"phase {number}: stopped early after epoch {epoch + 1} of {self.epochs} "
                    f"(no {self.stopper.metric} improvement for {self.stopper.bad_epochs} epochs; "
                    f"best {self.stopper.best:.4f})",
                )
                stopped_early = True
                break
        for cb in self.callbacks:
            cb.on_phase_end(ctx)
        self.stopper.restore_best(run.glm)
        self.save_final()
        if self.acc.device.type != "cpu":
            # drop accelerate's references to this phase's optimiser state on the accelerator (its
            # garbage collection costs ~0.4 s, which a CPU run, holding little, does not pay)
            self.acc.free_memory()
        return {
            "best": self.stopper.best,
            "metric": self.stopper.metric,
            "stopped_early": stopped_early,
        }

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this process's shard; the per-term means, averaged over processes.

        A step for which any process lacks a batch is skipped by every process (the same number
        of steps everywhere), with a line when that left out other processes' volumes."""
        run, phase, acc, ctx = self.run, self.phase, self.acc, self.ctx
        self.model.train()
        loader = phase_loader(run, self.number, "train", epoch, shuffle=True)
        sums: dict[str, torch.Tensor] = {}  # float64 on the device: no host sync per step
        steps = skipped = 0
        task = None
        if self.progress:
            task = self.progress.add_task(
                f"phase {self.number} epoch {epoch + 1}", total=len(loader), info=""
            )
        for batch in loader:
            batch = loaded(run.dataset, batch)
            if any_process_lacks(acc, batch):
                skipped += 1
                continue
            batch = send_to_device(batch, acc.device)
            with acc.autocast():
                terms = self.model(batch)
                loss = run.objective.loss(terms)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"phase {self.number}: non-finite loss {float(loss)} at epoch {epoch + 1}"
                )
            acc.backward(loss)
            fsdp.sync_replicated_grads(acc, self.model)
            if phase.grad_clip:
                params = [
                    p
                    for g in self.optimizer.param_groups
                    for p in g["params"]
                    if p.grad is not None
                ]
                clip_grad_norm_(params, phase.grad_clip)
            for cb in self.callbacks:
                cb.on_before_optimizer_step(ctx)
            self.optimizer.step()
            for cb in self.callbacks:
                cb.on_after_optimizer_step(ctx)
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.after_step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().double()
            steps += 1
            if self.progress:
                self.progress.update(task, advance=1, info=f"loss {float(loss.detach()):.4f}")
        if self.progress:
            self.progress.remove_task(task)
        if skipped and acc.num_processes > 1:
            echo(
                acc,
                f"phase {self.number} epoch {epoch + 1}: {skipped} step(s) skipped by every "
                "process: a process's batch failed to load (see metrics.json data.items)",
            )
        names = sorted(sums)
        means = torch.stack([sums[k] / max(1, steps) for k in names]) if names else torch.zeros(0)
        reduced = acc.reduce(means.float().to(acc.device), "mean")
        return {f"train_{k}": float(v) for k, v in zip(names, reduced.tolist(), strict=True)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-sample mean of each loss term over the validation volumes.

        Every process computes it on all validation volumes with its own batch as the InfoNCE
        negatives (the temperature module gathers only in training), so the value is the
        one-process value whatever the number of processes.
        """
        run, acc = self.run, self.acc
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for batch in phase_loader(run, self.number, "valid", 0, shuffle=False):
            batch = loaded(run.dataset, batch)
            if batch is None:
                continue
            batch = send_to_device(batch, acc.device)
            size = batch["labels"].shape[0]
            with acc.autocast():
                terms = self.model(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().double() * size
            n += size
        fsdp.resharded(self.model)  # FSDP keeps the root unit gathered after a no-grad forward
        return {f"valid_{k}": float(v / max(1, n)) for k, v in sums.items()}

    # -- save / restore ------------------------------------------------------------------------
    def _stateful(self) -> dict[str, Any]:
        """What an epoch checkpoint keeps besides bridge, optimiser and schedule, by name."""
        return {**{cb.name: cb for cb in self.callbacks}, self.stopper.name: self.stopper}

    def save(self, epoch: int) -> None:
        """``RUN/checkpoints/phase{N}/last``: the phase's resume state as one unit (bridge,
        optimiser, schedule, RNG, the InfoNCE temperature, early stopping and every callback)."""
        run = self.run
        if not (run.main or self.acc.is_fsdp2):
            return
        # under FSDP every process takes part in gathering the shards; the main process writes
        model = full_tensors(run.glm.bridge_state_dict())
        optimizer = full_tensors(self.optimizer.state_dict())
        callbacks = full_tensors({k: cb.state_dict() for k, cb in self._stateful().items()})
        if not run.main:
            return
        opt_tensors: dict[str, torch.Tensor] = {}
        cb_tensors: dict[str, torch.Tensor] = {}
        extra = {"rng.torch": torch.get_rng_state()}
        extra.update({f"infonce.{k}": v for k, v in run.objective.infonce.state_dict().items()})
        state = {
            "phase": self.number,
            "epoch": epoch,
            "optimizer": flatten_state("opt", optimizer, opt_tensors),
            "scheduler": self.schedule.scheduler.state_dict(),
            "rng_python": list(random.getstate()[1]),
            "callbacks": flatten_state("cb", callbacks, cb_tensors),
        }
        tensors = {
            "model": model,
            "optimizer": opt_tensors,
            "extra": extra,
            "callbacks": cb_tensors,
        }
        save_checkpoint(self.checkpoint_path, tensors, state)

    def restore(self) -> int:
        """Load the epoch checkpoint; returns the epoch to continue from."""
        run, path = self.run, self.checkpoint_path
        try:
            groups, state = load_checkpoint(path)
            run.glm.load_bridge_state_dict(groups["model"])
            optimizer = unflatten_state(state["optimizer"], groups["optimizer"])
            self.optimizer.load_state_dict(shard_optimizer_state(optimizer, self.optimizer))
            self.schedule.scheduler.load_state_dict(state["scheduler"])
            run.objective.infonce.load_state_dict(
                {
                    k.removeprefix("infonce."): v
                    for k, v in groups["extra"].items()
                    if k.startswith("infonce.")
                }
            )
            torch.set_rng_state(groups["extra"]["rng.torch"])
            saved = unflatten_state(state["callbacks"], groups.get("callbacks", {}))
            for name, stateful in self._stateful().items():
                stateful.load_state_dict(saved[name])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            # checksums pass but the content does not fit (a forged or foreign checkpoint)
            raise CheckpointError(
                f"checkpoint {path} does not fit this run "
                f"({type(err).__name__}: {err}); refusing to resume from it"
            ) from None
        return state["epoch"] + 1

    def save_final(self) -> None:
        """``RUN/phase{N}``: the phase's bridge, temperature and callbacks' tensors (the EWC
        anchor), plus a peft/transformers ``pretrained`` folder."""
        run = self.run
        if run.main or self.acc.is_fsdp2:  # under FSDP every process gathers the shards
            bridge = full_tensors(run.glm.bridge_state_dict())
            kept = {cb.name: full_tensors(cb.final_tensors()) for cb in self.callbacks}
        if run.main:
            tensors = {"model": bridge, "extra": dict(run.objective.infonce.state_dict())}
            tensors.update({name: group for name, group in kept.items() if group})
            state = {
                "phase": self.number,
                "best": self.stopper.best,
                "architecture": architecture_signature(run.glm),
            }
            save_checkpoint(
                run.rundir.phase(self.number),
                tensors,
                state,
                writer=lambda tmp: run.glm.save_pretrained(tmp / "pretrained", bridge),
            )
        self.acc.wait_for_everyone()


def architecture_signature(glm) -> str:
    """Hash of every bridge tensor name and shape: a checkpoint of another architecture differs."""
    shapes = sorted((k, tuple(v.shape)) for k, v in glm.bridge_state_dict().items())
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def format_row(row: dict[str, Any]) -> str:
    """An epoch's row as its printed line."""
    keys = [k for k in row if k not in ("phase", "epoch")]
    parts = [f"{k}={row[k]:.4f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys]
    return f"phase {row['phase']} epoch {row['epoch']}: " + " ".join(parts)
