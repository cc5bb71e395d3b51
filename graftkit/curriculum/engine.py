"""The curriculum engine: prepares a run, then runs the selected phases as declared in the config.

Nothing here is dataset-specific or phase-numbered. :func:`prepare_run` builds what the phases
share (:class:`~graftkit.curriculum.run.Run`: dataset, language prior or ``--llm``, text space,
grafted model, objective) and fails before any training when the config cannot run (unknown
callbacks, options or losses). :func:`run_curriculum` runs the selected phases in order, each a
:class:`~graftkit.curriculum.trainer.PhaseTrainer` from the previous phase's checkpoint, and
resumes a killed run. :func:`open_run` rebuilds a finished run for ``graftkit eval`` and
``generate``.

The frozen LLM is loaded in ``model.dtype`` directly on its device; under mixed precision the
bridge is kept in float32 (docs/distributed.md). Checkpoints are written atomically after every
epoch (``RUN/checkpoints/phase{N}/last``, one unit with every callback's state) and at the end
of each phase (``RUN/phase{N}``); :class:`~graftkit.rundir.RunDir` owns those paths.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object

from graftkit import plugins
from graftkit.align import InfoNCE, imq_alpha, positive_weights
from graftkit.checkpoint import CheckpointError, is_complete, recover_checkpoint, verify_checkpoint
from graftkit.config import PARAMETER_GROUPS, ConfigError, RunConfig
from graftkit.curriculum import carry, fsdp
from graftkit.curriculum.batches import TextTargets, cut_texts, describe_cut
from graftkit.curriculum.callbacks import check_callbacks
from graftkit.curriculum.model import build_grafted, text_embedding_layer
from graftkit.curriculum.objective import Objective, check_losses, needs_tokens
from graftkit.curriculum.run import Run, echo
from graftkit.curriculum.textspace import TextSpace
from graftkit.curriculum.trainer import PhaseTrainer
from graftkit.data import GraftDataset
from graftkit.progress import is_quiet, progress_bar
from graftkit.rundir import RunDir

__all__ = ["cache_root", "open_run", "prepare_run", "run_curriculum", "run_phase"]


def cache_root(cfg: RunConfig) -> Path:
    root = cfg.data.cache_dir or Path(
        os.environ.get("GRAFTKIT_CACHE", Path.home() / ".cache" / "graftkit")
    )
    return Path(root).expanduser()


def make_accelerator(cfg: RunConfig, rundir: RunDir | None = None) -> Accelerator:
    """An ``Accelerator`` for the run's launch config; TensorBoard tracking when it is installed."""
    import importlib.util

    cpu = (
        cfg.launch.use_cpu
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU") == "true"
    )
    tensorboard = rundir is not None and importlib.util.find_spec("tensorboard") is not None
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
        project_dir=str(rundir.tensorboard) if tensorboard else None,
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


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """Run the block without moving the run's random streams (torch's CPU and current CUDA
    generator, Python's, NumPy's): a dataset's ``prepare()`` that trains or builds a model only
    on a cache miss (the digits example's encoder) would otherwise make the run's numbers depend
    on what the cache held."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def prepare_run(
    cfg: RunConfig, run_dir: Path | RunDir, progress: Any = None, record: bool = True
) -> Run:
    """Dataset, language prior (or ``--llm``), text space and grafted model; fails before training.

    ``record=False`` (``graftkit eval``/``generate`` on an existing run) leaves the run's
    ``config.yaml`` and ``metrics.json`` as they are. The prior and the files the dataset trained
    come from the run folder when it carries them (:mod:`graftkit.curriculum.carry`); a run
    copies them in, so a reopened run trains nothing whatever ``GRAFTKIT_CACHE``.
    """
    from graftkit.lm import check_date_independent, load_llm

    check_callbacks(cfg.phases)
    check_losses(cfg.phases)
    rundir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    accelerator = make_accelerator(cfg, rundir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    rundir.path.mkdir(parents=True, exist_ok=True)
    dataset: GraftDataset = plugins.build(
        "dataset", cfg.dataset, cfg.data, workdir=cache_root(cfg) / "data" / cfg.dataset
    )
    handed_back = carry.hand_back_dataset_files(cfg, rundir, dataset)
    with (
        warnings_echoed_once(dataset),
        plugins.options_errors("dataset", cfg.dataset),
        random_streams_kept(),
    ):
        if accelerator.is_main_process:
            dataset.prepare(progress=progress)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            dataset.prepare(progress=None)
        train, valid = (dataset.records(split) for split in dataset.splits)
    if record and accelerator.is_main_process:
        carry.carry_dataset_files(cfg, rundir, dataset, handed_back)
    elif not record and not handed_back:
        carry.warn_if_not_carried(cfg, rundir, dataset, accelerator)
    skips = dataset.skips.summary()
    if not train:
        raise ConfigError(
            f"dataset {cfg.dataset!r} has zero usable training samples "
            f"({skips['skipped']} skipped: {skips['by_reason']}); nothing to train on"
        )
    if not valid:
        raise ConfigError(f"dataset {cfg.dataset!r} has zero usable {dataset.splits[1]} samples")

    t_prior = time.time()
    llm_path = carry.language_model(
        cfg, rundir, dataset, accelerator, cache_root(cfg) / "prior", progress, record
    )
    llm, tokenizer = load_llm(llm_path, dtype=cfg.model.dtype, device=accelerator.device)
    try:
        check_date_independent(tokenizer)
    except ValueError as err:
        raise ConfigError(f"--llm {llm_path}: {err}") from None
    prior_seconds = round(time.time() - t_prior, 1)

    textspace = _text_space(cfg, rundir, dataset, train, valid, llm, tokenizer, accelerator)
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
        rundir,
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
    cut = record_cut_texts(run, tokenizer) if run.main and record else None
    if run.main and record:
        cfg.save(rundir.config)
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
    for purpose, key in (("for training", "training"), ("for evaluation", "evaluation")):
        line = describe_cut(cut[key], purpose) if cut else None
        if line:
            echo(accelerator, line)
    return run


def record_cut_texts(run: Run, tokenizer) -> dict[str, Any]:
    """Count the reports longer than their token budget into ``run.summary["data"]["cut"]``:
    the texts the LM phases train and validate on against the training budget (the prior's
    ``prior.max_length``, else the LLM's :func:`~graftkit.lm.chat.text_budget`), and the texts
    the evaluation scores teacher-forced (the last phase's text of the evaluated split) against
    the scoring budget."""
    from graftkit.lm.chat import text_budget

    cfg = run.cfg
    k = run.glm.num_visual_tokens
    scoring = text_budget(tokenizer)
    training = cfg.model.prior.max_length if cfg.model.llm is None else scoring
    kinds = [p.text for p in cfg.phases if needs_tokens(p.losses)]
    splits = dict(zip(run.dataset.splits, (run.train, run.valid), strict=True))
    args = (tokenizer, run.prompt, k)
    evaluated = {cfg.eval.split: splits.get(cfg.eval.split, run.valid)[: cfg.eval.limit]}
    last = cfg.phases.get(len(cfg.phases)).text
    cut = {
        "training": cut_texts(run.dataset, splits, kinds, *args, training, cfg.seed),
        "evaluation": cut_texts(run.dataset, evaluated, [last], *args, scoring, cfg.seed),
    }
    run.summary["data"]["cut"] = cut
    return cut


def bridge_to_float32(glm) -> None:
    """Keep the bridge's trained weights in float32 under mixed precision: AdamW on pure-bf16
    weights loses every update below bf16's resolution (docs/distributed.md); autocast runs the
    matmuls in bf16. LoRA is peft's float32 already."""
    for group in PARAMETER_GROUPS:
        if group != "lora":
            getattr(glm, group).float()


def _text_space(cfg, rundir, dataset, train, valid, llm, tokenizer, accelerator) -> TextSpace:
    """Whitened text space, fitted once per run and saved in ``RUN/textspace`` (resume reuses it)."""
    directory = rundir.textspace
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


def run_phase(
    run: Run,
    number: int,
    resume: bool = False,
    progress: Any = None,
    *,
    fresh_bridge: bool = False,
    warm_bridge: Path | None = None,
) -> dict[str, Any]:
    """Train phase ``number`` from the model's current state and save ``RUN/phase{N}``
    (:class:`~graftkit.curriculum.trainer.PhaseTrainer`); returns its result."""
    trainer = PhaseTrainer(
        run,
        number,
        resume=resume,
        fresh_bridge=fresh_bridge,
        warm_bridge=warm_bridge,
        progress=progress,
    )
    return trainer.fit()


def run_curriculum(
    run: Run,
    phases: list[int],
    init_from: Path | None = None,
    warm_bridge: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the selected phases in order, each from the previous phase's checkpoint.

    With ``resume``, a checkpoint overwrite a kill interrupted is finished first, complete phases
    are loaded rather than run, and a phase in flight continues from its epoch checkpoint.
    """
    rundir, acc = run.rundir, run.accelerator
    if resume and run.main:  # a kill inside a checkpoint overwrite: finish it
        for n in phases:
            recover_checkpoint(rundir.phase(n))
            recover_checkpoint(rundir.epoch_checkpoint(n))
    acc.wait_for_everyone()
    done = [n for n in phases if resume and rundir.is_complete(n)]
    todo = [n for n in phases if n not in done]
    for n in todo:
        if resume and rundir.phase(n).exists():
            try:
                verify_checkpoint(rundir.phase(n))
            except CheckpointError as err:
                again = f" from {rundir.epoch_checkpoint(n).relative_to(rundir.path)}"
                echo(
                    acc,
                    f"resume: {err}; phase {n} is run again"
                    + (again if is_complete(rundir.epoch_checkpoint(n)) else ""),
                )
    loaded = True
    if done:
        run.load(rundir.phase(done[-1]))
        echo(acc, f"resume: phases {done} already complete")
    elif init_from is not None:
        names = run.load(init_from)
        echo(acc, f"init-from {init_from}: loaded {len(names)} tensors")
    elif phases[0] > 1 and rundir.is_complete(phases[0] - 1):
        run.load(rundir.phase(phases[0] - 1))
    else:
        loaded = False
        if phases[0] > 1:
            echo(
                acc,
                f"warning: phase {phases[0]} starts from a fresh bridge "
                f"(no phase{phases[0] - 1} checkpoint, no --init-from)",
            )
    results = {}
    with progress_bar(disable=is_quiet() or not run.main) as progress:
        for i, n in enumerate(todo):
            in_flight = rundir.epoch_checkpoint(n).exists()
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
            acc,
            f"data: {skips['skipped']} volume(s) skipped in all, some at load time: "
            f"{skips['by_reason']} (see metrics.json data.items)",
        )
    return results


def open_run(rundir: RunDir, checkpoint: Path, progress: Any = None, **overrides: Any) -> Run:
    """A finished run's model, rebuilt from ``RUN/config.yaml`` (with dotted ``overrides``) and
    loaded from ``checkpoint``; nothing in the run folder is rewritten."""
    cfg = rundir.read_config(**overrides)
    run = prepare_run(cfg, rundir, progress=progress, record=False)
    run.load(checkpoint)
    run.summary["checkpoint"] = rundir.checkpoint_info(checkpoint)
    return run


def gather_skips(run: Run) -> None:
    """Add every process's skips to this process's ``dataset.skips``: a volume that fails at
    load is recorded by the process that loaded it, and the main process writes metrics.json."""
    if run.accelerator.num_processes == 1:
        return
    for entries in gather_object([run.dataset.skips.entries]):
        for entry in entries:
            run.dataset.skips.skip(*entry)
