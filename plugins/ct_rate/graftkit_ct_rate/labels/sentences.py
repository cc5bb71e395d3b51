"""Sentence splitting for machine-translated CT-RATE reports.

CT-RATE reports (``Findings_EN`` / ``Impressions_EN``) are Turkish reports run through machine
translation. Their sentence boundaries carry artefacts that a naive ``split(". ")`` gets wrong:
impression items are delimited by stray double quotes (``...detected. " Minimal ...``), bullets
(``•``), a semicolon before a capitalised clause (``When examined in the lung parenchyma window;
Aeration ...``), decimals (``3.5 mm``, dates ``19.06.2020``) and abbreviations (``lab.
correlation``, ``e.g.``). The label extractor decides negation per sentence (docs/design.md,
"Evaluation"), so a boundary missed here merges two findings into one negation scope.
"""

from __future__ import annotations

import re

# Abbreviations whose trailing period never ends a sentence (lower-cased, without the period).
ABBREVIATIONS: frozenset[str] = frozenset(
    {"lab", "e.g", "i.e", "eg", "ie", "vs", "approx", "dr", "mr", "mrs", "fig", "cf", "nr", "st"}
)

_BOUNDARY = re.compile(
    r"""
    (?<=[.!])[\"')\]]*\s+                 # period / exclamation (+ closing quote) then whitespace
    | (?<=\?)[\"')\]]*\s+(?=[\"'(A-Z•])   # question mark only before a capitalised sentence
    | \s*;\s+(?=[A-Z])                    # semicolon before a capitalised clause
    | \s*[•\n\r]+\s*                      # bullets and line breaks
    | (?:^|\s)\"\s*                       # a stray quote opening an impression item
    | \"\s+(?=[A-Z])                       # a quote closing one before a capitalised sentence
    """,
    re.VERBOSE,
)
_TOKEN_BEFORE_PERIOD = re.compile(r"([A-Za-z][A-Za-z.]*)\.[\"')\]]*$")


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences, keeping each sentence's own text and final punctuation.

    Empty pieces and pieces without a letter (e.g. a lone quote) are dropped, surrounding quotes
    and whitespace are stripped. Decimal numbers never split (``3.5 mm``: no space after the
    period) and a period after a known abbreviation (:data:`ABBREVIATIONS`) never splits.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects a str, got {type(text).__name__}")
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        token = _TOKEN_BEFORE_PERIOD.search(text[start : match.start()])
        if token is not None and token.group(1).lower() in ABBREVIATIONS:
            continue
        pieces.append(text[start : match.start()])
        start = match.end()
    pieces.append(text[start:])
    sentences = []
    for piece in pieces:
        cleaned = piece.strip().strip("\"'").strip()
        if re.search(r"[A-Za-z]", cleaned):
            sentences.append(cleaned)
    return sentences
