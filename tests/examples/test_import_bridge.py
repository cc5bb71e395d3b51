"""examples/import_bridge.py: the bridge in a plain PyTorch loop, run as a script the way CI runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "import_bridge.py"

RUNNER = """
import json, runpy, sys
sys.argv = [{script!r}, "--steps", "60"]
runpy.run_path({script!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.startswith(("graftkit.curriculum", "graftkit.plugins",
                "graftkit_")))
print(json.dumps({{"engine_or_plugins": loaded}}))
"""


def test_import_bridge_learns_from_visual_tokens_alone():
    out = subprocess.run(
        [sys.executable, "-c", RUNNER.format(script=str(SCRIPT))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    *report, modules = out.stdout.strip().splitlines()
    result = json.loads("\n".join(report))
    # The frozen LLM cannot tell the three markers apart before training (one answer word for
    # all), answers from the grafted tokens after it, and falls back to one word when they are zeroed.
    assert result["accuracy_before"] <= 0.5
    assert result["accuracy"] >= 0.9
    assert result["accuracy_zeroed_tokens"] <= 0.5
    assert json.loads(modules)["engine_or_plugins"] == []
