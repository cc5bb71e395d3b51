"""The curriculum engine: prepares a run, then runs the selected phases as declared in the config.

Nothing here is dataset-specific. Each phase is a :class:`~graftkit.config.PhaseConfig`: which
parameter groups train, which losses with which weights, which text, optimiser and schedule,
epochs, early stopping and the phase-specific mechanics (LoRA freeze epoch, calibrator refresh,
LARS-scaled projector learning rate, EWC). Checkpoints are written atomically after every epoch
(``RUN/checkpoints/phase{N}``) and at the end of each phase (``RUN/phase{N}``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from graftkit import plugins
from graftkit.align import EWC, InfoNCE, imq_alpha, positive_weights
from graftkit.config import ConfigError, PhaseConfig, RunConfig
from graftkit.curriculum.batches import PhaseCollator, TextTargets, make_loader
from graftkit.curriculum.checkpoint import (
    CheckpointError,
    flatten_state,
    is_complete,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
    verify_checkpoint,
)
from graftkit.curriculum.model import build_grafted, resolve_llm_path, text_embedding_layer
from graftkit.curriculum.objective import NEEDS_TEXT_TARGETS, NEEDS_TOKENS, Objective
from graftkit.curriculum.textspace import TextSpace
from graftkit.data import GraftDataset, Volume
from graftkit.labels import evaluation_extractor
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
    """Everything the phases of one run share."""

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
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.launch.mixed_precision if not cpu else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(run_dir / "tensorboard") if tensorboard else None,
    )
    if tensorboard:
        accelerator.init_trackers("graftkit")
    return accelerator


def prepare_run(cfg: RunConfig, run_dir: Path, progress: Any = None, record: bool = True) -> Run:
    """Dataset, language prior (or ``--llm``), text space and grafted model; fails before training.

    ``record=False`` (``graftkit eval``/``generate`` on an existing run) leaves the run's
    ``config.yaml`` and ``metrics.json`` as they are.
    """
    from graftkit.lm import build_or_load_prior, load_llm

    accelerator = make_accelerator(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset_cls = plugins.get("dataset", cfg.dataset)
    dataset: GraftDataset = dataset_cls(cfg.data, workdir=cache_root(cfg) / "data" / cfg.dataset)
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
    llm, tokenizer = load_llm(llm_path, dtype=cfg.model.dtype)
    prior_seconds = round(time.time() - t_prior, 1)

    textspace = _text_space(cfg, run_dir, dataset, train, valid, llm, tokenizer, accelerator)
    glm = build_grafted(
        cfg, llm, tokenizer, dataset.embedding_dim, len(dataset.class_names), textspace.dim
    )
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
    )
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


class PhaseRunner:
    """Runs one phase: optimiser, schedule, epochs, early stopping, checkpoints."""

    def __init__(self, run: Run, number: int):
        self.run, self.number = run, number
        self.cfg: PhaseConfig = run.cfg.phases.get(number)
        self.dir = run.run_dir / f"phase{number}"
        self.ckpt_dir = run.run_dir / "checkpoints" / f"phase{number}"

    # -- set-up -------------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        groups = self.run.glm.parameter_groups()
        out = []
        for name in self.cfg.trainable:
            params = [p for p in groups.get(name, {}).values() if p.requires_grad]
            if params:
                out.append({"params": params, "lr": self.cfg.lr, "group": name})
        if "infonce" in self.cfg.losses:
            out.append(
                {
                    "params": list(self.run.objective.infonce.parameters()),
                    "lr": self.cfg.lr,
                    "group": "temperature",
                }
            )
        return out

    def _optimizer(self, groups) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay
            )
        return torch.optim.AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _scheduler(self, optimizer, steps_per_epoch: int):
        """The phase's learning-rate schedule, stepped once per optimizer step (``plateau``: once
        per epoch on the early-stopping metric).

        ``cosine`` and ``constant`` are transformers' schedules; with ``warmup_steps=0`` (every
        shipped profile) they equal graftkit's former hand-written ones bit for bit. With a
        warm-up, transformers ramps ``step / warmup_steps`` (the first step at lr 0) where the
        former code ramped ``(step + 1) / warmup_steps``: the ramp starts one step later.
        """
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        c = self.cfg
        if c.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=c.early_stopping.mode,
                factor=c.plateau_factor,
                patience=c.plateau_patience,
            )
        if c.schedule == "constant":
            return get_constant_schedule_with_warmup(optimizer, c.warmup_steps)
        # a process never takes more than steps_per_epoch steps an epoch (make_loader shards
        # floor(n / world) volumes), so the cosine ends at 0 and never turns back up
        return get_cosine_schedule_with_warmup(
            optimizer, c.warmup_steps, max(1, steps_per_epoch * c.epochs)
        )

    # -- state --------------------------------------------------------------------------------
    def _tensors(self, optimizer, scheduler, best_state, ewc) -> dict[str, dict[str, torch.Tensor]]:
        opt_tensors: dict[str, torch.Tensor] = {}
        self._opt_skeleton = flatten_state("opt", optimizer.state_dict(), opt_tensors)
        extra = {"rng.torch": torch.get_rng_state()}
        extra.update(
            {f"infonce.{k}": v for k, v in self.run.objective.infonce.state_dict().items()}
        )
        tensors = {
            "model": self.run.glm.bridge_state_dict(),
            "optimizer": opt_tensors,
            "extra": extra,
        }
        if best_state is not None:
            tensors["best"] = best_state
        if ewc is not None:
            tensors["ewc"] = {
                k: v for k, v in ewc.state_dict().items() if isinstance(v, torch.Tensor)
            }
        return tensors

    def _save_epoch(self, epoch, optimizer, scheduler, best_state, best, bad_epochs, ewc) -> None:
        if not self.run.main:
            return
        tensors = self._tensors(optimizer, scheduler, best_state, ewc)
        state = {
            "phase": self.number,
            "epoch": epoch,
            "best": best,
            "bad_epochs": bad_epochs,
            "optimizer": self._opt_skeleton,
            "scheduler": scheduler.state_dict(),
            "rng_python": list(random.getstate()[1]),
            "lora_frozen": self._lora_frozen,
        }
        save_checkpoint(self.ckpt_dir / "last", tensors, state)

    def _restore_epoch(
        self, optimizer, scheduler, ewc
    ) -> tuple[int, float | None, int, dict | None]:
        groups, state = load_checkpoint(self.ckpt_dir / "last")
        self.run.glm.load_bridge_state_dict(groups["model"])
        optimizer.load_state_dict(unflatten_state(state["optimizer"], groups["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        self.run.objective.infonce.load_state_dict(
            {
                k.removeprefix("infonce."): v
                for k, v in groups["extra"].items()
                if k.startswith("infonce.")
            }
        )
        torch.set_rng_state(groups["extra"]["rng.torch"])
        if ewc is not None and "ewc" in groups:
            ewc.load_state_dict(groups["ewc"])
        if state.get("lora_frozen"):
            self._freeze_lora()
        return state["epoch"], state["best"], state["bad_epochs"], groups.get("best")

    def _freeze_lora(self) -> None:
        for p in self.run.glm.parameter_groups().get("lora", {}).values():
            p.requires_grad_(False)
        self._lora_frozen = True

    # -- epochs -------------------------------------------------------------------------------
    def _loader(self, split: str, epoch: int, shuffle: bool):
        run = self.run
        needs_tokens = bool(NEEDS_TOKENS & set(self.cfg.losses))
        volumes = run.train if split == "train" else run.valid
        collator = PhaseCollator(
            run.dataset,
            volumes,
            run.targets[split] if (NEEDS_TEXT_TARGETS & set(self.cfg.losses)) else None,
            run.tokenizer if needs_tokens else None,
            self.cfg.text,
            run.glm.num_visual_tokens,
            run.cfg.seed,
            max_length=run.cfg.model.prior.max_length if run.cfg.model.llm is None else None,
            finding_weight=self.cfg.finding_weight,
        )
        acc = run.accelerator
        return make_loader(
            run.dataset,
            volumes,
            collator,
            self.cfg.batch_size,
            shuffle,
            run.cfg.seed + 1000 * self.number,
            epoch,
            rank=acc.process_index if split == "train" else 0,
            world=acc.num_processes if split == "train" else 1,
            max_slices=run.cfg.data.max_slices,
            num_workers=run.cfg.data.num_workers,
            drop_last=split == "train" and acc.num_processes > 1,
        )

    def _lars(self, optimizer) -> list[tuple[dict, float]]:
        """Scale the projector learning rate by ‖w‖/‖∇w‖, clamped to the configured bounds."""
        if self.cfg.projector_lr_scale is None:
            return []
        lo, hi = self.cfg.projector_lr_scale
        restored = []
        for group in optimizer.param_groups:
            if group.get("group") != "projectors":
                continue
            w = torch.sqrt(sum((p.detach() ** 2).sum() for p in group["params"]))
            g = torch.sqrt(
                sum((p.grad.detach() ** 2).sum() for p in group["params"] if p.grad is not None)
            )
            scale = float((w / g.clamp_min(1e-12)).clamp(lo, hi)) if g > 0 else 1.0
            restored.append((group, group["lr"]))
            group["lr"] = group["lr"] * scale
        return restored

    def _train_epoch(self, model, optimizer, scheduler, epoch, ewc, progress) -> dict[str, float]:
        run = self.run
        model.train()
        loader = self._loader("train", epoch, shuffle=True)
        sums: dict[str, float] = {}
        steps = 0
        task = (
            progress.add_task(f"phase {self.number} epoch {epoch + 1}", total=len(loader), info="")
            if progress
            else None
        )
        for batch in loader:
            if batch is None:  # every volume of it failed to load (recorded in dataset.skips)
                continue
            terms = model(batch)
            loss = terms["total"]
            if ewc is not None and self.cfg.ewc_lambda > 0:
                terms["ewc"] = ewc.penalty(dict(run.glm.parameter_groups()["lora"]))
                loss = loss + terms["ewc"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"phase {self.number}: non-finite loss {float(loss)} at epoch {epoch + 1}"
                )
            run.accelerator.backward(loss)
            if self.cfg.grad_clip:
                params = [
                    p for g in optimizer.param_groups for p in g["params"] if p.grad is not None
                ]
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            restore = self._lars(optimizer)
            optimizer.step()
            for group, lr in restore:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
            if progress:
                progress.update(task, advance=1, info=f"loss {float(loss.detach()):.4f}")
        if progress:
            progress.remove_task(task)
        means = {k: v / max(1, steps) for k, v in sums.items()}
        reduced = run.accelerator.reduce(
            torch.tensor([means.get(k, 0.0) for k in sorted(means)]), "mean"
        )
        return {
            f"train_{k}": float(v) for k, v in zip(sorted(means), reduced.tolist(), strict=True)
        }

    @torch.inference_mode()
    def _valid_loss(self) -> dict[str, float]:
        run = self.run
        run.objective.eval()
        sums, n = {}, 0
        for batch in self._loader("valid", 0, shuffle=False):
            if batch is None:
                continue
            terms = run.objective(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * batch["labels"].shape[0]
            n += batch["labels"].shape[0]
        return {f"valid_{k}": v / max(1, n) for k, v in sums.items()}

    def _generation_monitor(self, epoch: int) -> dict[str, float]:
        """Generation F1 on a fixed validation subset with real and zeroed tokens (collapse monitor)."""
        from graftkit.eval.generation import (
            ablate,
            generate_reports,
            generation_scores,
            generation_settings,
            visual_tokens,
        )

        run = self.run
        subset = run.valid[: run.cfg.eval.monitor_subset]
        tokens = visual_tokens(
            run.glm, run.dataset, subset, run.cfg.eval.batch_size, run.cfg.data.max_slices
        )
        gen = generation_settings(run.cfg.eval.generation, greedy=True)
        extractor = _extractor(run)
        out = {}
        for mode in ("real", "zero"):
            texts = generate_reports(
                run.glm,
                run.tokenizer,
                run.dataset.prompt,
                ablate(tokens, mode),
                gen,
                run.cfg.eval.batch_size,
            )
            out[f"gen_f1_{mode}"] = generation_scores(
                extractor, texts, subset, run.dataset.class_names
            )["macro_f1"]
        out["gen_f1"] = out["gen_f1_real"]
        return out

    def run_phase(self, resume: bool, progress: Any = None) -> dict[str, Any]:
        run, c = self.run, self.cfg
        acc = run.accelerator
        run.objective.set_losses(c.losses)
        run.glm.set_trainable(c.trainable)
        self._lora_frozen = False
        for p in run.objective.infonce.parameters():
            p.requires_grad_("infonce" in c.losses)
        ewc = None
        if c.ewc_lambda > 0:
            lora = dict(run.glm.parameter_groups()["lora"])
            ewc = EWC(lora, lam=c.ewc_lambda)
            ewc.snapshot()
        groups = self._param_groups()
        if not groups:
            raise ConfigError(
                f"phase {self.number}: no trainable parameters in groups {c.trainable}"
            )
        optimizer = self._optimizer(groups)
        steps_per_epoch = max(1, math.ceil(len(run.train) / acc.num_processes / c.batch_size))
        scheduler = self._scheduler(optimizer, steps_per_epoch)
        model = acc.prepare_model(run.objective) if acc.num_processes > 1 else run.objective

        start, best, bad_epochs, best_state = 0, None, 0, None
        if resume and is_complete(self.ckpt_dir / "last"):
            try:
                last_epoch, best, bad_epochs, best_state = self._restore_epoch(
                    optimizer, scheduler, ewc
                )
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
                # checksums pass but the content does not fit (a forged or foreign checkpoint)
                raise CheckpointError(
                    f"checkpoint {self.ckpt_dir / 'last'} does not fit this run "
                    f"({type(err).__name__}: {err}); refusing to resume from it"
                ) from None
            start = last_epoch + 1
            echo(acc, f"phase {self.number}: resumed after epoch {start}")
        elif resume and (self.ckpt_dir / "last").exists():
            raise CheckpointError(
                f"{self.ckpt_dir / 'last'} is incomplete or corrupted; refusing to resume from it"
            )

        echo(
            acc,
            f"phase {self.number} ({c.name}): trains {c.trainable}; losses {c.losses}; text {c.text}",
        )
        if "infonce" in c.losses:
            echo(
                acc,
                f"phase {self.number}: effective contrastive batch {c.batch_size * acc.num_processes} "
                f"({acc.num_processes} process(es) x {c.batch_size})",
            )
        mode = c.early_stopping.mode
        stopped_early = False
        for epoch in range(start, c.epochs):
            t0 = time.time()
            torch.manual_seed(run.cfg.seed * 7919 + self.number * 101 + epoch)
            if (
                c.lora_freeze_epoch is not None
                and epoch >= c.lora_freeze_epoch
                and not self._lora_frozen
            ):
                self._freeze_lora()
                echo(acc, f"phase {self.number}: LoRA frozen from epoch {epoch + 1}")
            if c.recalibrate_every and epoch % c.recalibrate_every == 0:
                self._recalibrate()
            row = {
                "phase": self.number,
                "epoch": epoch + 1,  # 1-based, as printed
                **self._train_epoch(model, optimizer, scheduler, epoch, ewc, progress),
            }
            row.update(self._valid_loss())
            if c.monitor_collapse or c.early_stopping.metric.startswith("gen_f1"):
                row.update(self._generation_monitor(epoch))
                self._collapse(row)
            name = "valid_total" if c.early_stopping.metric == "loss" else c.early_stopping.metric
            metric = row.get(name, row.get(f"valid_{name}"))
            if metric is None:
                raise ConfigError(
                    f"phase {self.number}: early-stopping metric {c.early_stopping.metric!r} not in {sorted(row)}"
                )
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metric)
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = round(time.time() - t0, 2)
            improved = best is None or (metric > best if mode == "max" else metric < best)
            if improved:
                best, bad_epochs = metric, 0
                best_state = {k: v.detach().clone() for k, v in run.glm.bridge_state_dict().items()}
            else:
                bad_epochs += 1
            row["best"] = best
            run.history(row)
            echo(acc, _format_row(row))
            stop = c.early_stopping.patience is not None and bad_epochs >= c.early_stopping.patience
            self._save_epoch(epoch, optimizer, scheduler, best_state, best, bad_epochs, ewc)
            acc.wait_for_everyone()
            if stop and epoch + 1 < c.epochs:
                echo(
                    acc,
                    f"phase {self.number}: stopped early after epoch {epoch + 1} of {c.epochs} "
                    f"(no {c.early_stopping.metric} improvement for {bad_epochs} epochs; "
                    f"best {best:.4f})",
                )
                stopped_early = True
                break
        if best_state is not None:
            run.glm.load_bridge_state_dict(best_state)
        self.save_final(best, ewc)
        return {"best": best, "metric": c.early_stopping.metric, "stopped_early": stopped_early}

    def _recalibrate(self) -> None:
        """Periodic ``NormCalibrator.recalibrate()`` on a fixed sample of training volumes."""
        from graftkit.data import VolumeDataset, collate_volumes

        run = self.run
        data = VolumeDataset(
            run.dataset,
            run.train[: min(64, len(run.train))],
            run.cfg.data.max_slices,
            skip_unloadable=True,
        )
        batch = collate_volumes([data[i] for i in range(len(data))])
        was_training = run.glm.training
        run.glm.eval()
        run.glm.recalibrate(batch["slices"], batch["z_mm"], batch["mask"])
        run.glm.train(was_training)

    def _collapse(self, row: dict[str, Any]) -> None:
        from graftkit.eval.collapse import CollapseMonitor

        run = self.run
        monitor = getattr(run, "_collapse_monitor", None)
        if monitor is None:
            monitor = CollapseMonitor(reliance_floor=run.cfg.eval.reliance_floor)
            path = run.run_dir / "collapse.jsonl"
            if path.is_file():
                monitor = CollapseMonitor.from_jsonl(
                    path, reliance_floor=run.cfg.eval.reliance_floor
                )
            run._collapse_monitor = monitor
        for warning in monitor.update(
            self.number, row["epoch"], row["gen_f1_real"], row["gen_f1_zero"]
        ):
            echo(run.accelerator, f"[collapse monitor] {warning}")
        if run.main:
            monitor.to_jsonl(run.run_dir / "collapse.jsonl")

    def save_final(self, best, ewc) -> None:
        run = self.run
        if run.main:
            tensors = {
                "model": run.glm.bridge_state_dict(),
                "extra": dict(run.objective.infonce.state_dict()),
            }
            if ewc is not None:
                tensors["ewc"] = {
                    k: v for k, v in ewc.state_dict().items() if isinstance(v, torch.Tensor)
                }
            state = {
                "phase": self.number,
                "best": best,
                "architecture": architecture_signature(run),
            }
            save_checkpoint(
                self.dir,
                tensors,
                state,
                writer=lambda tmp: run.glm.save_pretrained(tmp / "pretrained"),
            )
        run.accelerator.wait_for_everyone()


def _format_row(row: dict[str, Any]) -> str:
    keys = [k for k in row if k not in ("phase", "epoch")]
    parts = [f"{k}={row[k]:.4f}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys]
    return f"phase {row['phase']} epoch {row['epoch']}: " + " ".join(parts)


def _extractor(run: Run):
    name = run.cfg.eval.extractor or run.dataset.default_extractor
    cache = getattr(run, "_extractor_cache", None)
    if cache is None or cache[0] != name:
        run._extractor_cache = (name, evaluation_extractor(run.cfg.eval, run.dataset))
    return run._extractor_cache[1]


def architecture_signature(run: Run) -> str:
    """Hash of every bridge tensor name and shape: a checkpoint from another architecture differs."""
    shapes = sorted((k, tuple(v.shape)) for k, v in run.glm.bridge_state_dict().items())
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def load_into(run: Run, checkpoint: Path, groups: list[str] | None = None) -> list[str]:
    """Load a phase checkpoint's bridge tensors (optionally only some groups) into the run's model."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "phase3").is_dir() and groups is not None:
        checkpoint = checkpoint / "phase3"
    tensors, _ = load_checkpoint(checkpoint)
    try:
        return run.glm.load_bridge_state_dict(tensors["model"], groups=groups)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model (different architecture?): {err}"
        ) from None


def init_compressor(run: Run, volumes: int = 64) -> None:
    """Fit the compressor's input standardisation and SVD-initialise its region queries from real
    training slices (DESIGN.md, "Zone-constrained cross-attention"), if the compressor supports it."""
    from graftkit.data import VolumeDataset

    init = getattr(run.glm.compressor, "init_queries_from", None)
    if init is None:
        return
    data = VolumeDataset(
        run.dataset, run.train[:volumes], run.cfg.data.max_slices, skip_unloadable=True
    )
    items = [item for item in (data[i] for i in range(len(data))) if item is not None]
    init(torch.cat([item["slices"] for item in items]))
    echo(
        run.accelerator,
        f"compressor: input standardisation and region queries initialised from {len(items)} training volumes",
    )


def run_curriculum(
    run: Run,
    phases: list[int],
    init_from: Path | None = None,
    warm_bridge: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the selected phases in order, each from the previous phase's checkpoint."""
    first = phases[0]
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
    if done:
        load_into(run, run.run_dir / f"phase{done[-1]}")
        echo(run.accelerator, f"resume: phases {done} already complete")
    elif init_from is not None:
        loaded = load_into(run, init_from)
        echo(run.accelerator, f"init-from {init_from}: loaded {len(loaded)} tensors")
    elif first > 1 and is_complete(run.run_dir / f"phase{first - 1}"):
        load_into(run, run.run_dir / f"phase{first - 1}")
    elif first > 1:
        echo(
            run.accelerator,
            f"warning: phase {first} starts from a fresh bridge (no phase{first - 1} checkpoint, no --init-from)",
        )
    fresh = (
        not done
        and init_from is None
        and not (run.run_dir / "checkpoints" / "phase1" / "last").exists()
    )
    if first == 1 and fresh:
        init_compressor(run)
    results = {}
    with progress_bar(disable=is_quiet() or not run.main) as progress:
        for n in todo:
            if (
                n == 3
                and warm_bridge is not None
                and not (resume and (run.run_dir / "checkpoints" / "phase3" / "last").exists())
            ):
                loaded = load_into(run, warm_bridge, groups=["projectors", "xattn", "lora"])
                inv = run.glm.inventory()
                echo(
                    run.accelerator,
                    f"warm bridge from {warm_bridge}: loaded {len(loaded)} tensors "
                    f"(projectors {inv['projectors']['tensors']}, xattn {inv['xattn']['tensors']}, lora {inv['lora']['tensors']})",
                )
            t0 = time.time()
            result = PhaseRunner(run, n).run_phase(resume=resume, progress=progress)
            result["seconds"] = round(time.time() - t0, 1)
            results[str(n)] = result
            run.update_metrics({"phases": {str(n): result}})
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
