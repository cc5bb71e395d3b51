"""Text-overlap scores of generated vs reference reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

These are the scores the VLM3D challenge (CT report generation) computes beside its clinical
ones, with the same library: pycocoevalcap 1.2, the Python 3 package of the MS-COCO caption
evaluation code (``ct_challenges/reportgen_evaluation/src/nlg_metrics.py`` in
github.com/forithmus/VLM3D-Dockers; ``pycocoevalcap==1.2`` in its requirements). Each report has
one reference; every score is corpus-level as pycocoevalcap reports it:

* **BLEU-n** (Papineni et al., ACL 2002), pycocoevalcap's ``Bleu(4)``: clipped n-gram counts and
  lengths summed over the corpus, cumulative geometric mean of the 1..n-gram precisions, brevity
  penalty exp(1 - r/c) when the total candidate length c is below the total reference length r
  ("closest" reference length; one reference here).
* **METEOR 1.5** (Denkowski & Lavie, WMT 2014), pycocoevalcap's ``Meteor``: the reference jar
  ``meteor-1.5.jar`` run with ``-l en -norm`` (its own lower-casing and punctuation
  tokenisation; exact, stem, synonym and paraphrase matches from the data shipped inside the
  package). It needs a Java runtime; without one :func:`meteor` raises
  :class:`~graftkit.eval.metrics.MetricUnavailableError` instead of returning a number.
* **ROUGE-L** (Lin, ACL workshop 2004): for each report, with LCS the longest common subsequence
  of the token sequences, P = LCS / |candidate|, R = LCS / |reference| and
  F = (1 + β²)·P·R / (R + β²·P) with β = 1.2 (pycocoevalcap's ``Rouge``; 0 when P or R is 0);
  the corpus score is the mean over reports. Computed here, not by pycocoevalcap, whose pure-Python
  O(|a|·|b|) LCS table takes about 8 s per 1,000 reports of this length: the LCS length comes from
  the bit-parallel algorithm of Allison & Dix (Inf. Process. Lett. 1986; Hyyrö 2004's form,
  V ← (V + U) | (V - U) with U = V & match-mask), on Python integers. Same values (tested).
* **CIDEr-D** (Vedantam et al., CVPR 2015, Sec. 4 "CIDEr-D"), pycocoevalcap's ``Cider``: TF-IDF
  n-gram vectors (n = 1..4) with document frequencies over the evaluated references, clipped
  cosine similarity, Gaussian length penalty (σ = 6), mean over n, times 10. Its IDF needs a
  corpus: with one report every weight is log(1) - log(1) = 0, so :func:`cider` refuses fewer than
  two.

Tokenisation (``tokenizer=``), applied to both texts before scoring, tokens rejoined with single
spaces (pycocoevalcap splits on whitespace):

* ``"whitespace"`` (default): split on runs of whitespace (newlines included), case and
  punctuation kept ("effusion." is one token). This is what the VLM3D scorer feeds
  pycocoevalcap: it skips pycocoevalcap's PTB tokeniser and only deletes newlines and a few
  characters; graftkit turns a newline into a separator instead of gluing the words on either side
  together, and deletes nothing.
* ``"words"``: lower-cased, punctuation dropped, words kept whole with inner ``. , ' -`` (so
  "3.5", "ground-glass" and "5,2" stay one token): the convention of the COCO toolkit's
  PTBTokenizer, which lower-cases and removes punctuation tokens.

METEOR's ``-norm`` tokenises again on its side, whatever the choice.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from typing import Literal

import numpy as np

from graftkit.eval.metrics import MetricUnavailableError

Tokenizer = Literal["whitespace", "words"]
TOKENIZERS: tuple[str, ...] = ("whitespace", "words")
_WORD = re.compile(r"\w+(?:[.,'-]\w+)*")
ROUGE_BETA = 1.2


def tokenize(text: str, tokenizer: Tokenizer = "whitespace") -> list[str]:
    """Tokens of ``text`` under one of :data:`TOKENIZERS` (module docstring)."""
    if tokenizer == "whitespace":
        return text.split()
    if tokenizer == "words":
        return _WORD.findall(text.lower())
    raise ValueError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")


def _tokenized(
    generated: Sequence[str], references: Sequence[str], tokenizer: Tokenizer
) -> tuple[list[list[str]], list[list[str]]]:
    if isinstance(generated, str) or isinstance(references, str):
        raise ValueError("generated and references must be sequences of report texts, not a str")
    if len(generated) != len(references):
        raise ValueError(
            f"generated has {len(generated)} reports but references has {len(references)}"
        )
    if len(generated) == 0:
        raise ValueError("cannot score an empty set: no reports given")
    for name, texts in (("generated", generated), ("references", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    tokenize(" ", tokenizer)  # validates the name once
    return (
        [tokenize(t, tokenizer) for t in generated],
        [tokenize(t, tokenizer) for t in references],
    )


def _coco_inputs(
    candidates: list[list[str]], refs: list[list[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's ``(gts, res)``: id -> [reference], id -> [candidate], tokens space-joined."""
    gts = {i: [" ".join(r)] for i, r in enumerate(refs)}
    res = {i: [" ".join(c)] for i, c in enumerate(candidates)}
    return gts, res


def bleu(
    generated: Sequence[str], references: Sequence[str], *, tokenizer: Tokenizer = "whitespace"
) -> dict[str, float]:
    """Corpus BLEU-1..4 (pycocoevalcap ``Bleu(4)``): ``{"bleu_1", ..., "bleu_4"}``."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _coco_inputs(*_tokenized(generated, references, tokenizer))
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"bleu_{n}": float(s) for n, s in enumerate(scores, start=1)}


def cider(
    generated: Sequence[str], references: Sequence[str], *, tokenizer: Tokenizer = "whitespace"
) -> float:
    """Corpus CIDEr-D (pycocoevalcap ``Cider``, n = 1..4, σ = 6), the mean of per-report scores."""
    from pycocoevalcap.cider.cider import Cider

    candidates, refs = _tokenized(generated, references, tokenizer)
    if len(refs) < 2:
        raise ValueError(
            "CIDEr needs at least 2 reports: its IDF is computed over the evaluated references"
        )
    if not any(refs):
        raise ValueError("CIDEr is undefined: every reference report is empty")
    score, _ = Cider().compute_score(*_coco_inputs(candidates, refs))
    return float(score)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, module docstring)."""
    if len(a) < len(b):
        a, b = b, a  # bits over the longer sequence, one loop step per token of the shorter
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_per_report(
    generated: Sequence[str],
    references: Sequence[str],
    *,
    tokenizer: Tokenizer = "whitespace",
    beta: float = ROUGE_BETA,
) -> np.ndarray:
    """ROUGE-L F of each report ``[n]`` (module docstring; β = 1.2 as pycocoevalcap's ``Rouge``)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    candidates, refs = _tokenized(generated, references, tokenizer)
    scores = np.zeros(len(candidates))
    for i, (c, r) in enumerate(zip(candidates, refs)):
        lcs = lcs_length(c, r)
        if lcs == 0:
            continue
        precision, recall = lcs / len(c), lcs / len(r)
        scores[i] = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return scores


def rouge_l(
    generated: Sequence[str],
    references: Sequence[str],
    *,
    tokenizer: Tokenizer = "whitespace",
    beta: float = ROUGE_BETA,
) -> float:
    """Corpus ROUGE-L: the mean of :func:`rouge_l_per_report`."""
    return float(rouge_l_per_report(generated, references, tokenizer=tokenizer, beta=beta).mean())


def java_available(java: str = "java") -> bool:
    """Whether a Java runtime (needed by METEOR's reference jar) is on PATH."""
    return shutil.which(java) is not None


class MeteorScorer:
    """pycocoevalcap's ``meteor-1.5.jar`` (``-l en -norm``) in a JVM started when this is built.

    The jar takes about 10 s (25 s on a loaded 2-core machine) and 1.1 GB of memory to load its
    paraphrase table; built before other work (an evaluation builds it before it generates), the
    loading overlaps that work. Without a Java runtime it is built all the same and
    :meth:`score` raises :class:`~graftkit.eval.metrics.MetricUnavailableError`. :meth:`close`
    (or leaving a ``with`` block) ends the JVM.
    """

    def __init__(self) -> None:
        self._scorer = None
        self.unavailable: str | None = None
        if not java_available():
            self.unavailable = (
                "METEOR needs a Java runtime to run pycocoevalcap's meteor-1.5.jar and none is "
                "on PATH (install one, e.g. apt-get install default-jre-headless, or score "
                "without METEOR)"
            )
            return
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            self._scorer = Meteor()
        except OSError as error:
            self.unavailable = f"METEOR (java -jar meteor-1.5.jar) failed to start: {error}"

    def score(
        self,
        generated: Sequence[str],
        references: Sequence[str],
        *,
        tokenizer: Tokenizer = "whitespace",
    ) -> float:
        """Corpus METEOR: the jar's aggregate over all segments (its ``EVAL`` line), not the mean
        of per-report scores."""
        candidates, refs = _tokenized(generated, references, tokenizer)
        if self._scorer is None:
            raise MetricUnavailableError(self.unavailable or "METEOR: the JVM was closed")
        gts, res = _coco_inputs(candidates, refs)
        try:
            score, _ = self._scorer.compute_score(gts, res)
        except (OSError, ValueError) as error:
            raise MetricUnavailableError(
                f"METEOR (java -jar meteor-1.5.jar) failed: {error}"
            ) from error
        return float(score)

    def close(self) -> None:
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            del scorer  # pycocoevalcap's Meteor kills its JVM when deleted

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meteor(
    generated: Sequence[str], references: Sequence[str], *, tokenizer: Tokenizer = "whitespace"
) -> float:
    """Corpus METEOR 1.5 from pycocoevalcap's ``meteor-1.5.jar`` (``-l en -norm``), in a JVM of
    its own (:class:`MeteorScorer`).

    The corpus score is the jar's aggregate over all segments (its ``EVAL`` line), not the mean
    of per-report scores. Starting the JVM and loading the paraphrase table takes about 10 s.
    Raises :class:`~graftkit.eval.metrics.MetricUnavailableError` when no Java runtime is on
    PATH or the jar fails.
    """
    _tokenized(generated, references, tokenizer)
    with MeteorScorer() as scorer:
        return scorer.score(generated, references, tokenizer=tokenizer)


def nlg_scores(
    generated: Sequence[str],
    references: Sequence[str],
    *,
    tokenizer: Tokenizer = "whitespace",
    with_meteor: bool = True,
) -> dict[str, float | None]:
    """``{"bleu_1".."bleu_4", "meteor", "rouge_l", "cider"}`` of the generated vs reference reports.

    ``meteor`` is left out when ``with_meteor`` is False and raises (never a 0) when Java is
    missing; ``cider`` is None for a single report (:func:`cider`).
    """
    _tokenized(generated, references, tokenizer)  # validate once, before the slow parts
    out: dict[str, float | None] = dict(bleu(generated, references, tokenizer=tokenizer))
    if with_meteor:
        out["meteor"] = meteor(generated, references, tokenizer=tokenizer)
    out["rouge_l"] = rouge_l(generated, references, tokenizer=tokenizer)
    out["cider"] = (
        cider(generated, references, tokenizer=tokenizer) if len(references) >= 2 else None
    )
    return out
