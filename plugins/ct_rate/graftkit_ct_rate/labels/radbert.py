"""``ct_rate-radbert``: the official CT-RATE label extractor, loaded from local files.

docs/design.md, "CT-RATE, as its own files lay it out": RadBERT-RoBERTa-4m encoder + ``Linear(hidden,
18)`` on the pooler output, sigmoid >= 0.5, ``max_length`` 512. The released weights are a PyTorch
state dict (``RadBertClassifier.pth``; the CT-CLIP ``text_classifier`` module names its encoder
``model`` and its head ``classifier``); a Hugging Face port exists as a sequence classifier.
Nothing is downloaded: both forms are read from local paths, and the state dict is loaded with
``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from graftkit.labels import LabelExtractor
from graftkit_ct_rate.classes import CLASSES

# Prefixes under which checkpoints in the wild store the encoder / the linear head. The official
# CT-CLIP module uses ``model.`` and ``classifier.``; ``module.`` comes from DataParallel / DDP.
ENCODER_PREFIXES: tuple[str, ...] = ("model.", "bert.", "roberta.", "radbert.", "encoder_model.")
HEAD_PREFIXES: tuple[str, ...] = ("classifier.", "linear.", "fc.", "out.", "head.")
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


class RadBertOptions(BaseModel):
    """Options of :class:`RadBertExtractor` (``graftkit label --extractor ct_rate-radbert ...``).

    ``model_dir`` is either a RadBERT (RoBERTa) directory holding ``config.json`` and the
    tokenizer, used with ``weights`` (the ``RadBertClassifier.pth`` state dict), or, without
    ``weights``, a Hugging Face ``AutoModelForSequenceClassification`` directory with 18 labels.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model_dir: Path
    weights: Path | None = None
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=8)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    device: str = "cpu"

    @model_validator(mode="after")
    def _paths_exist(self) -> RadBertOptions:
        if not self.model_dir.is_dir():
            raise ValueError(f"model_dir {self.model_dir} is not a directory")
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"model_dir {self.model_dir} has no config.json")
        if self.weights is not None and not self.weights.is_file():
            raise ValueError(f"weights file {self.weights} does not exist")
        return self


class RadBertClassifier(nn.Module):
    """RoBERTa encoder + ``Linear(hidden, n_classes)`` on the pooler output (logits)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, n_classes: int = len(CLASSES)):
        super().__init__()
        self.model = encoder
        self.classifier = nn.Linear(hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.classifier(pooled)


def _strip(key: str, prefixes: tuple[str, ...]) -> tuple[str, str] | None:
    for prefix in prefixes:
        if key.startswith(prefix):
            return prefix, key[len(prefix) :]
    return None


def map_radbert_state_dict(
    state: dict[str, torch.Tensor], encoder_keys: set[str], path: Path | str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a ``RadBertClassifier.pth`` state dict into ``(encoder_state, head_state)``.

    Wrapper prefixes (``module.``) are dropped; the encoder is found under one of
    :data:`ENCODER_PREFIXES` and the head under one of :data:`HEAD_PREFIXES` (a head named
    ``weight`` / ``bias`` at top level is also accepted). Keys the encoder does not know and
    missing encoder or head keys raise a ``ValueError`` naming ``path`` and the keys. Buffers
    such as ``embeddings.position_ids`` that older transformers saved are ignored.
    """
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        while (hit := _strip(key, WRAPPER_PREFIXES)) is not None:
            key = hit[1]
        cleaned[key] = value

    encoder_state: dict[str, torch.Tensor] = {}
    head_state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in cleaned.items():
        encoder_hit = _strip(key, ENCODER_PREFIXES)
        head_hit = _strip(key, HEAD_PREFIXES)
        if encoder_hit is not None and encoder_hit[1] in encoder_keys:
            encoder_state[encoder_hit[1]] = value
        elif key in encoder_keys:
            encoder_state[key] = value
        elif head_hit is not None and head_hit[1] in ("weight", "bias"):
            head_state[head_hit[1]] = value
        elif key in ("weight", "bias"):
            head_state[key] = value
        elif key.endswith("position_ids"):
            continue
        else:
            unexpected.append(key)

    missing = sorted(k for k in encoder_keys if k not in encoder_state)
    missing += [f"classifier.{k}" for k in ("weight", "bias") if k not in head_state]
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

        raise ValueError(
            f"{path}: not a RadBertClassifier state dict (encoder under one of "
            f"{', '.join(ENCODER_PREFIXES)}; linear head under one of {', '.join(HEAD_PREFIXES)}). "
            f"missing keys: [{show(missing)}]; unexpected keys: [{show(sorted(unexpected))}]"
        )
    return encoder_state, head_state


def load_radbert_classifier(model_dir: Path, weights: Path) -> RadBertClassifier:
    """Build the encoder from ``model_dir/config.json`` and load ``weights`` into it and its head."""
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    encoder = AutoModel.from_config(config)
    if getattr(encoder, "pooler", None) is None:
        raise ValueError(f"{model_dir}: the encoder built from config.json has no pooler layer")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{weights}: cannot be read as a weights-only state dict ({error})"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights}: expected a state dict of tensors, got {type(state).__name__}")

    encoder_state, head_state = map_radbert_state_dict(
        state, set(encoder.state_dict()), path=weights
    )
    expected = (len(CLASSES), config.hidden_size)
    if tuple(head_state["weight"].shape) != expected or tuple(head_state["bias"].shape) != (
        expected[0],
    ):
        raise ValueError(
            f"{weights}: classifier weight {tuple(head_state['weight'].shape)} / bias "
            f"{tuple(head_state['bias'].shape)} do not match Linear(hidden={config.hidden_size}, "
            f"{len(CLASSES)})"
        )
    model = RadBertClassifier(encoder, config.hidden_size)
    try:
        model.model.load_state_dict(encoder_state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{weights}: encoder tensors do not fit {model_dir}: {error}") from error
    model.classifier.load_state_dict(head_state, strict=True)
    return model.eval()


class RadBertExtractor(LabelExtractor):
    """The official RadBERT classifier as a :class:`LabelExtractor` (options: :class:`RadBertOptions`).

    ``extract`` tokenises in batches of ``batch_size`` (truncation at ``max_length``), runs the
    classifier without gradients and thresholds ``sigmoid(logits) >= threshold``.
    """

    name = "ct_rate-radbert"
    class_names = CLASSES

    def __init__(self, **options):
        super().__init__(**options)
        self.config = RadBertOptions(**options)
        model_dir = self.config.model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if self.config.weights is not None:
            self.model: nn.Module = load_radbert_classifier(model_dir, self.config.weights)
            self._is_port = False
            hf_config = self.model.model.config
        else:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True
            ).eval()
            self._is_port = True
            hf_config = self.model.config
            if hf_config.num_labels != len(CLASSES):
                raise ValueError(
                    f"{model_dir}: sequence classifier has num_labels={hf_config.num_labels}, "
                    f"expected {len(CLASSES)} (pass weights=RadBertClassifier.pth to use a "
                    "RadBERT encoder directory instead)"
                )
        positions = getattr(hf_config, "max_position_embeddings", None)
        if positions is not None:
            # RoBERTa reserves padding_idx + 1 position slots before the first token.
            offset = hf_config.pad_token_id + 1 if "roberta" in hf_config.model_type else 0
            if self.config.max_length > positions - offset:
                raise ValueError(
                    f"max_length={self.config.max_length} exceeds the {positions - offset} "
                    f"positions of {model_dir}/config.json"
                )
        self.model.to(self.config.device)

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw logits ``float32 [len(texts), 18]``, computed in batches."""
        if isinstance(texts, str):
            raise TypeError("expects a sequence of report texts, got a single str")
        chunks = []
        for start in range(0, len(texts), self.config.batch_size):
            batch = [str(t) for t in texts[start : start + self.config.batch_size]]
            encoded = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(self.config.device)
            if self._is_port:
                out = self.model(
                    input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
                ).logits
            else:
                out = self.model(encoded["input_ids"], encoded["attention_mask"])
            chunks.append(out.float().cpu())
        if not chunks:
            return torch.zeros((0, len(CLASSES)))
        return torch.cat(chunks)

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """Labels ``int64 [len(texts), 18]``: ``sigmoid(logits) >= threshold``."""
        probabilities = torch.sigmoid(self.logits(texts))
        return (probabilities >= self.config.threshold).numpy().astype(np.int64)
