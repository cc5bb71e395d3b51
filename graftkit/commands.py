"""Implementations of the CLI verbs (kept apart from ``cli.py`` so ``--help`` imports no torch)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from graftkit import plugins
from graftkit.cli import CLIError
from graftkit.config import (
    ConfigError,
    PhaseConfig,
    PhasesConfig,
    RunConfig,
    build_config,
    build_config_with_sources,
    default_config_path,
    flatten,
    format_config,
    load_yaml,
    parse_overrides,
    section_model,
    unknown_key_hint,
)
from graftkit.io import atomic_file, atomic_write_text, decode_utf8

#: What an evaluation writes into a run directory: ``metrics.json`` sections and files. Cleared
#: before the run's own evaluation is written again, so no part of an earlier one survives.
EVALUATION_KEYS = ("eval", "classifier", "ablation", "probe", "ladder")
EVALUATION_FILES = ("generations.jsonl", "grounding.json")

#: Config keys ``--resume --allow-config-change`` may accept: they change how a run is evaluated
#: or loaded, not what its checkpoints hold (a trailing ``.`` is a whole section).
RESUME_SAFE_KEYS = ("eval.", "data.num_workers")


def _options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def resolve_config_sources(
    args: argparse.Namespace, flags: list[tuple[str, dict[str, Any]]] | None = None
) -> tuple[RunConfig, dict[str, str]]:
    """paper.yaml -> profile overrides -> ``--config`` file -> CLI flags -> ``--set`` pairs, and
    where each setting came from (``--print-config``). ``flags`` are ``(flag, {key: value})``."""
    dataset_cls = plugins.get("dataset", args.dataset)
    if args.config:
        base, base_source = load_yaml(args.config), f"--config {args.config}"
    else:
        base, base_source = load_yaml(default_config_path()), default_config_path().name
    layers: list[tuple[str, dict[str, Any]]] = [("argument", {"dataset": args.dataset})]
    profile_name = args.profile or (None if args.config else dataset_cls.default_profile)
    profile = plugins.get("profile", profile_name) if profile_name else None
    source = f"profile {profile_name}"
    if profile is not None and not args.config:
        values = dict(profile.overrides)
        if profile.launch is not None:
            values["launch"] = profile.launch.model_dump()
        layers.append((source, values))
    if profile_name:
        how = "--profile" if args.profile else f"dataset {args.dataset}'s default profile"
        layers.append((how, {"profile": profile_name}))
    layers += flags or []
    user = parse_overrides(args.overrides)
    for key in user:
        _check_key(key)
    layers.append(("--set", user))
    return build_config_with_sources(args.dataset, base, base_source, layers)


def resolve_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> RunConfig:
    """The run config of a command (:func:`resolve_config_sources`); ``extra`` holds settings
    of command-line flags (dotted key -> value)."""
    return resolve_config_sources(args, [("flag", extra)] if extra else None)[0]


def print_config(cfg: RunConfig, sources: dict[str, str]) -> int:
    """``--print-config``: every setting once with where it came from; nothing is run."""
    print(format_config(cfg, sources))
    return 0


def _check_key(key: str) -> None:
    """Refuse a ``--set`` key no config section has, suggesting the nearest valid keys."""
    model: type[BaseModel] | None = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return  # inside a free-form mapping (e.g. data.synth): the dataset checks it
        if issubclass(model, PhasesConfig):
            if not re.fullmatch(r"p?\d+", part):
                raise ConfigError(f"--set {key}: phases are addressed by number, e.g. phases.p3.lr")
            model = PhaseConfig
            continue
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"--set {key}: unknown config key; {unknown_key_hint(key, at=i)}")
        model = section_model(fields[part].annotation)
        if model is None and i < len(parts) - 1 and "dict" not in str(fields[part].annotation):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")


def check_resume_config(cfg: RunConfig, run_dir: Path, allowed: list[str]) -> dict[str, list[Any]]:
    """Compare the resolved config with ``RUN/config.yaml``; refuse any difference not allowed.

    Returns the allowed changes (``key -> [old, new]``). ``output_dir`` is where the run is, not
    how it trains, and is not compared.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved_tree = load_yaml(saved_path)
    with contextlib.suppress(ValidationError):  # an older format compares in today's form
        saved_tree = json.loads(RunConfig.model_validate(saved_tree).model_dump_json())
    saved = flatten(saved_tree)
    current = flatten(json.loads(cfg.model_dump_json()))
    changed = {
        key: [saved.get(key), current.get(key)]
        for key in sorted(set(saved) | set(current))
        if key != "output_dir" and saved.get(key) != current.get(key)
    }
    for pattern in allowed:
        if not any(pattern == k or pattern.startswith(k) for k in RESUME_SAFE_KEYS):
            raise CLIError(
                f"--allow-config-change {pattern}: only {', '.join(k + '*' if k.endswith('.') else k for k in RESUME_SAFE_KEYS)} "
                "may change on --resume (the checkpoints were trained with the saved values); "
                "start a new run with --init-from to change it"
            )

    def ok(key: str) -> bool:
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in allowed)

    refused = [k for k in changed if not ok(k)]
    if refused:
        shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise CLIError(
            f"--resume: the config differs from {saved_path}: {shown}{more}; resume with the "
            "same settings (or --allow-config-change KEY for eval.* keys)"
        )
    return changed


def clear_evaluation(run_dir: Path) -> None:
    """Remove an earlier evaluation from ``run_dir`` (its ``metrics.json`` sections and files)."""
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        if any(key in metrics for key in EVALUATION_KEYS):
            for key in EVALUATION_KEYS:
                metrics.pop(key, None)
            atomic_write_text(path, json.dumps(metrics, indent=2))
    for name in EVALUATION_FILES:
        (run_dir / name).unlink(missing_ok=True)


def ensure_dir(path: Path, flag: str) -> Path:
    """Create ``path`` (and parents) and check it is writable; one line naming it otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot create it ({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: not writable")
    return path


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
    from graftkit.curriculum.phases import parse_phase_range
    from graftkit.progress import is_quiet, progress_bar

    started = time.time()
    flags: list[tuple[str, dict[str, Any]]] = []
    if args.data_dir:
        if not args.data_dir.is_dir():
            raise CLIError(f"--data-dir {args.data_dir}: no such directory")
        flags.append(("--data-dir", {"data.data_dir": str(args.data_dir)}))
    if args.llm:
        flags.append(("--llm", {"model.llm": str(args.llm)}))
    cfg, sources = resolve_config_sources(args, flags)
    count = len(cfg.phases)
    phases = parse_phase_range(args.phases or f"1-{count}", count)
    run_dir = args.output_dir or Path("runs") / f"{cfg.dataset}-{cfg.profile or 'default'}"
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    if args.print_config:
        sources["output_dir"] = (
            "--output-dir" if args.output_dir else "default (runs/DATASET-PROFILE)"
        )
        return print_config(cfg, sources)
    for flag, path in (("--init-from", args.init_from), ("--warm-bridge", args.warm_bridge)):
        if path is not None and not path.exists():
            raise CLIError(f"{flag} {path}: no such checkpoint")
    if args.init_from is not None:
        from graftkit.checkpoint import CheckpointError, verify_checkpoint

        try:
            verify_checkpoint(args.init_from)
        except CheckpointError as err:
            raise CLIError(f"--init-from: {err}") from None
    if not args.resume and (run_dir / "metrics.json").exists() and any(run_dir.glob("phase*")):
        raise CLIError(
            f"{run_dir} already holds a run; use --resume to continue it or --output-dir for a new one"
        )
    if args.allow_config_change and not args.resume:
        raise CLIError("--allow-config-change only applies with --resume")
    changes = check_resume_config(cfg, run_dir, args.allow_config_change) if args.resume else {}
    ensure_dir(run_dir, "--output-dir")
    launched = _launch_if_needed(cfg, run_dir)
    if launched is not None:
        return launched
    # imported once the arguments are checked: a usage error is reported without loading torch
    from graftkit.curriculum.engine import prepare_run, run_curriculum
    from graftkit.run_eval import evaluate_run

    if not is_quiet() and "LOCAL_RANK" not in os.environ:
        import torch

        print(
            f"graftkit run {cfg.dataset} (profile {cfg.profile or 'none'}) -> {run_dir}; "
            f"phases {args.phases or f'{phases[0]}-{phases[-1]}'}; "
            f"torch threads {torch.get_num_threads()} "
            f"({getattr(args, 'threads_source', 'torch default')})",
            flush=True,
        )
    with progress_bar(disable=is_quiet()) as progress:
        run = prepare_run(cfg, run_dir, progress=progress)
    if changes and run.main:
        with (run_dir / "history.jsonl").open("a") as fh:
            fh.write(
                json.dumps({"phase": phases[0], "event": "config_change", "changes": changes})
                + "\n"
            )
    run_curriculum(
        run, phases, init_from=args.init_from, warm_bridge=args.warm_bridge, resume=args.resume
    )
    evaluate = not args.no_eval
    if evaluate and run.accelerator.is_fsdp2:
        # the evaluation runs in the main process alone; a sharded model needs every process
        evaluate = False
        if run.main:
            print(
                f"evaluation: skipped under FSDP (the model is sharded across processes); "
                f"evaluate the run in one process: graftkit eval {run_dir}",
                flush=True,
            )
    if evaluate and run.main:
        run.summary["checkpoint"] = checkpoint_info(run_dir, run_dir / f"phase{phases[-1]}")
        clear_evaluation(run_dir)
        with progress_bar(disable=is_quiet()) as progress:
            metrics = evaluate_run(run, progress=progress)
        _print_summary(run_dir, metrics)
    if run.main:
        run.update_metrics({"timing": {"total_seconds": round(time.time() - started, 1)}})
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return 0


def checkpoint_info(run_dir: Path, ckpt: Path) -> dict[str, Any]:
    """Which checkpoint a model came from: its path, phase, and the epoch its weights are from.

    A phase checkpoint keeps the best epoch's bridge; the epoch is read from ``history.jsonl``
    (the first epoch whose running best equals the checkpoint's best), 1-based as printed.
    """
    ckpt = Path(ckpt)
    try:
        shown = str(ckpt.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        shown = str(ckpt)
    info: dict[str, Any] = {"path": shown}
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError):
        return info
    phase = state.get("phase")
    info["phase"] = phase
    history = run_dir / "history.jsonl"
    rows = []
    if history.is_file():
        for line in history.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("phase") == phase and "epoch" in row:
                rows.append(row)
    if rows:
        shift = (
            1 if min(int(r["epoch"]) for r in rows) == 0 else 0
        )  # older runs logged 0-based epochs
        info["epochs_run"] = max(int(r["epoch"]) for r in rows) + shift
        best = [r["epoch"] for r in rows if r.get("best") == state.get("best")]
        if best:
            info["epoch"] = int(best[0]) + shift
    return info


def describe_checkpoint(info: dict[str, Any]) -> str:
    text = info["path"]
    if info.get("phase") is not None:
        text += f" (phase {info['phase']}"
        if "epoch" in info:
            text += f", best epoch {info['epoch']} of {info.get('epochs_run', '?')} run"
        text += ")"
    return text


def _print_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Print the evaluation written to ``run_dir/metrics.json`` (the run or its eval folder)."""
    from graftkit.progress import is_quiet

    if is_quiet():
        return
    full = json.loads((run_dir / "metrics.json").read_text())
    e = full["eval"]
    print(f"\neval on {e['volumes']} {e['split']} volumes (extractor {e['extractor']}):")
    if "checkpoint" in e:
        print(f"  checkpoint {describe_checkpoint(e['checkpoint'])}")
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
    print(f"  results: {run_dir}  (report: {run_dir / 'report.html'})")


def _run_config(run_dir: Path, **overrides) -> RunConfig:
    """A finished run's resolved config (``RUN/config.yaml``)."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CLIError(f"{run_dir}: not a graftkit run directory (no config.yaml)")
    tree = load_yaml(config_path)
    try:
        return build_config(tree["dataset"], tree, overrides)
    except (ConfigError, KeyError) as err:
        raise CLIError(f"{config_path}: {err}") from None


def _final_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run's own evaluation uses: its last complete phase."""
    from graftkit.checkpoint import is_complete

    done = [run_dir / f"phase{n}" for n in _phase_numbers(run_dir)[::-1]]
    done = [path for path in done if is_complete(path)]
    if not done:
        raise CLIError(f"{run_dir}: no complete phase checkpoint (phase1, phase2, ...) to evaluate")
    return done[0]


def _phase_numbers(run_dir: Path) -> list[int]:
    """The phase numbers a run folder has folders for (``phaseN/`` or ``checkpoints/phaseN``)."""
    names = [p.name for p in [*run_dir.glob("phase*"), *run_dir.glob("checkpoints/phase*")]]
    return sorted({int(n[5:]) for n in names if n[5:].isdigit()})


def _unfinished_phases(run_dir: Path) -> list[int]:
    """Phases that were started (``checkpoints/phaseN``) but have no complete ``phaseN/``."""
    from graftkit.checkpoint import is_complete

    return [
        n
        for n in _phase_numbers(run_dir)
        if (run_dir / "checkpoints" / f"phase{n}").exists()
        and not is_complete(run_dir / f"phase{n}")
    ]


def _resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    if not checkpoint:
        return _final_checkpoint(run_dir)
    ckpt = Path(checkpoint) if Path(checkpoint).exists() else run_dir / checkpoint
    if not ckpt.exists():
        raise CLIError(f"--checkpoint {checkpoint}: no such checkpoint (in {run_dir} or as a path)")
    return ckpt


def _open_run(run_dir: Path, checkpoint: str | None = None, verb: str = "eval", **overrides):
    """Rebuild a finished run's model from its resolved config and load a phase checkpoint.

    Nothing in the run directory is rewritten. The checkpoint used is named on stderr (and in
    ``run.summary["checkpoint"]``); a run with a phase started but not finished is warned about,
    since its last complete phase is an earlier one.
    """
    from graftkit.checkpoint import CheckpointError
    from graftkit.curriculum.engine import load_into, prepare_run
    from graftkit.progress import is_quiet, progress_bar

    cfg = _run_config(run_dir, **overrides)
    ckpt = _resolve_checkpoint(run_dir, checkpoint)
    info = checkpoint_info(run_dir, ckpt)
    unfinished = _unfinished_phases(run_dir)
    if unfinished:
        info["run_incomplete"] = f"phase(s) {unfinished} started but not finished"
        print(
            f"graftkit {verb}: warning: {run_dir} is incomplete (phase(s) {unfinished} started "
            f"but not finished); using {describe_checkpoint(info)}",
            file=sys.stderr,
        )
    elif not is_quiet():
        print(f"graftkit {verb}: using {describe_checkpoint(info)}", file=sys.stderr)
    with progress_bar(disable=is_quiet()) as progress:
        run = prepare_run(cfg, run_dir, progress=progress, record=False)
    try:
        load_into(run, ckpt)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    run.summary["checkpoint"] = info
    return run


def _eval_folder(args: argparse.Namespace, cfg: RunConfig, dataset_cls: Any) -> Path:
    """Where an evaluation goes: the run directory for the run's own evaluation (its config's
    split, limit, ablations and extractor, on its final checkpoint), else ``RUN/eval/NAME``.

    A run directory never holds a mix of two evaluations: a differing one gets its own folder,
    and an existing folder is replaced only with ``--overwrite``.
    """
    run_dir = args.run_dir
    e = cfg.eval
    default_extractor = e.extractor or dataset_cls.default_extractor
    parts = []
    if args.checkpoint:
        ckpt = _resolve_checkpoint(run_dir, args.checkpoint)
        if ckpt.resolve() != _final_checkpoint(run_dir).resolve():
            parts.append(ckpt.name)
    elif _unfinished_phases(run_dir):
        parts.append(_final_checkpoint(run_dir).name)
    if args.split not in (None, e.split):
        parts.append(args.split)
    if args.limit not in (None, e.limit):
        parts.append(f"limit{args.limit}")
    if args.ablations not in (None, e.ablations):
        parts.append("ablations" if args.ablations else "no-ablations")
    if args.extractor not in (None, default_extractor):
        parts.append(args.extractor)
    if getattr(args, "tokens", "real") != "real":
        parts.append(f"{args.tokens}-tokens")
    if not parts and not args.name:
        return run_dir
    folder = run_dir / "eval" / (args.name or "-".join(parts))
    if folder.resolve().parent != (run_dir / "eval").resolve():
        raise CLIError(f"--name {args.name}: must be a plain folder name")
    if folder.exists() and any(folder.iterdir()):
        if not args.overwrite:
            raise CLIError(
                f"{folder} already holds an evaluation; pass --overwrite to replace it or "
                "--name for another folder"
            )
        shutil.rmtree(folder)
    return ensure_dir(folder, "eval folder")


def cmd_eval(args: argparse.Namespace) -> int:
    from graftkit.progress import is_quiet, progress_bar
    from graftkit.run_eval import evaluate_run

    if args.extractor:
        plugins.get("extractor", args.extractor)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: must be at least 1")
    cfg = _run_config(args.run_dir)
    dataset_cls = plugins.get("dataset", cfg.dataset)
    if args.split is not None and args.split not in dataset_cls.splits:
        raise CLIError(
            f"--split {args.split}: dataset {cfg.dataset!r} has splits {list(dataset_cls.splits)}"
        )
    out = _eval_folder(args, cfg, dataset_cls)
    run = _open_run(args.run_dir, args.checkpoint)
    if out == args.run_dir:
        clear_evaluation(out)
    with progress_bar(disable=is_quiet()) as progress:
        metrics = evaluate_run(
            run,
            split=args.split,
            extractor_name=args.extractor,
            ablations=args.ablations,
            limit=args.limit,
            progress=progress,
            output_dir=out,
            token_source=args.tokens,
        )
    _print_summary(out, metrics)
    return 0


def _read_embeddings(path: Path):
    import zipfile

    import numpy as np

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "embeddings" not in data.files:
                    raise CLIError(
                        f"{path}: no key 'embeddings' in the .npz (keys: {sorted(data.files)})"
                    )
                emb = data["embeddings"]
                z = data["z_mm"] if "z_mm" in data.files else None
        else:
            emb, z = np.load(path, allow_pickle=False), None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CLIError(f"{path}: cannot read embeddings ({err})") from None
    if emb.ndim == 3:
        emb = emb[:, 0]
    if emb.ndim != 2:
        raise CLIError(f"{path}: embeddings must be (N, d) or (N, T, d), got shape {emb.shape}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise CLIError(f"{path}: embeddings of shape {emb.shape} hold no slice")
    if not np.issubdtype(emb.dtype, np.floating):
        raise CLIError(f"{path}: embeddings have dtype {emb.dtype}, expected floating point")
    if z is not None:
        z = np.asarray(z)
        if z.shape != (emb.shape[0],) or not np.isfinite(z).all():
            raise CLIError(
                f"{path}: z_mm must be {emb.shape[0]} finite positions, got shape {z.shape}"
            )
    return emb.astype("float32"), z


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from graftkit.eval.explain import explain_sentences
    from graftkit.eval.generation import generate_reports, generation_settings

    if args.volume is not None:
        if not args.encoder:
            raise CLIError("--volume needs --encoder NAME")
        if not args.volume.exists():
            raise CLIError(f"--volume {args.volume}: no such file or folder")
        encoder_cls = plugins.get("encoder", args.encoder)
        try:
            encoder = encoder_cls(weights=args.weights)
        except (ValueError, OSError, TypeError, ValidationError) as err:
            raise CLIError(f"encoder {args.encoder}: {_one_line_error(err)}") from None
        try:
            encoded = encoder.encode(args.volume)
        except (ValueError, OSError) as err:
            raise CLIError(f"--volume {args.volume}: {err}") from None
        emb, z = np.asarray(encoded.embeddings, dtype=np.float32), encoded.z_mm
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise CLIError(f"--volume {args.volume}: the encoder returned no slice embeddings")
    else:
        emb, z = _read_embeddings(args.embeddings)
    if not np.isfinite(emb).all():
        raise CLIError(f"{args.embeddings or args.volume}: embeddings contain NaN or Inf")
    run = _open_run(args.run_dir, verb="generate")
    dim = run.dataset.embedding_dim
    if emb.shape[1] != dim:
        raise CLIError(
            f"{args.embeddings or args.volume}: embedding dim {emb.shape[1]} != the run's d_v {dim}"
        )
    slices = torch.from_numpy(emb).unsqueeze(0)
    z_mm = torch.from_numpy(
        np.asarray(z if z is not None else np.arange(len(emb)), dtype=np.float32)
    ).unsqueeze(0)
    run.glm.eval()
    with torch.inference_mode():
        tokens = run.glm.encode(slices, z_mm, torch.ones(1, len(emb), dtype=torch.bool))[1]
    gen = generation_settings(run.cfg.eval.generation, greedy=args.greedy)
    text = generate_reports(
        run.glm, run.tokenizer, run.dataset.prompt, tokens, gen, seed=run.cfg.seed
    )[0]
    print(text)
    if args.explain:
        for sentence, zones in explain_sentences(
            run.glm, run.tokenizer, run.dataset.prompt, tokens[0], text
        ):
            print(
                f"- {sentence}\n    zones (1 = first .. {tokens.shape[1]} = last along z): {', '.join(str(z + 1) for z in zones)}"
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
    except (ValueError, OSError, TypeError, ValidationError) as err:
        raise CLIError(f"encoder {args.encoder}: {_one_line_error(err)}") from None
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


def _one_line_error(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            where = ".".join(map(str, e["loc"]))
            parts.append(f"option {where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(err)


def _read_label_input(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows and columns of a UTF-8 CSV (a BOM is dropped); one line naming a bad byte's row."""
    if path.is_dir():
        raise CLIError(f"--input {path}: is a directory, expected a CSV file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # reports may exceed csv's 131,072 chars
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CLIError(f"--input {path}: {err.strerror or err}") from None
    try:
        text = decode_utf8(raw, path)
    except ValueError as err:
        raise CLIError(f"--input {err}") from None
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        rows = list(reader)
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise CLIError(f"--input {path}: not a readable CSV ({err})") from None
    if not columns:
        raise CLIError(f"--input {path}: empty file (no header row)")
    return rows, list(columns)


def cmd_label(args: argparse.Namespace) -> int:
    extractor_cls = plugins.get("extractor", args.extractor)
    rows, columns = _read_label_input(args.input)
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
    except (ValueError, TypeError, OSError, ValidationError) as err:
        raise CLIError(f"extractor {args.extractor}: {_one_line_error(err)}") from None
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
    except (ValueError, ValidationError) as err:
        raise CLIError(f"synth {args.dataset}: {_one_line_error(err)}") from None
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
