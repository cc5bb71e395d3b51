"""2 CPU processes (gloo): a batch that fails to load on one process only. DDP all-reduces the
gradients of every step, so that process skipping the step alone used to hang the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_a_batch_lost_on_one_process_is_skipped_by_all_and_counted(e2e_cache, tmp_path):
    worker = str(Path(__file__).with_name("skip_worker.py"))
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "GRAFTKIT_CACHE": str(e2e_cache),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, worker, str(out), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "phase 1 epoch 1: 1 step(s) skipped by every process" in proc.stdout
    result = json.loads(out.read_text())
    assert result["processes"] == 2
    assert len(result["damaged"]) == 8
    items = result["data"]["items"]
    assert sorted(item["name"] for item in items) == sorted(result["damaged"])
    assert all("non-finite embedding" in item["reason"] for item in items), items
    assert result["data"]["skipped"] == 8
    assert result["phases"]["1"]["best"] is not None
