"""PCA whitening of text embeddings (docs/design.md, "Data flow": z_t = PCA-whiten(mean-pooled hidden)).

LLM hidden states are strongly anisotropic: one shared direction dominates and two unrelated
reports have cosine ~0.95 (paper: 0.949). Whitening with the top-k principal components

    z = diag(λ_1..k + eps)^(-1/2) · V_kᵀ (x - μ)

removes that shared direction and gives every kept component unit variance, so cosine similarity
reflects content (paper: d' 1.36 -> 16.03 with 97.3 % of the variance kept).

μ and the covariance Σ = 1/(n-1) Σ_i (x_i - μ)(x_i - μ)ᵀ are accumulated batch by batch in float64
with Chan et al.'s pairwise update, so 22,773 x 3,072 embeddings need only the D x D scatter
matrix (75 MB) and never the whole embedding matrix. λ, V are the top-k eigenpairs of Σ in
descending order; each eigenvector's sign is fixed so its largest-magnitude coordinate is positive.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

_FITTED_BUFFERS = ("mean", "components", "explained_variance", "total_variance", "n_samples_seen")


def _top_eigenpairs(symmetric: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest eigenpairs of a symmetric matrix, eigenvalues descending: ([k], [D, k])."""
    dim = symmetric.shape[0]
    if symmetric.device.type == "cpu":
        import scipy.linalg  # deferred: only fitting needs it, and it is slow to import

        # LAPACK syevr on the top-k subset: ~4x faster than a full torch.linalg.eigh at D = 1,536.
        values, vectors = scipy.linalg.eigh(
            symmetric.numpy(), subset_by_index=[dim - k, dim - 1], driver="evr"
        )
        values, vectors = torch.from_numpy(values.copy()), torch.from_numpy(vectors.copy())
    else:
        values, vectors = torch.linalg.eigh(symmetric)
        values, vectors = values[dim - k :], vectors[:, dim - k :]
    return values.flip(0), vectors.flip(1)


class PCAWhiteningConfig(BaseModel):
    """Options of :class:`PCAWhitening` (paper: 256 components)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_components: int = Field(256, gt=0, description="kept principal components k")
    eps: float = Field(1e-6, ge=0, description="added to each eigenvalue before the inverse sqrt")


class PCAWhitening(nn.Module):
    """Streaming PCA whitening ``z = diag(λ + eps)^(-1/2) V_kᵀ (x - μ)``.

    ``fit`` takes an iterable of ``[b, D]`` batches; ``partial_fit`` adds one batch and may be
    called repeatedly (the eigendecomposition is recomputed lazily on the next use). ``k`` is
    clamped to ``min(n_components, D, n - 1)`` (the rank of the sample covariance) with a warning.

    The fitted tensors (``mean``, ``components`` [k, D], ``explained_variance`` [k],
    ``total_variance``, ``n_samples_seen``) are persistent float64 buffers, so the module
    checkpoints through ``state_dict()`` like any other module and ``save``/``load`` write one
    safetensors file. Moving the module (``.to(device)``) moves the buffers but keeps them in
    float64; ``transform`` computes in the dtype of its input.
    """

    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    total_variance: Tensor
    n_samples_seen: Tensor

    def __init__(self, n_components: int = 256, eps: float = 1e-6) -> None:
        super().__init__()
        self.config = PCAWhiteningConfig(n_components=n_components, eps=eps)
        for name in _FITTED_BUFFERS:
            dtype = torch.int64 if name == "n_samples_seen" else torch.float64
            self.register_buffer(name, torch.zeros(0, dtype=dtype))
        self._reset_statistics()

    @property
    def n_components(self) -> int:
        """Requested number of components (see ``n_components_`` for the number kept)."""
        return self.config.n_components

    @property
    def eps(self) -> float:
        return self.config.eps

    # ----------------------------------------------------------------------------- fitting
    def _reset_statistics(self) -> None:
        self._count = 0
        self._sum_mean: Tensor | None = None  # running mean, float64 [D]
        self._scatter: Tensor | None = None  # Σ_i (x_i - μ)(x_i - μ)ᵀ, float64 [D, D]
        self._stale = False

    def fit(self, batches: Iterable[Tensor] | Tensor) -> PCAWhitening:
        """Fit from scratch on an iterable of ``[b, D]`` batches (or one ``[n, D]`` tensor)."""
        if isinstance(batches, Tensor | np.ndarray):
            batches = [batches]
        self._reset_statistics()
        for name in _FITTED_BUFFERS:
            setattr(self, name, getattr(self, name).new_zeros(0))
        for index, batch in enumerate(batches):
            self.partial_fit(batch, _batch_index=index)
        if self._count == 0:
            raise ValueError("PCAWhitening.fit: the batch iterable was empty")
        self._solve()
        return self

    def partial_fit(self, batch: Tensor, *, _batch_index: int | None = None) -> PCAWhitening:
        """Add one ``[b, D]`` batch to the running mean and scatter matrix (float64)."""
        where = "partial_fit batch" if _batch_index is None else f"fit batch {_batch_index}"
        if self._count == 0 and self.is_fitted:
            raise RuntimeError(
                "PCAWhitening.partial_fit: this whitening was loaded from a checkpoint, which holds "
                "the fitted components but not the streaming statistics; call fit() to refit"
            )
        x = torch.as_tensor(batch)
        if x.ndim != 2:
            raise ValueError(f"PCAWhitening: {where} must be [b, D], got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        if self._sum_mean is not None and x.shape[1] != self._sum_mean.shape[0]:
            raise ValueError(
                f"PCAWhitening: {where} has D={x.shape[1]}, earlier batches had D={self._sum_mean.shape[0]}"
            )
        x = x.detach().to(device=self.mean.device, dtype=torch.float64)
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"PCAWhitening: {where} row {bad} holds a NaN or infinite value")
        n_b = x.shape[0]
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self._sum_mean is None or self._scatter is None:
            self._sum_mean, self._scatter = mean_b, scatter_b
        else:
            # Chan, Golub & LeVeque (1979): merge two (count, mean, scatter) summaries exactly.
            total = self._count + n_b
            delta = mean_b - self._sum_mean
            self._sum_mean = self._sum_mean + delta * (n_b / total)
            self._scatter = (
                self._scatter + scatter_b + torch.outer(delta, delta) * (self._count * n_b / total)
            )
        self._count += n_b
        self._stale = True
        return self

    def _solve(self) -> None:
        assert self._sum_mean is not None and self._scatter is not None
        n, dim = self._count, self._sum_mean.shape[0]
        if n < 2:
            raise ValueError(
                f"PCAWhitening: need at least 2 embeddings to estimate a covariance, got {n}"
            )
        k = min(self.n_components, dim, n - 1)
        if k < self.n_components:
            warnings.warn(
                f"PCAWhitening: n_components={self.n_components} clamped to {k} "
                f"(D={dim}, n={n}; the sample covariance has rank <= min(D, n-1))",
                stacklevel=3,
            )
        covariance = self._scatter / (n - 1)
        covariance = (covariance + covariance.T) / 2
        total = torch.diagonal(covariance).sum()
        if total <= 0:
            raise ValueError(
                f"PCAWhitening: the {n} embeddings are all identical (zero covariance)"
            )
        eigenvalues, eigenvectors = _top_eigenpairs(covariance, k)
        eigenvalues = eigenvalues.clamp_min(0)
        vectors = eigenvectors.T.contiguous()  # [k, D]
        pivot = vectors.abs().argmax(dim=1)
        signs = torch.sign(vectors.gather(1, pivot[:, None]))
        vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
        self.mean = self._sum_mean.clone()
        self.components = vectors
        self.explained_variance = eigenvalues
        self.total_variance = total.reshape(())
        self.n_samples_seen = torch.tensor(n, dtype=torch.int64, device=self.mean.device)
        self._stale = False

    def _ensure_fitted(self) -> None:
        if self._stale:
            self._solve()
        if not self.is_fitted:
            raise RuntimeError("PCAWhitening is not fitted: call fit() or load() first")

    @property
    def is_fitted(self) -> bool:
        return self.components.numel() > 0 or self._stale

    # ----------------------------------------------------------------------------- use
    @property
    def n_components_(self) -> int:
        """Number of components actually kept (after clamping)."""
        self._ensure_fitted()
        return int(self.components.shape[0])

    @property
    def explained_variance_ratio(self) -> Tensor:
        """Per kept component, λ_j / tr(Σ) (float64 ``[k]``, descending)."""
        self._ensure_fitted()
        return self.explained_variance / self.total_variance

    @property
    def variance_retained(self) -> float:
        """Σ_{j<=k} λ_j / tr(Σ): the fraction of the variance the kept components explain."""
        return float(self.explained_variance_ratio.sum())

    def whitening_matrix(self) -> Tensor:
        """W = V_kᵀ diag(λ + eps)^(-1/2), ``[D, k]`` float64, so that ``z = (x - μ) W``."""
        self._ensure_fitted()
        return self.components.T / torch.sqrt(self.explained_variance + self.eps)

    def transform(self, x: Tensor) -> Tensor:
        """Whiten ``x[..., D]`` to ``z[..., k]``; differentiable, computed in ``x``'s dtype."""
        self._ensure_fitted()
        dim = self.mean.shape[0]
        if x.shape[-1] != dim:
            raise ValueError(
                f"PCAWhitening.transform: x has last dim {x.shape[-1]}, fitted D={dim}"
            )
        weight = self.whitening_matrix().to(device=x.device, dtype=x.dtype)
        return (x - self.mean.to(device=x.device, dtype=x.dtype)) @ weight

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, eps={self.eps}"

    # ----------------------------------------------------------------------------- state
    def _apply(self, fn: Any, recurse: bool = True) -> PCAWhitening:
        # Follow device moves but never a dtype cast: the statistics stay float64 / int64.
        for name in _FITTED_BUFFERS:
            buffer = self._buffers[name]
            assert buffer is not None
            target = fn(buffer.new_zeros(0))
            self._buffers[name] = buffer.to(device=target.device)
        if self._sum_mean is not None and self._scatter is not None:
            device = self._buffers["mean"].device  # type: ignore[union-attr]
            self._sum_mean, self._scatter = self._sum_mean.to(device), self._scatter.to(device)
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The fitted shapes ([k, D]) are only known from the checkpoint: resize before copying.
        for name in _FITTED_BUFFERS:
            key = prefix + name
            if key in state_dict:
                current = self._buffers[name]
                assert current is not None
                self._buffers[name] = torch.empty(
                    state_dict[key].shape, dtype=current.dtype, device=current.device
                )
        self._reset_statistics()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def save(self, path: str | Path) -> None:
        """Write the fitted tensors and the config to one safetensors file."""
        self._ensure_fitted()
        tensors = {
            name: getattr(self, name).detach().cpu().contiguous() for name in _FITTED_BUFFERS
        }
        save_file(tensors, str(path), metadata={"config": json.dumps(self.config.model_dump())})

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "config" not in metadata:
            raise ValueError(f"{path}: not a PCAWhitening file (no 'config' metadata)")
        whitening = cls(**json.loads(metadata["config"]))
        tensors = load_file(str(path))
        missing = [name for name in _FITTED_BUFFERS if name not in tensors]
        if missing:
            raise ValueError(f"{path}: PCAWhitening file lacks tensor(s) {missing}")
        whitening.load_state_dict(tensors)
        return whitening
