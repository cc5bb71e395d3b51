"""2 CPU processes (gloo) through phases 1-2: InfoNCE negatives come from both processes, the
losses are the one-process losses where the maths says they must be."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cpu_ranks_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_process_phases_1_2(e2e_cache, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "GRAFTKIT_CACHE": str(e2e_cache),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
    }
    cmd = _torchrun(
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
    )
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "effective contrastive batch 32 (2 process(es) x 16)" in out.stdout
    assert (run_dir / "phase2" / "manifest.json").is_file()
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert (
        len(history) == 2
    )  # one row per epoch of phases 1 and 2, written once (main process only)


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]


def test_validation_infonce_is_the_one_process_value(e2e_cache, tmp_path):
    """Every process validates all volumes; gathering their identical negatives used to inflate
    the validation InfoNCE (6.00 in one process, 6.69 in two)."""
    worker = str(Path(__file__).with_name("validate_worker.py"))
    env = cpu_ranks_env(e2e_cache)
    rows = {}
    for name, cmd in (
        ("one", [sys.executable, worker]),
        ("two", _torchrun(worker)),
    ):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [*cmd, str(out), str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[name] = json.loads(out.read_text())
    assert (rows["one"]["processes"], rows["two"]["processes"]) == (1, 2)
    for key in ("valid_infonce", "valid_mmd", "valid_total"):
        assert rows["two"][key] == pytest.approx(rows["one"][key], rel=1e-6), key


def test_two_processes_train_as_one_with_the_same_effective_batch(e2e_cache, tmp_path):
    """2 processes x batch 12 take the same steps as 1 process x batch 24 (make_loader shards the
    volumes so that each step's union is the one-process batch; DDP averages the gradients and
    InfoNCE gathers the negatives): the per-sample losses and the training InfoNCE match. Dropout
    is off (the processes draw different masks); MMD, a kernel statistic over the batch, is left
    out. Validation InfoNCE takes its negatives from the per-process batch (12 here, 24 in one
    process), whatever the number of processes: the test above holds it equal at equal batch."""
    common = [
        "graftkit", "--quiet", "run", "ct_rate", "--profile", "smoke", "--phases", "1-2",
        "--no-eval", "--set", "bridge.dropout=0", "--set", "bridge.predictor_dropout=0",
        "--set", "phases.p1.losses={bce: 1.5, mil: 1.0, orth: 1.0}",
        "--set", "phases.p2.losses={infonce: 1.0}",
    ]  # fmt: skip
    env = cpu_ranks_env(e2e_cache)
    histories = {}
    for name, batch, cmd in (
        ("one", 24, [sys.executable, "-m", *common]),
        ("two", 12, _torchrun("-m", *common)),
    ):
        sizes = ["--set", f"phases.p1.batch_size={batch}", "--set", f"phases.p2.batch_size={batch}"]
        proc = subprocess.run(
            [*cmd, *sizes, "--output-dir", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        histories[name] = [
            json.loads(line)
            for line in (tmp_path / name / "history.jsonl").read_text().splitlines()
        ]
    for one, two in zip(histories["one"], histories["two"], strict=True):
        keys = [k for k in one if k.startswith(("train_", "valid_"))]
        if one["phase"] == 2:
            keys = [k for k in keys if k not in ("valid_infonce", "valid_total")]
        assert keys, one
        for key in keys:
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (one["phase"], key)
