"""Text builders: positive-findings-only text and raw narrative (docs/design.md, phases 2-4)."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.sentence_bank import data_path, split_report
from graftkit_ct_rate.text import (
    CLASS_TEMPLATES,
    NORMAL_TEXT,
    condition_segments,
    condition_sentences,
    narrative_text,
    positive_findings_text,
)

FINDINGS = (
    "Trachea and both main bronchi are open. Heart size is increased. "
    "There is bilateral pleural effusion. Minimal effusion is also seen in the fissure. "
    "Bone structures are natural."
)
IMPRESSIONS = "Cardiomegaly. Emphysema in both upper lobes."
ASSIGNED = {
    FINDINGS: {
        2: ["Heart size is increased."],
        12: [
            "There is bilateral pleural effusion.",
            "Minimal effusion is also seen in the fissure.",
        ],
    },
    IMPRESSIONS: {2: ["Cardiomegaly."], 7: ["Emphysema in both upper lobes."]},
}


def assign(text: str) -> dict[int, list[str]]:
    return ASSIGNED.get(text, {})


def test_each_positive_class_gets_one_segment_from_the_report_or_its_template():
    segments = condition_sentences([2, 7, 12, 15], FINDINGS, IMPRESSIONS, assign)
    assert [c for c, _ in segments] == [2, 7, 12, 15]
    by_class = dict(condition_segments(segments))
    assert by_class[2] == "Heart size is increased."  # findings before impressions
    assert (
        by_class[12]
        == "There is bilateral pleural effusion. Minimal effusion is also seen in the fissure."
    )
    assert by_class[7] == "Emphysema in both upper lobes."  # only the impressions have it
    assert by_class[15] == CLASS_TEMPLATES[15]  # nowhere in the report: the template


def test_normal_volume_gets_the_normal_text():
    assert condition_sentences([], FINDINGS, IMPRESSIONS, assign) == []
    assert positive_findings_text([], random.Random(0)) == NORMAL_TEXT
    assert NORMAL_TEXT == "No significant thoracic abnormalities identified."


def test_positive_findings_text_is_a_permutation_of_the_segments_and_the_order_varies():
    segments = condition_sentences([2, 7, 12, 15], FINDINGS, IMPRESSIONS, assign)
    texts = {c: " ".join(s) for c, s in segments}
    orders = set()
    for seed in range(40):
        text = positive_findings_text(segments, random.Random(seed))
        # exactly one occurrence of every segment, nothing else
        positions = sorted((text.index(t), c) for c, t in texts.items())
        assert all(text.count(t) == 1 for t in texts.values())
        assert text == " ".join(texts[c] for _, c in positions)
        orders.add(tuple(c for _, c in positions))
    assert len(orders) >= 10  # 24 possible orders; a fixed order would give 1


def test_positive_findings_text_is_reproducible_for_a_seeded_rng():
    segments = condition_sentences([2, 7, 12], FINDINGS, IMPRESSIONS, assign)
    assert positive_findings_text(segments, random.Random(3)) == positive_findings_text(
        segments, random.Random(3)
    )


def test_a_sentence_assigned_to_two_classes_is_said_once():
    shared = "There is pleural effusion and adjacent atelectasis."
    segments = [(8, [shared]), (12, [shared, "Effusion is larger on the right."])]
    for seed in range(10):
        text = positive_findings_text(segments, random.Random(seed))
        assert text.count(shared) == 1
        assert "Effusion is larger on the right." in text


def test_narrative_text_with_and_without_impressions():
    assert narrative_text(FINDINGS, IMPRESSIONS) == FINDINGS
    assert (
        narrative_text(FINDINGS, IMPRESSIONS, include_impressions=True)
        == f"{FINDINGS} {IMPRESSIONS}"
    )
    assert narrative_text(FINDINGS, "", include_impressions=True) == FINDINGS


def test_templates_are_one_distinct_sentence_per_class():
    assert len(CLASS_TEMPLATES) == len(CLASSES) == len(set(CLASS_TEMPLATES))
    assert all(t.endswith(".") and t[0].isupper() for t in CLASS_TEMPLATES)


def test_real_report_segments_come_from_its_own_sentences_with_the_rules_extractor():
    rules = pytest.importorskip("graftkit_ct_rate.labels.rules")
    from graftkit_ct_rate.labels.sentences import split_sentences

    extractor = rules.CTRateRulesExtractor()
    frame = pd.read_csv(data_path("ct_rate_labeled_reports.csv"), nrows=40)
    checked = 0
    for _, row in frame.iterrows():
        findings, impressions = split_report(row["report_text"])
        positives = [c for c, name in enumerate(CLASSES) if row[name] == 1]
        own = set(split_sentences(findings)) | set(split_sentences(impressions))
        for c, sentences in condition_sentences(
            positives, findings, impressions, extractor.assign_sentences
        ):
            if sentences != [CLASS_TEMPLATES[c]]:
                assert set(sentences) <= own
                assert all(c in extractor.sentence_labels(s) for s in sentences)
                checked += 1
    assert checked > 40
