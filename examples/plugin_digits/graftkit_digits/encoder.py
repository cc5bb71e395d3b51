"""A self-supervised row encoder for 8x8 digit images: masked-row prediction, no labels, no text.

Each image's 8 pixel rows are its "slices". A small transformer reads the rows (a linear row
embedding plus a learned row-position embedding); during training a few rows are replaced by a
mask token and the model predicts their pixels from the visible rows (mean squared error on the
masked rows only, as in masked autoencoders). Afterwards the unmasked forward pass gives one
contextual embedding per row: the ``S ∈ R^{N×d_v}`` (N = 8) that graftkit grafts (docs/design.md,
"Data flow"). Training sees the training images only and takes seconds on a CPU.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from graftkit.encoders import EncodedVolume, Encoder
from graftkit.io import atomic_file

ROWS = 8
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16
RUN_FILE = "row_encoder.pt"  # the name of a run's copy of the encoder (RUN/dataset/)


class RowEncoderConfig(BaseModel):
    """Size and training schedule of :class:`RowEncoder`."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, gt=0, description="row-embedding width d_v (even)")
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    masked_rows: int = Field(3, gt=0, lt=ROWS, description="rows hidden per training image")
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0


class RowEncoder(nn.Module):
    """Rows ``[B, 8, 8]`` (pixels scaled to 0..1) -> row embeddings ``[B, 8, dim]``."""

    def __init__(self, config: RowEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(ROWS, config.dim)
        self.position = nn.Parameter(torch.randn(ROWS, config.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(config.dim))
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, 2 * config.dim, dropout=0.0, batch_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.decode = nn.Linear(config.dim, ROWS)

    def forward(self, rows: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(rows)
        if masked is not None:
            x = torch.where(masked.unsqueeze(-1), self.mask_token.expand_as(x), x)
        return self.blocks(x + self.position)


@contextmanager
def one_thread():
    """Run on one CPU thread: for tensors this small, more threads only add synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@one_thread()
def train_row_encoder(images: np.ndarray, config: RowEncoderConfig) -> tuple[RowEncoder, float]:
    """Masked-row pretraining on ``images[n, 8, 8]``; returns the model and its last-epoch loss."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = RowEncoder(config)
    rows = torch.as_tensor(images, dtype=torch.float32) / PIXEL_MAX
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        total = 0.0
        for batch in torch.randperm(len(rows), generator=generator).split(config.batch_size):
            x = rows[batch]
            order = torch.rand(len(batch), ROWS, generator=generator).argsort(dim=1)
            masked = order < config.masked_rows
            predicted = model.decode(model(x, masked))
            loss = ((predicted - x) ** 2)[masked].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        last = total / len(rows)
    return model.eval(), last


def cached_row_encoder(images: np.ndarray, config: RowEncoderConfig, folder: Path) -> Path:
    """Train once per (training images, config): ``folder/digits_encoder_<hash>.pt``."""
    key = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    key.update(config.model_dump_json().encode())
    path = Path(folder) / f"digits_encoder_{key.hexdigest()[:16]}.pt"
    if not path.exists():
        model, loss = train_row_encoder(images, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as staging:  # a weights file is complete or absent
            torch.save(
                {"config": config.model_dump(), "state": model.state_dict(), "loss": loss}, staging
            )
    return path


def load_row_encoder(path: Path) -> RowEncoder:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = RowEncoder(RowEncoderConfig(**saved["config"]))
    model.load_state_dict(saved["state"])
    return model.eval()


@one_thread()
@torch.inference_mode()
def embed_rows(model: RowEncoder, images: np.ndarray) -> np.ndarray:
    """``images[n, 8, 8]`` -> row embeddings ``[n, 8, dim]`` float32 (no row masked)."""
    rows = torch.as_tensor(images, dtype=torch.float32) / PIXEL_MAX
    return model(rows).numpy().astype(np.float32)


def row_positions() -> np.ndarray:
    """``z`` of the 8 rows, top to bottom, one unit apart."""
    return np.arange(ROWS, dtype=np.float32)


class DigitRowEncoder(Encoder):
    """``digits-rows``: one 8x8 image (``.npy``, pixels 0..16) -> 8 row embeddings.

    ``weights`` is the encoder file the digits dataset trained (``digits_encoder_<hash>.pt``) or a
    graftkit run directory of the digits dataset, which keeps a copy of the file it used.
    """

    name: ClassVar[str] = "digits-rows"
    dim: ClassVar[int] = RowEncoderConfig().dim
    preprocessing: ClassVar[str] = (
        "8x8 grey image, pixels 0..16 (sklearn load_digits), rows top to bottom"
    )
    weights_source: ClassVar[str] = "trained by the digits dataset on its training images"
    input_suffixes: ClassVar[tuple[str, ...]] = (".npy",)  # one 8x8 image per file

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", **options):
        super().__init__(weights, device, **options)
        if self.weights is None:
            raise ValueError("digits-rows needs --weights: an encoder .pt file or a digits run dir")
        if self.weights.is_dir():
            self.weights = weights_of_run(self.weights)
        self.model = load_row_encoder(self.weights)

    def encode(self, path: Path) -> EncodedVolume:
        image = np.load(path)
        if image.shape != (ROWS, ROWS) or not np.isfinite(image).all():
            raise ValueError(f"{path}: expected a finite 8x8 image, got shape {image.shape}")
        if image.min() < 0 or image.max() > PIXEL_MAX:
            raise ValueError(f"{path}: pixels must lie in 0..16, got {image.min()}..{image.max()}")
        return EncodedVolume(embed_rows(self.model, image[None])[0], row_positions())


def weights_of_run(run_dir: Path) -> Path:
    """The encoder file a digits run used: the copy graftkit keeps in the run folder."""
    from graftkit.rundir import RunDir

    path = RunDir(run_dir).dataset_files / RUN_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {RUN_FILE} among the run's dataset files")
    return path
