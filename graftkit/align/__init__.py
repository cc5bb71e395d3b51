"""Alignment math of the four-phase curriculum (docs/design.md, "Four-phase curriculum").

Transforms and losses usable on their own::

    from graftkit.align import PCAWhitening, mmd_imq, InfoNCE, focal_loss, EWC

Each docstring states the equation it implements; ``docs/align.md`` collects them.
"""

from graftkit.align import anisotropy
from graftkit.align.anisotropy import discriminability, mean_pairwise_cosine, variance_retained
from graftkit.align.classification import (
    focal_loss,
    mil_loss,
    mil_pool,
    orthogonality_loss,
    positive_weights,
    weighted_bce,
)
from graftkit.align.contrastive import InfoNCE, InfoNCEConfig, info_nce
from graftkit.align.ewc import EWC, estimate_fisher
from graftkit.align.mmd import imq_alpha, imq_kernel, mmd_imq
from graftkit.align.whitening import PCAWhitening, PCAWhiteningConfig

__all__ = [
    "EWC",
    "InfoNCE",
    "InfoNCEConfig",
    "PCAWhitening",
    "PCAWhiteningConfig",
    "anisotropy",
    "discriminability",
    "estimate_fisher",
    "focal_loss",
    "imq_alpha",
    "imq_kernel",
    "info_nce",
    "mean_pairwise_cosine",
    "mil_loss",
    "mil_pool",
    "mmd_imq",
    "orthogonality_loss",
    "positive_weights",
    "variance_retained",
    "weighted_bce",
]
