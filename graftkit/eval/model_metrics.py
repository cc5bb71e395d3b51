"""Model-based report scores (BERTScore, GREEN, RaTEScore), opt-in, every model loaded from a local directory.

Nothing here downloads: a model is read with ``from_pretrained(path, local_files_only=True)`` and
a missing or unreadable directory raises
:class:`~graftkit.eval.metrics.MetricUnavailableError` naming the path, never a placeholder score.

**BERTScore** (Zhang et al., ICLR 2020, Sec. 3): each text is encoded by a BERT-family model and
represented by the contextual embeddings of its word pieces at one hidden layer ``layer``
(``hidden_states[layer]``: 0 is the embedding output, L the last of L layers). With the
embeddings L2-normalised, x̂ the candidate's and x the reference's pieces,

    P = Σ_{x̂_j} w_j · max_{x_i} x_i·x̂_j / Σ w_j,    R = Σ_{x_i} w_i · max_{x̂_j} x_i·x̂_j / Σ w_i,
    F = 2PR / (P + R)

(greedy matching: every piece is matched to its most similar piece of the other text). As in the
authors' package ``bert-score`` 0.3.13 (``bert_score/score.py`` and ``utils.greedy_cos_idf``), a
piece's weight w is 1 except for the [CLS] and [SEP] pieces (the tokenizer's ``cls_token_id`` and
``sep_token_id``: ``<s>`` and ``</s>`` for RoBERTa), whose weight is 0, but which still count as
match targets; no IDF weighting and no baseline rescaling (both options of the package, off by
default there too). Texts are stripped and truncated to the model's maximum length, with a prefix
space for byte-level BPE tokenizers (RoBERTa, GPT-2), as the package encodes them. A text with no
piece besides [CLS] / [SEP] scores P = R = F = 0 (the package does the same, with a warning).

The layer matters: the package's defaults, chosen on WMT16 correlation
(``bert_score.utils.model2layers``), are 17 for ``roberta-large`` (its English default), 9 for
``bert-base-uncased``, 8 for ``allenai/scibert_scivocab_uncased`` and 40 for
``microsoft/deberta-xlarge-mnli``; ``layer=None`` here takes the last layer, so name the layer
when a number is to be compared with published ones.

**GREEN** (Ostmeier et al., Findings of EMNLP 2024; github.com/Stanford-AIMI/GREEN): a language
model fine-tuned as a judge (e.g. GREEN-RadLlama2-7b) reads the reference and the candidate in a
fixed prompt and writes an error analysis; GREEN = matched findings / (matched findings + the
clinically significant errors of the six kinds (a)-(f)). :class:`GREENScorer` runs the judge from
a local directory with the reference's prompt, chat template and greedy decoding;
:func:`parse_green` reads the analysis. The reference package itself cannot be installed here
(it pins torch 2.2.2 and transformers 4.40).

**RaTEScore** (Zhao et al., EMNLP 2024): :class:`RaTEScorer` tags medical entities (abnormality,
disease, their negations, anatomy) with the authors' NER model, embeds them with their encoder
and matches them across the two reports with the authors' type weights and negation penalty. Its
reference package splits sentences with medspacy, which cannot be installed beside graftkit (it
pulls spacy 3.7 and downgrades numpy to 1.26): the default splitter here is a rule of its own
(:func:`split_sentences`), and ``splitter="medspacy"`` uses the reference's where medspacy is
installed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graftkit.eval.metrics import MetricUnavailableError


def _model_dir(path: str | Path, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise MetricUnavailableError(
            f"{what}: no model directory with a config.json at {directory} (models are loaded "
            "from local paths only; save one with save_pretrained and pass its path)"
        )
    return directory


def _check_pairs(candidates: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(candidates, str) or isinstance(references, str):
        raise ValueError("candidates and references must be sequences of texts, not a str")
    if len(candidates) != len(references):
        raise ValueError(
            f"candidates has {len(candidates)} texts but references has {len(references)}"
        )
    for name, texts in (("candidates", candidates), ("references", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name}[{i}] must be a str, got {type(text).__name__}")


class BERTScorer:
    """BERTScore with a model and tokenizer from a local directory (module docstring).

    ``layer``: which hidden state to match on (0..L; default L, the last). ``batch_size`` texts
    are encoded at a time; the model runs in eval mode under ``torch.inference_mode``.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        layer: int | None = None,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        directory = _model_dir(model_path, "BERTScore")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.model = AutoModel.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as error:
            raise MetricUnavailableError(
                f"BERTScore: cannot load a model and tokenizer from {directory}: {error}"
            ) from error
        self.model.eval().to(device)
        self.device = device
        n_layers = int(self.model.config.num_hidden_layers)
        self.layer = n_layers if layer is None else int(layer)
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"BERTScore: layer must be in 0..{n_layers}, got {layer}")
        if batch_size < 1:
            raise ValueError(f"BERTScore: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        limits = [
            v
            for v in (
                self.tokenizer.model_max_length,
                getattr(self.model.config, "max_position_embeddings", None),
            )
            if isinstance(v, int) and 0 < v < 1_000_000
        ]
        self.max_length = min(limits) if limits else 512
        self._prefix_space = getattr(self.tokenizer, "add_prefix_space", None) is not None
        self._zero_weight = {
            t for t in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if t is not None
        }

    def _encode(self, texts: Sequence[str]) -> list[tuple[Any, np.ndarray]]:
        """Per text: the normalised embeddings ``[L_t, D]`` and the piece weights ``[L_t]``."""
        import torch

        out: list[tuple[Any, np.ndarray]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t.strip() for t in texts[start : start + self.batch_size]]
            if self._prefix_space:
                batch = [" " + t if t else t for t in batch]
            encoded = self.tokenizer(
                batch,
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**encoded, output_hidden_states=True).hidden_states[self.layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
            for row in range(hidden.shape[0]):
                keep = encoded["attention_mask"][row].bool()
                ids = encoded["input_ids"][row][keep].tolist()
                weights = np.array([0.0 if i in self._zero_weight else 1.0 for i in ids])
                out.append((hidden[row][keep], weights))
        return out

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-pair ``{"precision", "recall", "f1"}``, each ``[n]``."""
        _check_pairs(candidates, references)
        cand = self._encode(candidates)
        refs = self._encode(references)
        n = len(cand)
        precision, recall, f1 = np.zeros(n), np.zeros(n), np.zeros(n)
        for k, ((c_emb, c_w), (r_emb, r_w)) in enumerate(zip(cand, refs)):
            if c_w.sum() == 0 or r_w.sum() == 0:
                continue
            sim = (c_emb @ r_emb.T).cpu().numpy().astype(np.float64)  # [L_c, L_r]
            p = float((sim.max(axis=1) * c_w).sum() / c_w.sum())
            r = float((sim.max(axis=0) * r_w).sum() / r_w.sum())
            precision[k], recall[k] = p, r
            f1[k] = 2 * p * r / (p + r) if p + r != 0 else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str],
    model_path: str | Path,
    *,
    layer: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, Any]:
    """Mean BERTScore over the pairs: ``{"precision", "recall", "f1", "layer", "per_report"}``."""
    scorer = BERTScorer(model_path, layer=layer, batch_size=batch_size, device=device)
    per = scorer.score(candidates, references)
    return {
        "precision": float(per["precision"].mean()) if len(candidates) else None,
        "recall": float(per["recall"].mean()) if len(candidates) else None,
        "f1": float(per["f1"].mean()) if len(candidates) else None,
        "layer": scorer.layer,
        "per_report": {k: v.tolist() for k, v in per.items()},
    }


# ---------------------------------------------------------------------------------------------
# GREEN

#: The prompt the GREEN models were fine-tuned on, verbatim (``make_prompt`` in
#: ``green_score/utils.py`` of github.com/Stanford-AIMI/GREEN, MIT licence): a fine-tuned judge
#: is only valid on its own prompt, so this text is the metric's input format, not prose to edit.
GREEN_PROMPT = """Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report composed by expert radiologists.

    Process Overview: You will be presented with:

    1. The criteria for making a judgment.
    2. The reference radiology report.
    3. The candidate radiology report.
    4. The desired format for your assessment.

    1. Criteria for Judgment:

    For each candidate report, determine:

    The count of clinically significant errors.
    The count of clinically insignificant errors.

    Errors can fall into one of these categories:

    a) False report of a finding in the candidate.
    b) Missing a finding present in the reference.
    c) Misidentification of a finding's anatomic location/position.
    d) Misassessment of the severity of a finding.
    e) Mentioning a comparison that isn't in the reference.
    f) Omitting a comparison detailing a change from a prior study.
    Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that appear in both reports.

    2. Reference Report:
    {reference}

    3. Candidate Report:
    {candidate}

    4. Reporting Your Assessment:

    Follow this specific format for your output, even if no errors are found:
    ```
    [Explanation]:
    <Explanation>

    [Clinically Significant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Clinically Insignificant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Matched Findings]:
    <The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>
    ```
"""

#: The chat template that the reference ``GREEN`` class sets on its tokenizer (same repository,
#: ``green_score/green.py``).
GREEN_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['from'] == 'human' %}\n"
    "{{ '<|user|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'system' %}\n{{ '<|system|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n"
    "{% endif %}\n{% endfor %}"
)
_SECTION = r"\[{name}\]:\s*(.*?)(?:\n\s*\n|\Z)"


def green_prompt(reference: str, candidate: str, max_words: int = 300) -> str:
    """:data:`GREEN_PROMPT` for one pair, each report cut to its first ``max_words`` words."""
    return GREEN_PROMPT.format(
        reference=" ".join(reference.split()[:max_words]),
        candidate=" ".join(candidate.split()[:max_words]),
    )


def _section(analysis: str, name: str) -> str | None:
    found = re.search(_SECTION.format(name=re.escape(name)), analysis, re.DOTALL)
    return None if found is None else found.group(1)


def _error_counts(section: str | None) -> list[int]:
    """Counts (a)..(f) of an error section: ``(x) <type>: <count>. ...`` lines; "No..." is none."""
    counts = [0] * 6
    if section is None or section.startswith("No"):
        return counts
    for line in section.splitlines():
        found = re.match(r"\(([a-f]|[1-6])\) [^:]*: (\d+)\.", line.strip())
        if found:
            key = found.group(1)
            counts["abcdef".index(key) if key.isalpha() else int(key) - 1] = int(found.group(2))
    return counts


def parse_green(analysis: str) -> dict[str, Any] | None:
    """Error counts and GREEN score of one judge response; None when it is not in the format.

    GREEN = matched / (matched + Σ_{a..f} clinically significant errors), 0 when nothing matched
    (Ostmeier et al., Findings of EMNLP 2024). Sections are read as the reference parser reads
    them (``parse_error_counts`` in green.py): a section runs to the next blank line, "No" at its
    start means none, each line ``(a) <type>: <count>. ...`` gives a count (``(1)..(6)`` also
    accepted), and ``[Matched Findings]`` starts with ``<count>.``. Unlike the reference, which
    scores a response lacking these sections 0, a response without a ``[Matched Findings]`` or
    ``[Clinically Significant Errors]`` section gives None: unparsed, not a 0.
    """
    significant = _section(analysis, "Clinically Significant Errors")
    matched_text = _section(analysis, "Matched Findings")
    if significant is None or matched_text is None:
        return None
    count = re.match(r"(\d+)\.", matched_text)
    matched = 0 if count is None else int(count.group(1))
    errors = _error_counts(significant)
    return {
        "green": 0.0 if matched == 0 else matched / (matched + sum(errors)),
        "matched_findings": matched,
        "significant_errors": dict(zip("abcdef", errors)),
        "insignificant_errors": dict(
            zip("abcdef", _error_counts(_section(analysis, "Clinically Insignificant Errors")))
        ),
    }


class GREENScorer:
    """GREEN with a fine-tuned judge LM from a local directory (e.g. GREEN-RadLlama2-7b).

    For each pair the judge reads :func:`green_prompt` rendered with :data:`GREEN_CHAT_TEMPLATE`
    (a ``human`` turn and an empty ``gpt`` turn, generation prompt added, as the reference), an
    end-of-sequence token appended as the reference tokenizer's ``add_eos_token=True`` does, left
    padding with the eos token, and writes its analysis greedily up to ``max_length`` tokens in
    all (2048 in the reference; a longer prompt keeps its last ``max_length`` tokens, where the
    reference truncates on the right, and each report is cut to 300 words first, so with a
    Llama tokenizer neither happens); :func:`parse_green` scores it. A 7-billion-parameter judge wants
    a GPU; ``dtype`` defaults to float16 there, as in the reference, and float32 on the CPU.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 4,
        max_length: int = 2048,
        dtype: Any = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = _model_dir(model_path, "GREEN")
        if batch_size < 1 or max_length < 1:
            raise ValueError("GREEN: batch_size and max_length must be >= 1")
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.float16
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError) as error:
            raise MetricUnavailableError(
                f"GREEN: cannot load a causal LM and tokenizer from {directory}: {error}"
            ) from error
        if self.tokenizer.eos_token_id is None:
            raise MetricUnavailableError(f"GREEN: the tokenizer at {directory} has no eos token")
        self.model.eval().to(device)
        self.device = device
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)

    def render(self, reference: str, candidate: str) -> str:
        """The text the judge reads for one pair, before tokenisation."""
        messages = [
            {"from": "human", "value": green_prompt(reference, candidate)},
            {"from": "gpt", "value": ""},
        ]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=GREEN_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )

    def analyse(self, candidates: Sequence[str], references: Sequence[str]) -> list[str]:
        """The judge's analysis of each pair (decoded, the prompt cut off)."""
        import torch

        _check_pairs(candidates, references)
        eos = self.tokenizer.eos_token_id
        out: list[str] = []
        for start in range(0, len(candidates), self.batch_size):
            pairs = zip(
                candidates[start : start + self.batch_size],
                references[start : start + self.batch_size],
            )
            ids = [self.tokenizer(self.render(r, c))["input_ids"] for c, r in pairs]
            ids = [(i if i and i[-1] == eos else [*i, eos])[-self.max_length :] for i in ids]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[eos] * (width - len(i)) + i for i in ids])
            attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max(1, self.max_length - width),
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=eos,
                )
            out.extend(self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True))
        return out

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        """``{"green", "per_report", "unparsed", "analyses"}``: ``green`` is the mean over the
        parsed responses (None when none parsed), ``unparsed`` how many were left out."""
        analyses = self.analyse(candidates, references)
        parsed = [parse_green(a) for a in analyses]
        values = [p["green"] for p in parsed if p is not None]
        return {
            "green": float(np.mean(values)) if values else None,
            "per_report": [None if p is None else p["green"] for p in parsed],
            "unparsed": sum(p is None for p in parsed),
            "analyses": analyses,
        }


# ---------------------------------------------------------------------------------------------
# RaTEScore

#: The type-pair weights w(reference type, candidate type) of RaTEScore: the authors' default
#: affinity matrix (``DEFAULT_MATRIX`` in ``RaTEScore/scorer.py`` of
#: github.com/MAGIC-AI4Med/RaTEScore, their long-report search against human ratings). Data the
#: metric is defined with, copied digit for digit.
RATE_AFFINITY: dict[tuple[str, str], float] = {
    ("ABNORMALITY", "ABNORMALITY"): 0.4276119164393705,
    ("ABNORMALITY", "ANATOMY"): 0.6240929990607657,
    ("ABNORMALITY", "DISEASE"): 0.0034478181112993847,
    ("ABNORMALITY", "NON-ABNORMALITY"): 0.5431049700217344,
    ("ABNORMALITY", "NON-DISEASE"): 0.27005425386213877,
    ("ANATOMY", "ABNORMALITY"): 0.7487824274337533,
    ("ANATOMY", "ANATOMY"): 0.2856134859160784,
    ("ANATOMY", "DISEASE"): 0.4592143222158069,
    ("ANATOMY", "NON-ABNORMALITY"): 0.02097055139911715,
    ("ANATOMY", "NON-DISEASE"): 0.00013736314126696204,
    ("DISEASE", "ABNORMALITY"): 0.8396510075734789,
    ("DISEASE", "ANATOMY"): 0.9950209388542061,
    ("DISEASE", "DISEASE"): 0.8460555030578727,
    ("DISEASE", "NON-ABNORMALITY"): 0.9820689020512646,
    ("DISEASE", "NON-DISEASE"): 0.3789136708096537,
    ("NON-ABNORMALITY", "ABNORMALITY"): 0.16546764653692908,
    ("NON-ABNORMALITY", "ANATOMY"): 0.018670610691852826,
    ("NON-ABNORMALITY", "DISEASE"): 0.719397354576018,
    ("NON-ABNORMALITY", "NON-ABNORMALITY"): 0.0009357166071730684,
    ("NON-ABNORMALITY", "NON-DISEASE"): 0.0927333564267591,
    ("NON-DISEASE", "ABNORMALITY"): 0.7759420231214385,
    ("NON-DISEASE", "ANATOMY"): 0.1839139293714062,
    ("NON-DISEASE", "DISEASE"): 0.10073046076318157,
    ("NON-DISEASE", "NON-ABNORMALITY"): 0.03860183811876373,
    ("NON-DISEASE", "NON-DISEASE"): 0.34065681486566446,
}
RATE_TYPES = ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")
#: A match between a finding and its negation (either way round) keeps this share of its
#: similarity (the reference's ``neg_weight`` and ``neg_class``).
RATE_NEGATION_WEIGHT = 0.3612
RATE_NEGATION_PAIRS = frozenset(
    {
        ("NON-DISEASE", "DISEASE"),
        ("NON-ABNORMALITY", "ABNORMALITY"),
        ("DISEASE", "NON-DISEASE"),
        ("ABNORMALITY", "NON-ABNORMALITY"),
        ("NON-DISEASE", "ABNORMALITY"),
        ("NON-ABNORMALITY", "DISEASE"),
        ("DISEASE", "NON-ABNORMALITY"),
        ("ABNORMALITY", "NON-DISEASE"),
    }
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """RaTEScore's sentences of a report: split after ``.``, ``!`` or ``?`` followed by
    whitespace, and at line breaks; pieces without a word or shorter than 3 characters are
    dropped, as the reference drops them. The reference splits with medspacy's PyRuSH rules
    (:class:`RaTEScorer` ``splitter="medspacy"``), which this approximates on report prose."""
    return [
        s.strip()
        for s in _SENTENCE_END.split(text)
        if s.strip() and s.strip().split() and len(s.strip()) >= 3
    ]


def bio_spans(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start, end, type)`` (inclusive) of the entities of a BIO label sequence: a ``B-T``
    label opens an entity of type T, ``I-`` labels continue it, anything else closes it; an
    ``I-`` without an open entity is ignored."""
    spans: list[tuple[int, int, str]] = []
    open_start, open_type = None, None
    for i, label in enumerate([*labels, "O"]):
        if open_start is not None and not label.startswith("I-"):
            spans.append((open_start, i - 1, open_type))
            open_start, open_type = None, None
        if label.startswith("B-"):
            open_start, open_type = i, label[2:]
    return spans


def rate_match(
    reference: Any, candidate: Any, reference_types: Sequence[str], candidate_types: Sequence[str]
) -> float:
    """One direction of RaTEScore (Zhao et al., EMNLP 2024, Sec. 3.3): each reference entity i is
    matched to its most cosine-similar candidate entity j(i), and

        score = Σ_i cos_i · w(t_i, t_j(i)) · ν_i / Σ_i w(t_i, t_j(i))

    with w the type-pair weight (:data:`RATE_AFFINITY`) and ν = :data:`RATE_NEGATION_WEIGHT` when
    the pair matches a finding with its negation, else 1; 0 when every weight is 0.
    ``reference`` / ``candidate`` are entity embeddings ``[m, D]`` / ``[k, D]`` (k >= 1)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    cand = cand / np.linalg.norm(cand, axis=1, keepdims=True).clip(1e-12)
    similarity = ref @ cand.T
    best = similarity.argmax(axis=1)
    total = weights = 0.0
    for i, j in enumerate(best):
        pair = (reference_types[i], candidate_types[j])
        weight = RATE_AFFINITY[pair]
        negation = RATE_NEGATION_WEIGHT if pair in RATE_NEGATION_PAIRS else 1.0
        total += float(similarity[i, j]) * weight * negation
        weights += weight
    return total / weights if weights else 0.0


class RaTEScorer:
    """RaTEScore (Zhao et al., EMNLP 2024): entity-level agreement of a candidate and a reference
    report, with both models from local directories.

    Each report is split into sentences (:func:`split_sentences`, or medspacy's PyRuSH with
    ``splitter="medspacy"`` when medspacy is installed, as in the reference), a token-classification
    model tags each sentence's tokens with BIO labels over :data:`RATE_TYPES` (the authors'
    ``Angelakeke/RaTE-NER-Deberta``; labels from its ``config.id2label``), each entity's text is
    embedded by the [CLS] state of an encoder (the authors' ``FremyCompany/BioLORD-2023-C``, at
    most 30 tokens), and per report

        P = rate_match(reference, candidate), R = rate_match(candidate, reference),
        RaTEScore = 2PR / (P + R)

    (:func:`rate_match`); 0.5 when either report has no entity, 0 when P + R = 0, as the
    reference. The corpus score is the mean over reports. What differs from the authors' package:
    the default sentence splitter (their medspacy install pulls spacy 3.7 and numpy 1.26, which
    graftkit's environment cannot take), and the BIO decoding at malformed label sequences
    (:func:`bio_spans`; the reference drops an entity left open at the end of a sentence after an
    earlier one closed); on a report whose sentences both split alike, the entities and the score
    are the reference's.
    """

    def __init__(
        self,
        ner_path: str | Path,
        embedding_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        splitter: str = "regex",
    ) -> None:
        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

        if splitter not in ("regex", "medspacy"):
            raise ValueError(f"RaTEScore: splitter must be 'regex' or 'medspacy', got {splitter!r}")
        if batch_size < 1:
            raise ValueError(f"RaTEScore: batch_size must be >= 1, got {batch_size}")
        self._split = split_sentences
        if splitter == "medspacy":
            try:
                import medspacy
            except ImportError as error:
                raise MetricUnavailableError(
                    "RaTEScore: splitter='medspacy' needs medspacy installed (pip install medspacy; "
                    "it downgrades numpy, so use a separate environment)"
                ) from error
            nlp = medspacy.load(medspacy_enable=["medspacy_pyrush"])
            self._split = lambda text: [
                s for s in (str(x).strip() for x in nlp(text).sents) if s.split() and len(s) >= 3
            ]
        self.splitter = splitter
        loaded = {}
        for name, path, cls in (
            ("ner", ner_path, AutoModelForTokenClassification),
            ("embedding", embedding_path, AutoModel),
        ):
            directory = _model_dir(path, f"RaTEScore {name} model")
            try:
                loaded[name] = (
                    AutoTokenizer.from_pretrained(directory, local_files_only=True),
                    cls.from_pretrained(directory, local_files_only=True).eval().to(device),
                )
            except (OSError, ValueError) as error:
                raise MetricUnavailableError(
                    f"RaTEScore: cannot load the {name} model and tokenizer from {directory}: {error}"
                ) from error
        (self.ner_tokenizer, self.ner), (self.embed_tokenizer, self.embedder) = (
            loaded["ner"],
            loaded["embedding"],
        )
        self.labels = {int(i): str(label) for i, label in self.ner.config.id2label.items()}
        for label in self.labels.values():
            if label != "O" and (label[:2] not in ("B-", "I-") or label[2:] not in RATE_TYPES):
                raise MetricUnavailableError(
                    f"RaTEScore: the NER model at {ner_path} has label {label!r}; expected O or "
                    f"B-/I- of {', '.join(RATE_TYPES)}"
                )
        self.device = device
        self.batch_size = int(batch_size)

    def entities(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """Per report, its ``(entity text, type)`` pairs in reading order."""
        import torch

        sentences, owner = [], []
        for k, text in enumerate(texts):
            for sentence in self._split(text):
                sentences.append(sentence)
                owner.append(k)
        out: list[list[tuple[str, str]]] = [[] for _ in texts]
        special = set(self.ner_tokenizer.all_special_ids)
        for start in range(0, len(sentences), self.batch_size):
            batch = sentences[start : start + self.batch_size]
            encoded = self.ner_tokenizer(
                batch, max_length=512, padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                predicted = self.ner(**encoded).logits.argmax(dim=-1).cpu()
            for row in range(len(batch)):
                ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
                keep = [i for i, t in enumerate(ids) if t not in special]
                tokens = self.ner_tokenizer.convert_ids_to_tokens([ids[i] for i in keep])
                labels = [self.labels[int(predicted[row][i])] for i in keep]
                for first, last, kind in bio_spans(labels):
                    text = self.ner_tokenizer.convert_tokens_to_string(tokens[first : last + 1])
                    out[owner[start + row]].append((text.strip(), kind))
        return out

    def _embed(self, entities: list[str]) -> Any:
        import torch

        encoded = self.embed_tokenizer(
            entities, truncation=True, padding=True, max_length=30, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            return self.embedder(**encoded).last_hidden_state[:, 0].float().cpu().numpy()

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
        """``{"ratescore": mean, "per_report": [n], "splitter"}``."""
        _check_pairs(candidates, references)
        cand, refs = self.entities(candidates), self.entities(references)
        per_report = []
        for c, r in zip(cand, refs, strict=True):
            if not c or not r:
                per_report.append(0.5)
                continue
            c_emb, r_emb = self._embed([e for e, _ in c]), self._embed([e for e, _ in r])
            c_types, r_types = [t for _, t in c], [t for _, t in r]
            p = rate_match(r_emb, c_emb, r_types, c_types)
            q = rate_match(c_emb, r_emb, c_types, r_types)
            per_report.append(2 * p * q / (p + q) if p + q else 0.0)
        return {
            "ratescore": float(np.mean(per_report)) if per_report else None,
            "per_report": per_report,
            "splitter": self.splitter,
        }
