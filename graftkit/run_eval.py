"""Evaluate a trained run: the driver between a curriculum :class:`~graftkit.curriculum.engine.Run`
and :func:`graftkit.eval.evaluate.evaluate` (``graftkit run`` after its phases, ``graftkit eval``).

It picks the volumes (``eval.split``, ``eval.limit``), tells the evaluation which heads the
phases run trained, which text the last phase used and which phase checkpoints to probe, and
writes what it found: ``metrics.json`` (merged into the run's, or a fresh one in an eval
folder), ``generations.jsonl``, ``grounding.json`` and ``report.html``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graftkit.checkpoint import is_complete
from graftkit.eval.evaluate import Evaluation, evaluate
from graftkit.io import atomic_write_text


def phases_run(run) -> list[int]:
    """The run's phases whose final checkpoint (``RUN/phase{N}``) is complete."""
    return [n for n in run.cfg.phases.numbers if is_complete(Path(run.run_dir) / f"phase{n}")]


def evaluate_run(
    run,
    split: str | None = None,
    extractor_name: str | None = None,
    ablations: bool | None = None,
    limit: int | None = None,
    progress: Any = None,
    output_dir: Path | None = None,
    token_source: str = "real",
) -> dict[str, Any]:
    """Evaluate the run's current model on ``split`` (default ``eval.split``) and write the
    results to ``output_dir`` (default: the run directory); returns the metrics.

    Arguments left ``None`` take the run's ``eval`` config. Another folder than the run
    directory gets a fresh ``metrics.json`` holding this evaluation and the run's data summary
    only, so no file mixes two evaluations.
    """
    updates = {"split": split, "extractor": extractor_name, "ablations": ablations}
    config = run.cfg.eval.model_copy(update={k: v for k, v in updates.items() if v is not None})
    if config.split not in run.dataset.splits:
        raise ValueError(
            f"unknown split {config.split!r}; the dataset has {list(run.dataset.splits)}"
        )
    volumes = run.train if config.split == run.dataset.splits[0] else run.valid
    volumes = volumes[: (limit or config.limit or len(volumes))]
    done = phases_run(run)
    with run.accelerator.autocast():
        evaluation = evaluate(
            run.glm,
            run.tokenizer,
            run.dataset,
            volumes,
            config,
            train=run.train,
            seed=run.cfg.seed,
            max_slices=run.cfg.data.max_slices,
            trained_losses={loss for n in done for loss in run.cfg.phases.get(n).losses},
            nll_text=run.cfg.phases.get(max(done)).text if done else "positive_findings",
            probe_checkpoints={f"p{n}": Path(run.run_dir) / f"phase{n}" for n in done},
            token_source=token_source,
            progress=progress,
        )
    evaluation.metrics["eval"]["split"] = config.split
    if "checkpoint" in run.summary:
        evaluation.metrics["eval"]["checkpoint"] = run.summary["checkpoint"]
    if run.main:
        write_evaluation(run, evaluation, Path(output_dir or run.run_dir))
    return evaluation.metrics


def write_evaluation(run, evaluation: Evaluation, out: Path) -> None:
    """``generations.jsonl``, ``grounding.json``, ``metrics.json`` and ``report.html`` in ``out``."""
    from graftkit.eval.report import write_report

    rows = "".join(json.dumps(row) + "\n" for row in evaluation.generations)
    atomic_write_text(out / "generations.jsonl", rows)
    if evaluation.grounding is not None:
        atomic_write_text(out / "grounding.json", json.dumps(evaluation.grounding, indent=2))
    if out == Path(run.run_dir):
        run.update_metrics(evaluation.metrics)
    else:
        fresh = {"data": run.summary.get("data", {}), **evaluation.metrics}
        atomic_write_text(out / "metrics.json", json.dumps(fresh, indent=2))
    write_report(out)
