"""``graftkit eval``: generation F1, extractor reference score, classifier thresholds, ablations.

Writes ``RUN/metrics.json`` (``eval``, ``ablation``, ``probe``, ``classifier`` and the quality
``ladder``: where between the encoder's output and the generated text signal is lost), the generated
reports to ``RUN/generations.jsonl``, the zone-grounding map to ``RUN/grounding.json``, and
the self-contained ``RUN/report.html`` (DESIGN.md "Evaluation"; issue: paper Tables VIII and X).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftkit.checkpoint import is_complete, load_checkpoint
from graftkit.data import Volume, VolumeDataset, collate_volumes, response_text, sample_rng
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
from graftkit.io import atomic_write_text
from graftkit.labels import evaluation_extractor
from graftkit.lm import encode_chat, pad_batch


@torch.inference_mode()
def token_nll(
    glm, tokenizer, prompt: str, responses: list[str], tokens: torch.Tensor, batch_size: int = 16
):
    """Per-response lists of (token id, NLL) over the response tokens, teacher-forced."""
    out = []
    k = tokens.shape[1]
    for start in range(0, len(responses), batch_size):
        encs = [encode_chat(tokenizer, prompt, r, k) for r in responses[start : start + batch_size]]
        batch = pad_batch(encs, tokenizer.pad_token_id, side="right")
        logits = glm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=tokens[start : start + batch_size],
        ).logits.float()
        labels = batch["labels"]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        valid = target != -100
        nll = -logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        for b in range(target.shape[0]):
            ids = target[b][valid[b]].tolist()
            out.append(list(zip(ids, nll[b][valid[b]].tolist(), strict=True)))
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
def occlusion_rise(run, tokens: torch.Tensor, text: str) -> torch.Tensor:
    """``[K]``: the rise of ``text``'s mean teacher-forced NLL when zone k's visual token is
    zeroed, for one volume's tokens ``[K, d]`` (positive: the text relied on zone k)."""
    k = tokens.shape[0]
    variants = tokens.unsqueeze(0).repeat(k + 1, 1, 1)
    for z in range(k):
        variants[z + 1, z] = 0
    nll = token_nll(
        run.glm, run.tokenizer, run.dataset.prompt, [text] * (k + 1), variants, batch_size=k + 1
    )
    mean = torch.tensor([sum(n for _, n in seq) / max(1, len(seq)) for seq in nll])
    return mean[1:] - mean[0]


@torch.inference_mode()
def zone_grounding(
    run, volumes: list[Volume], tokens: torch.Tensor, per_class: int = 4
) -> dict[str, Any]:
    """Occlusion map: how much the NLL of each finding's sentence rises when zone k is zeroed.

    For every class with positive volumes, its condition sentence is teacher-forced for up to
    ``per_class`` such volumes with all tokens, then with token k zeroed (k = 0 apex .. K-1 base).
    Rows are normalised to sum to 1 over zones (negative rises clipped to 0).
    """
    dataset = run.dataset
    k = tokens.shape[1]
    rows = []
    for c, name in enumerate(dataset.class_names):
        idx = [i for i, v in enumerate(volumes) if v.labels[c] > 0][:per_class]
        if not idx:
            continue
        rise = torch.zeros(k)
        for i in idx:
            text = dict(dataset.condition_texts(volumes[i])).get(c, dataset.class_text(c))
            rise += occlusion_rise(run, tokens[i], text).clamp_min(0)
        weights = rise / rise.sum() if rise.sum() > 0 else rise
        rows.append({"label": name, "weights": weights.tolist(), "volumes": len(idx)})
    return {
        "zones": k,
        "method": "occlusion (NLL rise when one zone token is zeroed)",
        "rows": rows,
    }


def _probe_features(run, volumes, raw: bool) -> np.ndarray:
    data = VolumeDataset(run.dataset, volumes, run.cfg.data.max_slices)
    feats = []
    with torch.inference_mode():
        for start in range(0, len(data), 32):
            batch = collate_volumes([data[i] for i in range(start, min(start + 32, len(data)))])
            if raw:
                m = batch["mask"].unsqueeze(-1).float()
                feats.append(((batch["slices"] * m).sum(1) / m.sum(1)).numpy())
            else:
                feats.append(
                    run.glm.compressor(batch["slices"], batch["z_mm"], batch["mask"])
                    .mean(1)
                    .numpy()
                )
    return np.concatenate(feats)


def linear_probes(run, volumes: list[Volume]) -> dict[str, Any]:
    """Paper Table VIII: 5-fold logistic-regression probe on raw slices and each phase's tokens."""
    from graftkit.eval.probe import linear_probe

    labels = label_matrix(volumes)
    out = {
        "raw": linear_probe(
            _probe_features(run, volumes, raw=True),
            labels,
            folds=run.cfg.eval.probe_folds,
            class_names=run.dataset.class_names,
        )
    }
    current = {k: v.clone() for k, v in run.glm.bridge_state_dict().items()}
    for n in run.cfg.phases.numbers:
        path = run.run_dir / f"phase{n}"
        if is_complete(path):
            tensors, _ = load_checkpoint(path)
            run.glm.load_bridge_state_dict(tensors["model"])
            out[f"p{n}"] = linear_probe(
                _probe_features(run, volumes, raw=False),
                labels,
                folds=run.cfg.eval.probe_folds,
                class_names=run.dataset.class_names,
            )
    run.glm.load_bridge_state_dict(current)
    return out


@torch.inference_mode()
def llm_cls_on_reports(run, texts: list[str], tokens: torch.Tensor, batch_size: int = 32):
    """LLM-cls probabilities ``[n, C]`` read at the end of each volume's own generated report
    (where phase 3 trains the head: the end-of-turn state of prompt + response)."""
    glm, tok = run.glm, run.tokenizer
    k = tokens.shape[1]
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encs = [encode_chat(tok, run.dataset.prompt, t or " ", k) for t in chunk]
        batch = pad_batch(encs, tok.pad_token_id, side="right")
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
    run,
    volumes: list[Volume],
    train_zones: torch.Tensor,
    scores: dict[str, dict[str, Any]],
    head_scores: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per stage on the same volumes, from what the cohort allows to what the model
    writes (issue 14): where between the encoder's output and the generated text signal is lost.

    ``train_zones`` are the compressor's tokens of the training split (the probes' fit);
    ``scores`` holds generation scores per token mode (``real``, ``zero``, ``shuffle``,
    ``random``, ``oracle``); ``head_scores`` the bridge heads' scores at threshold 0.5.
    """
    from graftkit.eval.probe import mil_probe

    cfg = run.cfg
    classes = run.dataset.class_names
    train_labels, labels = label_matrix(run.train), label_matrix(volumes)

    def features(vols: list[Volume], raw: bool) -> torch.Tensor:
        return zone_features(run.glm, run.dataset, vols, raw, max_slices=cfg.data.max_slices)

    probes = {
        raw: mil_probe(
            features(run.train, raw) if raw else train_zones,
            train_labels,
            features(volumes, raw),
            labels,
            seed=cfg.seed,
            class_names=classes,
        )
        for raw in (True, False)
    }
    rows = []
    oracle = run.dataset.oracle()
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


def _triple(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(scores[k]) for k in ("macro_f1", "macro_precision", "macro_recall")}


def evaluate(
    run,
    split: str | None = None,
    extractor_name: str | None = None,
    ablations: bool | None = None,
    limit: int | None = None,
    progress: Any = None,
    output_dir: Path | None = None,
    token_source: str = "real",
) -> dict[str, Any]:
    """Evaluate the run's current model on ``split``; returns and writes the metrics.

    ``output_dir`` (default: the run directory) receives ``metrics.json``, ``generations.jsonl``,
    ``grounding.json`` and ``report.html``. Another folder gets a fresh ``metrics.json`` holding
    this evaluation and the run's data summary only, so no file mixes two evaluations.

    ``token_source="oracle"`` generates every report (and its ablations) from label-token-oracle
    tokens (:func:`~graftkit.eval.generation.label_token_oracle`) instead of the compressor's:
    the decoder's ceiling for this recipe on the same data and text.
    """
    from graftkit.eval.metrics import multilabel_scores, optimise_thresholds
    from graftkit.eval.report import write_report

    cfg = run.cfg.eval
    split = split or cfg.split
    if split not in run.dataset.splits:
        raise ValueError(f"unknown split {split!r}; the dataset has {list(run.dataset.splits)}")
    volumes = run.train if split == run.dataset.splits[0] else run.valid
    volumes = volumes[: (limit or cfg.limit or len(volumes))]
    ablations = cfg.ablations if ablations is None else ablations
    extractor = evaluation_extractor(cfg, run.dataset, extractor_name)
    name = extractor_name or cfg.extractor or run.dataset.default_extractor
    classes = run.dataset.class_names
    gen = generation_settings(cfg.generation)

    if token_source not in ("real", "oracle"):
        raise ValueError(f"unknown token source {token_source!r}; choose 'real' or 'oracle'")
    real_tokens = visual_tokens(
        run.glm, run.dataset, volumes, cfg.batch_size, run.cfg.data.max_slices
    )
    oracle_tokens = None
    if ablations or token_source == "oracle":
        train_zones = zone_features(
            run.glm, run.dataset, run.train, raw=False, max_slices=run.cfg.data.max_slices
        )
        oracle_tokens = label_token_oracle(
            run.glm, train_zones, label_matrix(run.train), label_matrix(volumes)
        )
    tokens = oracle_tokens if token_source == "oracle" else real_tokens
    texts = {}
    scores = {}
    modes = list(ABLATIONS if ablations else ("real",))
    if ablations and token_source == "real":
        modes.append("oracle")
    for mode in modes:
        chosen = oracle_tokens if mode == "oracle" else ablate(tokens, mode, seed=run.cfg.seed)
        texts[mode] = generate_reports(
            run.glm,
            run.tokenizer,
            run.dataset.prompt,
            chosen,
            gen,
            cfg.batch_size,
            seed=run.cfg.seed,
            progress=progress,
            description=f"generate ({mode} tokens)",
        )
        scores[mode] = generation_scores(extractor, texts[mode], volumes, classes)

    truth = label_matrix(volumes)
    references = [run.dataset.narrative_text(v) for v in volumes]
    reference_scores = multilabel_scores(truth, extractor.extract(references), classes)
    with torch.inference_mode():
        probs = torch.sigmoid(run.glm.heads.cls(tokens)).numpy()
    head = multilabel_scores(truth, (probs >= 0.5).astype(np.int64), classes)
    thresholds, tuned = optimise_thresholds(truth, probs, upper_bound=True)

    out = Path(output_dir) if output_dir is not None else Path(run.run_dir)
    metrics: dict[str, Any] = {
        "eval": {
            **scores["real"],
            "tokens": "label-token oracle" if token_source == "oracle" else "real",
            "split": split,
            "volumes": len(volumes),
            "extractor": name,
            **({"checkpoint": run.summary["checkpoint"]} if "checkpoint" in run.summary else {}),
            "extractor_on_reference": {
                k: reference_scores[k] for k in ("macro_f1", "macro_precision", "macro_recall")
            },
        },
        "classifier": {
            "threshold_0.5": {k: head[k] for k in ("macro_f1", "macro_precision", "macro_recall")},
            "tuned_thresholds": {
                **{k: v for k, v in tuned.items() if k != "per_class"},
                "thresholds": list(map(float, thresholds)),
                "note": "tuned on the evaluated split: an upper bound, not a result",
            },
        },
    }
    if ablations:
        real = scores["real"]["macro_f1"]
        metrics["ablation"] = {
            mode: {k: scores[mode][k] for k in ("macro_f1", "macro_precision", "macro_recall")}
            for mode in modes
        }
        # a head is on the ladder only if a phase that ran trained it
        trained = {loss for n in _phases_run(run) for loss in run.cfg.phases.get(n).losses}
        head_scores = {}
        if trained & {"bce", "focal"}:
            head_scores["cls"] = head
        if "mil" in trained:
            with torch.inference_mode():
                mil = torch.sigmoid(run.glm.heads.mil(tokens)).numpy()
            head_scores["mil"] = multilabel_scores(truth, (mil >= 0.5).astype(np.int64), classes)
        if "llm_cls" in trained:
            probs_llm = llm_cls_on_reports(run, texts["real"], tokens)
            head_scores["llm_cls"] = multilabel_scores(
                truth, (probs_llm >= 0.5).astype(np.int64), classes
            )
        metrics["ladder"] = quality_ladder(run, volumes, train_zones, scores, head_scores)
        metrics["ablation"]["zero_drop"] = (
            (real - scores["zero"]["macro_f1"]) / real if real > 0 else 0.0
        )
        words = run.dataset.finding_words()
        kind = run.cfg.phases.get(max(_phases_run(run) or [3])).text
        responses = [
            response_text(run.dataset, v, kind, sample_rng(run.cfg.seed, 0, i))
            for i, v in enumerate(volumes)
        ]
        metrics["ablation"]["nll"] = {
            mode: split_nll(
                run.tokenizer,
                token_nll(
                    run.glm, run.tokenizer, run.dataset.prompt, responses, ablate(tokens, mode)
                ),
                words,
            )
            for mode in ("real", "zero", "shuffle")
        }
        metrics["probe"] = linear_probes(run, volumes)
        grounding = zone_grounding(run, volumes, tokens)
        if run.main:
            atomic_write_text(out / "grounding.json", json.dumps(grounding, indent=2))
    if run.main:
        predicted = extractor.extract(texts["real"])
        rows = []
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
            rows.append(json.dumps(row) + "\n")
        atomic_write_text(out / "generations.jsonl", "".join(rows))
        if out == Path(run.run_dir):
            run.update_metrics(metrics)
        else:
            fresh = {"data": run.summary.get("data", {}), **metrics}
            atomic_write_text(out / "metrics.json", json.dumps(fresh, indent=2))
        write_report(out)
    return metrics


def _phases_run(run) -> list[int]:
    return [n for n in run.cfg.phases.numbers if is_complete(Path(run.run_dir) / f"phase{n}")]
