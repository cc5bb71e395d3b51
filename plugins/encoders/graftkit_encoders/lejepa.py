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

Preprocessing is the authors' published code, re-implemented (:func:`dale_ct_transform`; the
repository ``Kentucky-Open-Science/DALE-CT``):

- ``transform="full"``: ``load_hf/lejepa_1s.py``, ``CTInferenceTransform`` (the model card's
  "exact HU windowing and Z-score normalization used during LeJEPA training"): the whole slice,
  nearest-resized to the largest multiple of the patch size.
- ``transform="cropped_global"`` (default): ``scripts/ctrate_generate_embeddings.py`` with
  ``dataloaders/datasetloader_ctrate_multiscale.py``, ``MultiScaleSliceProcessor`` mode
  ``cropped_global``, the path of every CT-RATE embedding configuration in that repository: a
  square body box, RoI-aligned to ``crop_size`` (256), z-scored, centre-cropped to a multiple of
  the patch size (252).
- ``transform="box_resize"``: graftkit's earlier reading of the paper ([0, 1] scaling without the
  z-score, a body box resized bilinearly to ``image_size``), kept only to reproduce embeddings
  written with it; the released weights were not trained on it.

The output per slice is the final-norm CLS token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graftkit.encoders import EncodedVolume, Encoder
from graftkit_encoders.readers import (
    CTVolume,
    VolumeError,
    discover_ct_inputs,
    read_ct_rate_volume,
    read_rescale_table,
    read_volume,
)

DALE_CT_HU_WINDOW: tuple[float, float] = (-997.0, 888.0)
"""``clip_min``/``clip_max`` of ``CTInferenceTransform`` (DALE-CT ``load_hf/lejepa_1s.py``): the
0.5 % and 99.5 % foreground intensities of CT-RATE."""
DALE_CT_MEAN_HU = -142.39
"""``mean_hu`` of ``CTInferenceTransform``: the z-score mean, in HU."""
DALE_CT_STD_HU = 360.97
"""``std_hu`` of ``CTInferenceTransform``: the z-score standard deviation, in HU."""
DALE_CT_SOLID_HU = -500.0
"""``MultiScaleSliceProcessor`` (cropped_global): voxels above this are solid tissue."""
DALE_CT_MORPHOLOGY_KERNEL = 25
"""``MultiScaleSliceProcessor`` (cropped_global): side of the square erosion/dilation window."""

TransformMode = Literal["full", "cropped_global"]


# ---------------------------------------------------------------------------------------------
# The authors' preprocessing


def _zscore(
    x: torch.Tensor, hu_window: tuple[float, float], mean_hu: float, std_hu: float
) -> torch.Tensor:
    """Clamp to ``hu_window``, map to [0, 1], then z-score with the [0, 1]-scaled mean and std
    (``CTInferenceTransform.__call__`` steps 1-2; ``MultiScaleSliceProcessor.normalize``, mode
    ``z_score``). Algebraically ``(clamp(HU) - mean_hu) / std_hu``."""
    low, high = hu_window
    span = high - low
    x = (torch.clamp(x, low, high) - low) / span
    return (x - (mean_hu - low) / span) / (std_hu / span)


def _as_volume(hu: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``hu[N, H, W]`` (numpy or torch, any real dtype) as a float32 CPU tensor."""
    x = torch.as_tensor(np.asarray(hu) if not isinstance(hu, torch.Tensor) else hu)
    if x.ndim != 3 or min(x.shape) == 0:
        raise ValueError(f"hu must be [N, H, W] with N, H, W > 0, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"hu must hold real HU values, got dtype {x.dtype}")
    return x.to(dtype=torch.float32, device="cpu")


def _window_counts(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Number of ones of a 0/1 ``mask[B, H, W]`` (int32) in each ``kernel × kernel`` window
    centred on a pixel, pixels outside the slice not counted: running sums (a cumulative sum
    differenced ``kernel`` apart) along the columns, then along the rows."""
    pad = kernel // 2
    for dim in (-1, -2):
        widths = (pad + 1, pad) if dim == -1 else (0, 0, pad + 1, pad)
        total = F.pad(mask, widths).cumsum(dim=dim, dtype=torch.int32)
        mask = total.narrow(dim, kernel, total.shape[dim] - kernel) - total.narrow(
            dim, 0, total.shape[dim] - kernel
        )
    return mask


def cropped_global_box(hu: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """The square body box ``(r0, r1, c0, c1)`` (rows ``[r0, r1)``, columns ``[c0, c1)``) that
    ``MultiScaleSliceProcessor.process_batch`` (mode ``cropped_global``) computes for a batch of
    slices ``hu[B, H, W]``.

    The authors: solid tissue (HU > -500), ``eroded = 1 - max_pool2d(1 - solid, 25, 1, 12)``,
    ``body = max_pool2d(eroded, 25, 1, 12) > 0.5`` (an opening: anything narrower than 25 pixels,
    the table or noise, goes; max_pool2d pads with -inf, so a window is its part inside the
    slice), the union over the batch, its bounding box grown to a square of side
    max(height, width) around its centre, shifted (then clipped) to stay inside the slice; no
    tissue: the whole slice. Here a pixel is eroded-in when its window holds no non-solid pixel
    (:func:`_window_counts`), and the dilation is not formed: its bounding box is the eroded
    pixels' box grown by 12 on each side and clipped to the slice, which is the same box.
    """
    x = _as_volume(hu)
    height, width = x.shape[-2:]
    pad = DALE_CT_MORPHOLOGY_KERNEL // 2
    not_solid = (~(x > DALE_CT_SOLID_HU)).to(torch.int32)
    eroded = (_window_counts(not_solid, DALE_CT_MORPHOLOGY_KERNEL) == 0).any(dim=0)
    rows, cols = torch.nonzero(eroded.any(dim=1)), torch.nonzero(eroded.any(dim=0))
    if rows.numel():
        rmin, rmax = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad, height - 1)
        cmin, cmax = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad, width - 1)
    else:
        rmin, rmax, cmin, cmax = 0, height - 1, 0, width - 1
    side = max(rmax - rmin + 1, cmax - cmin + 1)

    def square(lo: int, hi: int, size: int) -> tuple[int, int]:
        start = max((lo + hi) // 2 - side // 2, 0)
        stop = start + side
        if stop > size:
            start, stop = start - (stop - size), size
        return max(start, 0), stop

    r0, r1 = square(rmin, rmax, height)
    c0, c1 = square(cmin, cmax, width)
    return r0, r1, c0, c1


def roi_align_weights(start: float, length: float, size_in: int, size_out: int) -> torch.Tensor:
    """``[size_out, size_in]`` weights of torchvision's ``roi_align`` (``aligned=True``,
    ``sampling_ratio=-1``) along one axis, for the box ``[start, start + length)`` in pixels.

    torchvision's CPU/CUDA kernel (``roi_align_kernel.cpp``, ``roi_align_common.h``): bin ``p``
    averages ``g = ceil(length / size_out)`` bilinear samples at
    ``start - 0.5 + (p + (i + 0.5) / g) · length / size_out``; a sample below -1 or beyond the
    last pixel + 1 is zero, one below 0 is taken at 0, one beyond the last pixel at the last pixel.
    Bilinear sampling and the average are separable, so the 2-D RoI align of a box is
    ``W_rows @ slice @ W_cols.T``.
    """
    bin_size = length / size_out
    grid = max(math.ceil(length / size_out), 1)
    p = np.arange(size_out, dtype=np.float64)[:, None]
    i = np.arange(grid, dtype=np.float64)[None, :]
    y = (start - 0.5) + p * bin_size + (i + 0.5) * bin_size / grid
    inside = (y >= -1.0) & (y <= size_in)
    y = np.clip(y, 0.0, None)
    low = np.floor(y).astype(np.int64)
    at_end = low >= size_in - 1
    low = np.where(at_end, size_in - 1, low)
    high = np.where(at_end, size_in - 1, low + 1)
    frac = np.where(at_end, 0.0, y - low)
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.broadcast_to(np.arange(size_out)[:, None], y.shape)
    np.add.at(weights, (rows[inside], low[inside]), (1.0 - frac[inside]) / grid)
    np.add.at(weights, (rows[inside], high[inside]), frac[inside] / grid)
    return torch.from_numpy(weights)


def dale_ct_transform(
    hu: np.ndarray | torch.Tensor,
    *,
    mode: TransformMode,
    patch_size: int = 14,
    crop_size: int = 256,
    box_slices: int | None = 32,
    hu_window: tuple[float, float] = DALE_CT_HU_WINDOW,
    mean_hu: float = DALE_CT_MEAN_HU,
    std_hu: float = DALE_CT_STD_HU,
) -> torch.Tensor:
    """Axial slices ``hu[N, H, W]`` (HU) → the DALE-CT encoder's input ``[N, 1, H', W']`` float32.

    ``mode="full"`` is ``CTInferenceTransform`` (DALE-CT ``load_hf/lejepa_1s.py``): clamp to
    ``hu_window``, map to [0, 1], z-score with ``mean_hu``/``std_hu`` expressed on that scale, and
    nearest-resize ``H × W`` to ``(H // patch) · patch × (W // patch) · patch`` when it is not
    already a multiple (``F.interpolate(mode="nearest")``, as the authors call it).

    ``mode="cropped_global"`` is the CT-RATE embedding script (DALE-CT
    ``scripts/ctrate_generate_embeddings.py``, ``MultiScaleSliceProcessor`` with
    ``inference.mode=cropped_global``, ``crops.global_crops_size=crop_size``): per group of
    ``box_slices`` consecutive slices (the script's ``--slice_batch_size``, default 32; ``None``:
    one group for the whole volume) the square body box of :func:`cropped_global_box`; RoI align
    (:func:`roi_align_weights`) of the raw HU to ``crop_size × crop_size``; the z-score above;
    then ``center_crop_to_multiple``: the central ``(crop_size // patch) · patch`` square
    (256 → 252 for patch 14, 256 for patch 16).

    The other arguments default to the published constants; DALE-CT-0-L publishes other
    normalisation statistics (its model card), which is why they are arguments.
    """
    x = _as_volume(hu)
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not hu_window[0] < hu_window[1]:
        raise ValueError(f"hu_window {hu_window} must be (low, high) with low < high")
    if not std_hu > 0:
        raise ValueError(f"std_hu must be positive, got {std_hu}")
    if mode == "full":
        height, width = x.shape[-2:]
        target = ((height // patch_size) * patch_size, (width // patch_size) * patch_size)
        if min(target) == 0:
            raise ValueError(
                f"hu slices are {height} x {width}: smaller than one {patch_size}-pixel patch"
            )
        out = _zscore(x, hu_window, mean_hu, std_hu)[:, None]
        if target != (height, width):
            out = F.interpolate(out, size=target, mode="nearest")
        return out.contiguous()
    if mode == "cropped_global":
        if crop_size < patch_size:
            raise ValueError(f"crop_size {crop_size} is smaller than patch_size {patch_size}")
        if box_slices is not None and box_slices <= 0:
            raise ValueError(f"box_slices must be positive or None, got {box_slices}")
        keep = (crop_size // patch_size) * patch_size
        top = (crop_size - keep) // 2
        step = box_slices or x.shape[0]
        height, width = x.shape[-2:]
        out = torch.empty(x.shape[0], 1, keep, keep, dtype=torch.float32)
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step]
            r0, r1, c0, c1 = cropped_global_box(chunk)
            w_rows = roi_align_weights(r0, r1 - r0, height, crop_size)[top : top + keep]
            w_cols = roi_align_weights(c0, c1 - c0, width, crop_size)[top : top + keep]
            crop = w_rows.float() @ chunk @ w_cols.float().T
            out[start : start + step, 0] = _zscore(crop, hu_window, mean_hu, std_hu)
        return out
    raise ValueError(f"mode must be 'full' or 'cropped_global', got {mode!r}")


# ---------------------------------------------------------------------------------------------
# Options


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

    transform: Literal["cropped_global", "full", "box_resize"] = Field(
        "cropped_global", description="preprocessing: dale_ct_transform's modes, or box_resize"
    )
    crop_size: int = Field(256, gt=0, description="cropped_global: RoI-align size before the crop")
    box_slices: int | None = Field(
        32, gt=0, description="cropped_global: slices sharing one body box (None: the volume)"
    )
    hu_window: tuple[float, float] = DALE_CT_HU_WINDOW
    mean_hu: float = DALE_CT_MEAN_HU
    std_hu: float = Field(DALE_CT_STD_HU, gt=0)

    image_size: int = Field(
        252, gt=0, description="box_resize: slice size fed to the ViT; a multiple of patch_size"
    )
    keep_aspect: bool = Field(
        False,
        description="box_resize: long side to image_size, short side to a multiple of patch_size",
    )
    interpolation: Literal["bilinear", "bicubic", "area"] = "bilinear"
    body_threshold_hu: float = Field(
        -500.0, description="box_resize: voxels above this HU make the shared body box"
    )

    reader: Literal["canonical", "ct_rate"] = Field(
        "canonical",
        description="canonical: reoriented, inferior → superior; ct_rate: the DALE-CT scripts' reading",
    )
    metadata_csv: Path | None = Field(
        None, description="reader=ct_rate: CT-RATE metadata CSV with RescaleSlope/Intercept"
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
        if self.crop_size < self.patch_size:
            raise ValueError(
                f"crop_size {self.crop_size} is smaller than patch_size {self.patch_size}"
            )
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window {self.hu_window} must be (low, high) with low < high")
        if self.reader == "ct_rate" and self.metadata_csv is None and self.rescale is not False:
            raise ValueError(
                "reader=ct_rate needs metadata_csv=PATH (CT-RATE's metadata/*_metadata.csv, whose "
                "RescaleSlope/RescaleIntercept differ per volume), or rescale=false for volumes "
                "already in HU"
            )
        if self.reader == "ct_rate" and self.metadata_csv is not None and self.rescale is False:
            raise ValueError("reader=ct_rate: metadata_csv and rescale=false contradict each other")
        return self


# ---------------------------------------------------------------------------------------------
# Preprocessing of one volume


class SlicePreprocessor:
    """The configured preprocessing of ``lejepa-ct``: a volume's HU slices → ViT inputs, in
    groups (:meth:`chunks`) small enough to hold in memory and large enough that each group is
    what the reference code processes at once (a ``cropped_global`` box group, a shared box)."""

    def __init__(self, config: LeJepaCTConfig):
        self.config = config

    def chunks(
        self, hu: np.ndarray, name: str = "volume", batch_size: int | None = None
    ) -> Iterator[torch.Tensor]:
        """``[n, 1, h, w]`` float32 inputs of consecutive slices of ``hu[N, H, W]``, in order:
        ``batch_size`` (default: the config's) slices at a time, or one ``cropped_global`` box
        group at a time."""
        cfg = self.config
        step = batch_size or cfg.batch_size
        if cfg.transform == "box_resize":
            box = self.body_box(hu, name)
            for start in range(0, hu.shape[0], step):
                yield self.box_resize(hu[start : start + step], box)
            return
        if cfg.transform == "cropped_global":
            step = cfg.box_slices or hu.shape[0]
        for start in range(0, hu.shape[0], step):
            yield self.transform(hu[start : start + step])

    def transform(self, hu: np.ndarray) -> torch.Tensor:
        """:func:`dale_ct_transform` with the config's mode and constants."""
        cfg = self.config
        return dale_ct_transform(
            hu,
            mode=cfg.transform,  # type: ignore[arg-type]
            patch_size=cfg.patch_size,
            crop_size=cfg.crop_size,
            box_slices=cfg.box_slices,
            hu_window=cfg.hu_window,
            mean_hu=cfg.mean_hu,
            std_hu=cfg.std_hu,
        )

    # -- box_resize: graftkit's earlier preprocessing -----------------------------------------
    def body_box(self, hu: np.ndarray, name: str = "volume") -> tuple[int, int, int, int]:
        """Rows ``[r0, r1)`` and columns ``[c0, c1)`` holding every voxel above
        ``body_threshold_hu`` in any slice (``box_resize``: one box for the whole volume)."""
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

    def box_resize(self, hu: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Slices ``hu[B, H, W]`` → ``[B, 1, h, w]`` in [0, 1] (``hu_window``), cropped to ``box``
        and resized to :meth:`target_size`: no z-score."""
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
        "axial slices in HU; DALE-CT's published transforms: cropped_global (default; square "
        "body box, RoI align to 256, clamp [-997, 888], z-score mean -142.39 / std 360.97 HU, "
        "centre crop to 252) or full (whole slice, same z-score, nearest resize to a multiple of 14)"
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
        self.rescale_table = (
            read_rescale_table(self.config.metadata_csv)
            if self.config.reader == "ct_rate" and self.config.metadata_csv is not None
            else None
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
        if self.config.reader == "ct_rate":
            return read_ct_rate_volume(path, self.rescale_table, check=self.config.check_hu)
        return read_volume(
            path,
            rescale=self.config.rescale,
            rescale_slope=self.config.rescale_slope,
            rescale_intercept=self.config.rescale_intercept,
            check=self.config.check_hu,
        )

    def embed_slices(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1, h, w]`` preprocessed slices → final-norm CLS ``[B, dim]`` (float32, on CPU)."""
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(device=self.device, dtype=self.dtype))
        return out.pooler_output.float().cpu()

    def encode_volume(self, volume: CTVolume) -> EncodedVolume:
        chunks = []
        for pixels in self.preprocess.chunks(volume.hu, volume.source.name, self.batch_size):
            for start in range(0, pixels.shape[0], self.batch_size):
                chunks.append(self.embed_slices(pixels[start : start + self.batch_size]))
        embeddings = torch.cat(chunks).numpy().astype(np.float32)
        return EncodedVolume(embeddings=embeddings, z_mm=np.asarray(volume.z_mm, dtype=np.float32))

    def encode(self, path: Path) -> EncodedVolume:
        return self.encode_volume(self.read(path))
