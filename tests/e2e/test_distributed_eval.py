"""Evaluation on every process: 2 CPU processes (gloo) evaluating one finished smoke run write
the same ``metrics.json`` figures and generations as one process (docs/distributed.md,
"Evaluation").

The run is trained once in one process; its final checkpoint is then evaluated by
``eval_worker.py`` in one process and under ``torchrun --nproc_per_node 2``, with evaluation
batches of 6 (16 validation volumes: batches of 6, 6 and 4, so one process decodes two batches
and the other one) and sampling on (T = 0.6, top-p 0.9), so that a report's randomness must not
depend on which process decodes it. Equal means equal: the figures, the texts and the grounding
map bit for bit.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cpu_ranks_env, run_graftkit

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = str(Path(__file__).with_name("eval_worker.py"))
OVERRIDES = ["eval.batch_size=6", "eval.generation.do_sample=true"]


@pytest.fixture(scope="module")
def evaluations(e2e_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dist-eval") / "run"
    out = run_graftkit(
        e2e_cache, "run", "ct_rate", "--profile", "smoke", "--no-eval", "--output-dir", str(run_dir)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # fmt: skip
    for name, launcher in (("one", [sys.executable]), ("two", torchrun)):
        proc = subprocess.run(
            [*launcher, WORKER, str(run_dir), name, *OVERRIDES],
            capture_output=True,
            text=True,
            env=cpu_ranks_env(e2e_cache),
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: run_dir / "eval" / name for name in ("one", "two")}


def test_two_processes_write_the_one_process_evaluation(evaluations):
    one, two = evaluations["one"], evaluations["two"]
    assert (two / "generations.jsonl").read_bytes() == (one / "generations.jsonl").read_bytes()
    assert (two / "grounding.json").read_bytes() == (one / "grounding.json").read_bytes()
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert (got["eval"].pop("processes"), want["eval"].pop("processes")) == (2, 1)
    for section in ("eval", "baselines", "nlg", "classifier", "ablation", "ladder", "probe"):
        assert got[section] == want[section], section
    assert set(got) == set(want)


def test_the_sampled_reports_differ_from_batch_to_batch(evaluations):
    """The check above is not vacuous: sampling is on and the reports are not all the same."""
    rows = [json.loads(line) for line in (evaluations["one"] / "generations.jsonl").open()]
    assert len(rows) == 16 and len({r["generated"] for r in rows}) > 1


def test_graftkit_run_on_two_processes_evaluates_on_both(e2e_cache, tmp_path):
    """``graftkit run`` under DDP (profile ``cpu-2proc``): the evaluation after the phases runs on
    both processes and writes what ``graftkit eval`` of the same checkpoint writes in one."""
    run_dir = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # fmt: skip
    proc = subprocess.run(
        [*torchrun, "-m", "graftkit", "--quiet", "run", "ct_rate", "--profile", "cpu-2proc",
         "--output-dir", str(run_dir)],
        capture_output=True, text=True, env=cpu_ranks_env(e2e_cache), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["processes"] == 2 and (run_dir / "report.html").is_file()
    one = run_graftkit(e2e_cache, "eval", str(run_dir), "--name", "one")
    assert one.returncode == 0, one.stderr[-3000:]
    folder = run_dir / "eval" / "one"
    assert (folder / "generations.jsonl").read_text() == (run_dir / "generations.jsonl").read_text()
    want = json.loads((folder / "metrics.json").read_text())
    for section in ("baselines", "nlg", "classifier", "ablation", "ladder", "probe"):
        assert metrics[section] == want[section], section
