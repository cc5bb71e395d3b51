"""``evaluate(model, tokenizer, dataset, volumes, EvalConfig)``: it needs no
curriculum run, writes no file, and reports on exactly what it was given.

The model, tokenizer and dataset come from the CT-RATE ``smoke`` profile (48 synthetic volumes,
a 2-layer language prior of hidden size 32); only those three objects reach ``evaluate``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from graftkit import plugins
from graftkit.config import EvalConfig, build_config
from graftkit.curriculum.engine import prepare_run
from graftkit.curriculum.trainer import PhaseTrainer
from graftkit.eval.evaluate import evaluate
from graftkit.eval.generation import generation_scores
from graftkit.labels import evaluation_extractor
from graftkit.rundir import RunDir

pytestmark = pytest.mark.slow

QUICK = {"generation": {"max_new_tokens": 12}, "batch_size": 8, "probe_folds": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    profile = plugins.get("profile", "smoke")
    cfg = build_config("ct_rate", overrides=profile.overrides)
    return prepare_run(cfg, tmp_path_factory.mktemp("evaluate") / "run", record=False)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_evaluate_takes_a_model_not_a_run_and_writes_nothing(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _files(run.run_dir)
    volumes = run.valid[:6]
    config = EvalConfig(ablations=False, **QUICK)
    result = evaluate(run.glm, run.tokenizer, run.dataset, volumes, config, seed=3)
    assert _files(run.run_dir) == before and _files(tmp_path) == []
    assert [g["name"] for g in result.generations] == [v.name for v in volumes]
    assert result.grounding is None and set(result.metrics) == {"eval", "classifier"}
    # the reported F1 is the extractor's score of exactly the texts it returns
    extractor = evaluation_extractor(config, run.dataset)
    texts = [g["generated"] for g in result.generations]
    rescored = generation_scores(extractor, texts, volumes, run.dataset.class_names)
    assert result.metrics["eval"]["macro_f1"] == rescored["macro_f1"]
    assert result.metrics["eval"]["volumes"] == 6
    # sampling is seeded: the same call writes the same reports
    again = evaluate(run.glm, run.tokenizer, run.dataset, volumes, config, seed=3)
    assert again.generations == result.generations


@pytest.mark.parametrize("kwargs", [{}, {"token_source": "oracle"}])
def test_ablations_and_oracle_tokens_name_the_missing_training_volumes(run, kwargs):
    ablations = not kwargs
    config = EvalConfig(ablations=ablations, **QUICK)
    with pytest.raises(ValueError, match=r"train=\.\.\."):
        evaluate(run.glm, run.tokenizer, run.dataset, run.valid[:4], config, **kwargs)


def test_ladder_shows_trained_heads_and_probes_restore_the_model(run, tmp_path):
    """Only the ``trained_heads`` reach the ladder; each probed checkpoint is loaded
    for its probe and the model's own bridge is back afterwards."""
    PhaseTrainer(dataclasses.replace(run, rundir=RunDir(tmp_path)), 1).save_final()
    with torch.no_grad():
        run.glm.compressor.queries.add_(1.0)  # the model now differs from the checkpoint
    own = {k: v.clone() for k, v in run.glm.bridge_state_dict().items()}
    result = evaluate(
        run.glm,
        run.tokenizer,
        run.dataset,
        run.valid[:8],
        EvalConfig(ablations=True, **QUICK),
        train=run.train[:24],
        trained_heads={"cls"},
        probe_checkpoints={"p1": tmp_path / "phase1"},
    )
    stages = [row["stage"] for row in result.metrics["ladder"]]
    assert "bridge head: cls" in stages
    assert not {"bridge head: MIL", "bridge head: LLM-cls"} & set(stages)
    assert set(result.metrics["probe"]) == {"raw", "p1"}
    assert set(result.metrics["ablation"]) >= {"real", "zero", "shuffle", "random", "oracle"}
    assert {row["label"] for row in result.grounding["rows"]} <= set(run.dataset.class_names)
    after = run.glm.bridge_state_dict()
    same = [torch.allclose(own[k], after[k], rtol=0, atol=0, equal_nan=True) for k in own]
    assert all(same)  # (an uncalibrated calibrator's target norm is NaN)
