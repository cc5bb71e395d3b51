"""The sentence bank the synthetic cohort writes its reports from.

Built once from the 800 real labelled reports (``data/ct_rate_labeled_reports.csv``) with the
``ct_rate-rules`` extractor, and shipped as ``data/ct_rate_sentence_bank.json``, so
:func:`graftkit_ct_rate.synth.synthesize` does not run the extractor over 800 reports each time
(about 10 s on one CPU core). Rebuild it after changing the rules::

    python -m graftkit_ct_rate.sentence_bank

Each real report is split at its first double quote into findings and impressions (the CT-RATE
export keeps the impression items after a stray ``"``). The bank holds:

- ``sentences``: every distinct sentence kept, with a final period, each one its own sentence for
  the splitter (``split_sentences(s) == [s]``), so a report joined from them is labelled sentence
  by sentence;
- ``reports``: per real report, its manual ``labels`` and the indices of its findings sentences that
  assert no class (``normal``; normal anatomy and negated findings, in report order);
- ``class_findings`` / ``class_impressions``: per class, the sentences the extractor assigns to
  exactly that class, from findings and impressions; ``class_position``: the median relative
  position of the class's sentences in the findings (where a radiologist writes about it);
- ``normal_impressions``: impression sentences of the reports with no positive label.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from graftkit_ct_rate.classes import CLASSES

SOURCE_CSV = "ct_rate_labeled_reports.csv"
BANK_JSON = "ct_rate_sentence_bank.json"
SOURCE_NOTE = (
    "Sentences of the 800 CT-RATE reports in ct_rate_labeled_reports.csv (CT-CLIP / CT-RATE "
    "project, Hamamci et al., text_classifier/data/train.csv), split and labelled by the "
    "ct_rate-rules extractor; rebuilt with `python -m graftkit_ct_rate.sentence_bank`."
)
LICENSE_NOTE = "CC BY-NC-SA 4.0 (as the source reports); not covered by graftkit's own license."


def data_path(name: str) -> Path:
    return Path(str(resources.files("graftkit_ct_rate") / "data" / name))


def terminated(sentence: str) -> str:
    """The sentence with a final period when it has no terminal punctuation.

    Reports joined from bank sentences must split back into the same sentences: a sentence
    without its period would merge with the next one.
    """
    sentence = sentence.strip()
    return sentence if sentence.endswith((".", "!", "?")) else f"{sentence}."


def split_report(text: str) -> tuple[str, str]:
    """A real report's text -> (findings, impressions), split at its first double quote."""
    findings, _, impressions = str(text).partition('"')
    return findings.strip(), impressions.strip()


def build_sentence_bank(csv_path: Path | None = None, extractor: Any = None) -> dict[str, Any]:
    """Split and label the real reports once; see the module docstring for the fields."""
    from graftkit_ct_rate.labels.rules import CTRateRulesExtractor
    from graftkit_ct_rate.labels.sentences import split_sentences

    csv_path = Path(csv_path or data_path(SOURCE_CSV))
    extractor = extractor or CTRateRulesExtractor()
    frame = pd.read_csv(csv_path)
    missing = [c for c in ["report_text", *CLASSES] if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}")

    index: dict[str, int] = {}

    def intern(sentence: str) -> int:
        return index.setdefault(sentence, len(index))

    reports, normal_impressions = [], []
    class_findings: list[list[int]] = [[] for _ in CLASSES]
    class_impressions: list[list[int]] = [[] for _ in CLASSES]
    positions: list[list[float]] = [[] for _ in CLASSES]
    labels = frame[CLASSES].to_numpy(dtype=np.int64)
    for row, text in enumerate(frame["report_text"]):
        findings, impressions = split_report(text)
        normal: list[int] = []
        sentences = split_sentences(findings)
        for k, sentence in enumerate(sentences):
            sentence = terminated(sentence)
            if split_sentences(sentence) != [sentence]:
                continue
            found = extractor.sentence_labels(sentence)
            if not found:
                normal.append(intern(sentence))
            elif len(found) == 1:
                (c,) = found
                class_findings[c].append(intern(sentence))
                positions[c].append(k / max(1, len(sentences) - 1))
        for sentence in split_sentences(impressions):
            sentence = terminated(sentence)
            if split_sentences(sentence) != [sentence]:
                continue
            found = extractor.sentence_labels(sentence)
            if len(found) == 1:
                class_impressions[next(iter(found))].append(intern(sentence))
            elif not found and not labels[row].any():
                normal_impressions.append(intern(sentence))
        reports.append({"labels": labels[row].tolist(), "normal": normal})

    def distinct(ids: list[int]) -> list[int]:
        return list(dict.fromkeys(ids))

    source_sha = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    return {
        "source": SOURCE_NOTE,
        "license": LICENSE_NOTE,
        "source_sha256": source_sha,
        "extractor": extractor.name,
        "classes": CLASSES,
        "sentences": list(index),
        "reports": reports,
        "class_findings": [distinct(ids) for ids in class_findings],
        "class_impressions": [distinct(ids) for ids in class_impressions],
        "class_position": [float(np.median(p)) if p else 0.5 for p in positions],
        "normal_impressions": distinct(normal_impressions),
    }


@cache
def load_sentence_bank(path: Path | None = None) -> dict[str, Any]:
    """The shipped bank (``data/ct_rate_sentence_bank.json``), checked for the 18 classes."""
    path = Path(path or data_path(BANK_JSON))
    if not path.exists():
        raise FileNotFoundError(
            f"sentence bank {path} not found; build it with `python -m graftkit_ct_rate.sentence_bank`"
        )
    bank = json.loads(path.read_text())
    if bank.get("classes") != CLASSES:
        raise ValueError(
            f"{path}: classes {bank.get('classes')} differ from CLASSES; rebuild the bank"
        )
    empty = [CLASSES[c] for c, ids in enumerate(bank["class_findings"]) if not ids]
    if empty:
        raise ValueError(f"{path}: no findings sentence for class(es) {empty}; rebuild the bank")
    return bank


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    output = Path(argv[0]) if argv else data_path(BANK_JSON)
    bank = build_sentence_bank()
    output.write_text(json.dumps(bank, ensure_ascii=False, separators=(",", ":")) + "\n")
    counts = [len(ids) for ids in bank["class_findings"]]
    print(
        f"wrote {output}: {len(bank['sentences'])} sentences, {len(bank['reports'])} reports, "
        f"findings sentences per class min {min(counts)} / median {int(np.median(counts))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
