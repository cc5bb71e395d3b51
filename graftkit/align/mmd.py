"""Maximum mean discrepancy with the inverse multi-quadric kernel (docs/design.md, "Four-phase curriculum").

Phases 1 and 2 pull each sample's K visual tokens (in the whitened text space) towards the
embeddings of that sample's positive-condition texts:

    k(x, y) = (1 + α ||x - y||²)^(-1/2),      α = 4γ / (2D - 3)      (γ = 5, D = 256: α ≈ 0.0393)

Estimator: the biased V-statistic of MMD² by default, per sample b with tokens x_1..x_K and its
m_b positive texts y_1..y_m:

    MMD²_b = 1/K² Σ_{i,i'} k(x_i, x_i') + 1/m² Σ_{j,j'} k(y_j, y_j') - 2/(K m) Σ_{i,j} k(x_i, y_j)

It is defined for m_b = 1 (the common case: one positive condition) and never negative, because
the IMQ kernel is positive definite. ``estimator="unbiased"`` gives the U-statistic instead
(diagonal terms dropped: 1/(K(K-1)) Σ_{i≠i'} and 1/(m(m-1)) Σ_{j≠j'}), which needs K, m_b >= 2.
The loss is the mean of MMD²_b over the samples that have a term (m_b >= 1, or >= 2 for the
U-statistic); normal volumes (m_b = 0) contribute nothing. With no such sample the loss is an
exact 0 that is still attached to the graph of ``x`` and ``y``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["biased", "unbiased"]


def imq_alpha(gamma: float = 5.0, dim: int = 256) -> float:
    """α = 4γ / (2D - 3), the IMQ kernel scale for embeddings of dimension D."""
    if gamma <= 0:
        raise ValueError(f"imq_alpha: gamma must be > 0, got {gamma}")
    if dim < 2:
        raise ValueError(f"imq_alpha: dim must be >= 2 so that 2D - 3 > 0, got {dim}")
    return 4.0 * gamma / (2.0 * dim - 3.0)


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """||a_p - b_q||² for ``a[B,P,D]``, ``b[B,Q,D]`` -> ``[B,P,Q]`` without a [B,P,Q,D] tensor."""
    a_sq = (a * a).sum(dim=-1)
    b_sq = (b * b).sum(dim=-1)
    cross = a @ b.transpose(1, 2)
    return (a_sq[:, :, None] + b_sq[:, None, :] - 2.0 * cross).clamp_min(0.0)


def imq_kernel(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """k(a_p, b_q) = (1 + α ||a_p - b_q||²)^(-1/2) for ``a[B,P,D]``, ``b[B,Q,D]`` -> ``[B,P,Q]``."""
    return torch.rsqrt(1.0 + alpha * _squared_distances(a, b))


def mmd_imq(
    x: Tensor,
    y: Tensor,
    y_mask: Tensor,
    alpha: float | None = None,
    estimator: Estimator = "biased",
) -> Tensor:
    """Mean per-sample MMD² between visual tokens and positive-condition text embeddings.

    Args:
        x: ``[B, K, D]`` visual tokens.
        y: ``[B, M, D]`` text embeddings, padded to M per batch; padded rows may hold anything.
        y_mask: ``[B, M]`` bool, True for the real positive-condition texts of each sample.
        alpha: IMQ scale; ``None`` uses :func:`imq_alpha` (γ = 5) for this D.
        estimator: ``"biased"`` (V-statistic, default) or ``"unbiased"`` (U-statistic).

    Returns:
        A scalar: Σ_b valid_b · MMD²_b / max(Σ_b valid_b, 1) (see the module docstring).
    """
    if x.ndim != 3:
        raise ValueError(f"mmd_imq: x must be [B, K, D] visual tokens, got shape {tuple(x.shape)}")
    if y.ndim != 3:
        raise ValueError(
            f"mmd_imq: y must be [B, M, D] text embeddings, got shape {tuple(y.shape)}"
        )
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2]:
        raise ValueError(
            f"mmd_imq: x {tuple(x.shape)} and y {tuple(y.shape)} must share B (dim 0) and D (dim 2)"
        )
    if y_mask.shape != y.shape[:2]:
        raise ValueError(
            f"mmd_imq: y_mask must be [B, M] = {tuple(y.shape[:2])}, got {tuple(y_mask.shape)}"
        )
    if y_mask.dtype != torch.bool:
        raise ValueError(f"mmd_imq: y_mask must be a bool tensor, got {y_mask.dtype}")
    if estimator not in ("biased", "unbiased"):
        raise ValueError(f"mmd_imq: estimator must be 'biased' or 'unbiased', got {estimator!r}")
    if alpha is None:
        alpha = imq_alpha(5.0, x.shape[2])
    if alpha <= 0:
        raise ValueError(f"mmd_imq: alpha must be > 0, got {alpha}")

    # An empty sum keeps the result attached to the graph of x and y without touching values.
    zero = x.reshape(-1)[:0].sum() + y.reshape(-1)[:0].sum()
    batch, tokens = x.shape[0], x.shape[1]
    if batch == 0 or tokens == 0:
        return zero

    y = torch.where(y_mask[..., None], y, torch.zeros_like(y))
    weight = y_mask.to(x.dtype)  # [B, M]
    count = weight.sum(dim=1)  # m_b
    k_xx = imq_kernel(x, x, alpha)
    k_yy = imq_kernel(y, y, alpha)
    k_xy = imq_kernel(x, y, alpha)

    pair_weight = weight[:, :, None] * weight[:, None, :]
    xy = (k_xy.sum(dim=1) * weight).sum(dim=1) / (tokens * count.clamp_min(1))
    if estimator == "biased":
        xx = k_xx.mean(dim=(1, 2))
        yy = (k_yy * pair_weight).sum(dim=(1, 2)) / count.clamp_min(1) ** 2
        valid = count >= 1
    else:
        xx_diag = torch.diagonal(k_xx, dim1=1, dim2=2).sum(dim=1)
        xx = (k_xx.sum(dim=(1, 2)) - xx_diag) / max(tokens * (tokens - 1), 1)
        yy_diag = (torch.diagonal(k_yy, dim1=1, dim2=2) * weight).sum(dim=1)
        yy_pairs = (count * (count - 1)).clamp_min(1)
        yy = ((k_yy * pair_weight).sum(dim=(1, 2)) - yy_diag) / yy_pairs
        valid = (count >= 2) & (tokens >= 2)

    per_sample = torch.where(valid, xx + yy - 2.0 * xy, torch.zeros_like(xx))
    n_valid = valid.sum().clamp_min(1).to(per_sample.dtype)
    return per_sample.sum() / n_valid + zero
