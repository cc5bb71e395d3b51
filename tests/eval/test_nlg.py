"""BLEU, ROUGE-L, CIDEr-D and METEOR of report texts, against hand values and reference libraries."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from graftkit.eval import nlg
from graftkit.eval.metrics import MetricUnavailableError

GENERATED = [
    "The heart size is normal. No pleural effusion.\nMild emphysema in both upper lobes.",
    "Bilateral pleural effusion with adjacent atelectasis. Lung nodule of 5 mm in the right lobe.",
    "Trachea and both main bronchi are open. No lymphadenopathy.",
]
REFERENCES = [
    "Heart size is normal. There is no pleural effusion. Emphysema in both upper lobes.",
    "Bilateral pleural effusion and atelectasis. A 5 mm nodule in the right upper lobe.",
    "Trachea and both main bronchi are patent. Mediastinal lymphadenopathy is not observed.",
]


def test_tokenizers():
    text = "Ground-glass opacity, 3.5 mm.\nNo  Effusion."
    assert nlg.tokenize(text) == ["Ground-glass", "opacity,", "3.5", "mm.", "No", "Effusion."]
    assert nlg.tokenize(text, "words") == ["ground-glass", "opacity", "3.5", "mm", "no", "effusion"]
    with pytest.raises(ValueError, match="unknown tokenizer 'ptb'"):
        nlg.tokenize(text, "ptb")


def test_bleu_hand_derived():
    # every n-gram of the candidate is in the reference: p_1..p_4 = 1; c = 4, r = 6
    got = nlg.bleu(["the heart is normal"], ["the heart is normal in size"])
    brevity = math.exp(1 - 6 / 4)
    for n in range(1, 5):
        assert got[f"bleu_{n}"] == pytest.approx(brevity, abs=1e-8)


def test_bleu_agrees_with_nltk_corpus_bleu():
    corpus_bleu = pytest.importorskip("nltk.translate.bleu_score").corpus_bleu

    got = nlg.bleu(GENERATED, REFERENCES)
    hyps = [nlg.tokenize(t) for t in GENERATED]
    refs = [[nlg.tokenize(t)] for t in REFERENCES]
    for n in range(1, 5):
        expected = corpus_bleu(refs, hyps, weights=(1.0 / n,) * n)
        assert got[f"bleu_{n}"] == pytest.approx(expected, rel=1e-7)


def test_rouge_l_hand_derived():
    # LCS("a b c d", "a c b d e") = 3: P = 3/4, R = 3/5, F_1.2 = 2.44 * P * R / (R + 1.44 * P)
    got = nlg.rouge_l_per_report(["a b c d"], ["a c b d e"])
    assert got[0] == pytest.approx(2.44 * 0.75 * 0.6 / (0.6 + 1.44 * 0.75))
    assert nlg.rouge_l(["a b", ""], ["c d", "a"]) == 0.0


def test_rouge_l_equals_pycocoevalcap_rouge():
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [" ".join(nlg.tokenize(t))] for i, t in enumerate(REFERENCES)}
    res = {i: [" ".join(nlg.tokenize(t))] for i, t in enumerate(GENERATED)}
    mean, per_report = Rouge().compute_score(gts, res)
    np.testing.assert_allclose(
        nlg.rouge_l_per_report(GENERATED, REFERENCES), per_report, atol=1e-12
    )
    assert nlg.rouge_l(GENERATED, REFERENCES) == pytest.approx(mean, abs=1e-12)


def test_lcs_equals_dynamic_programming_of_rouge_score():
    _lcs_table = pytest.importorskip("rouge_score.rouge_scorer")._lcs_table

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]  # > 64 tokens: several words
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        expected = _lcs_table(a, b)[-1][-1] if a and b else 0
        assert nlg.lcs_length(a, b) == expected


def test_cider_perfect_disjoint_and_too_small():
    # identical texts: each clipped cosine is 1 and the length penalty e^0 = 1, so 10 * mean_n 1
    refs = [
        "the heart is normal in size",
        "mild emphysema of both lungs",
        "a nodule in the left lobe",
    ]
    assert nlg.cider(refs, refs) == pytest.approx(10.0)
    assert nlg.cider(["x y z", "u v w", "p q r"], refs) == 0.0
    with pytest.raises(ValueError, match="at least 2 reports"):
        nlg.cider(["a"], ["a"])


@pytest.mark.slow
@pytest.mark.skipif(not nlg.java_available(), reason="METEOR's reference jar needs Java")
def test_meteor_reference_jar_scores_an_exact_match_1():
    # METEOR 1.5 gives a candidate identical to its reference no fragmentation penalty: 1.0
    # (one call: starting the JVM and loading the paraphrase table takes about 10 s)
    assert nlg.meteor(REFERENCES, REFERENCES) == pytest.approx(1.0)


def test_meteor_without_java_raises_not_zero(monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailableError, match="Java runtime"):
        nlg.meteor(GENERATED, REFERENCES)
    with pytest.raises(MetricUnavailableError):
        nlg.nlg_scores(GENERATED, REFERENCES)
    scores = nlg.nlg_scores(GENERATED, REFERENCES, with_meteor=False)
    assert "meteor" not in scores
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}
    assert 0 < scores["rouge_l"] < 1 and scores["bleu_4"] < scores["bleu_1"]


def test_words_tokenizer_changes_the_scores():
    whitespace = nlg.rouge_l(GENERATED, REFERENCES)
    words = nlg.rouge_l(GENERATED, REFERENCES, tokenizer="words")
    assert words > whitespace  # "normal." vs "normal" and "Heart" vs "heart" now match


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="generated has 2 reports but references has 1"):
        nlg.bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"references\[1\] must be a str"):
        nlg.rouge_l(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="not a str"):
        nlg.rouge_l("abc", "abc")
    with pytest.raises(ValueError, match="empty set"):
        nlg.bleu([], [])
