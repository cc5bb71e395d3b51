"""The two pipelines the verbs share, as library calls: training a run and evaluating it
(``graftkit run``), and reopening a finished run on one of its checkpoints (``graftkit eval``,
``generate``, ``export``). The commands check their flags and hold the run folder's lock; these
functions do the work (docs/design.md, "The command layer")."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from graftkit.errors import CLIError
from graftkit.rundir import RunDir, describe_checkpoint


def print_summary(out) -> None:
    """The evaluation's results: printed with ``--quiet`` too (it silences progress only)."""
    from graftkit.run_eval import format_summary

    print("\n".join(format_summary(out)))


def train_and_evaluate(
    cfg,
    rundir: RunDir,
    phases: list[int],
    *,
    init_from: Path | None = None,
    warm_bridge: Path | None = None,
    resume: bool = False,
    evaluate: bool = True,
    config_changes: dict[str, Any] | None = None,
    started: float | None = None,
) -> None:
    """Prepare the run (cohort, prior, text space), run ``phases`` of the curriculum, evaluate
    the last one on every process (the main one writes ``metrics.json`` and the report and
    prints the summary) and record the total time since ``started``."""
    from graftkit.curriculum.engine import prepare_run, run_curriculum
    from graftkit.progress import is_quiet, progress_bar
    from graftkit.run_eval import evaluate_run

    started = time.time() if started is None else started
    with progress_bar(disable=is_quiet()) as progress:
        run = prepare_run(cfg, rundir, progress=progress)
    if config_changes and run.main:
        rundir.append_history(
            {"phase": phases[0], "event": "config_change", "changes": config_changes}
        )
    run_curriculum(run, phases, init_from=init_from, warm_bridge=warm_bridge, resume=resume)
    if evaluate:
        # every process evaluates its share (a sharded FSDP model included); the main one writes
        run.summary["checkpoint"] = rundir.checkpoint_info(rundir.phase(phases[-1]))
        if run.main:
            rundir.clear()
        with progress_bar(disable=is_quiet() or not run.main) as progress:
            evaluate_run(run, progress=progress)
        if run.main:
            print_summary(rundir)
    run.update_metrics({"timing": {"total_seconds": round(time.time() - started, 1)}})
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


def open_finished_run(rundir: RunDir, checkpoint: str | None, verb: str):
    """The finished run's model on ``checkpoint`` (default its last complete phase); the
    checkpoint used is named on stderr, and a run with a phase started but not finished is
    warned about, since its last complete phase is an earlier one."""
    from graftkit.checkpoint import CheckpointError
    from graftkit.curriculum.engine import open_run
    from graftkit.progress import is_quiet, progress_bar

    rundir.read_config()  # not a run folder: say so before anything else
    ckpt = rundir.resolve_checkpoint(checkpoint)
    info = rundir.checkpoint_info(ckpt)
    damaged = rundir.damaged_phases() if checkpoint is None else {}
    unfinished = [n for n in rundir.unfinished_phases() if n not in damaged]
    for damage in damaged.values():
        print(
            f"graftkit {verb}: warning: {damage}; using {describe_checkpoint(info)}",
            file=sys.stderr,
        )
    if unfinished:
        print(
            f"graftkit {verb}: warning: {rundir.path} is incomplete (phase(s) {unfinished} "
            f"started but not finished); using {describe_checkpoint(info)}",
            file=sys.stderr,
        )
    elif not damaged and not is_quiet():
        print(f"graftkit {verb}: using {describe_checkpoint(info)}", file=sys.stderr)
    with progress_bar(disable=is_quiet()) as progress:
        try:
            run = open_run(rundir, ckpt, progress=progress)
        except CheckpointError as err:
            raise CLIError(str(err)) from None
    if unfinished:
        run.summary["checkpoint"]["run_incomplete"] = (
            f"phase(s) {unfinished} started but not finished"
        )
    if damaged:
        run.summary["checkpoint"]["run_damaged"] = damaged
    return run
