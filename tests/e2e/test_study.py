"""``graftkit study``: the paper's key comparisons, run end to end on the smoke profile."""

import json

import pytest

from .conftest import run_graftkit

pytestmark = pytest.mark.slow


def test_study_writes_every_comparison(e2e_cache, tmp_path):
    """Phase 3 on positive-findings vs narrative text (one F1 per epoch), cold vs warm bridge and
    cross-attention on every decode step vs skipped: in the markdown and in the JSON beside it."""
    output = tmp_path / "study" / "reproduction.md"
    out = run_graftkit(
        e2e_cache, "study", "ct_rate", "--profile", "smoke", "--output", str(output), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(output.with_suffix(".json").read_text())
    epochs = len(result["positive_findings"])
    assert epochs >= 1 and len(result["narrative"]) == epochs
    f1s = [
        *result["positive_findings"],
        *result["narrative"],
        *result["cold"].values(),
        *result["warm"].values(),
        result["xattn_every_step"],
        result["xattn_skipped_in_decoding"],
    ]
    assert all(0.0 <= f <= 1.0 for f in f1s)
    assert result["cold"]["best"] == max(result["positive_findings"])
    text = output.read_text()
    for heading in ("Table II analogue", "Table VI analogue", "Cross-attention during decoding"):
        assert f"## {heading}" in text
    assert (tmp_path / "runs" / "study-ct_rate-smoke" / "phase2").is_dir()
