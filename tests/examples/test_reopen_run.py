"""A finished digits run is self-contained: `graftkit generate` and `graftkit eval` of it under
another GRAFTKIT_CACHE train neither the language prior nor the row encoder, and give what they
give under the run's own cache; a file the run folder lost is one line with exit code 2.

The run is made with ``--quiet`` into a pipe, as a batch job would: the results summary still
prints, and no library draws its progress bars into the log.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _digits_installed() -> bool:
    points = importlib.metadata.entry_points(group="graftkit")
    return any(ep.name == "digits" for ep in points)


def _graftkit(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAFTKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("GRAFTKIT_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "graftkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    if not _digits_installed():
        pytest.skip(
            "the digits example plugin is not installed (pip install -e examples/plugin_digits)"
        )
    root = tmp_path_factory.mktemp("reopen")
    run = root / "run"
    out = _graftkit(
        root / "own-cache",
        "--quiet",
        "run",
        "digits",
        "--profile",
        "digits-smoke",
        "--output-dir",
        str(run),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from sklearn.datasets import load_digits

    np.save(root / "digit.npy", load_digits().images[8])
    return root, run, out


def _trained(cache: Path) -> list[str]:
    """What a cache holds that only training makes: a prior folder, a row-encoder file."""
    return sorted(
        str(p.relative_to(cache))
        for p in [*cache.glob("prior/prior-*"), *cache.glob("data/digits/digits_encoder_*")]
    )


def test_quiet_keeps_the_summary_and_keeps_library_bars_out_of_the_log(finished):
    _, run, out = finished
    assert "generation macro F1" in out.stdout and f"results: {run}" in out.stdout
    assert "Loading weights" not in out.stdout + out.stderr
    assert "epoch 1:" not in out.stdout  # progress lines are what --quiet silences
    assert (run / "prior" / "prior.json").is_file()
    assert (run / "dataset" / "row_encoder.pt").is_file()


def test_generate_and_eval_under_another_cache_train_nothing(finished):
    root, run, _ = finished
    assert _trained(root / "own-cache")  # the run itself trained both
    generate = ["generate", str(run), "--volume", str(root / "digit.npy"), "--encoder"]
    generate += ["digits-rows", "--weights", str(run)]
    own = _graftkit(root / "own-cache", *generate)
    assert own.returncode == 0, own.stderr[-3000:]
    elsewhere = root / "other-cache"
    other = _graftkit(elsewhere, *generate)
    assert other.returncode == 0, other.stderr[-3000:]
    assert other.stdout == own.stdout and other.stdout.strip()
    evaluated = _graftkit(elsewhere, "--quiet", "eval", str(run), "--limit", "8", "--no-ablations")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "generation macro F1" in evaluated.stdout
    assert _trained(elsewhere) == []
    assert "holds no copy" not in other.stderr + other.stdout + evaluated.stdout


def test_a_file_the_run_folder_lost_is_one_line(finished, tmp_path):
    root, run, _ = finished
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    (damaged / "dataset" / "row_encoder.pt").write_bytes(b"not the encoder")
    np.save(root / "case.npy", np.zeros((8, 32), np.float32))
    out = _graftkit(
        tmp_path / "cache", "generate", str(damaged), "--embeddings", str(root / "case.npy")
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("graftkit generate: error: ") and "altered since the run" in lines[-1]
    )
    assert "Traceback" not in out.stderr
    assert _trained(tmp_path / "cache") == []
