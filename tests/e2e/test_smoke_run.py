"""`graftkit run ct_rate --profile smoke`: phases 1-4 and eval end to end; kill and resume."""

import json
import math
import os
import re
import signal
import subprocess
import time

import pytest

from .conftest import graftkit_cmd, run_graftkit

pytestmark = pytest.mark.slow


def _finite(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _finite(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _finite(v, f"{path}[{i}]")
    elif isinstance(tree, float):
        yield path, tree


def smoke(cache, run_dir, *extra: str):
    """``graftkit run ct_rate --profile smoke --output-dir RUN_DIR [extra]`` in a subprocess."""
    return run_graftkit(
        cache, "run", "ct_rate", "--profile", "smoke", "--output-dir", str(run_dir), *extra
    )


@pytest.fixture(scope="module")
def smoke_run(e2e_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    out = smoke(e2e_cache, run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_metrics_file_is_complete_and_finite(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("macro_f1", "macro_precision", "macro_recall"):
        assert 0.0 <= metrics["eval"][key] <= 1.0
    assert len(metrics["eval"]["per_class"]) == 18
    assert set(metrics["phases"]) == {"1", "2", "3", "4"}
    assert {"real", "zero", "shuffle", "random"} <= set(metrics["ablation"])
    assert 0.0 < metrics["oracle"]["macro_f1"] <= 1.0
    stages = [row["stage"] for row in metrics["ladder"]]
    assert stages == [
        "cohort oracle",
        "zone MIL probe: encoder zone means",
        "zone MIL probe: compressor tokens",
        "bridge head: cls",  # phase 1 trains it (BCE); LLM-cls is untrained in the tiny recipe
        "bridge head: MIL",
        "generation: real",
        "generation: zero",
        "generation: shuffle",
        "generation: random",
        "baseline: every finding named",
        "baseline: findings at training prevalence",
    ]
    for row in metrics["ladder"]:
        assert 0.0 <= row["macro_f1"] <= 1.0, row
    real = next(r for r in metrics["ladder"] if r["stage"] == "generation: real")
    assert real["macro_f1"] == metrics["eval"]["macro_f1"]
    # the heads are read on the tokens of phase 1, the last phase that trains them
    heads = [r for r in metrics["ladder"] if r["stage"].startswith("bridge head")]
    assert all("phase1's tokens" in r["detail"] for r in heads)
    bad = [p for p, v in _finite(metrics) if not math.isfinite(v) and "nll" not in p]
    assert not bad, bad
    for n in (1, 2, 3, 4):
        assert (smoke_run / f"phase{n}" / "manifest.json").is_file()
        assert (smoke_run / f"phase{n}" / "pretrained" / "adapter_config.json").is_file()
    assert (smoke_run / "report.html").stat().st_size > 10_000
    rows = [json.loads(line) for line in (smoke_run / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["eval"]["volumes"]


def test_metrics_hold_every_score_the_field_reports(smoke_run):
    """The keys other tools read, exactly as named (docs/evaluation.md, "What metrics.json
    holds"), each a number (or None with its reason where it cannot be computed)."""
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    e = metrics["eval"]
    for key in ("macro_f1", "micro_f1", "weighted_f1", "crg", "skill"):
        assert isinstance(e[key], float), key
    for base in ("all_positive", "prevalence"):
        assert {"macro_f1", "crg"} <= set(metrics["baselines"][base]), base
    assert metrics["baselines"]["all_positive"]["crg"] == pytest.approx(1 / 3)
    oracle, every = metrics["oracle"]["macro_f1"], metrics["baselines"]["all_positive"]["macro_f1"]
    assert e["skill"] == pytest.approx((e["macro_f1"] - every) / (oracle - every), abs=1e-12)
    nlg = metrics["nlg"]
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
        assert key in nlg, key
        assert isinstance(nlg[key], float) or key in nlg.get("unavailable", {}), key
    for key in ("macro_f1", "crg", "rouge_l"):
        ci = e["ci"][key]
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["level"] == 0.95, key


def test_an_independent_script_recomputes_the_stored_label_metrics(smoke_run):
    """``benchmarks/recompute_metrics.py`` (no graftkit import, exact fractions) recomputes
    CRG, micro and weighted F1 and the all-positive baseline from generations.jsonl alone."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "recompute_metrics.py"), str(smoke_run)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for key in ("eval.crg", "eval.micro_f1", "eval.weighted_f1", "baselines.all_positive.crg"):
        assert re.search(rf"^{re.escape(key)} .* ok$", out.stdout, re.M), out.stdout


def test_compare_pairs_two_evaluations_and_refuses_other_volumes(smoke_run, e2e_cache):
    """``graftkit compare``: the run against an evaluation of the same volumes (greedy
    decoding: the same reports, difference 0, p = 1), then against one of 3 volumes (refused,
    one line naming both)."""
    same = run_graftkit(e2e_cache, "eval", str(smoke_run), "--name", "again")
    assert same.returncode == 0, same.stderr[-3000:]
    out = run_graftkit(e2e_cache, "compare", str(smoke_run), str(smoke_run / "eval" / "again"))
    assert out.returncode == 0, out.stderr[-3000:]
    number = r"([+-]?[\d.]+)"
    for metric in ("macro F1", "CRG", "ROUGE-L"):
        row = re.search(
            rf"^  {metric} +{number} +{number} +{number}  \[{number}, {number}\] +{number}$",
            out.stdout,
            re.M,
        )
        assert row, (metric, out.stdout)
        a, b, diff, low, high, p = map(float, row.groups())
        assert a == b and diff == low == high == 0.0 and p == 1.0, row.group()
    three = run_graftkit(e2e_cache, "eval", str(smoke_run), "--limit", "3", "--no-ablations")
    assert three.returncode == 0, three.stderr[-3000:]
    refused = run_graftkit(
        e2e_cache, "compare", str(smoke_run), str(smoke_run / "eval" / "limit3-no-ablations")
    )
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert "\n" not in line and "different volumes" in line and "16 in A, 3 in B" in line, line


def test_report_draws_every_figure_its_run_wrote_data_for(smoke_run):
    """report.html of a real run: no section falls back to a note."""
    import re

    from graftkit.eval.report import PLOT_NAMES

    text = (smoke_run / "report.html").read_text()
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    assert {"headline", "ladder", "examples", "loss-curves", "progression", "grounding"} <= set(
        sections
    )
    for anchor, body in sections.items():
        assert 'class="note"' not in body, (anchor, body[:300])
    plots = {p.stem for p in (smoke_run / "plots").glob("*.png")}
    assert plots == set(PLOT_NAMES)
    assert text.count("<img ") == len(plots)
    assert re.search(
        r"<h1>graftkit run report: ct_rate, profile smoke, \d{4}-\d{2}-\d{2}</h1>", text
    )


def test_rerun_into_a_finished_run_dir_is_refused(smoke_run, e2e_cache):
    out = smoke(e2e_cache, smoke_run)
    assert out.returncode == 2 and "--resume" in out.stderr


def test_killed_run_resumes_to_the_same_metrics(smoke_run, e2e_cache, tmp_path):
    """SIGKILL after the first phase-3 epoch checkpoint; --resume must reach identical metrics."""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "GRAFTKIT_CACHE": str(e2e_cache)}
    cmd = graftkit_cmd("run", "ct_rate", "--profile", "smoke", "--output-dir", str(run_dir))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run_dir / "checkpoints" / "phase3" / "last" / "manifest.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "phase3" / "manifest.json").exists()

    out = smoke(e2e_cache, run_dir, "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    want = json.loads((smoke_run / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["eval"] == want["eval"]
    assert got["ablation"]["real"] == want["ablation"]["real"]

    def last_rows(path):
        rows = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]
        return {(r["phase"], r["epoch"]): r for r in rows}

    uninterrupted, resumed = last_rows(smoke_run), last_rows(run_dir)
    for key in [(3, 2), (4, 1)]:  # 1-based epochs, as printed
        for metric in ("train_total", "valid_total"):
            assert resumed[key][metric] == pytest.approx(uninterrupted[key][metric], rel=1e-6), (
                key,
                metric,
            )


def test_corrupted_checkpoint_is_reported_not_used(smoke_run, e2e_cache, tmp_path):
    import shutil

    run_dir = tmp_path / "corrupt"
    shutil.copytree(smoke_run, run_dir)
    (run_dir / "metrics.json").unlink()
    weights = run_dir / "phase2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    out = smoke(e2e_cache, run_dir, "--phases", "3", "--init-from", str(run_dir / "phase2"))
    assert out.returncode == 2
    assert "phase2" in out.stderr and "checkpoint" in out.stderr


def test_checkpoint_from_another_architecture_is_refused_before_training(
    smoke_run, e2e_cache, tmp_path
):
    out = smoke(
        e2e_cache,
        tmp_path / "other",
        "--phases",
        "3",
        "--init-from",
        str(smoke_run / "phase2"),
        "--set",
        "bridge.num_zones=4",
    )
    assert out.returncode == 2
    assert "different architecture" in out.stderr
    assert not (tmp_path / "other" / "history.jsonl").exists()


def test_missing_init_from_is_one_clear_line(e2e_cache, tmp_path):
    out = smoke(e2e_cache, tmp_path / "x", "--phases", "3", "--init-from", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such checkpoint" in out.stderr


def test_eval_with_label_token_oracle_writes_its_own_folder(smoke_run, e2e_cache):
    """``graftkit eval RUN --tokens oracle``: generation from label-built tokens, kept apart from
    the run's own evaluation, which it leaves untouched."""
    own = (smoke_run / "metrics.json").read_text()
    out = run_graftkit(e2e_cache, "eval", str(smoke_run), "--tokens", "oracle", "--no-ablations")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(
        (smoke_run / "eval" / "no-ablations-oracle-tokens" / "metrics.json").read_text()
    )
    assert metrics["eval"]["tokens"] == "label-built tokens"
    assert 0.0 <= metrics["eval"]["macro_f1"] <= 1.0
    assert (smoke_run / "metrics.json").read_text() == own


def test_eval_cli_scores_the_volumes_it_was_asked_for(smoke_run, e2e_cache):
    """``graftkit eval RUN --limit 3 --split train --no-ablations``: a folder of its own holding
    metrics on exactly those three training volumes, their generations and a report; the run's
    own evaluation is left as it was."""
    own = (smoke_run / "metrics.json").read_text()
    out = run_graftkit(
        e2e_cache, "eval", str(smoke_run), "--limit", "3", "--split", "train", "--no-ablations"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = smoke_run / "eval" / "train-limit3-no-ablations"
    metrics = json.loads((folder / "metrics.json").read_text())
    e = metrics["eval"]
    assert (e["split"], e["volumes"], e["extractor"]) == ("train", 3, "ct_rate-rules")
    assert 0.0 <= e["macro_f1"] <= 1.0 and "ablation" not in metrics
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    report = (folder / "report.html").read_text()
    assert "graftkit run report" in report
    # the evaluation folder's report reads the run's history: its loss curves are drawn
    assert (
        '<section id="loss-curves">' in report and (folder / "plots" / "loss_curves.png").is_file()
    )
    assert (smoke_run / "metrics.json").read_text() == own
    again = run_graftkit(
        e2e_cache, "eval", str(smoke_run), "--limit", "3", "--split", "train", "--no-ablations"
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_generate_cli_explains_each_sentence_by_zones(smoke_run, e2e_cache, tmp_path):
    """``graftkit generate RUN --embeddings F --greedy --explain``: a report, then per sentence the
    zones (1..K) it relied on most, by occlusion."""
    import numpy as np
    import yaml

    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    zones, dim = config["bridge"]["num_zones"], config["data"]["synth"]["dim"]
    np.save(tmp_path / "case.npy", np.random.default_rng(0).normal(size=(20, dim)).astype("f4"))
    args = ("generate", str(smoke_run), "--embeddings", str(tmp_path / "case.npy"))
    out = run_graftkit(e2e_cache, *args, "--greedy", "--explain")
    assert out.returncode == 0, out.stderr[-3000:]
    explained = re.findall(r"zones \(1 = first \.\. (\d+) = last along z\): ([\d, ]+)", out.stdout)
    assert explained, out.stdout
    for k, listed in explained:
        picked = [int(z) for z in listed.split(",")]
        assert int(k) == zones and len(set(picked)) == len(picked) == min(3, zones)
        assert all(1 <= z <= zones for z in picked)
    assert run_graftkit(e2e_cache, *args, "--greedy").stdout == out.stdout.split("\n- ")[0] + "\n"


def test_export_round_trips_to_the_same_generations(smoke_run, e2e_cache, tmp_path, monkeypatch):
    """``graftkit export``: a Hub-ready folder (model card with the run's metrics and licence)
    that ``GraftedLM.from_pretrained`` loads back into a model writing the run's own reports."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from graftkit.bridge import GraftedLM
    from graftkit.curriculum.engine import open_run
    from graftkit.eval.generation import generate_reports, generation_settings, visual_tokens
    from graftkit.lm import ChatPrompt
    from graftkit.rundir import RunDir

    out = tmp_path / "export"
    done = run_graftkit(e2e_cache, "export", str(smoke_run), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["library_name"] == "graftkit"
    scores = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert scores["macro_f1"] == round(metrics["eval"]["macro_f1"], 4)
    assert "graftkit run ct_rate --config config.yaml" in card
    assert (out / "config.yaml").read_text() == (smoke_run / "config.yaml").read_text()

    monkeypatch.setenv("GRAFTKIT_CACHE", str(e2e_cache))
    rundir = RunDir(smoke_run)
    run = open_run(rundir, rundir.final_checkpoint())
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    loaded = GraftedLM.from_pretrained(out, base).eval()
    chat = json.loads((out / "chat.json").read_text())
    assert ChatPrompt(**chat) == run.prompt
    volumes = run.valid[:6]
    gen = generation_settings(run.cfg.eval.generation, greedy=True)
    texts = []
    for glm in (run.glm.eval(), loaded):
        with torch.inference_mode():
            tokens = visual_tokens(glm, run.dataset, volumes, 6, run.cfg.data.max_slices)
            texts.append(generate_reports(glm, glm.tokenizer, run.prompt, tokens, gen, 6))
    assert texts[0] == texts[1] and any(texts[0])
    again = run_graftkit(e2e_cache, "export", str(smoke_run), "--output", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
