"""The encoder interface: one volume (or signal) -> per-slice embeddings ``[N, d]`` and ``z_mm[N]``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass
class EncodedVolume:
    """Slice embeddings ``[N, d]`` (float32) and physical positions ``z_mm[N]`` of one input."""

    embeddings: np.ndarray
    z_mm: np.ndarray


class Encoder(ABC):
    """A frozen self-supervised encoder, registered through ``register_encoders``.

    Class attributes declare what the encoder is: its output ``dim``, the ``preprocessing`` it
    expects its input to have had, and where its ``weights_source`` comes from.
    """

    name: ClassVar[str] = ""
    dim: ClassVar[int] = 0
    preprocessing: ClassVar[str] = ""
    weights_source: ClassVar[str] = ""
    #: What ``graftkit embed --input`` looks for: ``nifti``, ``dicom`` (series folders), ``embeddings``.
    input_kinds: ClassVar[tuple[str, ...]] = ("nifti", "dicom")
    #: Slices per forward pass; ``graftkit embed --batch-size`` sets it.
    batch_size: int = 16

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", **options):
        self.weights = Path(weights) if weights is not None else None
        self.device = device
        self.options = options

    @abstractmethod
    def encode(self, path: Path) -> EncodedVolume:
        """Read one input file (or folder) and return its slice embeddings and positions."""
