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
    generate_reports,
    generation_scores,
    generation_settings,
    label_matrix,
    label_token_oracle,
    visual_tokens,
    zone_features,
)
from graftkit.labels import evaluation_extractor
from graftkit.lm import ChatPrompt, encode_chat, pad_batch
from graftkit.lm.chat import text_budget


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
):
    """Per-response lists of (token id, NLL) over the response tokens, teacher-forced.

    Each encoding holds at most ``max_length`` tokens (default: the tokenizer's
    :func:`~graftkit.lm.chat.text_budget`): a longer response is scored on its first tokens, and
    its index is added to ``cut``, so memory is bounded whatever the length of a report.
    """
    out = []
    k = tokens.shape[1]
    max_length = max_length or text_budget(tokenizer)
    for start in range(0, len(responses), batch_size):
        chunk = responses[start : start + batch_size]
        encs = [encode_chat(tokenizer, prompt, r, k, max_length=max_length) for r in chunk]
        if cut is not None:
            cut.update(start + i for i, enc in enumerate(encs) if enc["cut"])
        batch = pad_batch(encs, tokenizer.pad_token_id, side="right")
        logits = glm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=tokens[start : start + batch_size],
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
) -> dict[str, Any]:
    """Occlusion map: how much the NLL of each finding's sentence rises when zone k is zeroed.

    For every class with positive volumes, its condition sentence is teacher-forced for up to
    ``per_class`` such volumes with all tokens, then with token k zeroed (k = 0 apex .. K-1 base).
    Rows are normalised to sum to 1 over zones (negative rises clipped to 0). ``prompt``
    defaults to the dataset's; each sentence is scored on at most ``max_length`` tokens.
    """
    prompt = prompt if prompt is not None else dataset.prompt
    k = tokens.shape[1]
    rows = []
    for c, name in enumerate(dataset.class_names):
        idx = [i for i, v in enumerate(volumes) if v.labels[c] > 0][:per_class]
        if not idx:
            continue
        rise = torch.zeros(k)
        for i in idx:
            text = dict(dataset.condition_texts(volumes[i])).get(c, dataset.class_text(c))
            rise += occlusion_rise(
                glm, tokenizer, prompt, tokens[i], text, max_length=max_length
            ).clamp_min(0)
        weights = rise / rise.sum() if rise.sum() > 0 else rise
        rows.append({"label": name, "weights": weights.tolist(), "volumes": len(idx)})
    return {
        "zones": k,
        "method": "occlusion (NLL rise when one zone token is zeroed)",
        "rows": rows,
    }


def _probe_features(glm, dataset, volumes, raw: bool, max_slices: int | None) -> np.ndarray:
    data = VolumeDataset(dataset, list(volumes), max_slices)
    feats = []
    with torch.inference_mode():
        for start in range(0, len(data), 32):
            batch = collate_volumes([data[i] for i in range(start, min(start + 32, len(data)))])
            if raw:
                m = batch["mask"].unsqueeze(-1).float()
                feats.append(((batch["slices"] * m).sum(1) / m.sum(1)).numpy())
            else:
                zones = glm.encode(batch["slices"], batch["z_mm"], batch["mask"])[0]
                feats.append(zones.mean(1).float().cpu().numpy())
    return np.concatenate(feats)


def linear_probes(
    glm,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    checkpoints: Mapping[str, Path] | None = None,
    folds: int = 5,
    max_slices: int | None = None,
) -> dict[str, Any]:
    """Paper Table VIII: 5-fold logistic-regression probe on the raw slice means (``raw``) and on
    the compressor's tokens of each bridge checkpoint in ``checkpoints`` (name -> phase
    checkpoint folder). The model's own bridge is restored afterwards."""
    from graftkit.eval.probe import linear_probe

    labels = label_matrix(volumes)
    classes = dataset.class_names
    out = {
        "raw": linear_probe(
            _probe_features(glm, dataset, volumes, True, max_slices),
            labels,
            folds=folds,
            class_names=classes,
        )
    }
    if not checkpoints:
        return out
    current = {k: v.clone() for k, v in glm.bridge_state_dict().items()}
    try:
        for name, path in checkpoints.items():
            tensors, _ = load_checkpoint(path)
            glm.load_bridge_state_dict(tensors["model"])
            out[name] = linear_probe(
                _probe_features(glm, dataset, volumes, False, max_slices),
                labels,
                folds=folds,
                class_names=classes,
            )
    finally:
        glm.load_bridge_state_dict(current)
    return out


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
) -> np.ndarray:
    """LLM-cls probabilities ``[n, C]`` read at the end of each volume's own generated report
    (where phase 3 trains the head: the end-of-turn state of prompt + response); a report is
    read on at most ``max_length`` tokens (default the tokenizer's
    :func:`~graftkit.lm.chat.text_budget`), its index added to ``cut`` when it is longer."""
    k = tokens.shape[1]
    max_length = max_length or text_budget(tokenizer)
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encs = [encode_chat(tokenizer, prompt, t or " ", k, max_length=max_length) for t in chunk]
        if cut is not None:
            cut.update(start + i for i, enc in enumerate(encs) if enc["cut"])
        batch = pad_batch(encs, tokenizer.pad_token_id, side="right")
        hidden = glm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=tokens[start : start + batch_size],
            output_hidden_states=True,
        ).hidden_states[-1]
        last = batch["attention_mask"].sum(dim=1) - 1
        state = hidden[torch.arange(hidden.shape[0]), last.to(hidden.device)]
        out.append(torch.sigmoid(glm.heads.llm_cls(state)).float().cpu())
    return torch.cat(out).numpy()


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
) -> list[dict[str, Any]]:
    """One row per stage on the same volumes, from what the cohort allows to what the model
    writes: where between the encoder's output and the generated text signal is lost.

    ``train_zones`` are the compressor's tokens of ``train`` (the probes' fit); ``scores`` holds
    generation scores per token mode (``real``, ``zero``, ``shuffle``, ``random``, ``oracle``);
    ``head_scores`` the bridge heads' scores at threshold 0.5.
    """
    from graftkit.eval.probe import mil_probe

    classes = dataset.class_names
    train_labels, labels = label_matrix(train), label_matrix(volumes)

    def features(vols: Sequence[Volume], raw: bool) -> torch.Tensor:
        return zone_features(glm, dataset, vols, raw, max_slices=max_slices)

    probes = {
        raw: mil_probe(
            features(train, raw) if raw else train_zones,
            train_labels,
            features(volumes, raw),
            labels,
            seed=seed,
            class_names=classes,
        )
        for raw in (True, False)
    }
    rows = []
    oracle = dataset.oracle()
    if oracle and oracle.get("macro_f1") is not None:
        rows.append(
            {
                "stage": "cohort oracle",
                "macro_f1": float(oracle["macro_f1"]),
                "detail": "the cohort generator's own detector: the best achievable",
            }
        )
    rows += [
        {
            "stage": "MIL probe: raw zone means",
            **_triple(probes[True]),
            "detail": "linear head on each of the K zone means of the raw slices, max over "
            "zones; fitted on train, thresholds from train",
        },
        {
            "stage": "MIL probe: compressor tokens",
            **_triple(probes[False]),
            "detail": "the same probe on the compressor's K tokens",
        },
    ]
    rows += [
        {"stage": f"bridge head: {name}", **_triple(head_scores[key]), "detail": detail}
        for key, name, detail in (
            ("cls", "cls", "classifier on the mean visual token, threshold 0.5"),
            ("mil", "MIL", "classifier on each visual token, max over tokens, threshold 0.5"),
            ("llm_cls", "LLM-cls", "LLM-cls head at the end of the model's own report, 0.5"),
        )
        if key in head_scores
    ]
    details = {
        "real": "the model's report from the real visual tokens",
        "zero": "visual tokens zeroed",
        "shuffle": "another patient's visual tokens",
        "random": "Gaussian tokens of the same norms",
        "oracle": "tokens = E[tokens | true labels] (least squares on train): the decoder's "
        "ceiling on this text",
    }
    names = {"oracle": "label-token oracle"}
    rows += [
        {
            "stage": f"generation: {names.get(mode, mode)}",
            **_triple(scores[mode]),
            "detail": details[mode],
        }
        for mode in ("real", "zero", "shuffle", "random", "oracle")
        if mode in scores
    ]
    if oracle and oracle.get("macro_f1"):
        for row in rows:
            row["fraction_of_oracle"] = row["macro_f1"] / float(oracle["macro_f1"])
    return rows


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
    """What :func:`evaluate` found: the ``metrics.json`` sections (``eval``, ``classifier`` and,
    with ablations, ``ablation``, ``ladder``, ``probe``), one row per volume for
    ``generations.jsonl``, and the zone-grounding map for ``grounding.json`` (ablations only)."""

    metrics: dict[str, Any]
    generations: list[dict[str, Any]]
    grounding: dict[str, Any] | None = None


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
    token_source: str = "real",
    prompt: str | ChatPrompt | None = None,
    progress: Any = None,
) -> Evaluation:
    """Evaluate a grafted model on ``volumes`` (docs/design.md "Evaluation"; paper Tables VIII, X).

    Generation F1 of the reports the model writes (``config.generation``), scored by
    ``config.extractor`` (default: the dataset's); the extractor's score on the reference
    narratives; the classifier head at 0.5 and at thresholds tuned on ``volumes``. With
    ``config.ablations`` also the reports from zeroed, shuffled, random and label-token-oracle
    tokens, the quality ladder, the response NLL split into finding and other tokens (on
    ``nll_text`` responses), the linear probes of ``probe_checkpoints`` and the zone-grounding map;
    these need the ``train`` volumes (the probes' and the oracle's fit).

    Nothing here knows the curriculum or writes a file: ``trained_heads`` says which bridge
    heads were trained (``cls``, ``mil``, ``llm_cls``; ``None``: all of them are put on the
    ladder).
    ``token_source="oracle"`` generates every report (and its ablations) from label-token-oracle
    tokens (:func:`~graftkit.eval.generation.label_token_oracle`) instead of the compressor's:
    the decoder's ceiling for this recipe on the same data and text. ``prompt`` is the chat
    prompt every report is generated and scored with (default: the dataset's instruction).
    """
    from graftkit.eval.metrics import multilabel_scores, optimise_thresholds

    if token_source not in ("real", "oracle"):
        raise ValueError(f"unknown token source {token_source!r}; choose 'real' or 'oracle'")
    if not volumes:
        raise ValueError("evaluate: no volumes to evaluate")
    volumes = list(volumes)
    ablations = config.ablations
    if (ablations or token_source == "oracle") and not train:
        raise ValueError(
            "evaluate: ablations and oracle tokens need the training volumes (train=...)"
        )
    extractor = evaluation_extractor(config, dataset)
    classes = dataset.class_names
    gen = generation_settings(config.generation)
    prompt = prompt if prompt is not None else dataset.prompt

    real_tokens = visual_tokens(glm, dataset, volumes, config.batch_size, max_slices)
    oracle_tokens = train_zones = None
    if ablations or token_source == "oracle":
        train_zones = zone_features(glm, dataset, train, raw=False, max_slices=max_slices)
        oracle_tokens = label_token_oracle(
            glm, train_zones, label_matrix(train), label_matrix(volumes)
        )
    tokens = oracle_tokens if token_source == "oracle" else real_tokens
    texts = {}
    scores = {}
    modes = list(ABLATIONS if ablations else ("real",))
    if ablations and token_source == "real":
        modes.append("oracle")
    for mode in modes:
        chosen = oracle_tokens if mode == "oracle" else ablate(tokens, mode, seed=seed)
        texts[mode] = generate_reports(
            glm,
            tokenizer,
            prompt,
            chosen,
            gen,
            config.batch_size,
            seed=seed,
            progress=progress,
            description=f"generate ({mode} tokens)",
        )
        scores[mode] = generation_scores(extractor, texts[mode], volumes, classes)

    truth = label_matrix(volumes)
    references = [dataset.narrative_text(v) for v in volumes]
    reference_scores = multilabel_scores(truth, extractor.extract(references), classes)
    probs = _head_probabilities(glm, "cls", tokens)
    head = multilabel_scores(truth, (probs >= 0.5).astype(np.int64), classes)
    thresholds, tuned = optimise_thresholds(truth, probs, upper_bound=True)

    metrics: dict[str, Any] = {
        "eval": {
            **scores["real"],
            "tokens": "label-token oracle" if token_source == "oracle" else "real",
            "volumes": len(volumes),
            "extractor": config.extractor or dataset.default_extractor,
            "extractor_on_reference": _triple(reference_scores),
        },
        "classifier": {
            "threshold_0.5": _triple(head),
            "tuned_thresholds": {
                **{k: v for k, v in tuned.items() if k != "per_class"},
                "thresholds": list(map(float, thresholds)),
                "note": "tuned on the evaluated split: an upper bound, not a result",
            },
        },
    }
    grounding = None
    # teacher-forced passes hold at most this many tokens; the responses cut to it, by use
    budget = text_budget(tokenizer)
    cut: dict[str, set[int]] = {"nll": set(), "llm_cls": set()}
    if ablations:
        real = scores["real"]["macro_f1"]
        metrics["ablation"] = {mode: _triple(scores[mode]) for mode in modes}
        trained = set(trained_heads) if trained_heads is not None else None
        head_scores = {}
        if trained is None or "cls" in trained:
            head_scores["cls"] = head
        if trained is None or "mil" in trained:
            mil = _head_probabilities(glm, "mil", tokens)
            head_scores["mil"] = multilabel_scores(truth, (mil >= 0.5).astype(np.int64), classes)
        if trained is None or "llm_cls" in trained:
            probs_llm = llm_cls_on_reports(
                glm, tokenizer, prompt, texts["real"], tokens, max_length=budget, cut=cut["llm_cls"]
            )
            head_scores["llm_cls"] = multilabel_scores(
                truth, (probs_llm >= 0.5).astype(np.int64), classes
            )
        metrics["ladder"] = quality_ladder(
            glm, dataset, train, volumes, train_zones, scores, head_scores, seed, max_slices
        )
        metrics["ablation"]["zero_drop"] = (
            (real - scores["zero"]["macro_f1"]) / real if real > 0 else 0.0
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
                ),
                words,
            )
            for mode in ("real", "zero", "shuffle")
        }
        metrics["probe"] = linear_probes(
            glm, dataset, volumes, probe_checkpoints, config.probe_folds, max_slices
        )
        grounding = zone_grounding(
            glm, tokenizer, dataset, volumes, tokens, prompt=prompt, max_length=budget
        )
        metrics["eval"]["texts_cut"] = {"max_length": budget, **{k: len(v) for k, v in cut.items()}}
    predicted = extractor.extract(texts["real"])
    generations = []
    for i, v in enumerate(volumes):
        row = {
            "name": v.name,
            "generated": texts["real"][i],
            "reference": references[i],
            "labels": [classes[c] for c in np.flatnonzero(truth[i])],
            "predicted": [classes[c] for c in np.flatnonzero(predicted[i])],
        }
        if ablations:
            row["generated_zero"] = texts["zero"][i]
        generations.append(row)
    return Evaluation(metrics, generations, grounding)
