"""Evaluation of a grafted model: generation F1, extractor reference score, classifier
thresholds, visual-token ablations, quality ladder, probes and zone grounding (docs/design.md
"Evaluation"; paper Tables VIII and X).

:func:`evaluate` takes a model, tokenizer, dataset, volumes and an ``EvalConfig`` and returns an
:class:`Evaluation`; it knows nothing of the curriculum and writes no file.
:mod:`graftkit.run_eval` evaluates a run with it and writes ``RUN/metrics.json``,
``generations.jsonl``, ``grounding.json`` and ``report.html``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftkit.checkpoint import load_checkpoint
from graftkit.config import EvalConfig
from graftkit.data import (
    GraftDataset,
    Volume,
    VolumeDataset,
    collate_volumes,
    response_text,
    sample_rng,
)
from graftkit.eval.generation import (
    ABLATIONS,
    ablate,
    encode_with,
    generate_reports,
    generation_settings,
    label_matrix,
    label_scores,
    label_token_oracle,
    visual_tokens,
    zone_features,
)
from graftkit.eval.metrics import multilabel_scores
from graftkit.eval.nlg import MeteorScorer
from graftkit.eval.shard import SINGLE, Sharding, concat, map_batches
from graftkit.labels import evaluation_extractor
from graftkit.lm import ChatPrompt, encode_chat, pad_batch
from graftkit.lm.chat import text_budget


def _count_cut(tokenizer, prompt, texts: list[str], k: int, max_length: int, cut: set[Any]) -> None:
    """Add to ``cut`` the index of every text whose encoding is longer than ``max_length``."""
    cut.update(
        i
        for i, t in enumerate(texts)
        if encode_chat(tokenizer, prompt, t, k, max_length=max_length)["cut"]
    )


@torch.inference_mode()
def token_nll(
    glm,
    tokenizer,
    prompt: str | ChatPrompt,
    responses: list[str],
    tokens: torch.Tensor,
    batch_size: int = 16,
    max_length: int | None = None,
    cut: set[Any] | None = None,
    sharding: Sharding | None = None,
):
    """Per-response lists of (token id, NLL) over the response tokens, teacher-forced; with
    ``sharding`` each process scores its batches (:mod:`graftkit.eval.shard`).

    Each encoding holds at most ``max_length`` tokens (default: the tokenizer's
    :func:`~graftkit.lm.chat.text_budget`): a longer response is scored on its first tokens, and
    its index is added to ``cut``, so memory is bounded whatever the length of a report.
    """
    k = tokens.shape[1]
    max_length = max_length or text_budget(tokenizer)
    if cut is not None:
        _count_cut(tokenizer, prompt, responses, k, max_length, cut)

    def score(_: int, start: int, stop: int) -> list[list[tuple[int, float]]]:
        out = []
        encs = [
            encode_chat(tokenizer, prompt, r, k, max_length=max_length)
            for r in responses[start:stop]
        ]
        batch = pad_batch(encs, tokenizer.pad_token_id, side="right")
        logits = glm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=tokens[start:stop],
        ).logits.float()
        labels = batch["labels"].to(logits.device)
        target = labels[:, 1:]
        valid = target != -100
        for b in range(target.shape[0]):
            # one response's log-softmax at a time, the same values: a batch-wide one is a second
            # [B, T, vocab] float tensor next to the logits (~125 MB at 16 narrative responses of
            # ~1,900 tokens), held at the default run's peak resident memory
            logp = torch.log_softmax(logits[b, :-1], dim=-1)
            nll = -logp.gather(-1, target[b].clamp_min(0).unsqueeze(-1)).squeeze(-1)
            ids = target[b][valid[b]].tolist()
            out.append(list(zip(ids, nll[valid[b]].tolist(), strict=True)))
        return out

    return concat(map_batches(sharding, len(responses), batch_size, score, collective=True))


def split_nll(
    tokenizer, per_token: list[list[tuple[int, float]]], words: set[str]
) -> dict[str, float]:
    """Mean NLL of tokens inside finding words vs all other tokens."""
    finding, other = [], []
    for seq in per_token:
        pieces = [tokenizer.decode([i]) for i, _ in seq]
        text = "".join(pieces)
        spans = [m.span() for m in re.finditer(r"[A-Za-z]+", text) if m.group().lower() in words]
        pos = 0
        for piece, (_, nll) in zip(pieces, seq, strict=True):
            lo, hi = pos, pos + len(piece)
            pos = hi
            (finding if any(a < hi and lo < b for a, b in spans) else other).append(nll)
    return {
        "finding": float(np.mean(finding)) if finding else float("nan"),
        "other": float(np.mean(other)) if other else float("nan"),
        "finding_tokens": len(finding),
        "other_tokens": len(other),
    }


@torch.inference_mode()
def occlusion_rise(
    glm,
    tokenizer,
    prompt: str | ChatPrompt,
    tokens: torch.Tensor,
    text: str,
    max_length: int | None = None,
) -> torch.Tensor:
    """``[K]``: the rise of ``text``'s mean teacher-forced NLL when zone k's visual token is
    zeroed, for one volume's tokens ``[K, d]`` (positive: the text relied on zone k); the text is
    scored on at most ``max_length`` tokens (:func:`token_nll`)."""
    k = tokens.shape[0]
    variants = tokens.unsqueeze(0).repeat(k + 1, 1, 1)
    for z in range(k):
        variants[z + 1, z] = 0
    nll = token_nll(
        glm, tokenizer, prompt, [text] * (k + 1), variants, batch_size=k + 1, max_length=max_length
    )
    mean = torch.tensor([sum(n for _, n in seq) / max(1, len(seq)) for seq in nll])
    return mean[1:] - mean[0]


@torch.inference_mode()
def zone_grounding(
    glm,
    tokenizer,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    tokens: torch.Tensor,
    per_class: int = 4,
    prompt: str | ChatPrompt | None = None,
    max_length: int | None = None,
    sharding: Sharding | None = None,
) -> dict[str, Any]:
    """Occlusion map: how much the NLL of each finding's sentence rises when zone k is zeroed.

    For every class with positive volumes, its condition sentence is teacher-forced for up to
    ``per_class`` such volumes with all tokens, then with token k zeroed (k = 0 apex .. K-1 base).
    Rows are normalised to sum to 1 over zones (negative rises clipped to 0). ``prompt``
    defaults to the dataset's; each sentence is scored on at most ``max_length`` tokens. With
    ``sharding`` each (class, volume) pair is one unit.
    """
    prompt = prompt if prompt is not None else dataset.prompt
    k = tokens.shape[1]
    pairs = [
        (c, i)
        for c in range(len(dataset.class_names))
        for i in [i for i, v in enumerate(volumes) if v.labels[c] > 0][:per_class]
    ]

    def rise_of(unit: int) -> torch.Tensor:
        c, i = pairs[unit]
        text = dict(dataset.condition_texts(volumes[i])).get(c, dataset.class_text(c))
        return occlusion_rise(
            glm, tokenizer, prompt, tokens[i], text, max_length=max_length
        ).clamp_min(0)

    rises = (sharding or SINGLE).map(rise_of, len(pairs), collective=True)
    rows = []
    for c, name in enumerate(dataset.class_names):
        mine = [r for (pc, _), r in zip(pairs, rises, strict=True) if pc == c]
        if not mine:
            continue
        rise = torch.zeros(k)
        for r in mine:
            rise += r
        weights = rise / rise.sum() if rise.sum() > 0 else rise
        rows.append({"label": name, "weights": weights.tolist(), "volumes": len(mine)})
    return {
        "zones": k,
        "method": "occlusion (NLL rise when one zone token is zeroed)",
        "rows": rows,
    }


def _probe_features(
    glm,
    dataset,
    volumes,
    raw: bool,
    max_slices: int | None,
    sharding: Sharding | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Mean-pooled features ``[n, D]`` of the pooled linear probe: the mean of the raw slice
    embeddings (``raw``) or of the compressor's K tokens (of checkpoint ``state``'s bridge when
    given, :func:`~graftkit.eval.generation.encode_with`)."""
    data = VolumeDataset(dataset, list(volumes), max_slices)

    def features(_: int, start: int, stop: int) -> np.ndarray:
        with torch.inference_mode():
            batch = collate_volumes([data[i] for i in range(start, stop)])
            if raw:
                m = batch["mask"].unsqueeze(-1).float()
                return ((batch["slices"] * m).sum(1) / m.sum(1)).numpy()
            zones = encode_with(glm, state, batch["slices"], batch["z_mm"], batch["mask"])[0]
            return zones.mean(1).float().cpu().numpy()

    return np.concatenate(map_batches(sharding, len(data), 32, features))


#: ``probe`` key of the pooled linear probe on the raw slice embeddings (``raw`` before; the
#: report still reads that name)
SLICE_MEAN = "slice_mean"


def linear_probes(
    glm,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    checkpoints: Mapping[str, Path] | None = None,
    folds: int = 5,
    max_slices: int | None = None,
    sharding: Sharding | None = None,
) -> dict[str, Any]:
    """The pooled linear probe of paper Table VIII: 5-fold logistic regression on mean-pooled
    features of the evaluated volumes, for the raw slice embeddings (``slice_mean``) and the
    compressor's tokens of each bridge checkpoint in ``checkpoints`` (name -> phase checkpoint
    folder, read without loading it into the model). Not the zone MIL probe of the quality
    ladder (:func:`quality_ladder`), which reads each zone and is fitted on the training
    split."""
    from graftkit.eval.probe import linear_probe

    labels = label_matrix(volumes)
    features = {SLICE_MEAN: _probe_features(glm, dataset, volumes, True, max_slices, sharding)}
    for name, path in (checkpoints or {}).items():
        state = load_checkpoint(path)[0]["model"]
        features[name] = _probe_features(glm, dataset, volumes, False, max_slices, sharding, state)
    names = list(features)
    # one fit per unit: with several processes each fits its share of the probes
    fits = (sharding or SINGLE).map(
        lambda u: linear_probe(
            features[names[u]], labels, folds=folds, class_names=dataset.class_names
        ),
        len(names),
    )
    return dict(zip(names, fits, strict=True))


@torch.inference_mode()
def llm_cls_on_reports(
    glm,
    tokenizer,
    prompt: str | ChatPrompt,
    texts: list[str],
    tokens: torch.Tensor,
    batch_size: int = 32,
    max_length: int | None = None,
    cut: set[Any] | None = None,
    sharding: Sharding | None = None,
) -> np.ndarray:
    """LLM-cls probabilities ``[n, C]`` read at the end of each volume's own generated report
    (where phase 3 trains the head: the end-of-turn state of prompt + response); a report is
    read on at most ``max_length`` tokens (default the tokenizer's
    :func:`~graftkit.lm.chat.text_budget`), its index added to ``cut`` when it is longer."""
    k = tokens.shape[1]
    max_length = max_length or text_budget(tokenizer)
    if cut is not None:
        _count_cut(tokenizer, prompt, [t or " " for t in texts], k, max_length, cut)

    def read(_: int, start: int, stop: int) -> torch.Tensor:
        encs = [
            encode_chat(tokenizer, prompt, t or " ", k, max_length=max_length)
            for t in texts[start:stop]
        ]
        batch = pad_batch(encs, tokenizer.pad_token_id, side="right")
        hidden = glm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=tokens[start:stop],
            output_hidden_states=True,
        ).hidden_states[-1]
        last = batch["attention_mask"].sum(dim=1) - 1
        state = hidden[torch.arange(hidden.shape[0]), last.to(hidden.device)]
        return torch.sigmoid(glm.heads.llm_cls(state)).float().cpu()

    return concat(map_batches(sharding, len(texts), batch_size, read, collective=True)).numpy()


#: What each generation row of the ladder shows.
_GENERATION_ROWS = {
    "real": "the model's report from the real visual tokens",
    "zero": "visual tokens zeroed",
    "shuffle": "another patient's visual tokens",
    "random": "Gaussian tokens of the same norms",
}
_HEAD_ROWS = (
    (
        "cls",
        "cls",
        "classifier on the mean visual token, threshold 0.5 (the mean dilutes a finding in one "
        "zone: bounded like the pooled linear probe, not the zone MIL probe)",
    ),
    ("mil", "MIL", "classifier on each visual token, max over tokens, threshold 0.5"),
    ("llm_cls", "LLM-cls", "LLM-cls head at the end of the model's own report, threshold 0.5"),
)


def quality_ladder(
    glm,
    dataset: GraftDataset,
    train: Sequence[Volume],
    volumes: Sequence[Volume],
    train_zones: torch.Tensor,
    scores: dict[str, dict[str, Any]],
    head_scores: dict[str, dict[str, Any]],
    seed: int = 0,
    max_slices: int | None = None,
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    oracle_f1: float | None = None,
    sharding: Sharding | None = None,
) -> list[dict[str, Any]]:
    """One row per stage on the same volumes, from what the cohort allows to what the model
    writes, then what trivial reports get: where between the encoder's output and the generated
    text signal is lost, and how far above saying everything the model is.

    ``train_zones`` are the compressor's tokens of ``train`` (the probes' fit); ``scores`` holds
    generation scores per token mode (``real``, ``zero``, ``shuffle``, ``random``);
    ``head_scores`` the bridge heads' scores at threshold 0.5, each with a ``detail`` saying
    which tokens it read; ``baselines`` the expected scores of the all-positive and
    prevalence-random reports (:func:`trivial_baselines`); ``oracle_f1`` the cohort oracle's
    macro F1 on these volumes (a row, and each row's ``fraction_of_oracle``).
    """
    from graftkit.eval.probe import mil_probe

    classes = dataset.class_names
    train_labels, labels = label_matrix(train), label_matrix(volumes)

    def features(vols: Sequence[Volume], raw: bool) -> torch.Tensor:
        return zone_features(glm, dataset, vols, raw, max_slices=max_slices, sharding=sharding)

    device = next(glm.predictor.parameters()).device  # the fit runs where the bridge does
    inputs = [  # the raw zone means, then the compressor's tokens: (train, evaluated volumes)
        (features(train, True), features(volumes, True)),
        (train_zones, features(volumes, False)),
    ]
    # one fit per unit: with several processes each fits its share of the probes
    fitted = (sharding or SINGLE).map(
        lambda u: mil_probe(
            inputs[u][0],
            train_labels,
            inputs[u][1],
            labels,
            seed=seed,
            class_names=classes,
            device=device,
        ),
        len(inputs),
    )
    probes = {True: fitted[0], False: fitted[1]}
    rows = []
    if oracle_f1 is not None:
        rows.append(
            {
                "stage": "cohort oracle",
                "macro_f1": float(oracle_f1),
                "detail": "the cohort generator's own detector: the best achievable",
            }
        )
    rows += [
        {
            "stage": "zone MIL probe: encoder zone means",
            **_triple(probes[True]),
            "detail": "linear head on each of the K zone means of the raw slice embeddings, max "
            "over zones; fitted on train, thresholds from train (not the pooled linear probe)",
        },
        {
            "stage": "zone MIL probe: compressor tokens",
            **_triple(probes[False]),
            "detail": "the same probe on the compressor's K tokens",
        },
    ]
    rows += [
        {
            "stage": f"bridge head: {name}",
            **_triple(head_scores[key]),
            "detail": f"{detail}; {head_scores[key]['tokens']}",
        }
        for key, name, detail in _HEAD_ROWS
        if key in head_scores
    ]
    rows += [
        {
            "stage": f"generation: {mode}",
            **_triple(scores[mode]),
            "crg": scores[mode].get("crg"),
            "detail": detail,
        }
        for mode, detail in _GENERATION_ROWS.items()
        if mode in scores
    ]
    for key, stage, detail in (
        (
            "all_positive",
            "baseline: every finding named",
            "the report that names all findings (exact)",
        ),
        (
            "prevalence",
            "baseline: findings at training prevalence",
            "each finding named at random with its training prevalence (expected value)",
        ),
    ):
        if baselines and baselines.get(key):
            rows.append(
                {
                    "stage": stage,
                    "macro_f1": float(baselines[key]["macro_f1"]),
                    **{
                        k: float(baselines[key][k])
                        for k in ("macro_precision", "macro_recall")
                        if k in baselines[key]
                    },
                    "crg": baselines[key].get("crg"),
                    "detail": detail,
                }
            )
    if oracle_f1:
        for row in rows:
            row["fraction_of_oracle"] = row["macro_f1"] / float(oracle_f1)
    return rows


def oracle_on(dataset: GraftDataset, volumes: Sequence[Volume]) -> tuple[float | None, str]:
    """The cohort oracle's macro F1 when it was measured on exactly these volumes' split and
    labels (``oracle.json``: its split and per-class supports), else None; and why."""
    oracle = dataset.oracle()
    if not oracle or oracle.get("macro_f1") is None:
        return None, "the dataset has no cohort oracle"
    splits = {v.split for v in volumes}
    if oracle.get("split") is not None and splits != {oracle["split"]}:
        return None, f"the oracle is on split {oracle['split']!r}, the volumes on {sorted(splits)}"
    per_class = oracle.get("per_class")
    if isinstance(per_class, Mapping):
        truth = label_matrix(volumes).sum(0)
        supports = [per_class.get(name, {}).get("support") for name in dataset.class_names]
        if any(s is not None and int(s) != int(t) for s, t in zip(supports, truth, strict=True)):
            return None, "the oracle was measured on other volumes (its class supports differ)"
    return float(oracle["macro_f1"]), "measured on these volumes"


def trivial_baselines(truth: np.ndarray, train_labels: np.ndarray | None) -> dict[str, Any]:
    """``baselines``: the all-positive report and, given the training labels, the report naming
    each finding at random with its training prevalence, on the evaluated volumes' labels
    (:func:`~graftkit.eval.metrics.all_positive_baseline`,
    :func:`~graftkit.eval.metrics.prevalence_baseline`; exact values, not samples)."""
    from graftkit.eval.metrics import all_positive_baseline, f1_averages, prevalence_baseline

    every = all_positive_baseline(truth)
    averages = f1_averages(truth, np.ones_like(truth))
    named = multilabel_scores(truth, np.ones_like(truth))
    out: dict[str, Any] = {
        "all_positive": {
            "macro_f1": every["macro_f1"],
            "micro_f1": averages["micro_f1"],
            "weighted_f1": averages["weighted_f1"],
            "macro_precision": named["macro_precision"],
            "macro_recall": named["macro_recall"],
            "crg": every["crg"],
            "about": "the report that names every finding",
        }
    }
    if train_labels is not None:
        prevalence = np.asarray(train_labels, dtype=np.float64).mean(0)
        expected = prevalence_baseline(truth, prevalence)
        out["prevalence"] = {
            "macro_f1": expected["macro_f1"],
            "crg": expected["crg"],
            "about": "each finding named at random with its training prevalence "
            f"({len(train_labels)} training volumes); the expected value, not a sample",
        }
    return out


def text_scores(
    generated: Sequence[str],
    references: Sequence[str],
    tokenizer: str = "whitespace",
    meteor: Any = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """``nlg``: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of the generated vs the reference reports
    (:mod:`graftkit.eval.nlg`), and ROUGE-L per report (for its interval). ``meteor``: a
    :class:`~graftkit.eval.nlg.MeteorScorer` started earlier (its JVM loads while other work
    runs); default one started here.

    A score that cannot be computed here (METEOR without a Java runtime, CIDEr-D of one report)
    is None and ``unavailable`` says why: never a 0.
    """
    from graftkit.eval import nlg
    from graftkit.eval.metrics import MetricUnavailableError

    scores: dict[str, Any] = dict(nlg.bleu(generated, references, tokenizer=tokenizer))
    unavailable = {}
    scorer = meteor if meteor is not None else nlg.MeteorScorer()
    try:
        scores["meteor"] = scorer.score(generated, references, tokenizer=tokenizer)
    except MetricUnavailableError as err:
        scores["meteor"] = None
        unavailable["meteor"] = str(err)
    finally:
        scorer.close()
    per_report = nlg.rouge_l_per_report(generated, references, tokenizer=tokenizer)
    scores["rouge_l"] = float(per_report.mean())
    if len(references) >= 2 and any(r.split() for r in references):
        scores["cider"] = nlg.cider(generated, references, tokenizer=tokenizer)
    else:
        scores["cider"] = None
        unavailable["cider"] = "CIDEr-D needs at least 2 reports with text (its IDF)"
    scores["tokenizer"] = tokenizer
    scores["reports"] = len(references)
    if unavailable:
        scores["unavailable"] = unavailable
    return scores, per_report


@torch.inference_mode()
def _head_probabilities(glm, head: str, tokens: torch.Tensor) -> np.ndarray:
    """Sigmoid of a bridge head (``cls``, ``mil``) on host tokens ``[n, K, d]``, run on the
    heads' device."""
    device = next(glm.heads.parameters()).device
    return torch.sigmoid(getattr(glm.heads, head)(tokens.to(device)).float()).cpu().numpy()


def _triple(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(scores[k]) for k in ("macro_f1", "macro_precision", "macro_recall")}


@dataclass
class Evaluation:
    """What :func:`evaluate` found: the ``metrics.json`` sections (``eval``, ``classifier``,
    ``baselines``, ``nlg`` and, with ablations, ``ablation``, ``ladder``, ``probe``), one row per
    volume for ``generations.jsonl``, and the zone-grounding map for ``grounding.json``
    (ablations only)."""

    metrics: dict[str, Any]
    generations: list[dict[str, Any]]
    grounding: dict[str, Any] | None = None


def _head_tokens(
    glm,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    checkpoint: Path | None,
    current: torch.Tensor,
    batch_size: int,
    max_slices: int | None,
    sharding: Sharding | None,
) -> tuple[torch.Tensor, str]:
    """The visual tokens a bridge head is scored on: those of ``checkpoint``'s bridge (the last
    phase that trained the head: a later phase that trains the predictor or recalibrates moves
    the tokens under a head it does not train), else the evaluated model's (``current``). The
    head itself is the model's: no later phase changed it."""
    if checkpoint is None:
        return current, "read on the evaluated model's tokens"
    state = load_checkpoint(checkpoint)[0]["model"]
    tokens = visual_tokens(glm, dataset, volumes, batch_size, max_slices, sharding, state)
    name = Path(checkpoint).name
    return tokens, f"trained last in {name}, read on {name}'s tokens"


def evaluate(
    glm,
    tokenizer,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    config: EvalConfig,
    *,
    train: Sequence[Volume] | None = None,
    seed: int = 0,
    max_slices: int | None = None,
    trained_heads: Collection[str] | None = None,
    nll_text: str = "positive_findings",
    probe_checkpoints: Mapping[str, Path] | None = None,
    head_checkpoints: Mapping[str, Path] | None = None,
    token_source: str = "real",
    prompt: str | ChatPrompt | None = None,
    progress: Any = None,
    sharding: Sharding | None = None,
    bootstrap_resamples: int = 1000,
) -> Evaluation:
    """Evaluate a grafted model on ``volumes`` (docs/design.md "Evaluation"; paper Tables VIII, X).

    Generation macro, micro and weighted F1 and the CRG score of the reports the model writes
    (``config.generation``), scored by ``config.extractor`` (default: the dataset's); what the
    all-positive and prevalence-random reports get on the same labels (``baselines``) and the
    skill between the all-positive report and the cohort oracle; BLEU, METEOR, ROUGE-L and
    CIDEr-D against the reference reports (``nlg``); bootstrap 95 % intervals of macro F1, CRG
    and ROUGE-L (``eval.ci``, ``bootstrap_resamples`` resamples of the volumes, seeded); the
    extractor's score on the reference narratives; the classifier head at 0.5 and at
    thresholds tuned on ``volumes``. With ``config.ablations`` also the reports from zeroed,
    shuffled and random tokens, the quality ladder, the response NLL split into finding and other
    tokens (on ``nll_text`` responses), the pooled linear probes of ``probe_checkpoints`` and the
    zone-grounding map; these need the ``train`` volumes (the probes' fit; the prevalence
    baseline's prevalences).

    Nothing here knows the curriculum or writes a file: ``trained_heads`` says which bridge
    heads were trained (``cls``, ``mil``, ``llm_cls``; ``None``: all of them are put on the
    ladder), ``head_checkpoints`` the checkpoint of the last phase that trained each (``cls``,
    ``mil``: scored on that bridge's tokens; default the model's own).
    ``token_source="oracle"`` generates every report (and its ablations) from label-built tokens
    (:func:`~graftkit.eval.generation.label_token_oracle`) instead of the compressor's. ``prompt``
    is the chat prompt every report is generated and scored with (default: the dataset's
    instruction).

    ``sharding`` (:mod:`graftkit.eval.shard`): every process of a distributed run calls this with
    its :class:`~graftkit.eval.shard.Sharding`; the model's work is split across them and merged,
    and every process returns the one-process result, except that the text-overlap scores (and
    ROUGE-L's interval), which need no model, are computed by the main process alone.
    """
    if token_source not in ("real", "oracle"):
        raise ValueError(f"unknown token source {token_source!r}; choose 'real' or 'oracle'")
    if not volumes:
        raise ValueError("evaluate: no volumes to evaluate")
    volumes = list(volumes)
    sharding = sharding or SINGLE
    if (config.ablations or token_source == "oracle") and not train:
        raise ValueError(
            "evaluate: ablations and oracle tokens need the training volumes (train=...)"
        )
    extractor = evaluation_extractor(config, dataset)
    gen = generation_settings(config.generation)
    prompt = prompt if prompt is not None else dataset.prompt
    head_checkpoints = dict(head_checkpoints or {})
    # METEOR's JVM loads its paraphrase table while the model works (main process only)
    meteor = MeteorScorer() if sharding.main else None
    try:
        return _evaluate(
            glm,
            tokenizer,
            dataset,
            volumes,
            config,
            train=train,
            seed=seed,
            max_slices=max_slices,
            trained_heads=trained_heads,
            nll_text=nll_text,
            probe_checkpoints=probe_checkpoints,
            head_checkpoints=head_checkpoints,
            token_source=token_source,
            prompt=prompt,
            progress=progress,
            sharding=sharding,
            bootstrap_resamples=bootstrap_resamples,
            extractor=extractor,
            gen=gen,
            meteor=meteor,
        )
    finally:
        if meteor is not None:
            meteor.close()


def _evaluate(
    glm,
    tokenizer,
    dataset: GraftDataset,
    volumes: list[Volume],
    config: EvalConfig,
    *,
    train,
    seed,
    max_slices,
    trained_heads,
    nll_text,
    probe_checkpoints,
    head_checkpoints,
    token_source,
    prompt,
    progress,
    sharding: Sharding,
    bootstrap_resamples,
    extractor,
    gen,
    meteor,
) -> Evaluation:
    """:func:`evaluate` once its inputs are checked and METEOR's JVM is starting."""
    from graftkit.eval.metrics import optimise_thresholds, skill_score
    from graftkit.eval.stats import label_intervals

    ablations = config.ablations
    classes = dataset.class_names
    real_tokens = visual_tokens(glm, dataset, volumes, config.batch_size, max_slices, sharding)
    oracle_tokens = train_zones = None
    if ablations or token_source == "oracle":
        train_zones = zone_features(
            glm, dataset, train, raw=False, max_slices=max_slices, sharding=sharding
        )
    if token_source == "oracle":
        oracle_tokens = label_token_oracle(
            glm, train_zones, label_matrix(train), label_matrix(volumes)
        )
    tokens = oracle_tokens if token_source == "oracle" else real_tokens
    truth = label_matrix(volumes)
    texts, predicted, scores = {}, {}, {}
    modes = list(ABLATIONS if ablations else ("real",))
    for mode in modes:
        texts[mode] = generate_reports(
            glm,
            tokenizer,
            prompt,
            ablate(tokens, mode, seed=seed),
            gen,
            config.batch_size,
            seed=seed,
            progress=progress,
            description=f"generate ({mode} tokens)",
            sharding=sharding,
        )
        predicted[mode] = extractor.extract(texts[mode])
        scores[mode] = label_scores(truth, predicted[mode], classes)

    references = [dataset.narrative_text(v) for v in volumes]
    reference_scores = multilabel_scores(truth, extractor.extract(references), classes)
    cls_tokens, cls_read = _head_tokens(
        glm,
        dataset,
        volumes,
        head_checkpoints.get("cls"),
        tokens,
        config.batch_size,
        max_slices,
        sharding,
    )
    probs = _head_probabilities(glm, "cls", cls_tokens)
    head = multilabel_scores(truth, (probs >= 0.5).astype(np.int64), classes)
    head["tokens"] = cls_read
    thresholds, tuned = optimise_thresholds(truth, probs, upper_bound=True)

    oracle_f1, oracle_note = oracle_on(dataset, volumes)
    baselines = trivial_baselines(truth, label_matrix(train) if train else None)
    real = scores["real"]
    skill = (
        skill_score(real["macro_f1"], baselines["all_positive"]["macro_f1"], oracle_f1)
        if oracle_f1 is not None
        else None
    )
    nlg_section, rouge_per_report = None, None
    if sharding.main:
        nlg_section, rouge_per_report = text_scores(texts["real"], references, meteor=meteor)
    ci = label_intervals(
        truth, predicted["real"], rouge_per_report, n_resamples=bootstrap_resamples, seed=seed
    )
    metrics: dict[str, Any] = {
        "eval": {
            **real,
            "skill": skill,
            "skill_about": "(macro F1 - all-positive macro F1) / (oracle macro F1 - all-positive "
            f"macro F1); oracle: {oracle_note}",
            "ci": ci,
            "tokens": "label-built tokens" if token_source == "oracle" else "real",
            "volumes": len(volumes),
            "extractor": config.extractor or dataset.default_extractor,
            "extractor_on_reference": _triple(reference_scores),
        },
        "baselines": baselines,
        "classifier": {
            "threshold_0.5": _triple(head),
            "tuned_thresholds": {
                **{k: v for k, v in tuned.items() if k != "per_class"},
                "thresholds": list(map(float, thresholds)),
                "note": "tuned on the evaluated split: an upper bound, not a result",
            },
            "tokens": cls_read,
        },
    }
    if nlg_section is not None:
        metrics["nlg"] = nlg_section
    grounding = None
    # teacher-forced passes hold at most this many tokens; the responses cut to it, by use
    budget = text_budget(tokenizer)
    cut: dict[str, set[int]] = {"nll": set(), "llm_cls": set()}
    if ablations:
        metrics["ablation"] = {
            mode: {**_triple(scores[mode]), "crg": scores[mode]["crg"]} for mode in modes
        }
        trained = set(trained_heads) if trained_heads is not None else None
        head_scores = {}
        if trained is None or "cls" in trained:
            head_scores["cls"] = head
        if trained is None or "mil" in trained:
            mil_tokens, mil_read = (
                (cls_tokens, cls_read)
                if head_checkpoints.get("mil") == head_checkpoints.get("cls")
                else _head_tokens(
                    glm,
                    dataset,
                    volumes,
                    head_checkpoints.get("mil"),
                    tokens,
                    config.batch_size,
                    max_slices,
                    sharding,
                )
            )
            mil = _head_probabilities(glm, "mil", mil_tokens)
            head_scores["mil"] = {
                **multilabel_scores(truth, (mil >= 0.5).astype(np.int64), classes),
                "tokens": mil_read,
            }
        if trained is None or "llm_cls" in trained:
            probs_llm = llm_cls_on_reports(
                glm,
                tokenizer,
                prompt,
                texts["real"],
                tokens,
                max_length=budget,
                cut=cut["llm_cls"],
                sharding=sharding,
            )
            head_scores["llm_cls"] = {
                **multilabel_scores(truth, (probs_llm >= 0.5).astype(np.int64), classes),
                "tokens": "read on the evaluated model's own reports",
            }
        metrics["ladder"] = quality_ladder(
            glm,
            dataset,
            train,
            volumes,
            train_zones,
            scores,
            head_scores,
            seed,
            max_slices,
            baselines=baselines,
            oracle_f1=oracle_f1,
            sharding=sharding,
        )
        metrics["ablation"]["zero_drop"] = (
            (real["macro_f1"] - scores["zero"]["macro_f1"]) / real["macro_f1"]
            if real["macro_f1"] > 0
            else 0.0
        )
        words = dataset.finding_words()
        responses = [
            response_text(dataset, v, nll_text, sample_rng(seed, 0, i))
            for i, v in enumerate(volumes)
        ]
        metrics["ablation"]["nll"] = {
            mode: split_nll(
                tokenizer,
                token_nll(
                    glm,
                    tokenizer,
                    prompt,
                    responses,
                    ablate(tokens, mode),
                    max_length=budget,
                    cut=cut["nll"],
                    sharding=sharding,
                ),
                words,
            )
            for mode in ("real", "zero", "shuffle")
        }
        metrics["probe"] = linear_probes(
            glm, dataset, volumes, probe_checkpoints, config.probe_folds, max_slices, sharding
        )
        grounding = zone_grounding(
            glm,
            tokenizer,
            dataset,
            volumes,
            tokens,
            prompt=prompt,
            max_length=budget,
            sharding=sharding,
        )
        metrics["eval"]["texts_cut"] = {"max_length": budget, **{k: len(v) for k, v in cut.items()}}
    generations = []
    for i, v in enumerate(volumes):
        row = {
            "name": v.name,
            "generated": texts["real"][i],
            "reference": references[i],
            "labels": [classes[c] for c in np.flatnonzero(truth[i])],
            "predicted": [classes[c] for c in np.flatnonzero(predicted["real"][i])],
        }
        if ablations:
            row["generated_zero"] = texts["zero"][i]
        generations.append(row)
    return Evaluation(metrics, generations, grounding)
