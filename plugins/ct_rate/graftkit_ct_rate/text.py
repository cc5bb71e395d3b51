"""Texts the curriculum trains on, built from a CT-RATE report (docs/design.md, "Four-phase curriculum").

- Phase 1 (MMD) / phase 2 (InfoNCE) targets: one segment per positive condition
  (:func:`condition_sentences`, :func:`condition_segments`), with :data:`CLASS_TEMPLATES` as the canonical class anchors.
- Phases 2-3: positive-findings-only text (:func:`positive_findings_text`): the segments in a random
  order per sample; a normal volume gets :data:`NORMAL_TEXT`.
- ``canonical_findings`` (the tiny profile's phase 3): the positive class names in class order,
  one sentence each (:data:`FINDING_PHRASES` where a name alone is not recognised).
- Phase 4: the raw narrative (:func:`narrative_text`), ``Findings_EN`` optionally with
  ``Impressions_EN``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from graftkit.data import join_condition_sentences
from graftkit_ct_rate.classes import CLASSES

NORMAL_TEXT = "No significant thoracic abnormalities identified."

#: One short canonical sentence per class, in CLASSES order: the class's text-embedding anchor and
#: the fallback segment when a positive class has no sentence of its own in the report.
CLASS_TEMPLATES: list[str] = [
    "Medical material such as a catheter, stent or surgical clip is present.",
    "There are calcified atherosclerotic plaques in the arterial walls.",
    "Cardiomegaly is present.",
    "There is pericardial effusion.",
    "Calcification is seen in the coronary artery walls.",
    "A hiatal hernia is present.",
    "There are enlarged mediastinal or hilar lymph nodes.",
    "Emphysematous changes are seen in the lungs.",
    "There is atelectasis in the lung.",
    "A nodule is seen in the lung parenchyma.",
    "There are opacities in the lung parenchyma.",
    "Fibrotic sequelae are seen in the lungs.",
    "There is pleural effusion.",
    "There is a mosaic attenuation pattern in the lungs.",
    "Peribronchial thickening is present.",
    "There is consolidation in the lung.",
    "Bronchiectasis is present.",
    "There is interlobular septal thickening.",
]
assert len(CLASS_TEMPLATES) == len(CLASSES)

#: Where a class name alone is not a finding a reader (or ``ct_rate-rules``) recognises, the words
#: the ``canonical_findings`` text uses instead; every other class is named by its class name.
FINDING_PHRASES: dict[int, str] = {0: "Medical material: catheter"}

SentenceAssigner = Callable[[str], dict[int, list[str]]]


def _unique(sentences: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for sentence in sentences:
        sentence = sentence.strip()
        if sentence:
            seen.setdefault(sentence, None)
    return list(seen)


def condition_sentences(
    positives: Sequence[int],
    findings: str,
    impressions: str,
    assign: SentenceAssigner,
    templates: Sequence[str] = CLASS_TEMPLATES,
) -> list[tuple[int, list[str]]]:
    """``(class, sentences)`` for each positive class, from the report's own sentences.

    The sentences of class ``c`` are the findings sentences the label extractor assigns to ``c``
    (in report order); when the findings hold none, the impressions sentences; when neither does
    (the labels and the extractor disagree), the class template. ``assign`` is called once per
    section, so a volume's report is split and labelled once.
    """
    by_section = [assign(findings) if findings else {}, assign(impressions) if impressions else {}]
    segments = []
    for c in positives:
        for assigned in by_section:
            sentences = _unique(assigned.get(int(c), []))
            if sentences:
                segments.append((int(c), sentences))
                break
        else:
            segments.append((int(c), [templates[int(c)]]))
    return segments


def condition_segments(segments: Sequence[tuple[int, list[str]]]) -> list[tuple[int, str]]:
    """One text per positive class: its sentences joined (the MMD / InfoNCE targets)."""
    return [(c, " ".join(sentences)) for c, sentences in segments]


def positive_findings_text(
    segments: Sequence[tuple[int, Sequence[str]]],
    rng: random.Random,
    normal_text: str = NORMAL_TEXT,
) -> str:
    """Phase 2-3 text: one segment per positive condition, in a random order (``rng``).

    ``segments`` are :func:`condition_sentences`. A sentence the extractor assigned to two classes
    ("... effusion and atelectasis ...") is said once, in the first segment that holds it. No
    segment: ``normal_text``.
    """
    return join_condition_sentences(segments, rng, normal_text)


def narrative_text(findings: str, impressions: str = "", include_impressions: bool = False) -> str:
    """Phase 4 text: the radiologist's findings, with the impressions appended when asked."""
    findings, impressions = (findings or "").strip(), (impressions or "").strip()
    if include_impressions and impressions:
        return f"{findings} {impressions}".strip()
    return findings
