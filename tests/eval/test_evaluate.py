"""``evaluate(model, tokenizer, dataset, volumes, EvalConfig)``: it needs no
curriculum run, writes no file, and reports on exactly what it was given.

The model, tokenizer and dataset come from the CT-RATE ``smoke`` profile (48 synthetic volumes,
a 2-layer language prior of hidden size 32); only those three objects reach ``evaluate``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from graftkit import plugins
from graftkit.config import EvalConfig, build_config
from graftkit.curriculum.engine import prepare_run
from graftkit.curriculum.trainer import PhaseTrainer
from graftkit.eval.evaluate import evaluate
from graftkit.eval.generation import generation_scores, label_matrix, visual_tokens
from graftkit.eval.metrics import multilabel_scores
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
    assert result.grounding is None
    assert set(result.metrics) == {"eval", "classifier", "baselines", "nlg"}
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
    """Only the ``trained_heads`` reach the ladder, each read on the tokens of the checkpoint
    that trained it; each probed checkpoint is loaded for its probe and the model's own bridge
    is back afterwards."""
    PhaseTrainer(dataclasses.replace(run, rundir=RunDir(tmp_path)), 1).save_final()
    checkpoint_tokens = visual_tokens(run.glm, run.dataset, run.valid[:8], 8)
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
        head_checkpoints={"cls": tmp_path / "phase1"},
    )
    stages = [row["stage"] for row in result.metrics["ladder"]]
    assert "bridge head: cls" in stages
    assert not {"bridge head: MIL", "bridge head: LLM-cls"} & set(stages)
    # the label-built-token generation is not on the ladder (not a ceiling) nor run by default
    assert not any("oracle tokens" in s or "label-token" in s for s in stages)
    assert stages[-2:] == [
        "baseline: every finding named",
        "baseline: findings at training prevalence",
    ]
    assert set(result.metrics["probe"]) == {"slice_mean", "p1"}
    assert set(result.metrics["ablation"]) >= {"real", "zero", "shuffle", "random"}
    assert "oracle" not in result.metrics["ablation"]
    assert {row["label"] for row in result.grounding["rows"]} <= set(run.dataset.class_names)
    # the cls head was read on phase 1's tokens, not on the model's changed ones
    with torch.no_grad():
        probs = torch.sigmoid(run.glm.heads.cls(checkpoint_tokens)).numpy()
    truth = label_matrix(run.valid[:8])
    want = multilabel_scores(truth, (probs >= 0.5).astype(int))["macro_f1"]
    assert result.metrics["classifier"]["threshold_0.5"]["macro_f1"] == want
    assert "phase1" in result.metrics["classifier"]["tokens"]
    after = run.glm.bridge_state_dict()
    same = [torch.allclose(own[k], after[k], rtol=0, atol=0, equal_nan=True) for k in own]
    assert all(same)  # (an uncalibrated calibrator's target norm is NaN)


def test_the_new_metrics_are_those_of_the_returned_labels_and_texts(run):
    """``eval`` micro / weighted F1 and CRG, ``baselines``, ``nlg`` and ``eval.ci`` are the
    scores of exactly the labels and texts returned (checked against scikit-learn and a hand
    count), and a metric that cannot be computed is None with the reason, never 0."""
    from sklearn.metrics import f1_score

    volumes = run.valid[:6]
    result = evaluate(
        run.glm, run.tokenizer, run.dataset, volumes, EvalConfig(ablations=False, **QUICK)
    )
    classes = run.dataset.class_names
    rows = result.generations
    truth = np.array([[c in r["labels"] for c in classes] for r in rows], dtype=int)
    predicted = np.array([[c in r["predicted"] for c in classes] for r in rows], dtype=int)
    e = result.metrics["eval"]
    for average in ("micro", "weighted"):
        want = f1_score(truth, predicted, average=average, zero_division=0)
        assert e[f"{average}_f1"] == pytest.approx(want, abs=1e-12)
    t, a = truth.size, truth.sum()
    tp, fp = int((truth & predicted).sum()), int(((1 - truth) & predicted).sum())
    fn = int(a) - tp
    w = (t - a) / (2 * a)
    assert e["crg"] == pytest.approx(a * w / (2 * a * w - (w * tp - w * fn - fp)), abs=1e-12)
    every = result.metrics["baselines"]["all_positive"]
    positives = truth.sum(0)
    want = np.where(positives > 0, 2 * positives / (positives + len(rows)), 0).mean()
    assert every["macro_f1"] == pytest.approx(want, abs=1e-12) and every["crg"] == pytest.approx(
        1 / 3
    )
    nlg = result.metrics["nlg"]
    assert set(nlg) >= {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"}
    if nlg["meteor"] is None:  # no Java here: named, never a 0
        assert "Java" in nlg["unavailable"]["meteor"]
    ci = e["ci"]
    assert set(ci) == {"macro_f1", "crg", "rouge_l"}
    assert ci["macro_f1"]["estimate"] == e["macro_f1"]
    assert ci["rouge_l"]["estimate"] == pytest.approx(nlg["rouge_l"], abs=1e-12)
