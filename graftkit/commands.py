"""The CLI verbs: each checks its flags and calls the library (kept apart from ``cli.py`` so
``--help`` imports no torch). Config layering is :mod:`graftkit.config.layers`, the run folder
:class:`graftkit.rundir.RunDir`, resume policy :mod:`graftkit.curriculum.resume`, rebuilding a
finished run :func:`graftkit.curriculum.engine.open_run`, the evaluation folder and summary
:mod:`graftkit.run_eval`, the pipelines the verbs share :mod:`graftkit.workflow`."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from graftkit import plugins
from graftkit.config import RunConfig, format_config, parse_value
from graftkit.config.layers import Layer, resolve_config
from graftkit.errors import CLIError, StorageError, one_line
from graftkit.io import atomic_file
from graftkit.rundir import RunDir, describe_checkpoint
from graftkit.workflow import open_finished_run, print_summary


def _options(pairs: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs, values read as ``--set`` reads them."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = parse_value(value)
    return out


def resolve_config_sources(
    args: argparse.Namespace, flags: list[Layer] | None = None
) -> tuple[RunConfig, dict[str, str]]:
    """The command's run config and where each setting came from (:mod:`graftkit.config.layers`)."""
    return resolve_config(
        args.dataset,
        profile=args.profile,
        config=args.config,
        overrides=args.overrides,
        flags=flags or (),
    )


def print_config(cfg: RunConfig, sources: dict[str, str]) -> int:
    """``--print-config``: every setting once with where it came from; nothing is run."""
    print(format_config(cfg, sources))
    return 0


def ensure_dir(path: Path, flag: str) -> Path:
    """Create ``path`` (and parents) and check it is writable by writing a probe file; one line
    naming it and the cause otherwise (read-only, full, not permitted)."""
    import errno
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot create it ({err.strerror or err})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        code = errno.errorcode.get(err.errno, "")
        raise CLIError(f"{flag} {path}: not writable: {err.strerror or err} ({code})") from None
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from graftkit.curriculum.phases import parse_phase_range

    started = time.time()
    flags: list[Layer] = []
    if args.data_dir:
        if not args.data_dir.is_dir():
            raise CLIError(f"--data-dir {args.data_dir}: no such directory")
        flags.append(("--data-dir", {"data.data_dir": str(args.data_dir)}))
    if args.llm:
        flags.append(("--llm", {"model.llm": str(args.llm)}))
    cfg, sources = resolve_config_sources(args, flags)
    count = len(cfg.phases)
    phases = parse_phase_range(args.phases or f"1-{count}", count)
    path = args.output_dir or Path("runs") / f"{cfg.dataset}-{cfg.profile or 'default'}"
    cfg = cfg.model_copy(update={"output_dir": path})
    if args.print_config:
        sources["output_dir"] = (
            "--output-dir" if args.output_dir else "default (runs/DATASET-PROFILE)"
        )
        return print_config(cfg, sources)
    for flag, given in (("--init-from", args.init_from), ("--warm-bridge", args.warm_bridge)):
        if given is not None and not given.exists():
            raise CLIError(f"{flag} {given}: no such checkpoint")
    if args.init_from is not None:
        from graftkit.checkpoint import CheckpointError, verify_checkpoint

        try:
            verify_checkpoint(args.init_from)
        except CheckpointError as err:
            raise CLIError(f"--init-from: {err}") from None
    if args.warm_bridge is not None:
        _check_warm_bridge(args.warm_bridge, cfg, phases)
    if args.allow_config_change and not args.resume:
        raise CLIError("--allow-config-change only applies with --resume")
    rundir = RunDir(path)
    ensure_dir(path, "--output-dir")
    # on several machines the launcher of machine 0 holds the lock for all of them
    lock = rundir.lock("graftkit run") if cfg.launch.machine_rank == 0 else nullcontext()
    try:
        with lock:
            return _run_locked(args, cfg, phases, rundir, started)
    except StorageError as err:
        if rundir.phase_numbers():
            err.hint += (
                "; the last complete checkpoint is intact: run the same command with --resume "
                "to continue from it"
            )
        raise


def _check_warm_bridge(given: Path, cfg: RunConfig, phases: list[int]) -> None:
    """``--warm-bridge``: verify the checkpoint each selected ``warm_bridge`` phase will read
    (a run folder's ``phase{N}``, or the path itself), before any work."""
    from graftkit.checkpoint import CheckpointError, verify_checkpoint

    for n in phases:
        if "warm_bridge" not in cfg.phases.get(n).active_callbacks:
            continue
        target = RunDir(given).phase(n) if RunDir(given).phase(n).is_dir() else given
        try:
            verify_checkpoint(target)
        except CheckpointError as err:
            raise CLIError(f"--warm-bridge: {err}") from None


def _run_locked(
    args: argparse.Namespace, cfg: RunConfig, phases: list[int], rundir: RunDir, started: float
) -> int:
    """The rest of ``graftkit run``, with the run folder's lock held."""
    from graftkit.curriculum.resume import check_resume_config
    from graftkit.launch import relaunch_if_needed
    from graftkit.progress import is_quiet

    path = rundir.path
    if not args.resume and rundir.holds_run():
        raise CLIError(
            f"{path} already holds a run; use --resume to continue it or --output-dir for a new one"
        )
    changes = check_resume_config(cfg, rundir, args.allow_config_change) if args.resume else {}
    if args.resume and os.environ.get("RANK", "0") == "0":  # one process of a launch
        rundir.recover(phases)
        rundir.check_resumable(phases)
    launched = relaunch_if_needed(cfg.launch, rundir.accelerate_config)
    if launched is not None:
        return launched
    # imported once the arguments are checked: a usage error is reported without loading torch
    from graftkit.workflow import train_and_evaluate

    if not is_quiet() and "LOCAL_RANK" not in os.environ:
        import torch

        print(
            f"graftkit run {cfg.dataset} (profile {cfg.profile or 'none'}) -> {path}; "
            f"phases {args.phases or f'{phases[0]}-{phases[-1]}'}; "
            f"torch threads {torch.get_num_threads()} "
            f"({getattr(args, 'threads_source', 'torch default')})",
            flush=True,
        )
    train_and_evaluate(
        cfg,
        rundir,
        phases,
        init_from=args.init_from,
        warm_bridge=args.warm_bridge,
        resume=args.resume,
        evaluate=not args.no_eval,
        config_changes=changes,
        started=started,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.extractor:
        plugins.get("extractor", args.extractor)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: must be at least 1")
    rundir = RunDir(args.run_dir)
    cfg = rundir.read_config()
    dataset_cls = plugins.get("dataset", cfg.dataset)
    if args.split is not None and args.split not in dataset_cls.splits:
        raise CLIError(
            f"--split {args.split}: dataset {cfg.dataset!r} has splits {list(dataset_cls.splits)}"
        )
    with rundir.lock("graftkit eval"):
        return _eval_locked(args, rundir, cfg, dataset_cls)


def _eval_locked(args: argparse.Namespace, rundir: RunDir, cfg: RunConfig, dataset_cls) -> int:
    """The rest of ``graftkit eval``, with the run folder's lock held."""
    from graftkit.progress import is_quiet, progress_bar
    from graftkit.run_eval import evaluate_run, evaluation_folder

    out = evaluation_folder(
        rundir,
        cfg,
        dataset_cls.default_extractor,
        checkpoint=args.checkpoint,
        split=args.split,
        limit=args.limit,
        ablations=args.ablations,
        extractor=args.extractor,
        tokens=args.tokens,
        name=args.name,
        overwrite=args.overwrite,
    )
    run = open_finished_run(rundir, args.checkpoint, "eval")
    if out.is_run_folder:
        out.clear()
    with progress_bar(disable=is_quiet()) as progress:
        evaluate_run(
            run,
            split=args.split,
            extractor_name=args.extractor,
            ablations=args.ablations,
            limit=args.limit,
            progress=progress,
            out=out,
            token_source=args.tokens,
        )
    print_summary(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``graftkit compare RUN_A RUN_B``: A - B in macro F1, CRG and ROUGE-L on the volumes both
    evaluated, with paired bootstrap intervals and permutation p-values
    (:mod:`graftkit.eval.compare`); evaluations of different volumes are refused."""
    for flag, value in (("--resamples", args.resamples), ("--permutations", args.permutations)):
        if value < 1:
            raise CLIError(f"{flag} {value}: must be at least 1")
    from graftkit.eval.compare import ComparisonError, compare_evaluations, format_comparison

    try:
        result = compare_evaluations(
            args.run_a,
            args.run_b,
            n_resamples=args.resamples,
            n_permutations=args.permutations,
            seed=args.seed,
        )
    except ComparisonError as err:
        raise CLIError(str(err)) from None
    print(json.dumps(result, indent=2) if args.json else "\n".join(format_comparison(result)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from graftkit.embed import load_case
    from graftkit.eval.explain import explain_sentences
    from graftkit.run_eval import generate_case

    source = args.embeddings or args.volume
    try:
        emb, z = load_case(
            args.embeddings,
            args.volume,
            args.encoder,
            args.weights,
            warn=lambda msg: print(f"graftkit generate: warning: {msg}", file=sys.stderr),
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    run = open_finished_run(RunDir(args.run_dir), None, "generate")
    dim = run.dataset.embedding_dim
    if emb.shape[1] != dim:
        raise CLIError(f"{source}: embedding dim {emb.shape[1]} != the run's d_v {dim}")
    text, tokens = generate_case(run, emb, z, greedy=args.greedy)
    print(text)
    if args.explain:
        for sentence, zones in explain_sentences(
            run.glm, run.tokenizer, run.prompt, tokens[0], text
        ):
            print(
                f"- {sentence}\n    zones (1 = first .. {tokens.shape[1]} = last along z): "
                f"{', '.join(str(z + 1) for z in zones)}"
            )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from graftkit.embed import VolumeResult, check_unique_outputs, run_embed
    from graftkit.progress import is_quiet, progress_bar

    encoder_cls = plugins.get("encoder", args.encoder)
    options = _options(args.option)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: must be at least 1")
    try:
        inputs = encoder_cls.discover_inputs(args.input)
    except FileNotFoundError as err:
        raise CLIError(f"--input: {err}") from None
    if not inputs:
        raise CLIError(
            f"--input {' '.join(map(str, args.input))}: no inputs of encoder {args.encoder} "
            f"found ({encoder_cls.describe_inputs()})"
        )
    try:
        check_unique_outputs(inputs[: args.limit], args.output, encoder_cls)
    except ValueError as err:
        raise CLIError(f"--input: {err}") from None
    try:
        encoder = encoder_cls(weights=args.weights, device=args.device, **options)
    except (ValueError, OSError, TypeError) as err:
        raise CLIError(f"encoder {args.encoder}: {one_line(err)}") from None
    ensure_dir(args.output, "--output")
    with progress_bar(disable=is_quiet()) as progress:
        total = len(inputs) if args.limit is None else min(args.limit, len(inputs))
        task = progress.add_task(f"embed ({args.encoder})", total=total, info="")

        def advance(result: VolumeResult) -> None:
            progress.update(task, advance=1, info=f"{result.name}: {result.status}")

        summary = run_embed(
            encoder,
            inputs,
            args.output,
            batch_size=args.batch_size,
            limit=args.limit,
            resume=args.resume,
            progress=advance,
        )
    print(summary.format())
    return summary.exit_code


def cmd_label(args: argparse.Namespace) -> int:
    from graftkit.io import read_csv

    extractor_cls = plugins.get("extractor", args.extractor)
    try:
        rows, columns = read_csv(args.input)
    except ValueError as err:
        raise CLIError(f"--input {err}") from None
    if args.text_column not in columns:
        raise CLIError(f"{args.input}: no column {args.text_column!r}; columns are {columns}")
    id_column = args.id_column or columns[0]
    if id_column not in columns:
        raise CLIError(f"{args.input}: no id column {id_column!r}; columns are {columns}")
    if args.output.is_dir():
        raise CLIError(f"--output {args.output}: is a directory, expected a file name")
    ensure_dir(args.output.parent, "--output")
    try:
        extractor = extractor_cls(**_options(args.option))
    except (ValueError, TypeError, OSError) as err:
        raise CLIError(f"extractor {args.extractor}: {one_line(err)}") from None
    labels = extractor.extract([row[args.text_column] or "" for row in rows])
    with atomic_file(args.output) as staging, staging.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([id_column, *extractor.class_names])
        for row, vec in zip(rows, labels, strict=True):
            writer.writerow([row[id_column], *map(int, vec)])
    print(f"labelled {len(rows)} rows with {args.extractor} -> {args.output}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    cfg, sources = resolve_config_sources(args)  # before torch: a bad name fails fast
    if args.print_config:
        return print_config(cfg, sources)
    from graftkit.curriculum.plan import format_plan, plan

    result = plan(cfg)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    dataset_cls = plugins.get("dataset", args.dataset)
    options = {
        k: v
        for k, v in {
            "n_train": args.n_train,
            "n_valid": args.n_valid,
            "dim": args.dim,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise CLIError(
            f"--output {args.output}: exists and is not an empty folder; choose a new folder"
        )
    try:
        info = dataset_cls.synthesize(args.output, **options)
    except NotImplementedError as err:
        raise CLIError(str(err)) from None
    except ValueError as err:
        raise CLIError(f"synth {args.dataset}: {one_line(err)}") from None
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    cfg, sources = resolve_config_sources(args)  # before torch: a bad name fails fast
    if args.print_config:
        return print_config(cfg, sources)
    from graftkit.study import run_study

    output = args.output or (
        Path("runs") / f"study-{cfg.dataset}-{cfg.profile or 'default'}" / "reproduction.md"
    )
    ensure_dir(output.parent, "--output")
    run_study(cfg, output)
    print(f"study written to {output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import shutil

    from graftkit.export import export_run

    out = args.output
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.overwrite or not out.is_dir():
            raise CLIError(
                f"--output {out}: exists and is not an empty folder; pass --overwrite to replace it"
            )
        if (out / "graft_config.json").is_file():
            shutil.rmtree(out)
        else:
            raise CLIError(f"--output {out}: is not a graftkit export; refusing to replace it")
    rundir = RunDir(args.run_dir)
    run = open_finished_run(rundir, args.checkpoint, "export")
    export_run(run, out, license=args.license)
    print(f"exported {describe_checkpoint(run.summary['checkpoint'])} of {rundir.path} -> {out}")
    return 0
