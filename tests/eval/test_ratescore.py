"""RaTEScore from local model directories: the matching formula by hand, BIO decoding, the
sentence rule, and the whole scorer on a tiny DeBERTa-v2 tagger and a tiny MPNet encoder (the
architectures of the authors' RaTE-NER-Deberta and BioLORD-2023-C)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from graftkit.eval.metrics import MetricUnavailableError
from graftkit.eval.model_metrics import (
    RATE_TYPES,
    RaTEScorer,
    bio_spans,
    rate_match,
    split_sentences,
)

WORDS = ["heart", "normal", "no", "pleural", "effusion", "nodule", "lung", "right", "lobe", "."]
LABELS = ["O", *[f"{p}-{t}" for t in RATE_TYPES for p in ("B", "I")]]


def test_rate_match_by_hand():
    # reference: e1 = (1, 0) DISEASE, e2 = (0, 1) ABNORMALITY; candidate: c1 = (1, 0) DISEASE,
    # c2 = (1, 1)/sqrt 2 NON-DISEASE. e1 -> c1 (cos 1), pair (DISEASE, DISEASE), w = 0.84606;
    # e2 -> c2 (cos 1/sqrt 2), pair (ABNORMALITY, NON-DISEASE), w = 0.27005, a negation: x 0.3612
    got = rate_match(
        [[1, 0], [0, 1]], [[1, 0], [1, 1]], ["DISEASE", "ABNORMALITY"], ["DISEASE", "NON-DISEASE"]
    )
    w1, w2 = 0.8460555030578727, 0.27005425386213877
    assert got == pytest.approx((1 * w1 + math.sqrt(0.5) * w2 * 0.3612) / (w1 + w2), abs=1e-12)


def test_bio_spans_and_sentences():
    labels = ["B-ANATOMY", "I-ANATOMY", "O", "B-DISEASE", "B-DISEASE", "I-ABNORMALITY", "O", "I-ANATOMY"]  # fmt: skip
    assert bio_spans(labels) == [(0, 1, "ANATOMY"), (3, 3, "DISEASE"), (4, 5, "DISEASE")]
    text = "Heart normal. No effusion!\nLung: ok? a."
    assert split_sentences(text) == ["Heart normal.", "No effusion!", "Lung: ok?"]


def _save_tokenizer(path: Path) -> None:
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=64).save_pretrained(
        path
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer DeBERTa-v2 tagger whose every token is B-ANATOMY (zero weights, a bias), and a
    2-layer random MPNet encoder."""
    from transformers import (
        DebertaV2Config,
        DebertaV2ForTokenClassification,
        MPNetConfig,
        MPNetModel,
    )

    ner, embed = tmp_path_factory.mktemp("rate-ner"), tmp_path_factory.mktemp("rate-embed")
    for path in (ner, embed):
        _save_tokenizer(path)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    tagger = DebertaV2ForTokenClassification(
        DebertaV2Config(
            vocab_size=len(WORDS) + 5,
            max_position_embeddings=64,
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            **size,
        )
    )
    with torch.no_grad():
        tagger.classifier.weight.zero_()
        tagger.classifier.bias.zero_()
        tagger.classifier.bias[LABELS.index("B-ANATOMY")] = 1.0
    tagger.save_pretrained(ner)
    MPNetModel(
        MPNetConfig(vocab_size=len(WORDS) + 5, max_position_embeddings=66, **size)
    ).save_pretrained(embed)
    return ner, embed


def test_scorer_on_tiny_models(models):
    scorer = RaTEScorer(*models)
    # every word is its own ANATOMY entity: identical reports match entity for entity
    assert scorer.entities(["No pleural effusion."]) == [
        [("no", "ANATOMY"), ("pleural", "ANATOMY"), ("effusion", "ANATOMY"), (".", "ANATOMY")]
    ]
    same = scorer.score(["Heart normal. No effusion."], ["Heart normal. No effusion."])
    assert same["ratescore"] == pytest.approx(1.0, abs=1e-6) and same["splitter"] == "regex"
    # a report without any entity scores 0.5, as the reference
    empty = scorer.score(["", "lung nodule ."], ["heart .", "right lobe nodule ."])
    assert empty["per_report"][0] == 0.5
    # the rest: P and R from the model's own embeddings, by the formula above
    c = scorer._embed(["lung", "nodule", "."])
    r = scorer._embed(["right", "lobe", "nodule", "."])
    p = rate_match(r, c, ["ANATOMY"] * 4, ["ANATOMY"] * 3)
    q = rate_match(c, r, ["ANATOMY"] * 3, ["ANATOMY"] * 4)
    assert empty["per_report"][1] == pytest.approx(2 * p * q / (p + q), abs=1e-9)
    assert empty["ratescore"] == pytest.approx(np.mean(empty["per_report"]))


def test_missing_or_foreign_models_are_named(models, tmp_path):
    with pytest.raises(MetricUnavailableError, match="RaTEScore ner model"):
        RaTEScorer(tmp_path / "none", models[1])
    from transformers import BertConfig, BertForTokenClassification

    other = tmp_path / "other"
    _save_tokenizer(other)
    BertForTokenClassification(
        BertConfig(vocab_size=15, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                   intermediate_size=8, id2label={0: "O", 1: "B-PER"}, label2id={"O": 0, "B-PER": 1})
    ).save_pretrained(other)  # fmt: skip
    with pytest.raises(MetricUnavailableError, match="label 'B-PER'"):
        RaTEScorer(other, models[1])
