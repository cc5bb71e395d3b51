"""``ct_rate-rules``: the embedded rule-based CT-RATE label extractor.

A report is split into sentences (:func:`~graftkit_ct_rate.labels.sentences.split_sentences`), each
sentence into clauses, and each clause is matched against per-class finding patterns. A finding
mention counts only when no negation cue governs it inside its clause (pre-cues such as ``no``,
``without``; post-cues such as ``was not observed``, ``regressed``, ``disappeared``). The report's
labels are the union over its sentences, so :meth:`CTRateRulesExtractor.extract` and
:meth:`CTRateRulesExtractor.sentence_labels` can never disagree. The conventions follow the manual
labels of the 800 CT-RATE development reports (their README): any described mediastinal / hilar /
axillary lymph node counts as Lymphadenopathy, coronary plaques alone are not Arterial wall
calcification, lung masses are not Lung nodule, regressed / disappeared findings are negative.
Measured per class in docs/label-extractors.md (``benchmarks/label_extractor_cv.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from graftkit.labels import LabelExtractor
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.labels.sentences import split_sentences

_C = {name: i for i, name in enumerate(CLASSES)}


def _rx(pattern: str) -> re.Pattern[str]:
    # Patterns are lower-case and matched against lower-cased text (faster than IGNORECASE).
    return re.compile(pattern)


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group(0))


@dataclass(frozen=True)
class FindingRule:
    """One way a clause can name a class.

    ``mention`` locates the finding (negation is judged relative to its position); ``requires``
    must also occur in the sentence (e.g. a vessel for a calcification: lists such as "plaques in
    the aortic arch, and coronary arteries" span clauses); ``excludes`` vetoes the mention when it
    occurs in the same clause (e.g. ``thyroid`` for a nodule); ``mask`` blanks phrases that
    must not count as a mention or context (e.g. "coronary arteries" for arterial calcification).
    """

    cls: int
    mention: re.Pattern[str]
    requires: re.Pattern[str] | None = None
    excludes: re.Pattern[str] | None = None
    mask: re.Pattern[str] | None = field(default=None)

    def positions(self, clause: str, sentence: str) -> list[int]:
        """Start offsets of the rule's mentions in ``clause`` of ``sentence`` (empty when vetoed)."""
        text = self.mask.sub(_blank, clause) if self.mask else clause
        if self.requires is not None:
            context = self.mask.sub(_blank, sentence) if self.mask else sentence
            if not self.requires.search(context):
                return []
        if self.excludes is not None and self.excludes.search(text):
            return []
        return [m.start() for m in self.mention.finditer(text)]


RULES: list[FindingRule] = [
    FindingRule(
        _C["Medical material"],
        _rx(
            r"catheter|\bport\b|\bstent|pace ?maker|prosthe|suture|surgical (?:clip|material)|"
            r"\bclips?\b|\btubes?\b|\bdrain(?:age|s)?\b|cannula|fixat(?:or|ion)|\bpeg\b|"
            r"(?:breast|silicone|prosthetic) implant|sternotomy|\bwires?\b|electrode|"
            r"\bcoils?\b|metallic|cerclage|\bscrews?\b|valve replacement|\bicd\b"
        ),
    ),
    FindingRule(
        _C["Arterial wall calcification"],
        _rx(r"atherom|atheroscl|calcif|calcified"),
        requires=_rx(
            r"aort|vascular|vessel|carotid|subclavian|brachiocephalic|arteri|\barch\b|\barcus\b"
        ),
        excludes=_rx(r"lymph"),
        mask=_rx(
            r"(?:aortic|mitral) valve|aort(?:ic)?o-?pulmonary|"
            r"coronary (?:arter(?:y|ies)|vascular structures?|vessels?)|coronary|"
            r"\b(?:lad|rca|lcx|cx)\b|circumflex"
        ),
    ),
    FindingRule(
        _C["Cardiomegaly"],
        _rx(
            r"cardiomegal|(?:cardiothoracic (?:ratio|index)|\bctr\b)[^.]{0,40}?increas|"
            r"increas[^.]{0,40}?(?:cardiothoracic|\bctr\b)|heart (?:is |was )?(?:larger|enlarged)|"
            r"increase in (?:the )?(?:heart|cardiac) (?:size|dimensions?|volume)|"
            r"(?:heart|cardiac) (?:size|dimensions?|contours?|volume)[^.]{0,30}?"
            r"(?:increased|enlarged|large|expanded)|(?:increased|enlarged) (?:heart|cardiac)"
        ),
    ),
    FindingRule(
        _C["Pericardial effusion"],
        _rx(r"pericardial (?:\w+ )?(?:effusion|fluid)|(?:fluid|effusion)[^.]{0,80}?pericard"),
    ),
    FindingRule(
        _C["Coronary artery wall calcification"],
        _rx(r"coronar|\blad\b|\brca\b|\blcx\b|circumflex"),
        requires=_rx(r"calcif|plaque|atherom|atheroscl"),
    ),
    FindingRule(_C["Hiatal hernia"], _rx(r"hiatal hernia|hiatus hernia|hernia[^.]{0,30}hiat")),
    FindingRule(
        _C["Lymphadenopathy"],
        _rx(r"lymph ?nodes?|lymphadeno|\blaps?\b|adenopath"),
        excludes=_rx(
            r"intra-?pulmonary|intra-?parenchymal|subpleural|fissur|abdom|mesenter|spleen|splen|"
            r"breast|periportal|para-?aortic|retroperiton|perigastric|celiac|inguinal|pelvi"
        ),
        mask=_rx(r"lymph node stations?"),
    ),
    FindingRule(_C["Emphysema"], _rx(r"emphysem|\bbulla|bullous")),
    FindingRule(
        _C["Atelectasis"],
        _rx(r"(?<!fibro)(?<!fibro )(?<!fibrotic )(?:atel?e?c?tas|ateectas|atelectat)"),
    ),
    FindingRule(
        _C["Lung nodule"],
        _rx(r"\bnodules?\b|micronodul|nodular (?:lesions?|formations?)"),
        excludes=_rx(
            r"thyroid|adrenal|liver|hepatic|renal|kidney|breast|splen|spleen|pancrea|goiter|"
            r"schmorl|mesenter|subcutaneous|in the pleura\b|\bpleural nodul"
        ),
    ),
    FindingRule(
        _C["Lung opacity"],
        _rx(
            r"(?:ground|frosted).?glass(?!(?: density| densities)? nodul)|opacit|hazy|haziness|"
            r"dep[ae]nd[ae]nt densit|acinar densit|consolidative densit"
        ),
    ),
    FindingRule(
        _C["Lung opacity"],
        _rx(
            r"density increase|densit(?:y|ies) increas|increased? (?:in )?density|"
            r"increases? in (?:the )?density|infiltrat"
        ),
        requires=_rx(r"lung|lobe|segment|parenchym|pulmonar|apex|apical|lingul|basal"),
        excludes=_rx(
            r"sequel|fibro|pleuroparenchymal|pleural parenchymal|atelecta|\bband|"
            r"fat|soft tissue|metallic|bone|subcutaneous|calcif|leukemic|lymph"
        ),
    ),
    FindingRule(
        _C["Pulmonary fibrotic sequela"],
        _rx(
            r"fibro(?!adenoma)|sequel|\bscar|(?:subpleural|parenchymal|fibrotic|pleuroparenchymal) bands?|pleuro-?parenchymal|recession"
        ),
        excludes=_rx(
            r"kidney|renal|\brib\b|humer|fractur|bone|vertebra|spleen|splen|breast|lymph|"
            r"mediastin|liver|hepat|\d(?:st|nd|rd|th) (?:rib|elevation)"
        ),
    ),
    FindingRule(
        _C["Pleural effusion"],
        _rx(
            r"pleural (?:\w+ )?effusion|hydrothorax|hydropn|hemothorax|pleural fluid|"
            r"fluid[^.]{0,20}pleural|effusion[^.]{0,60}?(?:pleural|hemithora)"
        ),
    ),
    FindingRule(
        _C["Pleural effusion"],
        _rx(r"effusion"),
        excludes=_rx(
            r"pericard|renal|nephr|kidney|abdom|splen|spleen|liver|hepat|pelvi|joint|ascit|"
            r"gallbladder|cholecyst"
        ),
    ),
    FindingRule(_C["Mosaic attenuation pattern"], _rx(r"mosaic")),
    FindingRule(
        _C["Peribronchial thickening"],
        _rx(r"peri-?bronch\w*[^.]{0,40}?thick|thick[^.]{0,40}?peri-?bronch"),
    ),
    FindingRule(_C["Consolidation"], _rx(r"consolidat")),
    FindingRule(_C["Bronchiectasis"], _rx(r"bronchiecta")),
    FindingRule(
        _C["Interlobular septal thickening"],
        _rx(r"interlob\w* sept|sept(?:al|um|a)[^.]{0,20}thick"),
    ),
]

# Clause boundaries: a negation cue never reaches across these.
_CLAUSE_BREAK = _rx(
    r";|\bbut\b|\bhowever\b|\bwhereas\b|\balthough\b|\bexcept\b|,\s*and\b|,\s*while\b|"
    r"\band (?=(?:no|there|the|a|an|it)\b)"
)
# Pseudo-negations: phrases containing a negation word that do not negate the finding.
_PSEUDO_NEGATION = _rx(
    r"no (?:significant |apparent |marked |obvious )?(?:change|progression|difference|increase)|"
    r"not (?:significantly )?changed|did not (?:reach|show|change)|not reaching|"
    r"not in pathological|non-?pathological|not (?:significant|pathological) in size|"
    r"(?:not|no) (?:been )?(?:observed|detected|seen|present|described|visible) (?:in|on|at) "
    r"(?:the |a )?(?:previous|prior|former|last|old)"
)
_PRE_NEGATION = _rx(r"\b(?:no|not|without|neither|nor|absence of|free of|negative for)\b")
_POST_NEGATION = _rx(
    r"\b(?:not|never)\s+(?:been\s+|be\s+)?(?:observed|detected|seen|found|identified|noted|"
    r"present|visuali[sz]ed|monitored|evident|encountered|determined|shown|distinguished|apparent|"
    r"viewed|observable|detectable|described)|\b(?:disappeared|regressed|resolved|no longer)\b|"
    r"\babsent\b|\bremoved\b|^[a-z ]{0,40}-\s*no [a-z ]{0,30}(?:was|were|is|are) (?:detected|observed|seen)|"
    # machine-translation artefact: "Active infiltration or mass lesion was detected" (= none).
    r"\bor\b[^.]{0,60}?\b(?:is|was|were|are)\s+(?:detected|observed|seen)"
)

# Uncertainty: a finding word directly followed by "?" ("(infective? atelectasis?)") is a
# differential, which the manual labels leave negative.
_UNCERTAIN = _rx(r"[\w-]*\s*\?")


def split_clauses(sentence: str) -> list[str]:
    """Split one lower-cased sentence at the boundaries a negation cue does not cross."""
    return [c for c in _CLAUSE_BREAK.split(sentence) if c.strip()]


def is_negated(clause: str, position: int) -> bool:
    """Whether the mention starting at ``position`` of a lower-cased ``clause`` is negated."""
    text = _PSEUDO_NEGATION.sub(_blank, clause)
    if _PRE_NEGATION.search(text[:position]):
        return True
    if _UNCERTAIN.match(text, position):
        return True
    return bool(_POST_NEGATION.search(text[position:]))


class CTRateRulesExtractor(LabelExtractor):
    """Rule-based CT-RATE labeler with per-clause negation (the embedded default extractor).

    Options: none. ``extract`` returns ``int64 [n, 18]`` in :data:`CLASSES` order and always equals
    the union of :meth:`sentence_labels` over :func:`split_sentences` of each report.
    """

    name = "ct_rate-rules"
    class_names = CLASSES

    def __init__(self, **options):
        if options:
            raise ValueError(f"{self.name} takes no options, got {sorted(options)}")
        super().__init__()
        self.rules: list[FindingRule] = RULES

    def sentence_labels(self, sentence: str) -> set[int]:
        """Classes one sentence asserts as present (not negated in the clause that names them)."""
        found: set[int] = set()
        sentence = sentence.lower()
        # Masks only blank text, so a rule whose mention is absent from the raw sentence can
        # never fire: most sentences (normal anatomy) stop here.
        candidates = [rule for rule in self.rules if rule.mention.search(sentence)]
        if not candidates:
            return found
        for clause in split_clauses(sentence):
            for rule in candidates:
                if rule.cls in found:
                    continue
                if any(not is_negated(clause, p) for p in rule.positions(clause, sentence)):
                    found.add(rule.cls)
        return found

    def assign_sentences(self, report: str) -> dict[int, list[str]]:
        """Class index -> the report's sentences asserting it, in report order."""
        assigned: dict[int, list[str]] = {}
        for sentence in split_sentences(report):
            for cls in sorted(self.sentence_labels(sentence)):
                assigned.setdefault(cls, []).append(sentence)
        return assigned

    def normal_sentences(self, report: str) -> list[str]:
        """The report's sentences that assert no class (normal anatomy, negated findings)."""
        return [s for s in split_sentences(report) if not self.sentence_labels(s)]

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """Labels ``int64 [len(texts), 18]``: the union of :meth:`sentence_labels` per report."""
        if isinstance(texts, str):
            raise TypeError("extract expects a sequence of report texts, got a single str")
        out = np.zeros((len(texts), len(CLASSES)), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"report {row} is {type(text).__name__}, expected str")
            for sentence in split_sentences(text):
                for cls in self.sentence_labels(sentence):
                    out[row, cls] = 1
        return out
