"""2 CPU processes (gloo) through phases 1-2: InfoNCE negatives come from both processes."""

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_process_phases_1_2(e2e_cache, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "GRAFTKIT_CACHE": str(e2e_cache),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "graftkit",
        "run",
        "ct_rate",
        "--profile",
        "smoke",
        "--phases",
        "1-2",
        "--no-eval",
        "--output-dir",
        str(run_dir),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "effective contrastive batch 32 (2 process(es) x 16)" in out.stdout
    assert (run_dir / "phase2" / "manifest.json").is_file()
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert (
        len(history) == 2
    )  # one row per epoch of phases 1 and 2, written once (main process only)
