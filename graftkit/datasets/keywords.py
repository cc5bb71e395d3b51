"""``hf-keywords``: the label extractor derived from the class names alone.

The ``hf`` dataset (:mod:`graftkit.datasets.hf`) takes its classes from label columns, and a
dataset whose reports mention its labels by name needs no hand-written extractor: this one finds
each class's name in the text. How it decides, for a class whose *phrase* is its name with ``_``
read as a space (``pleural_effusion`` -> "pleural effusion"), plus any extra phrases given for it
(option ``keywords``):

1. The text is lower-cased and split into sentences after ``.``, ``!``, ``?`` or ``;`` followed
   by white space, and at line breaks (:func:`split_sentences`).
2. Each sentence is cut into negation scopes before ``but``, ``however``, ``although`` and
   ``whereas``.
3. A phrase matches as whole words (no letter or digit right before or after it), its words
   separated by any run of spaces, ``_`` or ``-``; its last word may also carry a plural ending
   (``+s``, ``+es``, ``y`` -> ``ies``): "nodule" matches "Nodules", "opacity" "opacities".
4. A match counts unless a negation cue precedes it in its scope (``no``, ``not``, ``without``,
   ``absence of``, ``negative for``, ``free of``) or follows it directly (``absent``, ``not``, or
   ``is``/``are``/``was``/``were`` then one of them: "effusion is not seen").
5. A class is present in a text when one match of one of its phrases counts.

Its limits, by construction: no synonym it was not given ("fluid" is not "effusion"),
uncertainty counts as present ("possible nodule"), a cue it does not list ("resolved",
"ruled out") does not negate, a listed cue negates everything after it in its scope ("no change
in the nodule" is negative), and a phrase inside another ("effusion" in "pleural effusion")
matches both classes. ``graftkit label --extractor hf-keywords --option 'classes=[...]'`` shows
what it reads from any CSV of texts; a run's ``eval.extractor_on_reference`` shows how well it
reads the dataset's own reports (1.0 when they name every label and only those).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graftkit.config import ConfigError
from graftkit.labels import LabelExtractor

#: Sentence boundaries: after ``.``, ``!``, ``?`` or ``;`` followed by white space; line breaks.
SENTENCE_BREAK = re.compile(r"(?<=[.!?;])\s+|[\r\n]+")
#: Words that end a negation's reach inside a sentence ("no effusion, but a nodule").
SCOPE_BREAK = re.compile(r"\b(?:but|however|although|whereas)\b")
#: Cues that negate a later mention in the same scope.
NEGATION_BEFORE = re.compile(r"\b(?:no|not|without|absence\s+of|negative\s+for|free\s+of)\b")
#: Cues that negate the mention they directly follow.
NEGATION_AFTER = re.compile(r"\s*(?:(?:is|are|was|were)\s+)?(?:not|absent)\b")
_WORD = re.compile(r"[^\W_]+")
_SEPARATOR = r"[\s_\-]+"


def class_phrase(name: str) -> str:
    """The words a class name stands for: ``_`` read as a space, white space collapsed, the
    first letter upper-cased (``pleural_effusion`` -> "Pleural effusion")."""
    text = " ".join(name.replace("_", " ").split())
    return text[:1].upper() + text[1:]


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """The regular expression of one phrase (rule 3 of the module docstring), for lower-cased
    text."""
    words = _WORD.findall(phrase.lower())
    if not words:
        raise ConfigError(f"hf-keywords: phrase {phrase!r} holds no letter or digit")
    last = words[-1]
    endings = [last, f"{last}s", f"{last}es"]
    if last.endswith("y") and len(last) > 1:
        endings.append(f"{last[:-1]}ies")
    body = "".join(re.escape(w) + _SEPARATOR for w in words[:-1])
    return re.compile(rf"(?<![^\W_]){body}(?:{'|'.join(map(re.escape, endings))})(?![^\W_])")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (rule 1), stripped, empty ones left out."""
    return [s.strip() for s in SENTENCE_BREAK.split(text) if s and s.strip()]


def mention_counts(pattern: re.Pattern[str], scope: str) -> bool:
    """Whether one match of ``pattern`` in a lower-cased negation scope counts (rule 4)."""
    for match in pattern.finditer(scope):
        before, after = scope[: match.start()], scope[match.end() :]
        if not NEGATION_BEFORE.search(before) and not NEGATION_AFTER.match(after):
            return True
    return False


class KeywordOptions(BaseModel):
    """Options of ``hf-keywords`` (``eval.extractor_options`` or ``graftkit label --option``)."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] | None = Field(
        None,
        min_length=1,
        description="the class names, in label order (a run's hf dataset passes its label columns)",
    )
    keywords: dict[str, list[str]] = Field(
        default_factory=dict, description="extra phrases per class name"
    )


class KeywordExtractor(LabelExtractor):
    """``hf-keywords``: a class is present when its name (or a given phrase) is mentioned and not
    negated (the module docstring has the exact rules and their limits).

    Options: ``classes`` (the class names, in label order; a run's ``hf`` dataset supplies its
    label columns, :meth:`graftkit.data.GraftDataset.extractor_options`) and ``keywords``
    (``{class name: [extra phrase, ...]}``).
    """

    name: ClassVar[str] = "hf-keywords"

    def __init__(self, **options: Any):
        super().__init__(**options)
        try:
            parsed = KeywordOptions(**options)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"option {where}: {first['msg']}") from None
        keywords: dict[str, list[str]] = {}
        if parsed.classes is None:
            raise ConfigError(
                "option classes: required (hf-keywords's class names in label order, e.g. "
                "--option 'classes=[Cardiomegaly, Pleural effusion]'; a run's hf dataset passes "
                "its label columns)"
            )
        classes = list(parsed.classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"option classes: holds duplicates: {classes}")
        for key, phrases in parsed.keywords.items():
            if key not in classes:
                close = difflib.get_close_matches(key, classes, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"classes: {classes}"
                raise ConfigError(f"option keywords: {key!r} is no class; {hint}")
            keywords[key] = [*keywords.get(key, []), *phrases]
        #: per instance: the classes come from the data, not from this class
        self.class_names = classes
        self.phrases = [[class_phrase(c), *keywords.get(c, [])] for c in classes]
        self.patterns = [[phrase_pattern(p) for p in phrases] for phrases in self.phrases]

    def sentence_classes(self, sentence: str) -> set[int]:
        """Classes that one lower-cased sentence names and does not negate."""
        scopes = SCOPE_BREAK.split(sentence)
        return {
            c
            for c, patterns in enumerate(self.patterns)
            if any(mention_counts(p, scope) for scope in scopes for p in patterns)
        }

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.class_names)), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"hf-keywords: text {i} is {type(text).__name__}, not str")
            for sentence in split_sentences(text.lower()):
                for c in self.sentence_classes(sentence):
                    out[i, c] = 1
        return out
