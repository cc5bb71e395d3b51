"""Predictor and norm calibration: region tokens (d_v) -> LLM-embedding-space tokens (d_l).

docs/design.md, data flow: ``V ──Predictor (Dropout→Linear→LayerNorm) ──NormCalibrator (α =
‖e_text‖/‖V̂‖)──▶ Ṽ``. The calibrator puts the visual tokens at the norm of the LLM's own text
embeddings so that, grafted into ``inputs_embeds``, they are neither drowned out nor dominant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NormCalibrator", "Predictor", "mean_norm"]


def mean_norm(x: Tensor) -> Tensor:
    """Mean L2 norm of the last-dimension vectors of ``x``."""
    return x.detach().float().norm(dim=-1).mean()


def _principal_directions(x: Tensor, r: int) -> Tensor:
    """Top-``r`` principal directions (rows, orthonormal) of the rows of ``x``."""
    x = x.detach().double()
    _, _, vh = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False)
    return vh[:r]


class Predictor(nn.Module):
    """``Dropout → Linear(d_v, d_l) → LayerNorm(d_l)`` (docs/design.md data flow)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"Predictor: dropout={dropout} must be in [0, 1)")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, zones: Tensor) -> Tensor:
        if zones.shape[-1] != self.in_dim:
            raise ValueError(
                f"Predictor: input width {zones.shape[-1]}, expected d_v={self.in_dim}"
            )
        return self.norm(self.linear(self.dropout(zones)))

    @torch.no_grad()
    def init_from_text_embeddings(
        self, text_embeddings: Tensor, visual: Tensor | None = None
    ) -> None:
        """SVD initialisation: map visual principal directions onto text principal directions.

        ``text_embeddings`` ``[V, d_l]`` (e.g. the LLM's input-embedding matrix) gives the top
        ``r = min(d_v, d_l)`` text principal components ``P_t``; ``visual`` ``[M, d_v]`` (optional
        region tokens or slice embeddings) gives ``P_v`` (the identity's first r rows if absent).
        The weight becomes ``P_tᵀ P_v`` (visual component i -> text component i) with zero bias,
        and the LayerNorm's affine is set to the text embeddings' per-feature std and mean.
        """
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.out_dim:
            raise ValueError(
                f"Predictor.init_from_text_embeddings: text_embeddings shape {tuple(text_embeddings.shape)}, "
                f"expected [V, {self.out_dim}]"
            )
        r = min(self.in_dim, self.out_dim, text_embeddings.shape[0] - 1)
        p_text = _principal_directions(text_embeddings, r)  # [r, d_l]
        if visual is not None:
            visual = visual.reshape(-1, visual.shape[-1])
            if visual.shape[1] != self.in_dim:
                raise ValueError(
                    f"Predictor.init_from_text_embeddings: visual width {visual.shape[1]}, expected {self.in_dim}"
                )
            r = min(r, visual.shape[0] - 1)
            p_text, p_vis = p_text[:r], _principal_directions(visual, r)
        else:
            p_vis = torch.eye(self.in_dim, dtype=torch.float64)[:r]
        self.linear.weight.copy_((p_text.T @ p_vis).to(self.linear.weight.dtype))
        self.linear.bias.zero_()
        text = text_embeddings.detach().float()
        self.norm.weight.copy_(text.std(dim=0).to(self.norm.weight.dtype))
        self.norm.bias.copy_(text.mean(dim=0).to(self.norm.bias.dtype))


class NormCalibrator(nn.Module):
    """``Ṽ = α · V̂`` with a learned scalar ``α`` (docs/design.md: ``α = ‖e_text‖ / ‖V̂‖``).

    ``recalibrate(text, visual_tokens)`` resets ``α`` to the mean text-embedding norm over the mean
    norm of the (uncalibrated) predictor outputs, so calibrated tokens have the text norm; between
    recalibrations ``α`` trains like any parameter. ``target_norm`` keeps the text norm used.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("target_norm", torch.tensor(float("nan")))

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens * self.alpha.to(tokens.dtype)

    @torch.no_grad()
    def recalibrate(self, text: Tensor | float, visual_tokens: Tensor) -> float:
        """Set ``α = mean‖e_text‖ / mean‖V̂‖`` and return it.

        ``text`` is a text-embedding matrix ``[V, d_l]`` (mean row norm is used) or the mean text
        norm itself (float / 0-d tensor); ``visual_tokens`` ``[..., d_l]`` are predictor outputs
        *before* calibration.
        """
        if isinstance(text, Tensor) and text.dim() >= 1:
            text_norm = mean_norm(text)
        else:
            text_norm = torch.as_tensor(float(text))
        visual_norm = mean_norm(visual_tokens)
        if not torch.isfinite(text_norm) or text_norm <= 0:
            raise ValueError(
                f"NormCalibrator.recalibrate: text norm {float(text_norm)} must be finite and > 0"
            )
        if not torch.isfinite(visual_norm) or visual_norm <= 0:
            raise ValueError(
                f"NormCalibrator.recalibrate: visual token norm {float(visual_norm)} must be finite and > 0"
            )
        alpha = float(text_norm / visual_norm)
        self.alpha.fill_(alpha)
        self.target_norm.fill_(float(text_norm))
        return alpha
