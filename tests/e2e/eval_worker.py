"""Evaluate a finished run's final checkpoint in this process group (torchrun or plain python)
into ``RUN/eval/NAME``: ``eval_worker.py RUN NAME [KEY=VALUE ...]`` (dotted config overrides,
values read as ``--set`` reads them). Every process evaluates its share; the main one writes and
prints the evaluation's wall time and each process's CPU time."""

import sys
import time
from pathlib import Path

from graftkit.config import parse_value
from graftkit.curriculum.engine import open_run
from graftkit.run_eval import evaluate_run
from graftkit.rundir import RunDir

rundir, name = RunDir(Path(sys.argv[1])), sys.argv[2]
overrides = dict(pair.split("=", 1) for pair in sys.argv[3:])
run = open_run(
    rundir, rundir.final_checkpoint(), **{k: parse_value(v) for k, v in overrides.items()}
)
out = rundir.evaluation(name)
if run.main:
    out.path.mkdir(parents=True, exist_ok=True)
start, cpu = time.perf_counter(), time.process_time()
evaluate_run(run, out=out)
cpu = time.process_time() - cpu  # this process's own CPU seconds: the machine's load left out
run.accelerator.wait_for_everyone()
print(
    f"evaluation: {time.perf_counter() - start:.1f} s wall, {cpu:.1f} s CPU on process "
    f"{run.accelerator.process_index} of {run.accelerator.num_processes}",
    flush=True,
)
# let gloo free its last collective's work before exit (see tests/align/infonce_ddp_worker.py)
run.accelerator.wait_for_everyone()
run.accelerator.end_training()
