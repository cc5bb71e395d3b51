"""Model-based report scores, opt-in, with every model loaded from a local directory.

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
"""

from __future__ import annotations

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
