"""CT-RATE label extractors: report text -> the 18 CT-RATE labels (docs/design.md, "Evaluation").

``ct_rate-rules`` (:class:`CTRateRulesExtractor`) is the embedded default; ``ct_rate-radbert``
(:class:`RadBertExtractor`) is the official RadBERT classifier loaded from local files. The RadBERT
module imports torch / transformers, so it is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftkit_ct_rate.labels.rules import CTRateRulesExtractor
from graftkit_ct_rate.labels.sentences import split_sentences

if TYPE_CHECKING:
    from graftkit_ct_rate.labels.radbert import RadBertExtractor

__all__ = ["CTRateRulesExtractor", "RadBertExtractor", "split_sentences"]


def __getattr__(name: str):
    if name == "RadBertExtractor":
        from graftkit_ct_rate.labels.radbert import RadBertExtractor

        return RadBertExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
