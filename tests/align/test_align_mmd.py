"""MMD with the IMQ kernel against a brute-force numpy computation, gradcheck and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graftkit.align import imq_alpha, mmd_imq


def numpy_mmd(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, alpha: float, unbiased: bool
) -> float:
    """Per-sample MMD² with explicit double loops, averaged over samples that have a term."""

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((1.0 + alpha * np.sum((u - v) ** 2)) ** -0.5)

    values = []
    for b in range(x.shape[0]):
        xs, ys = list(x[b]), [y[b, j] for j in range(y.shape[1]) if mask[b, j]]
        kx, m = len(xs), len(ys)
        if m < (2 if unbiased else 1) or (unbiased and kx < 2):
            continue
        xx = sum(k(xs[i], xs[j]) for i in range(kx) for j in range(kx) if not (unbiased and i == j))
        yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
        xy = sum(k(u, v) for u in xs for v in ys)
        xx /= kx * (kx - 1) if unbiased else kx * kx
        yy /= m * (m - 1) if unbiased else m * m
        values.append(xx + yy - 2 * xy / (kx * m))
    return float(np.mean(values)) if values else 0.0


def make_batch(seed: int = 0, batch: int = 5, tokens: int = 4, m: int = 3, dim: int = 6):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=generator, dtype=torch.float64)
    y = torch.randn(batch, m, dim, generator=generator, dtype=torch.float64) + 0.5
    counts = torch.tensor([0, 1, 3, 2, 1][:batch])
    mask = torch.arange(m)[None, :] < counts[:, None]
    return x, y, mask


def test_imq_alpha_paper_value() -> None:
    assert imq_alpha(5.0, 256) == pytest.approx(20 / 509)
    assert imq_alpha(5.0, 256) == pytest.approx(0.039, abs=5e-4)
    with pytest.raises(ValueError, match="dim must be >= 2"):
        imq_alpha(5.0, 1)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_matches_brute_force_numpy(estimator: str) -> None:
    x, y, mask = make_batch()
    alpha = 0.3
    expected = numpy_mmd(x.numpy(), y.numpy(), mask.numpy(), alpha, estimator == "unbiased")
    assert float(mmd_imq(x, y, mask, alpha, estimator)) == pytest.approx(expected, rel=1e-10)


def test_default_alpha_uses_gamma_5_for_the_dimension() -> None:
    x, y, mask = make_batch(dim=6)
    expected = numpy_mmd(x.numpy(), y.numpy(), mask.numpy(), imq_alpha(5.0, 6), False)
    assert float(mmd_imq(x, y, mask)) == pytest.approx(expected, rel=1e-10)


def test_padding_and_normal_samples_do_not_matter() -> None:
    x, y, mask = make_batch()
    reference = mmd_imq(x, y, mask, 0.3)
    garbage_y = y.clone()
    garbage_y[~mask] = float("nan")
    other_normal_x = x.clone()
    other_normal_x[0] = 100.0  # sample 0 has no positive condition
    x_leaf = other_normal_x.clone().requires_grad_(True)
    loss = mmd_imq(x_leaf, garbage_y, mask, 0.3)
    assert float(loss.detach()) == pytest.approx(float(reference), rel=1e-12)
    loss.backward()
    assert x_leaf.grad is not None
    assert torch.all(x_leaf.grad[0] == 0) and torch.all(torch.isfinite(x_leaf.grad))
    assert x_leaf.grad[1:].abs().sum() > 0


def test_zero_when_tokens_equal_texts_and_grows_with_shift() -> None:
    generator = torch.Generator().manual_seed(4)
    y = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert float(mmd_imq(y.clone(), y, mask, 0.5)) == pytest.approx(0.0, abs=1e-12)
    near, far = mmd_imq(y + 0.1, y, mask, 0.5), mmd_imq(y + 1.0, y, mask, 0.5)
    assert 0 < float(near) < float(far)


def test_gradcheck_float64() -> None:
    x, y, mask = make_batch(seed=1, batch=3, tokens=2, m=3, dim=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    for estimator in ("biased", "unbiased"):
        assert torch.autograd.gradcheck(
            lambda x, y, estimator=estimator: mmd_imq(x, y, mask[:3], 0.4, estimator), (x, y)
        )


@pytest.mark.parametrize(
    "case", ["empty_batch", "all_normal", "batch_of_one", "unbiased_single_text"]
)
def test_degenerate_batches_are_finite_scalars_with_a_graph(case: str) -> None:
    x, y, mask = make_batch()
    estimator = "biased"
    if case == "empty_batch":
        x, y, mask = x[:0], y[:0], mask[:0]
    elif case == "all_normal":
        mask = torch.zeros_like(mask)
    elif case == "batch_of_one":
        x, y, mask = x[1:2], y[1:2], mask[1:2]
    else:
        x, y, mask, estimator = x[1:2], y[1:2], mask[1:2], "unbiased"  # m_b = 1: no U-statistic
    x = x.clone().requires_grad_(True)
    loss = mmd_imq(x, y, mask, 0.3, estimator)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.all(torch.isfinite(x.grad))
    if case == "batch_of_one":
        assert float(loss.detach()) > 0
    else:
        assert float(loss.detach()) == 0.0


def test_shape_errors_name_the_tensor() -> None:
    x, y, mask = make_batch()
    with pytest.raises(ValueError, match="y_mask must be a bool"):
        mmd_imq(x, y, mask.long(), 0.3)
    with pytest.raises(ValueError, match=r"x .* and y .* must share B"):
        mmd_imq(x, y[:, :, :2], mask, 0.3)
