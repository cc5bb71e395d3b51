"""``precomputed``: serve slice embeddings that already exist on disk (docs/design.md, "Precomputed slice
embeddings": one file per volume, ``.npy`` of shape ``(N, d)`` or ``(N, T, d)`` with token 0 the
CLS, or ``.npz`` with key ``embeddings`` and optionally ``z_mm``).

This is the path most users of the paper's released embeddings take: ``graftkit embed
precomputed --input released/ --output DIR`` validates every file (shape, dim, NaN) and rewrites it
in the runner's layout with ``z_mm``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from graftkit.encoders import EncodedVolume, Encoder


class PrecomputedConfig(BaseModel):
    """Options of ``precomputed``."""

    model_config = ConfigDict(extra="forbid")

    expected_dim: int | None = Field(
        None, gt=0, description="refuse files of another width; None accepts any"
    )
    z_spacing_mm: float = Field(1.0, gt=0, description="slice spacing used when a file has no z_mm")
    token: int = Field(0, ge=0, description="token taken from (N, T, d) arrays; 0 is the CLS")


class PrecomputedEncoder(Encoder):
    """Reads ``.npy``/``.npz`` slice embeddings instead of computing them."""

    name = "precomputed"
    dim = 0
    preprocessing = "none: the files already hold per-slice embeddings"
    weights_source = "none"
    input_suffixes = (".npy", ".npz")

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", **options):
        super().__init__(weights=weights, device=device, **options)
        self.config = PrecomputedConfig(**options)
        self.dim = self.config.expected_dim or 0

    def encode(self, path: Path) -> EncodedVolume:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npy", ".npz"):
            raise ValueError(f"{path.name}: precomputed embeddings must be .npy or .npz")
        arrays = self._load(path)
        if "embeddings" not in arrays:
            raise ValueError(
                f"{path.name}: .npz has no 'embeddings' array (keys: {', '.join(arrays)})"
            )
        array, z_mm = arrays["embeddings"], arrays.get("z_mm")

        if array.ndim == 3:
            if self.config.token >= array.shape[1]:
                raise ValueError(
                    f"{path.name}: token {self.config.token} requested, file has {array.shape[1]} tokens per slice"
                )
            array = array[:, self.config.token, :]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(
                f"{path.name}: embeddings must be (N, d) or (N, T, d) with N > 0, got {array.shape}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"{path.name}: embeddings have dtype {array.dtype}, expected floating point"
            )
        if self.dim and array.shape[1] != self.dim:
            raise ValueError(f"{path.name}: embedding dim {array.shape[1]}, expected {self.dim}")
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise ValueError(
                f"{path.name}: NaN/inf in {rows.size} slice(s), first at slice {int(rows[0])}"
            )
        if z_mm is None:
            z_mm = np.arange(array.shape[0], dtype=np.float32) * np.float32(
                self.config.z_spacing_mm
            )
        if z_mm.shape != (array.shape[0],):
            raise ValueError(
                f"{path.name}: z_mm has shape {z_mm.shape}, expected ({array.shape[0]},)"
            )
        return EncodedVolume(embeddings=array.astype(np.float32), z_mm=z_mm.astype(np.float32))

    @staticmethod
    def _load(path: Path) -> dict[str, np.ndarray]:
        try:
            if path.suffix.lower() == ".npy":
                return {"embeddings": np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as data:
                return {key: np.asarray(data[key]) for key in data.files}
        except Exception as err:  # numpy/zipfile raise several types for a broken file
            raise ValueError(f"{path.name}: unreadable ({type(err).__name__}: {err})") from err
