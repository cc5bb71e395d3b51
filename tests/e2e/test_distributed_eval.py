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
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_graftkit

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = str(Path(__file__).with_name("eval_worker.py"))
OVERRIDES = ["eval.batch_size=6", "eval.generation.do_sample=true"]


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GRAFTKIT_CACHE": str(cache),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


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
            env=_env(e2e_cache),
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
