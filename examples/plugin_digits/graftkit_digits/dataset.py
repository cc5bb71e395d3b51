"""scikit-learn's handwritten digits as a graftkit dataset: rows are slices, reports are written.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 scans (UCI optdigits, 43 writers) inside
the package, so nothing is downloaded. A stratified split gives ``train``/``valid``; the row
encoder (:mod:`graftkit_digits.encoder`) is trained on the training images alone, with no label
and no text, and every image is embedded once into ``workdir`` (both cached by content hash).
A run keeps a copy of the encoder (``run_files``), so reopening it never trains it again.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from graftkit.config import ConfigError
from graftkit.data import GraftDataset, Volume
from graftkit.errors import one_line
from graftkit.io import atomic_file
from graftkit_digits.encoder import (
    RUN_FILE,
    RowEncoderConfig,
    cached_row_encoder,
    embed_rows,
    load_row_encoder,
    row_positions,
)
from graftkit_digits.text import CLASSES, NORMAL_TEXT, PHRASES, digit_labels, write_report


class DigitsOptions(BaseModel):
    """The dataset's options, given as ``data.synth`` in the run config or a profile."""

    model_config = ConfigDict(extra="forbid")

    valid_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    encoder: RowEncoderConfig = Field(default_factory=RowEncoderConfig)


class DigitsDataset(GraftDataset):
    """``digits``: 8 row embeddings per image, 6 stroke-shape labels, a short report per image."""

    name: ClassVar[str] = "digits"
    class_names: ClassVar[list[str]] = CLASSES
    normal_text: ClassVar[str] = NORMAL_TEXT
    prompt: ClassVar[str] = "Describe the strokes of this handwritten digit."
    default_extractor: ClassVar[str] = "digits-rules"
    default_profile: ClassVar[str | None] = "digits-tiny"

    def __init__(self, config: Any, workdir: Path):
        super().__init__(config, workdir)
        try:
            self.options = DigitsOptions(**config.synth)
        except ValidationError as err:  # one line naming each key, e.g. data.synth.encoder.epoch
            raise ConfigError(f"digits: {one_line(err, key='data.synth')}") from None
        digits = load_digits()
        self.images = digits.images.astype(np.float32)  # [1797, 8, 8], pixels 0..16
        self.digits = digits.target.astype(np.int64)
        everything = np.arange(len(self.digits))
        train, valid = train_test_split(
            everything,
            test_size=self.options.valid_fraction,
            stratify=self.digits,
            random_state=self.options.split_seed,
        )
        self.indices = {"train": train, "valid": valid}
        self.embeddings: np.ndarray | None = None
        self.weights: Path | None = None  # the row encoder, once trained, found or handed back
        self._records: dict[str, list[Volume]] = {}

    def encoder_path(self) -> Path:
        """The trained row encoder: a run's own copy, else trained now if this cache has none."""
        if self.weights is None:
            train = self.images[self.indices["train"]]
            self.weights = cached_row_encoder(train, self.options.encoder, self.workdir)
        return self.weights

    def run_files(self) -> dict[str, Path]:
        """The encoder was trained: graftkit keeps a copy of it in the run folder."""
        return {RUN_FILE: self.encoder_path()}

    def use_run_files(self, files: dict[str, Path]) -> None:
        """A run's copy of the encoder, handed back when the run is reopened: no training."""
        self.weights = files[RUN_FILE]

    def prepare(self, progress: Any = None) -> None:
        """Train (or find) the encoder, then embed every image once: ``[1797, 8, d]``."""
        weights = self.encoder_path()
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        target = self.workdir / f"digits_rows_{digest}.npy"  # cached by the encoder's content
        if not target.exists():
            with atomic_file(target) as staging, staging.open("wb") as fh:
                np.save(fh, embed_rows(load_row_encoder(weights), self.images))
        self.embeddings = np.load(target)

    @property
    def embedding_dim(self) -> int:
        return self.options.encoder.dim

    def records(self, split: str) -> list[Volume]:
        if split not in self.indices:
            raise ValueError(f"unknown split {split!r}; digits splits are {list(self.indices)}")
        if split not in self._records:
            limit = getattr(self.config, f"limit_{split}", None)
            chosen = self.indices[split][:limit]
            ink = self.images.mean(axis=(1, 2))
            cuts = np.quantile(ink[self.indices["train"]], [1 / 3, 2 / 3])
            volumes = []
            for i in map(int, chosen):
                report, sentences = write_report(
                    int(self.digits[i]), int(np.searchsorted(cuts, ink[i])), random.Random(i)
                )
                volumes.append(
                    Volume(
                        name=f"digit_{i:04d}",
                        split=split,
                        labels=digit_labels(int(self.digits[i])),
                        findings=report,
                        meta={"index": i, "sentences": sentences},
                    )
                )
            self._records[split] = volumes
        return self._records[split]

    def load(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor]:
        if self.embeddings is None:
            self.prepare()
        rows = torch.from_numpy(self.embeddings[volume.meta["index"]])
        return rows, torch.from_numpy(row_positions())

    def condition_texts(self, volume: Volume) -> list[tuple[int, str]]:
        return sorted(volume.meta["sentences"].items())

    def class_text(self, class_index: int) -> str:
        return PHRASES[class_index][0]
