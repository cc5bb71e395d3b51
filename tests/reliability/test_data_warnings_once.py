"""A data warning is printed once per ``graftkit run``: the CT-RATE plugin both records it in
``dataset.warnings`` (echoed as ``data: warning: ...``, kept in metrics.json) and raises it as a
Python warning for library users, which used to print it a second time on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from graftkit_ct_rate import layout
from graftkit_ct_rate.synth import synthesize

from graftkit.curriculum.engine import warnings_echoed_once

pytestmark = pytest.mark.slow

FALLBACK = "no usable ZSpacing for 1 volume(s)"


def test_z_spacing_fallback_is_printed_once(tmp_path: Path):
    data = tmp_path / "cohort"
    synthesize(data, n_train=16, n_valid=8, dim=16, seed=3, verify_reports=0)
    metadata = layout.metadata_csv(data, "valid")
    pd.read_csv(metadata, keep_default_na=False).drop(index=[2]).to_csv(metadata, index=False)
    run_dir = tmp_path / "run"
    argv = [
        "run", "ct_rate", "--profile", "smoke", "--data-dir", str(data), "--phases", "1",
        "--no-eval", "--output-dir", str(run_dir), "--set", f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "graftkit", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert printed.count(FALLBACK) == 1, printed
    assert f"data: warning: CT-RATE valid: {FALLBACK}" in proc.stdout
    recorded = json.loads((run_dir / "metrics.json").read_text())["data"]["warnings"]
    assert sum(FALLBACK in w for w in recorded) == 1


def test_only_the_warnings_the_run_echoes_are_held_back():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with warnings_echoed_once(SimpleNamespace(warnings=["recorded and echoed by the run"])):
            warnings.warn("recorded and echoed by the run", stacklevel=1)
            warnings.warn("something else", RuntimeWarning, stacklevel=1)
    assert [(str(w.message), w.category) for w in caught] == [("something else", RuntimeWarning)]
