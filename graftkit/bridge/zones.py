"""Zone-constrained cross-attention compressor (docs/design.md, "Zone-constrained cross-attention").

A sequence of N slice embeddings ``S ∈ R^{N×d}`` becomes K region tokens ``V ∈ R^{K×d}``:

1. ``s'_i = s_i + β·PE(z_i)`` (sinusoidal encoding of the physical z position, mm; β =
   ``position_scale``, 1 in the paper);
2. K learnable region queries attend, in one batched attention, to the slices of their own zone
   ``Z_k = {i : floor(k·N/K) ≤ i < floor((k+1)·N/K)}`` (block mask × padding mask);
3. ``num_global_layers`` Transformer encoder layers mix the K tokens.

With ``num_global_layers=0`` token k is a function of zone k alone; the global layers are the only
place where zones exchange information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from graftkit.config import CompressorSettings

__all__ = [
    "ZoneCompressor",
    "ZoneCompressorConfig",
    "sinusoidal_position_encoding",
    "zone_bounds",
    "zone_loop_reference",
    "zone_mask",
]


def zone_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """The K zones of N slices as ``(start, end)`` pairs (half-open).

    ``start = floor(i·n/k)``, ``end = floor((i+1)·n/k)`` (docs/design.md). When ``n < k`` this formula
    leaves some zones empty; such a zone gets the single slice nearest to its centre
    ``(i + 1/2)·n/k``, so every zone attends to at least one slice.
    """
    if not isinstance(n, int) or not isinstance(k, int):
        raise TypeError(f"zone_bounds expects ints, got n={n!r}, k={k!r}")
    if n <= 0:
        raise ValueError(f"zone_bounds: n={n} slices; a volume needs at least one slice")
    if k <= 0:
        raise ValueError(f"zone_bounds: k={k} zones; need at least one zone")
    bounds = []
    for i in range(k):
        start, end = (i * n) // k, ((i + 1) * n) // k
        if end <= start:
            start = min(((2 * i + 1) * n) // (2 * k), n - 1)
            end = start + 1
        bounds.append((start, end))
    return bounds


def zone_mask(mask: Tensor, k: int) -> Tensor:
    """Boolean attention mask ``[B, K, N]``: query k may see slice i.

    ``mask[B, N]`` marks valid slices; zones are computed from each item's valid count and the
    rank of each valid slice (so padding may sit anywhere), exactly as :func:`zone_bounds` does.
    """
    rank = mask.long().cumsum(dim=1) - 1  # [B, N] index among valid slices
    n = mask.long().sum(dim=1, keepdim=True)  # [B, 1]
    zones = torch.arange(k, device=mask.device).unsqueeze(0)  # [1, K]
    start = (zones * n) // k
    end = ((zones + 1) * n) // k
    nearest = torch.minimum(((2 * zones + 1) * n) // (2 * k), n - 1)
    empty = end <= start
    start = torch.where(empty, nearest, start)
    end = torch.where(empty, nearest + 1, end)
    r = rank.unsqueeze(1)  # [B, 1, N]
    return mask.unsqueeze(1) & (r >= start.unsqueeze(2)) & (r < end.unsqueeze(2))


def sinusoidal_position_encoding(z: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``PE(z)[2j] = sin(z / p^(2j/d))``, ``PE(z)[2j+1] = cos(z / p^(2j/d))`` for real-valued z."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=z.device, dtype=torch.float32) / half
    )
    angles = z.float().unsqueeze(-1) * freqs
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return pe


class ZoneCompressorConfig(CompressorSettings):
    """Hyper-parameters of :class:`ZoneCompressor` (paper: d=1024, K=32, 16 heads, 1 global layer):
    the compressor settings a run's ``bridge`` section holds (:class:`~graftkit.config.CompressorSettings`,
    one definition) plus the input width and module-only options."""

    dim: int = Field(gt=0, description="slice-embedding width d_v (even)")
    ff_mult: int = Field(4, gt=0, description="feed-forward width of the global layers, × dim")
    max_period: float = Field(10000.0, gt=1, description="longest PE period in mm (÷ 2π)")
    relative_z: bool = Field(
        True,
        description="encode z relative to each volume's first valid slice (scanner origin free)",
    )

    @model_validator(mode="after")
    def _check(self) -> ZoneCompressorConfig:
        if self.dim % 2:
            raise ValueError(f"dim={self.dim} must be even for the sinusoidal z encoding")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        return self


SliceInput = Tensor | Sequence[Tensor]


class ZoneCompressor(nn.Module):
    """N slice embeddings -> K region tokens by zone-constrained cross-attention (docs/design.md).

    ``forward(slices, z_mm=None, mask=None)``:
      - ``slices``: ``[B, N, d]`` (padded), ``[N, d]`` (one volume) or a list of ``[N_b, d]``;
      - ``z_mm``: ``[B, N]`` physical z positions in mm (``None``: the slice index);
      - ``mask``: ``[B, N]`` bool, True for valid slices (``None``: all valid, or from list lengths).
    Returns ``[B, K, d]``. Invalid input (NaN/Inf in a valid slice, wrong width, an item with no
    slice) raises a ``ValueError`` naming the batch item.
    """

    def __init__(self, dim: int, **options: Any) -> None:
        """``options``: any field of :class:`ZoneCompressorConfig` (``num_zones``, ``num_heads``,
        ``dropout``, ``max_period``, ...); the defaults are that config's, defined once."""
        super().__init__()
        self.config = config = ZoneCompressorConfig(dim=dim, **options)
        num_zones, num_heads, num_global_layers = (
            config.num_zones,
            config.num_heads,
            config.num_global_layers,
        )
        dropout, ff_mult, slice_norm = config.dropout, config.ff_mult, config.slice_norm
        self.dim, self.num_zones, self.num_heads = dim, num_zones, num_heads
        self.queries = nn.Parameter(torch.randn(num_zones, dim) * dim**-0.5)
        # Per-dimension standardisation of the frozen encoder's embeddings (identity until
        # fit_input_stats): they are strongly anisotropic, and a shared dominant direction
        # slows the learning of the small, localised finding directions.
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_scale", torch.ones(dim))
        self.norm_slices = nn.LayerNorm(dim) if slice_norm else nn.Identity()
        self.norm_queries = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.global_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                num_heads,
                dim_feedforward=ff_mult * dim,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
                activation="gelu",
            )
            for _ in range(num_global_layers)
        )
        self.norm_out = nn.LayerNorm(dim)

    @classmethod
    def from_config(cls, config: ZoneCompressorConfig) -> ZoneCompressor:
        return cls(**config.model_dump())

    # -- input handling ---------------------------------------------------------------------
    def _batch(
        self, slices: SliceInput, z_mm: Tensor | Sequence[Tensor] | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        if isinstance(slices, Tensor):
            if slices.dim() == 2:
                slices = slices.unsqueeze(0)
                z_mm = z_mm.unsqueeze(0) if isinstance(z_mm, Tensor) and z_mm.dim() == 1 else z_mm
                mask = mask.unsqueeze(0) if mask is not None and mask.dim() == 1 else mask
            if slices.dim() != 3:
                raise ValueError(
                    f"ZoneCompressor: slices must be [B, N, d], [N, d] or a list of [N_b, d]; "
                    f"got shape {tuple(slices.shape)}"
                )
            if slices.shape[-1] != self.dim:
                raise ValueError(
                    f"ZoneCompressor: slices have width d={slices.shape[-1]} in every batch item "
                    f"(item 0 onwards), expected dim={self.dim}"
                )
            b, n, _ = slices.shape
            if mask is None:
                mask = torch.ones(b, n, dtype=torch.bool, device=slices.device)
            elif mask.shape != (b, n):
                raise ValueError(
                    f"ZoneCompressor: mask has shape {tuple(mask.shape)}, expected {(b, n)}"
                )
            if isinstance(z_mm, Tensor) and z_mm.shape != (b, n):
                raise ValueError(
                    f"ZoneCompressor: z_mm has shape {tuple(z_mm.shape)}, expected {(b, n)}"
                )
            return slices, z_mm, mask.bool()
        items = list(slices)
        if not items:
            raise ValueError("ZoneCompressor: empty list of slice tensors")
        if mask is not None:
            raise ValueError("ZoneCompressor: pass mask only with a padded [B, N, d] tensor")
        for b, item in enumerate(items):
            if item.dim() != 2 or item.shape[-1] != self.dim:
                raise ValueError(
                    f"ZoneCompressor: batch item {b} has shape {tuple(item.shape)}, expected [N, {self.dim}]"
                )
        lengths = [item.shape[0] for item in items]
        padded = nn.utils.rnn.pad_sequence(items, batch_first=True)
        mask = torch.arange(padded.shape[1], device=padded.device) < torch.tensor(
            lengths, device=padded.device
        ).unsqueeze(1)
        if z_mm is not None:
            z_list = list(z_mm)
            if len(z_list) != len(items):
                raise ValueError(
                    f"ZoneCompressor: {len(z_list)} z_mm entries for {len(items)} items"
                )
            for b, (z, n) in enumerate(zip(z_list, lengths)):
                if z.shape != (n,):
                    raise ValueError(
                        f"ZoneCompressor: z_mm of batch item {b} has shape {tuple(z.shape)}, expected ({n},)"
                    )
            z_mm = nn.utils.rnn.pad_sequence(z_list, batch_first=True)
        return padded, z_mm, mask

    def _validate(self, slices: Tensor, z_mm: Tensor | None, mask: Tensor) -> None:
        counts = mask.sum(dim=1)
        if bool((counts == 0).any()):
            b = int((counts == 0).nonzero()[0, 0])
            raise ValueError(f"ZoneCompressor: batch item {b} has no valid slice (n = 0)")
        bad = ~torch.isfinite(slices).all(dim=-1) & mask
        if z_mm is not None:
            bad = bad | (~torch.isfinite(z_mm) & mask)
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"ZoneCompressor: batch item {b} has NaN/Inf at slice {i} "
                f"({int(bad[b].sum())} bad slice(s) in that item)"
            )

    def positions(self, z_mm: Tensor | None, mask: Tensor) -> Tensor:
        """Per-slice z (mm) fed to the sinusoidal encoding; slice rank when ``z_mm`` is None."""
        if z_mm is None:
            return (mask.long().cumsum(dim=1) - 1).clamp(min=0).float()
        z = torch.where(mask, z_mm.float(), torch.zeros((), device=mask.device))
        if self.config.relative_z:
            first = mask.long().argmax(dim=1, keepdim=True)
            z = z - z.gather(1, first)
        return z

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        slices: SliceInput,
        z_mm: Tensor | Sequence[Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        slices, z_mm, mask = self._batch(slices, z_mm, mask)
        self._validate(slices, z_mm, mask)
        b, n, d = slices.shape
        h, hd = self.num_heads, d // self.num_heads
        # only valid slices are encoded and projected (padding may hold anything, even NaN, and
        # costs no projection FLOPs); their K/V are then laid out on the padded grid
        dense = bool(mask.all())
        pos = self.positions(z_mm, mask)
        x, pos = (slices.reshape(b * n, d), pos.reshape(-1)) if dense else (slices[mask], pos[mask])
        pe = self.config.position_scale * sinusoidal_position_encoding(
            pos, d, self.config.max_period
        )
        kv = self.kv_proj(self.norm_slices(self.standardize(x) + pe.to(x.dtype)))
        if not dense:
            kv = kv.new_zeros(b, n, 2 * d).masked_scatter(mask.unsqueeze(-1), kv)
        k, v = kv.view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4)  # 2 × [B, H, N, hd]
        q = (
            self.q_proj(self.norm_queries(self.queries))
            .view(1, self.num_zones, h, hd)
            .transpose(1, 2)
        )
        allowed = zone_mask(mask, self.num_zones).unsqueeze(1)  # [B, 1, K, N]
        drop = self.config.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(
            q.expand(b, -1, -1, -1), k, v, attn_mask=allowed, dropout_p=drop
        )
        tokens = self.out_proj(attn.transpose(1, 2).reshape(b, self.num_zones, d))
        if self.config.query_residual:
            tokens = self.queries + tokens
        for layer in self.global_layers:
            tokens = layer(tokens)
        return self.norm_out(tokens)

    # -- initialisation ----------------------------------------------------------------------
    def standardize(self, x: Tensor) -> Tensor:
        """``(s - μ) / σ`` per dimension with the statistics of :meth:`fit_input_stats`."""
        return (x - self.input_mean.to(x.dtype)) * self.input_scale.to(x.dtype)

    @torch.no_grad()
    def fit_input_stats(self, slices: Tensor, mask: Tensor | None = None) -> None:
        """Set the input standardisation from real slice embeddings ``[M, d]`` or ``[B, N, d]``."""
        flat = (
            slices[mask.bool()]
            if (slices.dim() == 3 and mask is not None)
            else slices.reshape(-1, slices.shape[-1])
        )
        if flat.shape[-1] != self.dim or flat.shape[0] < 2:
            raise ValueError(
                f"fit_input_stats: need [M >= 2, {self.dim}] slices, got {tuple(flat.shape)}"
            )
        flat = flat.double()
        self.input_mean.copy_(flat.mean(0).to(self.input_mean.dtype))
        self.input_scale.copy_((1.0 / flat.std(0).clamp_min(1e-6)).to(self.input_scale.dtype))

    @torch.no_grad()
    def init_queries_from(
        self, slices: Tensor, mask: Tensor | None = None, fit_stats: bool = True
    ) -> Tensor:
        """Initialise the K region queries from an SVD of real slice embeddings (docs/design.md).

        ``slices`` is ``[M, d]`` or ``[B, N, d]`` (with optional ``mask[B, N]``). Query k becomes
        ``mean + σ_k/√M · u_k`` — the data mean moved one standard deviation along the k-th
        principal direction — so the queries start spread over the directions the encoder uses.
        With ``fit_stats`` the input standardisation is fitted first and the SVD is taken of the
        standardised slices (the space the queries attend in).
        If fewer than K directions exist, the remaining queries are the mean plus small noise.
        Returns the new queries.
        """
        if slices.dim() == 3:
            flat = slices[mask.bool()] if mask is not None else slices.reshape(-1, slices.shape[-1])
        elif slices.dim() == 2:
            flat = slices
        else:
            raise ValueError(
                f"init_queries_from: expected [M, d] or [B, N, d], got {tuple(slices.shape)}"
            )
        if flat.shape[-1] != self.dim:
            raise ValueError(
                f"init_queries_from: slices have width {flat.shape[-1]}, expected {self.dim}"
            )
        if flat.shape[0] < 2:
            raise ValueError(
                f"init_queries_from: need at least 2 slice embeddings, got {flat.shape[0]}"
            )
        flat = flat.double()
        if not bool(torch.isfinite(flat).all()):
            row = int((~torch.isfinite(flat).all(dim=-1)).nonzero()[0, 0])
            raise ValueError(f"init_queries_from: slice embedding row {row} has NaN/Inf")
        if fit_stats:
            self.fit_input_stats(flat)
        flat = self.standardize(flat)
        mean = flat.mean(dim=0)
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        r = min(self.num_zones, int((s > s[0] * 1e-6).sum()) if s.numel() else 0)
        std = s[:r] / math.sqrt(flat.shape[0])
        queries = mean.expand(self.num_zones, -1).clone()
        queries[:r] += std.unsqueeze(1) * vh[:r]
        if r < self.num_zones:
            scale = (s[0] / math.sqrt(flat.shape[0])).item() if r else 1.0
            queries[r:] += (
                0.1
                * scale
                * torch.randn(
                    self.num_zones - r, self.dim, dtype=queries.dtype, device=queries.device
                )
                / math.sqrt(self.dim)
            )
        self.queries.copy_(queries.to(self.queries.dtype))
        return self.queries.detach().clone()


def zone_loop_reference(
    compressor: ZoneCompressor,
    slices: Tensor,
    z_mm: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Brute-force :class:`ZoneCompressor` forward: Python loops over batch items and zones.

    Uses the compressor's own weights; the benchmark's "per-zone loop" and the tests' reference.
    """
    slices, z_mm, mask = compressor._batch(slices, z_mm, mask)
    compressor._validate(slices, z_mm, mask)
    d, h = compressor.dim, compressor.num_heads
    hd = d // h
    pos = compressor.positions(z_mm, mask)
    q_all = compressor.q_proj(compressor.norm_queries(compressor.queries))
    out = []
    for b in range(slices.shape[0]):
        valid = mask[b].nonzero().squeeze(1)
        s = compressor.standardize(slices[b, valid])
        pe = sinusoidal_position_encoding(pos[b, valid], d, compressor.config.max_period)
        x = compressor.norm_slices(s + compressor.config.position_scale * pe)
        tokens = []
        for k, (start, end) in enumerate(zone_bounds(int(valid.numel()), compressor.num_zones)):
            kz, vz = (
                compressor.kv_proj(x[start:end]).view(end - start, 2, h, hd).permute(1, 2, 0, 3)
            )
            qz = q_all[k].view(h, 1, hd)
            weights = torch.softmax(qz @ kz.transpose(-1, -2) / math.sqrt(hd), dim=-1)
            tokens.append((weights @ vz).reshape(d))
        zone_tokens = compressor.out_proj(torch.stack(tokens))
        out.append(
            compressor.queries + zone_tokens if compressor.config.query_residual else zone_tokens
        )
    result = torch.stack(out)
    for layer in compressor.global_layers:
        result = layer(result)
    return compressor.norm_out(result)
