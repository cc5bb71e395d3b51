"""FSDP2 on 2 CPU processes (gloo): the smoke profile's phases 1-4 with the LLM sharded, killed
in phase 3 and resumed, against the same run under DDP (docs/distributed.md, "FSDP").

FSDP and DDP take the same steps on the same batches (each process its shard of the volumes),
and both average the gradients across processes: the losses agree up to the order of the
floating-point sums in the two collectives. DDP's checkpoints hold the one-process model's
tensors, so they are the shapes a sharded run must write.
"""

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from .conftest import cpu_ranks_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TIMEOUT = 600  # seconds per launch: a hang (a collective one process never joins) fails
RUN = ["-m", "graftkit", "run", "ct_rate"]
# the smoke profile switches the LARS-scaled projector rate off; on here, it reads sharded weights
LARS = ["--set", "phases.p3.callbacks.lars_projector_lr={min: 1.0, max: 30.0}"]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]  # fmt: skip


def _launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants: torchrun starts each worker in a session of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.wait()
        pytest.fail(f"hung for {TIMEOUT} s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _history(run_dir: Path) -> dict[tuple[int, int], dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {(r["phase"], r["epoch"]): r for r in rows if "epoch" in r}


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def ddp_run(e2e_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    log = run_dir.parent / "log.txt"
    cmd = _torchrun(
        *RUN, *LARS, "--profile", "cpu-2proc", "--no-eval", "--output-dir", str(run_dir)
    )
    _finish(_launch(cmd, cpu_ranks_env(e2e_cache), log), log)
    return run_dir


@pytest.fixture(scope="module")
def fsdp_run(ddp_run, e2e_cache, tmp_path_factory):
    """The FSDP run, SIGKILLed (every process) after its first phase-3 epoch checkpoint, then
    resumed with ``--resume``; returns the run folder and both outputs."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    cmd = _torchrun(*RUN, *LARS, "--profile", "cpu-2proc-fsdp", "--output-dir", str(run_dir))
    first_log, resumed_log = run_dir.parent / "first.txt", run_dir.parent / "resumed.txt"
    proc = _launch(cmd, cpu_ranks_env(e2e_cache), first_log)
    marker = run_dir / "checkpoints" / "phase3" / "last" / "manifest.json"
    deadline = time.time() + TIMEOUT
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"ended before the kill:\n{first_log.read_text()[-3000:]}"
    _kill_tree(proc.pid)
    proc.wait()
    time.sleep(1)  # the workers are not our children: give their SIGKILL time to land
    assert not (run_dir / "phase3" / "manifest.json").exists()
    resumed = _finish(
        _launch([*cmd, "--resume"], cpu_ranks_env(e2e_cache), resumed_log), resumed_log
    )
    return run_dir, first_log.read_text(), resumed


def test_the_llm_is_sharded_across_the_two_processes(fsdp_run):
    _, first, _ = fsdp_run
    found = re.search(r"fsdp: (\d+) units .* this process holds (\d+) of the LLM's (\d+)", first)
    assert found, first[-3000:]
    units, local, total = map(int, found.groups())
    assert units == 3  # the smoke LLM's 2 decoder layers + the root
    assert 0.45 < local / total < 0.55  # an odd row count leaves one process a row more


def test_resumed_run_completes_phases_1_4_and_evaluates_the_sharded_model(fsdp_run):
    run_dir, _, resumed = fsdp_run
    assert "phase 3: resumed after epoch 1" in resumed
    assert "skipped under FSDP" not in resumed
    for n in (1, 2, 3, 4):
        assert (run_dir / f"phase{n}" / "manifest.json").is_file(), n
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["processes"] == 2 and metrics["eval"]["volumes"] == 16
    assert (run_dir / "report.html").is_file()


def test_the_sharded_evaluation_is_the_one_process_evaluation(fsdp_run, e2e_cache):
    """The FSDP run's own evaluation (both processes, the LLM sharded, synced decoding) against
    ``graftkit eval`` of the same checkpoint in one process: the same reports and label scores;
    the teacher-forced NLL to float rounding (the sharded forward sums in another order)."""
    run_dir, _, _ = fsdp_run
    out = subprocess.run(
        [sys.executable, "-m", "graftkit", "--quiet", "eval", str(run_dir), "--name", "one"],
        capture_output=True,
        text=True,
        env=cpu_ranks_env(e2e_cache),
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    one = run_dir / "eval" / "one"
    assert (one / "generations.jsonl").read_text() == (run_dir / "generations.jsonl").read_text()
    got = json.loads((run_dir / "metrics.json").read_text())
    want = json.loads((one / "metrics.json").read_text())
    for key in ("macro_f1", "micro_f1", "weighted_f1", "crg", "per_class"):
        assert got["eval"][key] == want["eval"][key], key
    for mode in ("real", "zero", "shuffle", "random"):
        assert got["ablation"][mode] == want["ablation"][mode], mode
    for mode, parts in want["ablation"]["nll"].items():
        for part in ("finding", "other"):
            if math.isfinite(parts[part]):
                assert got["ablation"]["nll"][mode][part] == pytest.approx(parts[part], rel=1e-5)


def test_checkpoints_hold_full_bridge_tensors_close_to_ddp(fsdp_run, ddp_run):
    run_dir, _, _ = fsdp_run
    for n in (1, 2, 3, 4):
        got, want = (_tensors(d / f"phase{n}" / "model.safetensors") for d in (run_dir, ddp_run))
        assert {k: tuple(v.shape) for k, v in got.items()} == {
            k: tuple(v.shape) for k, v in want.items()
        }, n
        for name, tensor in got.items():  # measured: at most 1e-5 of the tensor's largest entry
            scale = float(want[name].nan_to_num().abs().max()) + 1e-6
            torch.testing.assert_close(
                tensor, want[name], rtol=0, atol=1e-4 * scale, equal_nan=True, msg=f"{n} {name}"
            )
    adapter = run_dir / "phase4" / "pretrained" / "adapter_model.safetensors"
    assert (
        _tensors(adapter).keys()
        == _tensors(ddp_run / "phase4" / "pretrained" / "adapter_model.safetensors").keys()
    )


def test_losses_are_finite_and_match_ddp(fsdp_run, ddp_run):
    run_dir, _, _ = fsdp_run
    fsdp, ddp = _history(run_dir), _history(ddp_run)
    assert sorted(fsdp) == sorted(ddp) == [(1, 1), (2, 1), (3, 1), (3, 2), (4, 1)]
    for key, want in ddp.items():
        names = [k for k in want if k.startswith(("train_", "valid_", "gen_f1"))]
        assert names, key
        for name in names:
            assert math.isfinite(fsdp[key][name]), (key, name)
            assert fsdp[key][name] == pytest.approx(want[name], rel=1e-4, abs=1e-5), (key, name)


def test_a_run_starting_at_phase_4_matches_the_full_run(fsdp_run, e2e_cache, tmp_path):
    """Phase 4 first in its process: EWC takes its anchor before the model is sharded (its
    penalty used to subtract a plain tensor from a sharded one and fail)."""
    run_dir, _, _ = fsdp_run
    log = tmp_path / "log.txt"
    cmd = _torchrun(
        *RUN, "--profile", "cpu-2proc-fsdp", "--phases", "4", "--no-eval",
        "--init-from", str(run_dir / "phase3"), "--output-dir", str(tmp_path / "p4"),
    )  # fmt: skip
    _finish(_launch(cmd, cpu_ranks_env(e2e_cache), log), log)
    got, want = _history(tmp_path / "p4")[(4, 1)], _history(run_dir)[(4, 1)]
    names = [k for k in want if k.startswith(("train_", "valid_"))]
    assert "train_ewc" in names
    for name in names:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name
