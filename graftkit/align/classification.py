"""Classification-side losses of the curriculum (docs/design.md, "Four-phase curriculum").

Phase 1: 1.5·BCE(pos_weight) + 1.0·MIL + 1.0·orthogonality (+ 0.5·MMD); phases 3-4: focal loss.
Every loss here is a scalar that is finite for a batch of one, for all-normal batches (all targets
0) and for an empty batch (an exact 0 attached to the graph of its inputs).

Notation: z ∈ R^{n×C} logits, y ∈ {0,1}^{n×C} (soft targets in [0, 1] are accepted), σ the sigmoid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]


def _empty_like_loss(*tensors: Tensor) -> Tensor:
    out = tensors[0].reshape(-1)[:0].sum()
    for tensor in tensors[1:]:
        if tensor.is_floating_point():
            out = out + tensor.reshape(-1)[:0].sum()
    return out


def _check_pair(name: str, logits: Tensor, targets: Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")


def _reduce(loss: Tensor, reduction: Reduction, name: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017), elementwise over ``[..., C]`` then reduced:

        p_t = σ(z)·y + (1 - σ(z))·(1 - y)
        FL  = -α_t (1 - p_t)^γ log p_t,      α_t = α·y + (1 - α)·(1 - y)   (α_t = 1 when α is None)

    ``-log p_t`` is computed as ``binary_cross_entropy_with_logits`` (stable for large |z|).
    ``alpha`` may be a float or a per-class tensor broadcastable to the logits. γ = 0, α = None
    is plain BCE.
    """
    _check_pair("focal_loss", logits, targets)
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    if logits.numel() == 0 and reduction != "none":
        return _empty_like_loss(logits, targets)
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma) if gamma != 0 else ce
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        loss = (alpha_t * targets + (1 - alpha_t) * (1 - targets)) * loss
    return _reduce(loss, reduction, "focal_loss")


def positive_weights(labels: Tensor | np.ndarray, max_weight: float = 10.0) -> Tensor:
    """Per-class BCE positive weights w_c = min(n_neg,c / n_pos,c, max_weight) from training labels.

    ``labels`` is ``[n, C]`` 0/1. A class with no positive gets ``max_weight``. Returns float32 [C].
    """
    y = torch.as_tensor(labels)
    if y.ndim != 2:
        raise ValueError(f"positive_weights: labels must be [n, C], got shape {tuple(y.shape)}")
    y = y.double()
    if not torch.all((y == 0) | (y == 1)):
        bad = ((y != 0) & (y != 1)).nonzero()[0].tolist()
        raise ValueError(
            f"positive_weights: labels must be 0/1, row {bad[0]} column {bad[1]} is not"
        )
    if max_weight <= 0:
        raise ValueError(f"positive_weights: max_weight must be > 0, got {max_weight}")
    n_pos = y.sum(dim=0)
    n_neg = y.shape[0] - n_pos
    ratio = n_neg / n_pos.clamp_min(1)
    weights = torch.where(
        n_pos > 0, ratio.clamp_max(max_weight), torch.full_like(ratio, max_weight)
    )
    return weights.float()


def weighted_bce(
    logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """BCE with per-class positive weights, averaged over all n·C entries:

        ℓ_{ic} = -[ w_c y_{ic} log σ(z_{ic}) + (1 - y_{ic}) log(1 - σ(z_{ic})) ]

    ``pos_weight`` is ``[C]`` (see :func:`positive_weights`); ``None`` means w_c = 1.
    """
    _check_pair("weighted_bce", logits, targets)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
        if pos_weight.shape != logits.shape[-1:]:
            raise ValueError(
                f"weighted_bce: pos_weight must be [C] = [{logits.shape[-1]}], got {tuple(pos_weight.shape)}"
            )
    if logits.numel() == 0 and reduction != "none":
        return _empty_like_loss(logits, targets)
    return F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), pos_weight=pos_weight, reduction=reduction
    )


def mil_pool(token_logits: Tensor) -> Tensor:
    """Multiple-instance max-pool: bag logit z_{bc} = max_k z_{bkc} over the K tokens ``[B, K, C]``."""
    if token_logits.ndim != 3:
        raise ValueError(
            f"mil_pool: token logits must be [B, K, C], got shape {tuple(token_logits.shape)}"
        )
    if token_logits.shape[1] == 0:
        raise ValueError("mil_pool: token logits have K = 0 tokens")
    return token_logits.amax(dim=1)


def mil_loss(
    logits: Tensor,
    targets: Tensor,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Max-pool multiple-instance loss: a volume is positive for class c if any token is.

    ``logits`` is either ``[B, K, C]`` per-token logits (the classifier applied to each token),
    pooled here as z_{bc} = max_k z_{bkc}, or ``[B, C]`` bag logits already pooled (e.g. the
    classifier applied to the max-pooled tokens, max_k V_{bk}). The loss is then
    :func:`weighted_bce` of the bag logits against the volume labels ``targets[B, C]``.
    Gradient reaches only the arg-max token of each (sample, class).
    """
    if logits.ndim == 3:
        if logits.shape[0] == 0 or logits.shape[1] == 0:
            return _empty_like_loss(logits, targets)
        logits = mil_pool(logits)
    elif logits.ndim != 2:
        raise ValueError(
            f"mil_loss: logits must be [B, K, C] or [B, C], got shape {tuple(logits.shape)}"
        )
    _check_pair("mil_loss", logits, targets)
    return weighted_bce(logits, targets, pos_weight, reduction)


def orthogonality_loss(tokens: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean squared off-diagonal cosine between the K tokens of each sample:

        L_orth = 1/B Σ_b 1/(K(K-1)) Σ_{i≠j} cos(v_{bi}, v_{bj})²,     tokens ``[B, K, D]``

    0 when every sample's tokens are mutually orthogonal, 1 when they are all parallel; it pushes
    the K zone tokens to carry different information. K = 1 gives 0 (no pair).
    """
    if tokens.ndim != 3:
        raise ValueError(
            f"orthogonality_loss: tokens must be [B, K, D], got shape {tuple(tokens.shape)}"
        )
    batch, k = tokens.shape[0], tokens.shape[1]
    if batch == 0 or k < 2:
        return _empty_like_loss(tokens)
    unit = F.normalize(tokens, dim=-1, eps=eps)
    gram = unit @ unit.transpose(1, 2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=tokens.device)
    return gram.pow(2)[:, off_diagonal].mean()
