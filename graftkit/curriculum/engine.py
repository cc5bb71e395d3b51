"""The curriculum engine: prepares a run, then runs the selected phases as declared in the config.

Nothing here is dataset-specific or phase-numbered. Each phase is a
:class:`~graftkit.config.PhaseConfig`: which parameter groups train, which losses with which
weights, which text, optimiser and schedule, epochs, early stopping, and its mechanics as named
callbacks (:mod:`graftkit.curriculum.callbacks`: LoRA freeze, calibrator refresh, LARS-scaled
projector rate, EWC, warm bridge, compressor init, collapse monitor).

Placement is accelerate's, for one process as for eight: the model, optimiser and schedule go
through ``accelerator.prepare``, batches are sent to ``accelerator.device``, every step runs
under ``accelerator.autocast()``, loss sums stay on the device until the epoch's reduction. The
frozen LLM is loaded in ``model.dtype`` directly on its device; under mixed precision the bridge
is kept in float32 (docs/distributed.md). Checkpoints are written atomically after every epoch
(``RUN/checkpoints/phase{N}/last``, one unit with every callback's state) and at the end of each
phase (``RUN/phase{N}``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, send_to_device

from graftkit import plugins
from graftkit.align import InfoNCE, imq_alpha, positive_weights
from graftkit.checkpoint import (
    CheckpointError,
    flatten_state,
    full_tensors,
    is_complete,
    load_checkpoint,
    recover_checkpoint,
    save_checkpoint,
    shard_optimizer_state,
    unflatten_state,
    verify_checkpoint,
)
from graftkit.config import PARAMETER_GROUPS, ConfigError, PhaseConfig, RunConfig
from graftkit.curriculum import fsdp
from graftkit.curriculum.batches import PhaseCollator, TextTargets, loaded, make_loader
from graftkit.curriculum.callbacks import (
    Callback,
    EarlyStopping,
    PhaseContext,
    build_callbacks,
    check_callbacks,
)
from graftkit.curriculum.model import build_grafted, resolve_llm_path, text_embedding_layer
from graftkit.curriculum.objective import NEEDS_TEXT_TARGETS, NEEDS_TOKENS, Objective
from graftkit.curriculum.textspace import TextSpace
from graftkit.data import GraftDataset, Volume
from graftkit.progress import is_quiet, progress_bar

log = logging.getLogger("graftkit")


def cache_root(cfg: RunConfig) -> Path:
    root = cfg.data.cache_dir or Path(
        os.environ.get("GRAFTKIT_CACHE", Path.home() / ".cache" / "graftkit")
    )
    return Path(root).expanduser()


def echo(accelerator: Accelerator, message: str) -> None:
    if accelerator.is_main_process and not is_quiet():
        print(message, flush=True)


@dataclass
class Run:
    """Everything the phases of one run share (built by :func:`prepare_run`; nothing is added to
    it later: phase state lives in the phase's callbacks)."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Accelerator
    dataset: GraftDataset
    train: list[Volume]
    valid: list[Volume]
    glm: Any
    tokenizer: Any
    textspace: TextSpace
    objective: Objective
    targets: dict[str, TextTargets]
    llm_path: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def history(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics to ``RUN/history.jsonl`` (and TensorBoard when installed)."""
        if self.main:
            with (self.run_dir / "history.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.accelerator.trackers:
            numbers = {
                f"phase{row['phase']}/{k}": v for k, v in row.items() if isinstance(v, int | float)
            }
            self.accelerator.log(numbers, step=int(row["phase"]) * 1000 + int(row["epoch"]))

    def read_metrics(self) -> dict[str, Any]:
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def update_metrics(self, update: dict[str, Any]) -> None:
        if not self.main:
            return
        metrics = self.read_metrics()
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(metrics.get(key), dict):
                metrics[key].update(value)
            else:
                metrics[key] = value
        from graftkit.io import atomic_write_text

        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))


def make_accelerator(cfg: RunConfig, run_dir: Path | None = None) -> Accelerator:
    """An ``Accelerator`` for the run's launch config; TensorBoard tracking when it is installed."""
    import importlib.util

    cpu = (
        cfg.launch.use_cpu
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU") == "true"
    )
    tensorboard = run_dir is not None and importlib.util.find_spec("tensorboard") is not None
    plugin = fsdp.fsdp_plugin(cfg.launch) if cfg.launch.distributed_type == "FSDP" else None
    accelerator = Accelerator(
        cpu=cpu,
        fsdp_plugin=plugin,
        mixed_precision=cfg.launch.mixed_precision if not cpu else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # graftkit's schedules count this process's steps (make_loader shards the volumes);
        # accelerate would otherwise step them once per process per optimizer step
        step_scheduler_with_optimizer=False,
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(run_dir / "tensorboard") if tensorboard else None,
    )
    if plugin is not None:
        fsdp.enable_on_cpu(accelerator, plugin)
    if tensorboard:
        accelerator.init_trackers("graftkit")
    return accelerator


@contextlib.contextmanager
def warnings_echoed_once(dataset: GraftDataset) -> Iterator[None]:
    """Hold back the Python warnings whose text the dataset also records in
    ``dataset.warnings``: the run echoes those as ``data: warning: ...`` (and keeps them in
    metrics.json), and a plugin that also raises them for library users would print each twice.
    Any other warning is raised again as it was."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        if str(w.message) not in dataset.warnings:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def prepare_run(cfg: RunConfig, run_dir: Path, progress: Any = None, record: bool = True) -> Run:
    """Dataset, language prior (or ``--llm``), text space and grafted model; fails before training.

    ``record=False`` (``graftkit eval``/``generate`` on an existing run) leaves the run's
    ``config.yaml`` and ``metrics.json`` as they are.
    """
    from graftkit.lm import build_or_load_prior, load_llm

    check_callbacks(cfg.phases)
    accelerator = make_accelerator(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset_cls = plugins.get("dataset", cfg.dataset)
    dataset: GraftDataset = dataset_cls(cfg.data, workdir=cache_root(cfg) / "data" / cfg.dataset)
    with warnings_echoed_once(dataset):
        if accelerator.is_main_process:
            dataset.prepare(progress=progress)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            dataset.prepare(progress=None)
        train, valid = (dataset.records(split) for split in dataset.splits)
    skips = dataset.skips.summary()
    if not train:
        raise ConfigError(
            f"dataset {cfg.dataset!r} has zero usable training samples "
            f"({skips['skipped']} skipped: {skips['by_reason']}); nothing to train on"
        )
    if not valid:
        raise ConfigError(f"dataset {cfg.dataset!r} has zero usable {dataset.splits[1]} samples")

    llm_path = resolve_llm_path(cfg.model.llm)
    t_prior = time.time()
    if llm_path is None:
        cache = cache_root(cfg) / "prior"
        if accelerator.is_main_process:
            llm_path = build_or_load_prior(
                dataset.corpus(cfg.model.prior.corpus), cfg.model.prior, cache, progress=progress
            )
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            llm_path = build_or_load_prior(
                dataset.corpus(cfg.model.prior.corpus), cfg.model.prior, cache
            )
    llm, tokenizer = load_llm(llm_path, dtype=cfg.model.dtype, device=accelerator.device)
    prior_seconds = round(time.time() - t_prior, 1)

    textspace = _text_space(cfg, run_dir, dataset, train, valid, llm, tokenizer, accelerator)
    glm = build_grafted(
        cfg, llm, tokenizer, dataset.embedding_dim, len(dataset.class_names), textspace.dim
    )
    if accelerator.mixed_precision != "no":
        bridge_to_float32(glm)
    labels = np.stack([v.labels for v in train])
    constants = cfg.objective
    objective = Objective(
        glm,
        InfoNCE(init_temperature=constants.infonce_init_temperature),
        torch.as_tensor(
            positive_weights(
                torch.as_tensor(labels, dtype=torch.float32), max_weight=constants.pos_weight_cap
            )
        ),
        imq_alpha(gamma=constants.mmd_gamma, dim=textspace.dim),
        focal_gamma=constants.focal_gamma,
    ).to(accelerator.device)
    targets = {
        "train": TextTargets(dataset, train, textspace),
        "valid": TextTargets(dataset, valid, textspace),
    }
    run = Run(
        cfg,
        run_dir,
        accelerator,
        dataset,
        train,
        valid,
        glm,
        tokenizer,
        textspace,
        objective,
        targets,
        llm_path,
    )
    run.summary = {
        "data": {
            "train": len(train),
            "valid": len(valid),
            **skips,
            "warnings": list(dataset.warnings),
        },
        "llm": str(llm_path),
        "textspace": textspace.stats,
        "inventory": glm.inventory(),
    }
    if run.main and record:
        cfg.save(run_dir / "config.yaml")
        run.update_metrics(
            {
                "data": run.summary["data"],
                "textspace": textspace.stats,
                "timing": {"prior_seconds": prior_seconds},
            }
        )
        oracle = dataset.oracle()
        if oracle is not None:
            run.update_metrics({"oracle": oracle})
        prevalence = labels.mean(0)
        run.update_metrics(
            {"prevalence": dict(zip(dataset.class_names, map(float, prevalence), strict=True))}
        )
    if skips["skipped"]:
        echo(
            accelerator,
            f"data: skipped {skips['skipped']} volume(s): {skips['by_reason']} (see metrics.json data.items)",
        )
    for warning in dataset.warnings:
        echo(accelerator, f"data: warning: {warning}")
    return run


def bridge_to_float32(glm) -> None:
    """Keep the bridge's trained weights in float32 under mixed precision: AdamW on pure-bf16
    weights loses every update below bf16's resolution (docs/distributed.md); autocast runs the
    matmuls in bf16. LoRA is peft's float32 already."""
    for group in PARAMETER_GROUPS:
        if group != "lora":
            getattr(glm, group).float()


def _text_space(cfg, run_dir, dataset, train, valid, llm, tokenizer, accelerator) -> TextSpace:
    """Whitened text space, fitted once per run and saved in ``RUN/textspace`` (resume reuses it)."""
    directory = run_dir / "textspace"
    if (directory / "texts.json").is_file():
        return TextSpace.load(directory)
    texts: list[str] = []
    groups: list[int] = []  # condition id of each text; the normal text is its own group
    for volume in train:
        for c, text in dataset.condition_texts(volume):
            texts.append(text)
            groups.append(c)
    for c in range(len(dataset.class_names)):
        texts.append(dataset.class_text(c))
        groups.append(c)
    texts.append(dataset.normal_text)
    groups.append(len(dataset.class_names))
    layer = text_embedding_layer(llm, cfg.model.text_embedding_layer)
    extra = [text for volume in valid for _, text in dataset.condition_texts(volume)]
    space = TextSpace.build(
        llm, tokenizer, texts, layer, cfg.bridge.whitening_components, groups, extra
    )
    if accelerator.is_main_process:
        space.save(directory)
    return space


# -- one phase ---------------------------------------------------------------------------------
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
            {
                "params": list(objective.infonce.parameters()),
                "lr": phase.lr,
                "group": "temperature",
            }
        )
    return out


def build_optimizer(phase: PhaseConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=0.9, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=phase.weight_decay)


def build_scheduler(phase: PhaseConfig, optimizer, steps_per_epoch: int):
    """The phase's learning-rate schedule, stepped once per optimizer step (``plateau``: once
    per epoch on the early-stopping metric).

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
        optimizer, phase.warmup_steps, max(1, steps_per_epoch * phase.epochs)
    )


def _loader(ctx: PhaseContext, split: str, epoch: int, shuffle: bool):
    """This process's loader of ``split``: training volumes are sharded across processes, every
    process validates all validation volumes (so the monitor and early stopping agree)."""
    run, phase = ctx.run, ctx.config
    needs_tokens = bool(NEEDS_TOKENS & set(phase.losses))
    volumes = run.train if split == "train" else run.valid
    collator = PhaseCollator(
        run.dataset,
        volumes,
        run.targets[split] if (NEEDS_TEXT_TARGETS & set(phase.losses)) else None,
        run.tokenizer if needs_tokens else None,
        phase.text,
        run.glm.num_visual_tokens,
        run.cfg.seed,
        max_length=run.cfg.model.prior.max_length if run.cfg.model.llm is None else None,
        finding_weight=phase.finding_weight,
    )
    acc = run.accelerator
    return make_loader(
        run.dataset,
        volumes,
        collator,
        phase.batch_size,
        shuffle,
        run.cfg.seed + 1000 * ctx.number,
        epoch,
        rank=acc.process_index if split == "train" else 0,
        world=acc.num_processes if split == "train" else 1,
        max_slices=run.cfg.data.max_slices,
        num_workers=run.cfg.data.num_workers,
        drop_last=split == "train" and acc.num_processes > 1,
    )


def train_step(
    ctx: PhaseContext, model, scheduler, callbacks: list[Callback], batch: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step of the phase: batch to the device; under autocast the objective's loss
    plus the callbacks' terms; backward; clip; the callbacks around ``optimizer.step()``; the
    schedule. Returns the step's terms and loss (still on the device)."""
    acc, phase, optimizer = ctx.run.accelerator, ctx.config, ctx.optimizer
    batch = send_to_device(batch, acc.device)
    with acc.autocast():
        terms = model(batch)
        loss = terms["total"]
        for cb in callbacks:
            for name, term in cb.loss_terms(ctx).items():
                terms[name] = term
                loss = loss + term
    if not torch.isfinite(loss):
        raise FloatingPointError(f"phase {ctx.number}: non-finite loss {float(loss)}")
    acc.backward(loss)
    fsdp.sync_replicated_grads(acc, model)
    if phase.grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        fsdp.clip_grad_norm_(params, phase.grad_clip)
    for cb in callbacks:
        cb.on_before_optimizer_step(ctx)
    optimizer.step()
    for cb in callbacks:
        cb.on_after_optimizer_step(ctx)
    optimizer.zero_grad(set_to_none=True)
    if phase.schedule != "plateau":
        scheduler.step()
    return terms, loss


def any_process_lacks(acc: Accelerator, batch: dict[str, Any] | None) -> bool:
    """Whether some process has no batch for this step (every volume of it failed to load,
    recorded in ``dataset.skips``). A step's backward all-reduces the gradients across
    processes (DDP), so one process cannot skip a step alone: the others would wait for it
    forever. One process needs no collective, and pays for none."""
    if acc.num_processes == 1:
        return batch is None
    lacks = torch.tensor([float(batch is None)], device=acc.device)
    return bool(acc.reduce(lacks, "max").item())


def train_epoch(ctx: PhaseContext, model, scheduler, callbacks, epoch: int, progress=None):
    """One pass over this process's shard (:func:`train_step` per batch). Returns the per-term
    means, averaged over processes.

    A step for which any process lacks a batch is skipped by every process (the same number of
    steps everywhere), with a line when that left out other processes' volumes."""
    acc = ctx.run.accelerator
    model.train()
    loader = _loader(ctx, "train", epoch, shuffle=True)
    sums: dict[str, torch.Tensor] = {}  # float64 on the device: no host sync per step
    steps = skipped = 0
    task = None
    if progress:
        task = progress.add_task(
            f"phase {ctx.number} epoch {epoch + 1}", total=len(loader), info=""
        )
    for batch in loader:
        batch = loaded(ctx.run.dataset, batch)
        if any_process_lacks(acc, batch):
            skipped += 1
            continue
        try:
            terms, loss = train_step(ctx, model, scheduler, callbacks, batch)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err} at epoch {epoch + 1}") from None
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach().double()
        steps += 1
        if progress:
            progress.update(task, advance=1, info=f"loss {float(loss.detach()):.4f}")
    if progress:
        progress.remove_task(task)
    if skipped and acc.num_processes > 1:
        echo(
            acc,
            f"phase {ctx.number} epoch {epoch + 1}: {skipped} step(s) skipped by every process: "
            "a process's batch failed to load (see metrics.json data.items)",
        )
    names = sorted(sums)
    means = torch.stack([sums[k] / max(1, steps) for k in names]) if names else torch.zeros(0)
    reduced = acc.reduce(means.float().to(acc.device), "mean")
    return {f"train_{k}": float(v) for k, v in zip(names, reduced.tolist(), strict=True)}


@torch.no_grad()
def validate(ctx: PhaseContext, model) -> dict[str, float]:
    """Per-sample mean of each loss term over the validation volumes, with the prepared model.

    Every process computes it on all validation volumes with its own batch as the InfoNCE
    negatives (the temperature module gathers only in training), so the value is the
    one-process value whatever the number of processes.
    """
    run = ctx.run
    acc = run.accelerator
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in _loader(ctx, "valid", 0, shuffle=False):
        batch = loaded(run.dataset, batch)
        if batch is None:
            continue
        batch = send_to_device(batch, acc.device)
        size = batch["labels"].shape[0]
        with acc.autocast():
            terms = model(batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach().double() * size
        n += size
    fsdp.resharded(model)  # FSDP keeps the root unit gathered after a no-grad forward
    return {f"valid_{k}": float(v / max(1, n)) for k, v in sums.items()}


class PhaseCheckpoint:
    """The resume state of a phase as one unit (``RUN/checkpoints/phase{N}/last``): bridge,
    optimiser, scheduler, RNG, the InfoNCE temperature, early stopping and every callback."""

    def __init__(self, ctx: PhaseContext, scheduler, callbacks: list[Callback], stopper):
        self.ctx, self.scheduler, self.callbacks, self.stopper = ctx, scheduler, callbacks, stopper
        self.path = ctx.run.run_dir / "checkpoints" / f"phase{ctx.number}" / "last"

    def _stateful(self) -> dict[str, Callback]:
        return {cb.name: cb for cb in [*self.callbacks, self.stopper]}

    def save(self, epoch: int) -> None:
        run = self.ctx.run
        if not (run.main or run.accelerator.is_fsdp2):
            return
        # under FSDP every process takes part in gathering the shards; the main process writes
        model = full_tensors(run.glm.bridge_state_dict())
        optimizer = full_tensors(self.ctx.optimizer.state_dict())
        callbacks = full_tensors({k: cb.state_dict() for k, cb in self._stateful().items()})
        if not run.main:
            return
        opt_tensors: dict[str, torch.Tensor] = {}
        cb_tensors: dict[str, torch.Tensor] = {}
        extra = {"rng.torch": torch.get_rng_state()}
        extra.update({f"infonce.{k}": v for k, v in run.objective.infonce.state_dict().items()})
        tensors = {
            "model": model,
            "optimizer": opt_tensors,
            "extra": extra,
            "callbacks": cb_tensors,
        }
        state = {
            "phase": self.ctx.number,
            "epoch": epoch,
            "optimizer": flatten_state("opt", optimizer, opt_tensors),
            "scheduler": self.scheduler.state_dict(),
            "rng_python": list(random.getstate()[1]),
            "callbacks": flatten_state("cb", callbacks, cb_tensors),
        }
        save_checkpoint(self.path, tensors, state)

    def restore(self) -> int:
        """Load the last epoch checkpoint; returns the epoch to continue from."""
        run = self.ctx.run
        try:
            groups, state = load_checkpoint(self.path)
            run.glm.load_bridge_state_dict(groups["model"])
            optimizer = unflatten_state(state["optimizer"], groups["optimizer"])
            self.ctx.optimizer.load_state_dict(shard_optimizer_state(optimizer, self.ctx.optimizer))
            self.scheduler.load_state_dict(state["scheduler"])
            run.objective.infonce.load_state_dict(
                {
                    k.removeprefix("infonce."): v
                    for k, v in groups["extra"].items()
                    if k.startswith("infonce.")
                }
            )
            torch.set_rng_state(groups["extra"]["rng.torch"])
            saved = unflatten_state(state["callbacks"], groups.get("callbacks", {}))
            for name, cb in self._stateful().items():
                cb.load_state_dict(saved[name])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            # checksums pass but the content does not fit (a forged or foreign checkpoint)
            raise CheckpointError(
                f"checkpoint {self.path} does not fit this run "
                f"({type(err).__name__}: {err}); refusing to resume from it"
            ) from None
        return state["epoch"] + 1


def run_phase(
    run: Run,
    number: int,
    resume: bool = False,
    progress: Any = None,
    *,
    fresh_bridge: bool = False,
    warm_bridge: Path | None = None,
) -> dict[str, Any]:
    """Train phase ``number`` of ``run.cfg.phases`` from the model's current state (docs/design.md,
    "Four-phase curriculum"), then save ``RUN/phase{N}``.

    Prepare (callbacks' ``on_phase_begin``, trainable groups, optimiser and schedule through
    ``accelerator.prepare``, resume state); per epoch: train, validate, callbacks' evaluation,
    early stopping, epoch checkpoint; at the end the best epoch's bridge.
    """
    phase = run.cfg.phases.get(number)
    acc = run.accelerator
    last = run.run_dir / "checkpoints" / f"phase{number}" / "last"
    if resume and not is_complete(last) and last.exists():
        raise CheckpointError(f"{last} is incomplete or corrupted; refusing to resume from it")
    ctx = PhaseContext(
        run,
        number,
        phase,
        resumed=resume and is_complete(last),
        fresh_bridge=fresh_bridge,
        warm_bridge=warm_bridge,
    )
    callbacks = build_callbacks(phase, number)
    stopper = EarlyStopping(**phase.early_stopping.model_dump())

    run.objective.set_losses(phase.losses)
    run.glm.set_trainable(phase.trainable)
    for p in run.objective.infonce.parameters():
        p.requires_grad_("infonce" in phase.losses)
    for cb in callbacks:
        cb.on_phase_begin(ctx)
    groups = param_groups(run.objective, phase)
    if not groups:
        raise ConfigError(f"phase {number}: no trainable parameters in groups {phase.trainable}")
    optimizer = build_optimizer(phase, groups)
    steps_per_epoch = max(1, math.ceil(len(run.train) / acc.num_processes / phase.batch_size))
    scheduler = build_scheduler(phase, optimizer, steps_per_epoch)
    model, optimizer, scheduler = fsdp.prepare(acc, run.objective, optimizer, scheduler)
    ctx.optimizer = optimizer
    checkpoint = PhaseCheckpoint(ctx, scheduler, callbacks, stopper)
    start = 0
    if ctx.resumed:
        start = checkpoint.restore()
        echo(acc, f"phase {number}: resumed after epoch {start}")

    echo(
        acc,
        f"phase {number} ({phase.name}): trains {phase.trainable}; losses {phase.losses}; text {phase.text}",
    )
    if "infonce" in phase.losses:
        echo(
            acc,
            f"phase {number}: effective contrastive batch {phase.batch_size * acc.num_processes} "
            f"({acc.num_processes} process(es) x {phase.batch_size})",
        )
    stopped_early = False
    for epoch in range(start, phase.epochs):
        t0 = time.time()
        torch.manual_seed(run.cfg.seed * 7919 + number * 101 + epoch)
        with fsdp.unsharded(run.glm, model):
            for cb in callbacks:
                cb.on_epoch_begin(ctx, epoch)
        row = {
            "phase": number,
            "epoch": epoch + 1,  # 1-based, as printed
            **train_epoch(ctx, model, scheduler, callbacks, epoch, progress),
        }
        row.update(validate(ctx, model))
        with fsdp.unsharded(run.glm, model):
            for cb in callbacks:
                cb.on_evaluate(ctx, epoch, row)
        metric = stopper.value(ctx, row)
        if phase.schedule == "plateau":
            scheduler.step(metric)
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = round(time.time() - t0, 2)
        stop = stopper.update(ctx, metric)
        row["best"] = stopper.best
        run.history(row)
        echo(acc, _format_row(row))
        checkpoint.save(epoch)
        acc.wait_for_everyone()
        if stop and epoch + 1 < phase.epochs:
            echo(
                acc,
                f"phase {number}: stopped early after epoch {epoch + 1} of {phase.epochs} "
                f"(no {stopper.metric} improvement for {stopper.bad_epochs} epochs; "
                f"best {stopper.best:.4f})",
            )
            stopped_early = True
            break
    for cb in [*callbacks, stopper]:
        cb.on_phase_end(ctx)
    save_final(run, number, stopper.best, callbacks)
    if acc.device.type != "cpu":
        # drop accelerate's references to this phase's optimiser state on the accelerator (its
        # garbage collection costs ~0.4 s, which a CPU run, holding little, does not pay)
        acc.free_memory()
    return {"best": stopper.best, "metric": stopper.metric, "stopped_early": stopped_early}


def save_final(run: Run, number: int, best: float | None, callbacks: list[Callback]) -> None:
    """``RUN/phase{N}``: the phase's bridge, temperature and callbacks' tensors (the EWC
    anchor), plus a peft/transformers ``pretrained`` folder."""
    if run.main or run.accelerator.is_fsdp2:  # under FSDP every process gathers the shards
        bridge = full_tensors(run.glm.bridge_state_dict())
        kept = {cb.name: full_tensors(cb.final_tensors()) for cb in callbacks}
    if run.main:
        tensors = {"model": bridge, "extra": dict(run.objective.infonce.state_dict())}
        tensors.update({name: group for name, group in kept.items() if group})
        state = {"phase": number, "best": best, "architecture": architecture_signature(run)}
        save_checkpoint(
            run.run_dir / f"phase{number}",
            tensors,
            state,
            writer=lambda tmp: run.glm.save_pretrained(tmp / "pretrained", bridge),
        )
    run.accelerator.wait_for_everyone()


def _format_row(row: dict[str, Any]) -> str:
    keys = [k for k in row if k not in ("phase", "epoch")]
    parts = [f"{k}={row[k]:.4f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys]
    return f"phase {row['phase']} epoch {row['epoch']}: " + " ".join(parts)


def architecture_signature(run: Run) -> str:
    """Hash of every bridge tensor name and shape: a checkpoint from another architecture differs."""
    shapes = sorted((k, tuple(v.shape)) for k, v in run.glm.bridge_state_dict().items())
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def load_into(run: Run, checkpoint: Path, groups: list[str] | None = None) -> list[str]:
    """Load a phase checkpoint's bridge tensors (optionally only some groups) into the run's model."""
    checkpoint = Path(checkpoint)
    tensors, _ = load_checkpoint(checkpoint)
    try:
        return run.glm.load_bridge_state_dict(tensors["model"], groups=groups)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model (different architecture?): {err}"
        ) from None


def run_curriculum(
    run: Run,
    phases: list[int],
    init_from: Path | None = None,
    warm_bridge: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the selected phases in order, each from the previous phase's checkpoint."""
    first = phases[0]
    if resume and run.main:  # a kill inside a checkpoint overwrite: finish it
        for n in phases:
            recover_checkpoint(run.run_dir / f"phase{n}")
            recover_checkpoint(run.run_dir / "checkpoints" / f"phase{n}" / "last")
    run.accelerator.wait_for_everyone()
    done = [n for n in phases if resume and is_complete(run.run_dir / f"phase{n}")]
    todo = [n for n in phases if n not in done]
    for n in todo:
        if resume and (run.run_dir / f"phase{n}").exists():
            try:
                verify_checkpoint(run.run_dir / f"phase{n}")
            except CheckpointError as err:
                echo(
                    run.accelerator,
                    f"resume: {err}; phase {n} is run again"
                    + (
                        f" from checkpoints/phase{n}/last"
                        if is_complete(run.run_dir / "checkpoints" / f"phase{n}" / "last")
                        else ""
                    ),
                )
    loaded = True
    if done:
        load_into(run, run.run_dir / f"phase{done[-1]}")
        echo(run.accelerator, f"resume: phases {done} already complete")
    elif init_from is not None:
        names = load_into(run, init_from)
        echo(run.accelerator, f"init-from {init_from}: loaded {len(names)} tensors")
    elif first > 1 and is_complete(run.run_dir / f"phase{first - 1}"):
        load_into(run, run.run_dir / f"phase{first - 1}")
    else:
        loaded = False
        if first > 1:
            echo(
                run.accelerator,
                f"warning: phase {first} starts from a fresh bridge (no phase{first - 1} checkpoint, no --init-from)",
            )
    results = {}
    with progress_bar(disable=is_quiet() or not run.main) as progress:
        for i, n in enumerate(todo):
            in_flight = (run.run_dir / "checkpoints" / f"phase{n}" / "last").exists()
            t0 = time.time()
            result = run_phase(
                run,
                n,
                resume=resume,
                progress=progress,
                fresh_bridge=i == 0 and not loaded and not in_flight,
                warm_bridge=warm_bridge,
            )
            result["seconds"] = round(time.time() - t0, 1)
            results[str(n)] = result
            run.update_metrics({"phases": {str(n): result}})
    gather_skips(run)
    skips = run.dataset.skips.summary()
    if skips["skipped"] != run.summary.get("data", {}).get("skipped", skips["skipped"]):
        run.summary["data"].update(skips)
        run.update_metrics({"data": run.summary["data"]})
        echo(
            run.accelerator,
            f"data: {skips['skipped']} volume(s) skipped in all, some at load time: "
            f"{skips['by_reason']} (see metrics.json data.items)",
        )
    return results


def gather_skips(run: Run) -> None:
    """Add every process's skips to this process's ``dataset.skips``: a volume that fails at
    load is recorded by the process that loaded it, and the main process writes metrics.json."""
    if run.accelerator.num_processes == 1:
        return
    for entries in gather_object([run.dataset.skips.entries]):
        for entry in entries:
            run.dataset.skips.skip(*entry)
