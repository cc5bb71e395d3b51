"""``graftkit run hf --profile hf-smoke`` on a dataset saved with ``datasets`` in the test: the
curriculum, the evaluation and the ablations through the built-in adapter, no plugin written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hf_tables import CLASSES, PLANTED_TRAIN, PLANTED_VALID

pytestmark = pytest.mark.slow

#: The columns of hf_tables as one --set value (YAML), as a user would give them.
OPTIONS = (
    "{embeddings_column: embeddings, report_column: report, id_column: id, positions_column: z_mm}"
)


def graftkit(cache, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRAFTKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "graftkit", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def hf_run(saved, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-run")
    run_dir = root / "run"
    out = graftkit(
        root / "cache",
        *("run", "hf", "--profile", "hf-smoke", "--output-dir", str(run_dir)),
        *("--data-dir", str(saved), "--set", f"data.options={OPTIONS}"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, root / "cache"


def test_the_run_trains_evaluates_and_counts_the_planted_skips(hf_run):
    run_dir, _ = hf_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = metrics["data"]
    assert (data["train"], data["valid"]) == (48, 16)  # the good rows of hf_tables.planted
    assert data["by_reason"] == {**PLANTED_TRAIN, **PLANTED_VALID}
    assert data["skipped"] == sum(data["by_reason"].values()) == 6
    assert set(metrics["phases"]) == {"1", "2", "3", "4"}
    e = metrics["eval"]
    assert e["volumes"] == 16 and e["split"] == "valid" and e["extractor"] == "hf-keywords"
    assert list(e["per_class"]) == CLASSES
    # the reports name every label and only those: the derived extractor reads them exactly
    assert e["extractor_on_reference"] == {
        "macro_f1": 1.0,
        "macro_precision": 1.0,
        "macro_recall": 1.0,
    }
    assert {"real", "zero", "shuffle", "random", "zero_drop", "nll"} <= set(metrics["ablation"])
    assert set(metrics["baselines"]) == {"all_positive", "prevalence"}
    assert "slice_mean" in metrics["probe"] and list(metrics["prevalence"]) == CLASSES
    stages = [row["stage"] for row in metrics["ladder"]]
    assert "cohort oracle" not in stages and "generation: real" in stages  # no oracle here
    generated = [json.loads(line) for line in (run_dir / "generations.jsonl").open()]
    assert [row["name"] for row in generated] == [f"v{i:03d}" for i in range(16)]
    config = (run_dir / "config.yaml").read_text()
    assert "profile: hf-smoke" in config and "report_column: report" in config


def test_a_fresh_process_evaluates_the_run_from_its_config(hf_run):
    """``graftkit eval`` opens the data again from ``config.yaml`` and the extractor takes the
    label columns from it."""
    run_dir, cache = hf_run
    out = graftkit(cache, "eval", str(run_dir), "--limit", "4", "--no-ablations")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "eval" / "limit4-no-ablations" / "metrics.json").read_text())
    assert metrics["eval"]["volumes"] == 4
    assert metrics["eval"]["extractor_on_reference"]["macro_f1"] == 1.0


def test_plan_sizes_the_model_from_the_datas_label_columns(saved, tmp_path):
    """``graftkit plan hf`` opens the data: its classes are the label columns, its d_v the
    embeddings' width. Three heads are ``Linear(d_l, C)``: one label column fewer is 3 x (d_l + 1)
    parameters fewer."""

    def heads(columns: list[str]) -> tuple[int, dict]:
        options = OPTIONS[:-1] + f", label_columns: [{', '.join(columns)}]}}"
        out = graftkit(
            tmp_path / "cache",
            *("plan", "hf", "--profile", "hf-smoke", "--json"),
            *("--set", f"data.data_dir={saved}", "--set", f"data.options={options}"),
        )
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout)
        return result["inventory"]["heads"]["parameters"], result

    all_three, result = heads(CLASSES)
    two, _ = heads(CLASSES[:2])
    assert result["visual_dim"] == 16
    assert all_three - two == 3 * (result["text_dim"] + 1)
