"""``lejepa-ct``: the LeJEPA / DALE-CT chest-CT slice encoder (docs/design.md, "The LeJEPA/DALE-CT slice encoder": timm
``vit_large_patch14_dinov2``, ``in_chans=1``, ``num_classes=0``, dynamic image size, 1024-d CLS
per axial slice, HU clamped to [-997, 888], weights from a local safetensors file).

The network is transformers' ``Dinov2Model`` configured as timm's ``vit_large_patch14_dinov2``
(patch 14, width 1024, 24 blocks, 16 heads, LayerScale 1e-5, LayerNorm eps 1e-6, a 37 × 37
position grid + CLS for the 518-pixel pre-training size). timm itself cannot be installed next to
this torch build, so the checkpoint, written in timm's key layout, is mapped onto the HF module
(:func:`graftkit_encoders.vit.timm_to_hf_state_dict`), and the position embeddings are resampled as timm resamples them
for a dynamic image size (bicubic with antialiasing, :class:`graftkit_encoders.vit.TimmDinov2Embeddings`): both are
checked against a plain re-implementation of timm's forward in ``tests/encoders``.

Preprocessing (:class:`SlicePreprocessor`): HU clamped to ``hu_window`` and scaled to [0, 1]; one
body box (voxels above ``body_threshold_hu``) shared by all slices of the volume; each cropped
slice resized to ``image_size`` (a multiple of the patch size). The output per slice is the
final-norm CLS token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graftkit.encoders import EncodedVolume, Encoder
from graftkit_encoders.readers import CTVolume, VolumeError, discover_ct_inputs, read_volume


class LeJepaCTConfig(BaseModel):
    """Architecture, preprocessing and reader options of ``lejepa-ct`` (every field is an encoder
    option: ``graftkit embed lejepa-ct --option name=value``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hidden_size: int = Field(1024, gt=0, description="ViT width; the embedding dim")
    num_hidden_layers: int = Field(24, gt=0)
    num_attention_heads: int = Field(16, gt=0)
    mlp_ratio: int = Field(4, gt=0)
    patch_size: int = Field(14, gt=0)
    pretrain_image_size: int = Field(
        518, gt=0, description="size the position grid was trained at (518 → 37 × 37)"
    )
    layerscale_value: float = Field(1e-5, description="LayerScale init (random weights only)")
    layer_norm_eps: float = Field(1e-6, gt=0)

    image_size: int = Field(
        252, gt=0, description="slice size fed to the ViT; a multiple of patch_size"
    )
    keep_aspect: bool = Field(
        False,
        description="resize the long side to image_size, the short side to a multiple of patch_size",
    )
    interpolation: Literal["bilinear", "bicubic", "area"] = "bilinear"
    hu_window: tuple[float, float] = (-997.0, 888.0)
    body_threshold_hu: float = Field(
        -500.0, description="voxels above this HU make the shared body box"
    )

    rescale: bool | None = Field(
        None, description="None: DICOM applies its tags, NIfTI is taken as stored"
    )
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    check_hu: bool = True

    batch_size: int = Field(16, gt=0, description="slices per forward pass")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    allow_random_weights: bool = Field(
        False, description="run without --weights (tests, benchmarks)"
    )
    seed: int = Field(0, description="seed of the random weights")

    @model_validator(mode="after")
    def _check(self) -> LeJepaCTConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.pretrain_image_size % self.patch_size:
            raise ValueError(
                f"pretrain_image_size {self.pretrain_image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window {self.hu_window} must be (low, high) with low < high")
        return self


# ---------------------------------------------------------------------------------------------
# Preprocessing


class SlicePreprocessor:
    """HU window → [0, 1], one body box per volume, resize to a multiple of the patch size."""

    def __init__(self, config: LeJepaCTConfig):
        self.config = config

    def body_box(self, hu: np.ndarray, name: str = "volume") -> tuple[int, int, int, int]:
        """Rows ``[r0, r1)`` and columns ``[c0, c1)`` holding every voxel above the body threshold
        in any slice: one box for the whole volume, so all slices share the same field of view."""
        body = (hu > self.config.body_threshold_hu).any(axis=0)
        rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
        if rows.size == 0:
            raise VolumeError(
                name, f"no voxel above {self.config.body_threshold_hu:g} HU: no body to crop"
            )
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        size, patch = self.config.image_size, self.config.patch_size
        if not self.config.keep_aspect:
            return size, size
        short = max(patch, round(min(height, width) * size / max(height, width) / patch) * patch)
        return (size, short) if height >= width else (short, size)

    def __call__(self, hu: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Slices ``hu[B, H, W]`` (HU) → ``[B, 1, h, w]`` float32 in [0, 1], cropped to ``box``."""
        r0, r1, c0, c1 = box
        low, high = self.config.hu_window
        x = torch.from_numpy(np.ascontiguousarray(hu[:, r0:r1, c0:c1], dtype=np.float32))
        x = ((x.clamp_(low, high) - low) / (high - low)).unsqueeze(1)
        size = self.target_size(r1 - r0, c1 - c0)
        if tuple(x.shape[-2:]) != size:
            mode = self.config.interpolation
            extra = {} if mode == "area" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=size, mode=mode, **extra).clamp_(0.0, 1.0)
        return x


# ---------------------------------------------------------------------------------------------
# Encoder


class LeJepaCTEncoder(Encoder):
    """LeJEPA / DALE-CT: the 1024-d final-norm CLS of a ViT-L/14 (dinov2 layout) per axial slice.

    Options are the fields of :class:`LeJepaCTConfig`; ``weights`` is a local safetensors file
    in timm's (or HF's) key layout. ``device="auto"`` takes ``cuda:$LOCAL_RANK`` when CUDA exists.
    """

    name = "lejepa-ct"
    dim = 1024
    preprocessing = (
        "axial slices in HU; clamp to [-997, 888] and scale to [0, 1]; crop to one body box "
        "(HU > -500) shared by all slices; resize to image_size (multiple of 14, default 252)"
    )
    weights_source = (
        "local safetensors file (--weights), timm vit_large_patch14_dinov2 layout, in_chans=1"
    )
    input_suffixes = (".nii.gz", ".nii", ".dcm")
    input_description = "NIfTI files (.nii, .nii.gz) or DICOM series folders"

    @classmethod
    def discover_inputs(cls, dir_or_files) -> list[Path]:
        """NIfTI files and DICOM series folders (:func:`graftkit_encoders.readers.discover_ct_inputs`)."""
        return discover_ct_inputs(dir_or_files)

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", **options):
        super().__init__(weights=weights, device=device, **options)
        self.config = LeJepaCTConfig(**options)
        if self.weights is None and not self.config.allow_random_weights:
            raise ValueError(
                "lejepa-ct needs --weights PATH (a safetensors file); allow_random_weights=true runs untrained weights"
            )
        self.dim = self.config.hidden_size
        self.batch_size = self.config.batch_size
        if device == "auto":
            device = (
                f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                if torch.cuda.is_available()
                else "cpu"
            )
        self.device = device
        self.dtype = getattr(torch, self.config.dtype)
        from graftkit_encoders.vit import build_vit, load_weights

        self.model = build_vit(self.config)
        if self.weights is not None:
            load_weights(self.model, self.weights)
        self.model.to(device=self.device, dtype=self.dtype)
        self.preprocess = SlicePreprocessor(self.config)

    def read(self, path: str | Path) -> CTVolume:
        return read_volume(
            path,
            rescale=self.config.rescale,
            rescale_slope=self.config.rescale_slope,
            rescale_intercept=self.config.rescale_intercept,
            check=self.config.check_hu,
        )

    def embed_slices(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1, h, w]`` in [0, 1] → final-norm CLS ``[B, dim]`` (float32, on CPU)."""
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(device=self.device, dtype=self.dtype))
        return out.pooler_output.float().cpu()

    def encode_volume(self, volume: CTVolume) -> EncodedVolume:
        box = self.preprocess.body_box(volume.hu, volume.source.name)
        chunks = []
        for start in range(0, volume.hu.shape[0], self.batch_size):
            pixels = self.preprocess(volume.hu[start : start + self.batch_size], box)
            chunks.append(self.embed_slices(pixels))
        embeddings = torch.cat(chunks).numpy().astype(np.float32)
        return EncodedVolume(embeddings=embeddings, z_mm=np.asarray(volume.z_mm, dtype=np.float32))

    def encode(self, path: Path) -> EncodedVolume:
        return self.encode_volume(self.read(path))
