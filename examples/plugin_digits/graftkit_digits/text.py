"""Labels and reports of the digits dataset, and the rule-based label extractor that reads them.

The six classes are stroke shapes a reader can see in a handwritten digit. Each digit's
canonical glyph decides them (``DIGIT_CLASSES``); each image gets a short report that names its
shapes in random order and with varied wording, plus sentences about its own ink and, sometimes,
a shape it does *not* have ("No horizontal bar is seen."), which the extractor must not count.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

from graftkit.labels import LabelExtractor

CLASSES = ["Oval", "Upper loop", "Lower loop", "Straight stroke", "Horizontal bar", "Open curve"]

#: digit -> indices into CLASSES, from the canonical glyph of each digit.
DIGIT_CLASSES: dict[int, tuple[int, ...]] = {
    0: (0,),
    1: (3,),
    2: (4, 5),
    3: (5,),
    4: (3, 4),
    5: (4, 5),
    6: (2, 5),
    7: (3, 4),
    8: (1, 2),
    9: (1, 3),
}

#: Several phrasings per class; the first is the class's canonical text (``class_text``).
PHRASES: list[list[str]] = [
    [
        "A single tall oval fills the frame.",
        "One closed oval runs from the top rows to the bottom rows.",
        "The strokes form a tall oval ring.",
    ],
    [
        "A closed loop sits in the upper half.",
        "The top rows hold a small closed loop.",
        "There is a loop at the top of the digit.",
    ],
    [
        "A closed loop sits in the lower half.",
        "The bottom rows hold a rounded closed loop.",
        "There is a loop at the bottom of the digit.",
    ],
    [
        "A straight stroke runs down through the rows.",
        "One long straight line crosses the middle rows.",
        "The digit has a straight descending stroke.",
    ],
    [
        "A horizontal bar crosses the digit.",
        "One flat horizontal stroke is present.",
        "A level bar spans several columns.",
    ],
    [
        "An open curve bends around one side.",
        "The outline has an open, hook-like curve.",
        "A curved stroke stays open without closing.",
    ],
]
#: Absent shapes a report may state, with the classes each one rules out.
ABSENT: dict[str, tuple[int, ...]] = {
    "oval": (0,),
    "closed loop": (0, 1, 2),
    "straight stroke": (3,),
    "horizontal bar": (4,),
    "open curve": (5,),
}
OPENERS = [
    "Handwritten digit, eight rows scanned top to bottom.",
    "Scanned digit on an eight by eight grid.",
    "Single handwritten numeral.",
]
INK = [
    "The strokes are thin and faint.",
    "The strokes are of medium weight.",
    "The strokes are heavy and dark.",
]
NORMAL_TEXT = "No distinctive stroke shape identified."


def digit_labels(digit: int) -> np.ndarray:
    """The ``[C]`` 0/1 label vector of a digit (``DIGIT_CLASSES``)."""
    if digit not in DIGIT_CLASSES:
        raise ValueError(f"digit must be 0-9, got {digit!r}")
    labels = np.zeros(len(CLASSES), dtype=np.int64)
    labels[list(DIGIT_CLASSES[digit])] = 1
    return labels


def write_report(digit: int, ink_level: int, rng: random.Random) -> tuple[str, dict[int, str]]:
    """A short report for one image and, per positive class, the sentence that states it.

    ``ink_level`` (0 thin, 1 medium, 2 heavy) comes from the image itself, so two images of the
    same digit get different reports. Half the reports also state one absent shape.
    """
    sentences = {c: rng.choice(PHRASES[c]) for c in DIGIT_CLASSES[digit]}
    shapes = list(sentences.values())
    rng.shuffle(shapes)
    parts = [rng.choice(OPENERS), *shapes, INK[ink_level]]
    if rng.random() < 0.5:
        absent = [a for a, ruled_out in ABSENT.items() if not set(ruled_out) & set(sentences)]
        parts.append(rng.choice(["No {} is seen.", "There is no {}."]).format(rng.choice(absent)))
    return " ".join(parts), sentences


# -- the label extractor ------------------------------------------------------------------------
SENTENCE = re.compile(r"[^.!?]+[.!?]?")
NEGATION = re.compile(r"\b(no|not|without|absent)\b")
LOOP = r"\bloops?\b"
RULES: list[tuple[str, str | None]] = [  # (mention, also required in the sentence)
    (r"\boval\b", None),
    (LOOP, r"\b(upper|top)\b"),
    (LOOP, r"\b(lower|bottom)\b"),
    (r"\bstraight\b", None),
    (r"\b(horizontal|bar|crossbar)\b", None),
    (r"\b(curve|curved|hook)\b", None),
]


class DigitsRulesExtractor(LabelExtractor):
    """``digits-rules``: per sentence, a class is present when its mention (plus its required
    position word, for the loops) occurs with no negation cue before it in that sentence."""

    name = "digits-rules"
    class_names = CLASSES

    def __init__(self, **options):
        super().__init__(**options)
        self.rules = [(re.compile(m), re.compile(r) if r else None) for m, r in RULES]

    def _sentence(self, sentence: str) -> set[int]:
        found = set()
        for c, (mention, required) in enumerate(self.rules):
            match = mention.search(sentence)
            if match is None or (required is not None and not required.search(sentence)):
                continue
            if not NEGATION.search(sentence[: match.start()]):
                found.add(c)
        return found

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(CLASSES)), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"digits-rules: text {i} is {type(text).__name__}, not str")
            for sentence in SENTENCE.findall(text.lower()):
                for c in self._sentence(sentence):
                    out[i, c] = 1
        return out
