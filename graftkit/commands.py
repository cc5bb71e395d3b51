"""Implementations of the CLI verbs (kept apart from ``cli.py`` so ``--help`` imports no torch)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from graftkit import plugins
from graftkit.cli import CLIError
from graftkit.config import RunConfig, build_config, default_config_path, load_yaml, parse_overrides


def _options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def resolve_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> RunConfig:
    """paper.yaml -> profile overrides -> ``--config`` file -> CLI flags -> ``--set`` pairs."""
    dataset_cls = plugins.get("dataset", args.dataset)
    base = load_yaml(args.config) if args.config else load_yaml(default_config_path())
    overrides: dict[str, Any] = {}
    profile_name = args.profile or (None if args.config else dataset_cls.default_profile)
    profile = plugins.get("profile", profile_name) if profile_name else None
    if profile is not None and not args.config:
        overrides.update(profile.overrides)
        if profile.launch is not None:
            overrides["launch"] = profile.launch.model_dump()
    if profile_name:
        overrides["profile"] = profile_name
    overrides.update(extra or {})
    overrides.update(parse_overrides(args.overrides))
    return build_config(args.dataset, base, overrides)


def _launch_if_needed(cfg: RunConfig, run_dir: Path) -> int | None:
    """Render the profile's accelerate config; re-launch under ``accelerate launch`` if multi-process."""
    launch = cfg.launch
    if launch.num_processes * launch.num_machines <= 1 or "LOCAL_RANK" in os.environ:
        return None
    from graftkit.launch import write_accelerate_config

    path = write_accelerate_config(launch, run_dir / "accelerate_config.yaml")
    command = ["accelerate", "launch", "--config_file", str(path), "-m", "graftkit", *sys.argv[1:]]
    print(f"launching {launch.num_processes} process(es): {' '.join(command)}", flush=True)
    env = dict(os.environ)
    if launch.use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.call(command, env=env)


def cmd_run(args: argparse.Namespace) -> int:
    from graftkit.curriculum.checkpoint import CheckpointError, verify_checkpoint
    from graftkit.curriculum.engine import prepare_run, run_curriculum
    from graftkit.curriculum.phases import parse_phase_range
    from graftkit.eval.evaluate import evaluate
    from graftkit.progress import is_quiet, progress_bar

    phases = parse_phase_range(args.phases)
    extra: dict[str, Any] = {}
    if args.data_dir:
        if not args.data_dir.is_dir():
            raise CLIError(f"--data-dir {args.data_dir}: no such directory")
        extra["data.data_dir"] = str(args.data_dir)
    if args.llm:
        extra["model.llm"] = str(args.llm)
    cfg = resolve_config(args, extra)
    run_dir = args.output_dir or Path("runs") / f"{cfg.dataset}-{cfg.profile or 'default'}"
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    for flag, path in (("--init-from", args.init_from), ("--warm-bridge", args.warm_bridge)):
        if path is not None and not path.exists():
            raise CLIError(f"{flag} {path}: no such checkpoint")
    if args.init_from is not None:
        try:
            verify_checkpoint(args.init_from)
        except CheckpointError as err:
            raise CLIError(f"--init-from: {err}") from None
    if not args.resume and (run_dir / "metrics.json").exists() and any(run_dir.glob("phase*")):
        raise CLIError(
            f"{run_dir} already holds a run; use --resume to continue it or --output-dir for a new one"
        )
    launched = _launch_if_needed(cfg, run_dir)
    if launched is not None:
        return launched
    with progress_bar(disable=is_quiet()) as progress:
        run = prepare_run(cfg, run_dir, progress=progress)
    run_curriculum(
        run, phases, init_from=args.init_from, warm_bridge=args.warm_bridge, resume=args.resume
    )
    if not args.no_eval and run.main:
        with progress_bar(disable=is_quiet()) as progress:
            metrics = evaluate(run, progress=progress)
        _print_summary(run_dir, metrics)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return 0


def _print_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    from graftkit.progress import is_quiet

    if is_quiet():
        return
    full = json.loads((run_dir / "metrics.json").read_text())
    e = full["eval"]
    print(f"\neval on {e['volumes']} {e['split']} volumes (extractor {e['extractor']}):")
    print(
        f"  generation macro F1 {e['macro_f1']:.3f}  precision {e['macro_precision']:.3f}  recall {e['macro_recall']:.3f}"
    )
    if "oracle" in full:
        o = full["oracle"]["macro_f1"]
        print(f"  oracle macro F1 {o:.3f}  (generation / oracle = {e['macro_f1'] / o:.2f})")
    if "ablation" in full:
        a = full["ablation"]
        print(
            "  ablation macro F1: "
            + ", ".join(
                f"{m} {a[m]['macro_f1']:.3f}" for m in ("real", "zero", "shuffle", "random")
            )
        )
        print(f"  zeroing the visual tokens removes {100 * a['zero_drop']:.1f}% of generation F1")
    if full.get("ladder"):
        print("  quality ladder (macro F1; where the signal is lost):")
        for row in full["ladder"]:
            share = row.get("fraction_of_oracle")
            tail = f"  ({share:.2f} x oracle)" if share is not None else ""
            print(f"    {row['stage']:<34} {row['macro_f1']:.3f}{tail}")
    print(f"  run directory: {run_dir}  (report: {run_dir / 'report.html'})")


def _open_run(run_dir: Path, checkpoint: str | None = None, **overrides):
    """Rebuild a finished run's model from its resolved config and load its last phase checkpoint."""
    from graftkit.config import ConfigError
    from graftkit.curriculum.checkpoint import CheckpointError, is_complete
    from graftkit.curriculum.engine import load_into, prepare_run

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CLIError(f"{run_dir}: not a graftkit run directory (no config.yaml)")
    tree = load_yaml(config_path)
    try:
        cfg = build_config(tree["dataset"], tree, overrides)
    except (ConfigError, KeyError) as err:
        raise CLIError(f"{config_path}: {err}") from None
    if checkpoint:
        ckpt = Path(checkpoint) if Path(checkpoint).exists() else run_dir / checkpoint
    else:
        done = [run_dir / f"phase{n}" for n in (4, 3, 2, 1) if is_complete(run_dir / f"phase{n}")]
        if not done:
            raise CLIError(f"{run_dir}: no complete phase checkpoint (phase1..phase4) to evaluate")
        ckpt = done[0]
    from graftkit.progress import is_quiet, progress_bar

    with progress_bar(disable=is_quiet()) as progress:
        run = prepare_run(cfg, run_dir, progress=progress)
    try:
        load_into(run, ckpt)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    return run


def cmd_eval(args: argparse.Namespace) -> int:
    from graftkit.eval.evaluate import evaluate
    from graftkit.progress import is_quiet, progress_bar

    if args.extractor:
        plugins.get("extractor", args.extractor)
    run = _open_run(args.run_dir, args.checkpoint)
    with progress_bar(disable=is_quiet()) as progress:
        metrics = evaluate(
            run,
            split=args.split,
            extractor_name=args.extractor,
            ablations=args.ablations,
            limit=args.limit,
            progress=progress,
            token_source=args.tokens,
        )
    _print_summary(args.run_dir, metrics)
    return 0


def _read_embeddings(path: Path):
    import numpy as np

    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                emb = data["embeddings"]
                z = data.get("z_mm")
        else:
            emb, z = np.load(path), None
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"{path}: cannot read embeddings ({err})") from None
    if emb.ndim == 3:
        emb = emb[:, 0]
    if emb.ndim != 2:
        raise CLIError(f"{path}: embeddings must be (N, d) or (N, T, d), got shape {emb.shape}")
    return emb.astype("float32"), z


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from graftkit.eval.explain import explain_sentences
    from graftkit.eval.generation import generate_reports

    if args.volume is not None:
        if not args.encoder:
            raise CLIError("--volume needs --encoder NAME")
        encoder = plugins.get("encoder", args.encoder)(weights=args.weights)
        encoded = encoder.encode(args.volume)
        emb, z = encoded.embeddings, encoded.z_mm
    else:
        emb, z = _read_embeddings(args.embeddings)
    run = _open_run(args.run_dir)
    dim = run.dataset.embedding_dim
    if emb.shape[1] != dim:
        raise CLIError(
            f"{args.embeddings or args.volume}: embedding dim {emb.shape[1]} != the run's d_v {dim}"
        )
    if not np.isfinite(emb).all():
        raise CLIError(f"{args.embeddings or args.volume}: embeddings contain NaN or Inf")
    slices = torch.from_numpy(emb).unsqueeze(0)
    z_mm = torch.from_numpy(
        np.asarray(z if z is not None else np.arange(len(emb)), dtype=np.float32)
    ).unsqueeze(0)
    run.glm.eval()
    with torch.inference_mode():
        tokens = run.glm.encode(slices, z_mm, torch.ones(1, len(emb), dtype=torch.bool))[1]
    gen = run.cfg.eval.generation.model_dump()
    if args.greedy:
        gen.update(do_sample=False)
        gen.pop("temperature"), gen.pop("top_p")
    text = generate_reports(
        run.glm, run.tokenizer, run.dataset.prompt, tokens, gen, seed=run.cfg.seed
    )[0]
    print(text)
    if args.explain:
        for sentence, zones in explain_sentences(run, tokens[0], text):
            print(
                f"- {sentence}\n    zones (1 = first .. {tokens.shape[1]} = last along z): {', '.join(str(z + 1) for z in zones)}"
            )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from graftkit.embed import discover_inputs, run_embed
    from graftkit.progress import is_quiet, progress_bar

    encoder_cls = plugins.get("encoder", args.encoder)
    options = _options(args.option)
    for key in ("rescale", "rescale_slope", "rescale_intercept"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    try:
        encoder = encoder_cls(weights=args.weights, device=args.device, **options)
    except (ValueError, OSError) as err:
        raise CLIError(f"encoder {args.encoder}: {err}") from None
    inputs = discover_inputs(args.input, kinds=encoder_cls.input_kinds)
    if not inputs:
        raise CLIError(
            f"--input {' '.join(map(str, args.input))}: no NIfTI files or DICOM series found"
        )
    with progress_bar(disable=is_quiet()) as progress:
        summary = run_embed(
            encoder,
            inputs,
            args.output,
            batch_size=args.batch_size,
            limit=args.limit,
            resume=args.resume,
            progress=progress,
        )
    print(summary.format())
    return summary.exit_code


def cmd_label(args: argparse.Namespace) -> int:
    extractor_cls = plugins.get("extractor", args.extractor)
    try:
        with args.input.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as err:
        raise CLIError(f"--input {args.input}: {err}") from None
    if args.text_column not in columns:
        raise CLIError(f"{args.input}: no column {args.text_column!r}; columns are {columns}")
    id_column = args.id_column or columns[0]
    if id_column not in columns:
        raise CLIError(f"{args.input}: no id column {id_column!r}; columns are {columns}")
    extractor = extractor_cls(**_options(args.option))
    labels = extractor.extract([row[args.text_column] or "" for row in rows])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([id_column, *extractor.class_names])
        for row, vec in zip(rows, labels, strict=True):
            writer.writerow([row[id_column], *map(int, vec)])
    os.replace(tmp, args.output)
    print(f"labelled {len(rows)} rows with {args.extractor} -> {args.output}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from graftkit.curriculum.plan import format_plan, plan

    cfg = resolve_config(args)
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
    try:
        info = dataset_cls.synthesize(args.output, **options)
    except NotImplementedError as err:
        raise CLIError(str(err)) from None
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from graftkit.eval.study import run_study

    cfg = resolve_config(args)
    run_study(cfg, args.output)
    return 0
