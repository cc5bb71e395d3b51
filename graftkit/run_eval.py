"""Evaluate a trained run: the driver between a curriculum :class:`~graftkit.curriculum.run.Run`
and :func:`graftkit.eval.evaluate.evaluate` (``graftkit run`` after its phases, ``graftkit eval``).

It picks the volumes (``eval.split``, ``eval.limit``), tells the evaluation which heads the
phases run trained (from the loss records), which text the last phase used and which phase
checkpoints to probe, and writes what it found into an :class:`~graftkit.rundir.EvalDir`:
``metrics.json`` (merged into the run's, or a fresh one in an eval folder), ``generations.jsonl``,
``grounding.json`` and ``report.html``. :func:`evaluation_folder` is the policy of where an
evaluation goes; :func:`format_summary` the lines a command prints about it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from graftkit.curriculum.objective import trained_heads
from graftkit.eval.evaluate import Evaluation, evaluate
from graftkit.io import atomic_write_text
from graftkit.rundir import EVALUATION_KEYS, EvalDir, RunDir, RunDirError, describe_checkpoint


def head_checkpoints(run, phases: list[int]) -> dict[str, Path]:
    """For each bridge head (``cls``, ``mil``, ``llm_cls``), the checkpoint of the last of
    ``phases`` that trained it: one whose losses train the head with the ``heads`` group
    trainable. A later phase that trains the predictor or recalibrates moves the tokens under a
    head it does not train, so the head is scored on the tokens it was trained on."""
    out = {}
    for n in phases:
        phase = run.cfg.phases.get(n)
        if "heads" in phase.trainable:
            for head in trained_heads(phase.losses):
                out[head] = run.rundir.phase(n)
    return out


def evaluate_run(
    run,
    split: str | None = None,
    extractor_name: str | None = None,
    ablations: bool | None = None,
    limit: int | None = None,
    progress: Any = None,
    out: EvalDir | None = None,
    token_source: str = "real",
) -> dict[str, Any]:
    """Evaluate the run's current model on ``split`` (default ``eval.split``) and write the
    results to ``out`` (default: the run folder); returns the metrics.

    Arguments left ``None`` take the run's ``eval`` config. Another folder than the run folder
    gets a fresh ``metrics.json`` holding this evaluation and the run's data summary only, so no
    file mixes two evaluations.

    Every process of a distributed run calls this: the model's work is split across the
    processes and merged (:mod:`graftkit.eval.shard`; a sharded FSDP model with its root unit
    gathered), and the main process writes the files.
    """
    from graftkit.curriculum import fsdp
    from graftkit.eval.shard import from_accelerator

    updates = {"split": split, "extractor": extractor_name, "ablations": ablations}
    config = run.cfg.eval.model_copy(update={k: v for k, v in updates.items() if v is not None})
    if config.split not in run.dataset.splits:
        raise ValueError(
            f"unknown split {config.split!r}; the dataset has {list(run.dataset.splits)}"
        )
    volumes = run.train if config.split == run.dataset.splits[0] else run.valid
    volumes = volumes[: (limit or config.limit or len(volumes))]
    done = run.rundir.complete_phases(run.cfg.phases.numbers)
    evaluated = run.summary.get("checkpoint", {}).get("phase")
    upto = [n for n in done if evaluated is None or n <= evaluated]
    losses = {loss for n in done for loss in run.cfg.phases.get(n).losses}
    sharding = from_accelerator(run.accelerator, synced=fsdp.is_sharded(run.objective))
    with run.accelerator.autocast(), fsdp.unsharded(run.glm, run.objective):
        evaluation = evaluate(
            run.glm,
            run.tokenizer,
            run.dataset,
            volumes,
            config,
            train=run.train,
            seed=run.cfg.seed,
            max_slices=run.cfg.data.max_slices,
            trained_heads=trained_heads(losses),
            nll_text=run.cfg.phases.get(max(done)).text if done else "positive_findings",
            probe_checkpoints={f"p{n}": run.rundir.phase(n) for n in done},
            head_checkpoints=head_checkpoints(run, upto),
            token_source=token_source,
            prompt=run.prompt,
            progress=progress if run.main else None,
            sharding=sharding,
        )
    evaluation.metrics["eval"]["split"] = config.split
    evaluation.metrics["eval"]["processes"] = sharding.world
    if "checkpoint" in run.summary:
        evaluation.metrics["eval"]["checkpoint"] = run.summary["checkpoint"]
    if run.main:
        write_evaluation(run, evaluation, out or run.rundir)
    return evaluation.metrics


#: The ``metrics.json`` sections an evaluation writes: each is replaced whole when the run's
#: own evaluation is written again, so no key of an earlier one survives beside the new ones.
EVALUATION_SECTIONS = (*EVALUATION_KEYS, "baselines", "nlg")


def write_evaluation(run, evaluation: Evaluation, out: EvalDir) -> None:
    """``generations.jsonl``, ``grounding.json``, ``metrics.json`` and ``report.html`` in ``out``;
    the report reads the run's history and config for its loss curves."""
    from graftkit.eval.report import write_report

    rows = "".join(json.dumps(row) + "\n" for row in evaluation.generations)
    atomic_write_text(out.generations, rows)
    if evaluation.grounding is not None:
        atomic_write_text(out.grounding, json.dumps(evaluation.grounding, indent=2))
    if out.is_run_folder:
        metrics = out.read_metrics()
        for key in EVALUATION_SECTIONS:
            metrics.pop(key, None)
        out.write_metrics({**metrics, **evaluation.metrics})
    else:
        out.write_metrics({"data": run.summary.get("data", {}), **evaluation.metrics})
    write_report(out.path, training_dir=out.run.path)


def evaluation_folder(
    rundir: RunDir,
    cfg,
    default_extractor: str,
    *,
    checkpoint: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    ablations: bool | None = None,
    extractor: str | None = None,
    tokens: str = "real",
    name: str | None = None,
    overwrite: bool = False,
) -> EvalDir:
    """Where an evaluation goes: the run folder for the run's own evaluation (its config's
    split, limit, ablations and extractor, on its final checkpoint), else ``RUN/eval/NAME``
    (``name``, or what differs: ``phase3-limit10``).

    A run folder never holds a mix of two evaluations: a differing one gets its own folder, and
    an existing folder is replaced only with ``overwrite``.
    """
    e = cfg.eval
    parts = []
    if checkpoint:
        chosen = rundir.resolve_checkpoint(checkpoint)
        if chosen.resolve() != rundir.final_checkpoint().resolve():
            parts.append(chosen.name)
    elif rundir.unfinished_phases():
        parts.append(rundir.final_checkpoint().name)
    if split not in (None, e.split):
        parts.append(split)
    if limit not in (None, e.limit):
        parts.append(f"limit{limit}")
    if ablations not in (None, e.ablations):
        parts.append("ablations" if ablations else "no-ablations")
    if extractor not in (None, e.extractor or default_extractor):
        parts.append(extractor)
    if tokens != "real":
        parts.append(f"{tokens}-tokens")
    if not parts and not name:
        return rundir
    folder = rundir.evaluation(name or "-".join(parts))
    if folder.path.exists() and any(folder.path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{folder.path} already holds an evaluation; pass --overwrite to replace it or "
                "--name for another folder"
            )
        shutil.rmtree(folder.path)
    folder.path.mkdir(parents=True, exist_ok=True)
    return folder


def _zero_drop_line(ablation: dict[str, Any]) -> str:
    """What zeroing the visual tokens removes, or why that share means nothing here: when zeroed
    tokens score as well as the image's own (``zero_drop <= 0``, e.g. both 0 after a run too
    short to learn), the decoder does not read the tokens and there is no share of F1 to remove
    (the ratio of two chance-level F1s, -46.7 %, would read as a fault)."""
    real, zero = ablation["real"]["macro_f1"], ablation["zero"]["macro_f1"]
    if real > 0 and ablation["zero_drop"] > 0:
        return (
            f"zeroing the visual tokens removes {100 * ablation['zero_drop']:.1f}% of generation F1"
        )
    return (
        f"zeroing the visual tokens: n/a (zeroed {zero:.3f} >= real {real:.3f}: the decoder "
        "does not read the visual tokens yet)"
    )


def format_summary(out: EvalDir) -> list[str]:
    """The lines a command prints about the evaluation written to ``out``."""
    full = out.read_metrics()
    e = full["eval"]
    lines = [f"\neval on {e['volumes']} {e['split']} volumes (extractor {e['extractor']}):"]
    if "checkpoint" in e:
        lines.append(f"  checkpoint {describe_checkpoint(e['checkpoint'])}")
    ci = (e.get("ci") or {}).get("macro_f1") or {}
    interval = f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci.get("low") is not None else ""
    lines.append(
        f"  generation macro F1 {e['macro_f1']:.3f}{interval}  precision "
        f"{e['macro_precision']:.3f}  recall {e['macro_recall']:.3f}"
    )
    if "micro_f1" in e:
        lines.append(
            f"  micro F1 {e['micro_f1']:.3f}  weighted F1 {e['weighted_f1']:.3f}  "
            f"CRG {_num(e.get('crg'))}"
        )
    base = full.get("baselines") or {}
    if base.get("all_positive"):
        every, chance = base["all_positive"], base.get("prevalence")
        line = (
            f"  baselines: every finding named macro F1 {every['macro_f1']:.3f} "
            f"(CRG {_num(every.get('crg'))})"
        )
        if chance:
            line += (
                f", findings at training prevalence {chance['macro_f1']:.3f} "
                f"(CRG {_num(chance.get('crg'))})"
            )
        lines.append(line)
    if "oracle" in full:
        o = full["oracle"]["macro_f1"]
        lines.append(f"  oracle macro F1 {o:.3f}  (generation / oracle = {e['macro_f1'] / o:.2f})")
    if e.get("skill") is not None:
        lines.append(f"  skill {e['skill']:.2f}  (0 = every finding named, 1 = the cohort oracle)")
    nlg = full.get("nlg")
    if nlg:
        lines.append(
            "  text vs reference: "
            + "  ".join(
                f"{label} {_num(nlg.get(key))}"
                for key, label in (
                    ("bleu_1", "BLEU-1"),
                    ("bleu_4", "BLEU-4"),
                    ("meteor", "METEOR"),
                    ("rouge_l", "ROUGE-L"),
                    ("cider", "CIDEr-D"),
                )
            )
        )
    if "ablation" in full:
        a = full["ablation"]
        lines.append(
            "  ablation macro F1: "
            + ", ".join(
                f"{m} {a[m]['macro_f1']:.3f}" for m in ("real", "zero", "shuffle", "random")
            )
        )
        lines.append(f"  {_zero_drop_line(a)}")
    if full.get("ladder"):
        lines.append("  quality ladder (macro F1; where the signal is lost):")
        for row in full["ladder"]:
            share = row.get("fraction_of_oracle")
            tail = f"  ({share:.2f} x oracle)" if share is not None else ""
            lines.append(f"    {row['stage']:<42} {row['macro_f1']:.3f}{tail}")
    lines.append(f"  results: {out.path}  (report: {out.report})")
    return lines


def generate_case(run, embeddings, z_mm=None, greedy: bool = False):
    """One report of the run's model for one case's slice embeddings ``[N, d]`` (positions in mm,
    default 1 per slice), with the run's prompt and decoding (``greedy``: argmax instead); returns
    ``(text, visual tokens [1, K, d_l])`` (``graftkit generate``)."""
    import numpy as np
    import torch

    from graftkit.eval.generation import generate_reports, generation_settings

    slices = torch.from_numpy(np.asarray(embeddings, dtype=np.float32)).unsqueeze(0)
    positions = np.arange(len(embeddings)) if z_mm is None else z_mm
    z = torch.from_numpy(np.asarray(positions, dtype=np.float32)).unsqueeze(0)
    run.glm.eval()
    with torch.inference_mode():
        tokens = run.glm.encode(slices, z, torch.ones(1, len(embeddings), dtype=torch.bool))[1]
    gen = generation_settings(run.cfg.eval.generation, greedy=greedy)
    text = generate_reports(run.glm, run.tokenizer, run.prompt, tokens, gen, seed=run.cfg.seed)[0]
    return text, tokens


def _num(value: Any) -> str:
    """A score as printed: three decimals, or ``n/a`` where it could not be computed."""
    return "n/a" if value is None else f"{value:.3f}"
