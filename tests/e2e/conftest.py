import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def e2e_cache(tmp_path_factory) -> Path:
    """One graftkit cache (synthetic cohort, language prior) shared by the end-to-end tests."""
    return tmp_path_factory.mktemp("e2e-cache")


def cpu_ranks_env(cache: Path) -> dict[str, str]:
    """The environment of a 2-process CPU launch (gloo): the shared cache, accelerate on the CPU
    (``--cpu`` alone would run one process) and one torch thread per rank on 2 cores."""
    return {
        **os.environ,
        "GRAFTKIT_CACHE": str(cache),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def graftkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "graftkit", "--quiet", *args]


def run_graftkit(cache: Path, *args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAFTKIT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        graftkit_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout, **kw
    )
