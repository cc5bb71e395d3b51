"""InfoNCE with a learned temperature and negatives gathered across processes (phase 2).

For L2-normalised pairs (a_i, b_i), i = 1..N over the global batch (N = W·B on W processes), and
logit scale s = exp(t) = 1/τ:

    L_{a→b} = -1/N Σ_i log( exp(s a_i·b_i) / Σ_j exp(s a_i·b_j) )
    L       = (L_{a→b} + L_{b→a}) / 2          (symmetric)   or   L_{a→b}

Each process computes the rows of its own B samples against the columns of all N samples; the
columns come from ``torch.distributed.nn.functional.all_gather``, whose backward sums the column
gradients of every process into the owner. With data-parallel gradient averaging this gives
exactly the gradient of the single-process loss over the concatenated batch (paper: 64 per GPU on
8 GPUs = 512 effective). ``accelerate``'s ``gather`` would silently drop the column gradients.

The temperature follows CLIP: a learned log-scale t initialised to log(1/τ_0) (τ_0 = 0.10) and
kept in [log(1/τ_max), log(1/τ_min)]; the projection is applied to the parameter at the start of
each forward (CLIP clamps after each optimiser step), so the loss never sees an out-of-range τ.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn


class InfoNCEConfig(BaseModel):
    """Options of :class:`InfoNCE` (paper: τ_0 = 0.10, symmetric, gathered negatives)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init_temperature: float = Field(0.1, gt=0)
    min_temperature: float = Field(0.01, gt=0)
    max_temperature: float = Field(1.0, gt=0)
    symmetric: bool = True
    gather: bool = Field(True, description="gather negatives from all processes when distributed")

    @model_validator(mode="after")
    def _ordered(self) -> InfoNCEConfig:
        if not self.min_temperature <= self.init_temperature <= self.max_temperature:
            raise ValueError(
                "InfoNCE temperatures must satisfy min_temperature <= init_temperature <= "
                f"max_temperature, got {self.min_temperature} <= {self.init_temperature} <= "
                f"{self.max_temperature}"
            )
        return self


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _batch_sizes(batch: int, device: torch.device, group: dist.ProcessGroup | None) -> list[int]:
    world, _ = _world(group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([batch], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in sizes]


def _gather_rows(x: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> Tensor:
    """Every process's rows of ``x``, in rank order. Processes with fewer rows than the largest
    (a volume skipped at load) are padded for the collective and the padding dropped again."""
    from torch.distributed.nn.functional import all_gather

    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    # torch 2.13 flags this autograd all-gather as deprecated in favour of a private API; it is
    # still the public differentiable collective whose backward sums gradients into the owner.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*all_gather is deprecated", category=FutureWarning
        )
        parts = all_gather(x, group=group)
    if len(set(sizes)) > 1:
        parts = [part[:n] for part, n in zip(parts, sizes, strict=True)]
    return torch.cat(parts, dim=0)


def info_nce(
    a: Tensor,
    b: Tensor,
    logit_scale: Tensor,
    symmetric: bool = True,
    gather: bool = True,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, int]:
    """Functional InfoNCE (module docstring equation); returns ``(loss, effective_batch_size)``.

    ``a``, ``b`` are ``[B, D]`` (normalised here); ``logit_scale`` is the scalar t with s = exp(t),
    used as given (no clamping). The positive of local row i is global column o + i, where o is
    the number of rows of the lower ranks. Processes may pass different B (a volume skipped at
    load): each row then weighs W/N, so the mean over processes is still the global mean.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"InfoNCE: a and b must both be [B, D] with the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if logit_scale.numel() != 1:
        raise ValueError(
            f"InfoNCE: logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}"
        )
    batch = a.shape[0]
    world, rank = _world(group) if gather else (1, 0)
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if world > 1:
        sizes = _batch_sizes(batch, a.device, group)
        all_a, all_b = _gather_rows(a, sizes, group), _gather_rows(b, sizes, group)
    else:
        sizes, all_a, all_b = [batch], a, b
    total = sum(sizes)
    if total == 0:  # no pair anywhere: a zero loss that still reaches every input
        return a.sum() + b.sum() + 0 * logit_scale.reshape(()), 0
    # equal batches: the mean over processes of the per-process means is the global mean;
    # unequal ones (a volume skipped at load) weight every row W/N, which keeps it exact
    reduction = "mean" if len(set(sizes)) == 1 else "sum"
    scale = logit_scale.reshape(()).exp()
    targets = torch.arange(batch, device=a.device) + sum(sizes[:rank])
    loss = F.cross_entropy(scale * (a @ all_b.T), targets, reduction=reduction)
    if symmetric:
        loss = (loss + F.cross_entropy(scale * (b @ all_a.T), targets, reduction=reduction)) / 2
    if reduction == "sum":
        loss = loss * world / total
    return loss, total


class InfoNCE(nn.Module):
    """Symmetric InfoNCE with a learned CLIP-style temperature (module docstring equation).

    ``forward(a[B, D], b[B, D])`` returns the scalar loss of this process's rows. After each
    forward, ``effective_batch_size`` holds the number of candidates per row (W·B when negatives
    were gathered from W processes) for logging.
    """

    def __init__(
        self,
        init_temperature: float = 0.1,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        symmetric: bool = True,
        gather: bool = True,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.config = InfoNCEConfig(
            init_temperature=init_temperature,
            min_temperature=min_temperature,
            max_temperature=max_temperature,
            symmetric=symmetric,
            gather=gather,
        )
        self.group = group
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.effective_batch_size = 0

    @property
    def scale_bounds(self) -> tuple[float, float]:
        """(log(1/τ_max), log(1/τ_min)): the allowed range of the log-scale."""
        return math.log(1.0 / self.config.max_temperature), math.log(
            1.0 / self.config.min_temperature
        )

    @property
    def temperature(self) -> float:
        """The temperature τ = exp(-t) the next forward will use."""
        low, high = self.scale_bounds
        return math.exp(-min(max(float(self.logit_scale.detach()), low), high))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the log-scale into its allowed range (CLIP's post-step clamp)."""
        low, high = self.scale_bounds
        self.logit_scale.clamp_(low, high)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        low, high = self.scale_bounds
        if not low <= float(self.logit_scale.detach()) <= high:
            self.clamp_()
        # in eval mode every process scores the same validation volumes: gathering would only
        # repeat each negative once per process and inflate the loss
        gather = self.config.gather and self.training
        loss, self.effective_batch_size = info_nce(
            a, b, self.logit_scale, self.config.symmetric, gather, self.group
        )
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, symmetric={self.config.symmetric}, gather={self.config.gather}"
