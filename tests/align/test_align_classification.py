"""Focal, weighted BCE, MIL and orthogonality losses against their written equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graftkit.align import focal_loss, mil_loss, orthogonality_loss, positive_weights, weighted_bce


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def make_logits(seed: int = 0, n: int = 4, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    targets = (torch.rand(n, classes, generator=generator) > 0.6).double()
    return logits, targets


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_loss_matches_elementwise_formula(alpha: float | None) -> None:
    logits, targets = make_logits()
    values = []
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p_t = sigmoid(z) if y == 1 else 1 - sigmoid(z)
        alpha_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        values.append(-alpha_t * (1 - p_t) ** 2 * math.log(p_t))
    assert float(focal_loss(logits, targets, 2.0, alpha)) == pytest.approx(
        np.mean(values), rel=1e-10
    )


def test_focal_loss_gamma_zero_is_bce_and_easy_examples_are_down_weighted() -> None:
    logits, targets = make_logits()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert float(focal_loss(logits, targets, gamma=0.0)) == pytest.approx(float(bce), rel=1e-12)
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])
    target = torch.ones(1, 1)
    easy_ratio = focal_loss(easy, target) / F.binary_cross_entropy_with_logits(easy, target)
    hard_ratio = focal_loss(hard, target) / F.binary_cross_entropy_with_logits(hard, target)
    assert float(easy_ratio) == pytest.approx((1 - sigmoid(4.0)) ** 2, rel=1e-5)
    assert float(easy_ratio) < 1e-3 < 0.5 < float(hard_ratio)
    # Large logits stay finite (log p_t comes from the stable BCE, not log(sigmoid)).
    assert torch.isfinite(focal_loss(torch.tensor([[-200.0, 200.0]]), torch.tensor([[1.0, 0.0]])))


def test_positive_weights_are_capped_neg_over_pos() -> None:
    labels = torch.zeros(12, 4)
    labels[:1, 0] = 1  # 11 negatives / 1 positive -> capped at 10
    labels[:4, 1] = 1  # 8 / 4 = 2
    labels[:, 3] = 1  # 0 / 12 = 0;  class 2 has no positive -> max_weight
    assert torch.equal(positive_weights(labels), torch.tensor([10.0, 2.0, 10.0, 0.0]))
    capped = positive_weights(labels.numpy(), max_weight=5.0)
    assert torch.equal(capped, torch.tensor([5.0, 2.0, 5.0, 0.0]))
    with pytest.raises(ValueError, match="row 0 column 0"):
        positive_weights(labels * 2)


def test_weighted_bce_matches_formula() -> None:
    logits, targets = make_logits()
    weights = torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64)
    expected = np.mean(
        [
            -(weights[c].item() * y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z)))
            for row_z, row_y in zip(logits.tolist(), targets.tolist())
            for c, (z, y) in enumerate(zip(row_z, row_y))
        ]
    )
    assert float(weighted_bce(logits, targets, weights)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match=r"pos_weight must be \[C\] = \[3\]"):
        weighted_bce(logits, targets, weights[:2])


def test_mil_loss_max_pools_tokens_and_only_the_max_token_gets_gradient() -> None:
    generator = torch.Generator().manual_seed(5)
    token_logits = torch.randn(
        3, 5, 2, generator=generator, dtype=torch.float64, requires_grad=True
    )
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    weights = torch.tensor([2.0, 4.0], dtype=torch.float64)
    loss = mil_loss(token_logits, targets, weights)
    pooled = token_logits.detach().amax(dim=1)
    assert float(loss.detach()) == pytest.approx(
        float(weighted_bce(pooled, targets, weights)), rel=1e-12
    )
    assert float(mil_loss(pooled, targets, weights)) == pytest.approx(
        float(loss.detach()), rel=1e-12
    )
    loss.backward()
    nonzero = token_logits.grad != 0
    assert torch.equal(nonzero.sum(dim=1), torch.ones(3, 2, dtype=torch.long))
    assert torch.equal(nonzero.float().argmax(dim=1), token_logits.detach().argmax(dim=1))


def test_orthogonality_loss_equation() -> None:
    eye = torch.eye(4).unsqueeze(0) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]  # orthogonal
    assert float(orthogonality_loss(eye)) == pytest.approx(0.0, abs=1e-12)
    parallel = torch.randn(1, 1, 6).repeat(2, 3, 1) * torch.tensor([1.0, 2.0, 5.0])[None, :, None]
    assert float(orthogonality_loss(parallel)) == pytest.approx(1.0, rel=1e-6)
    generator = torch.Generator().manual_seed(6)
    tokens = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    unit = tokens.numpy() / np.linalg.norm(tokens.numpy(), axis=-1, keepdims=True)
    expected = np.mean(
        [
            np.mean([(unit[b, i] @ unit[b, j]) ** 2 for i in range(4) for j in range(4) if i != j])
            for b in range(3)
        ]
    )
    assert float(orthogonality_loss(tokens)) == pytest.approx(expected, rel=1e-10)


LOSSES = {
    "focal": lambda z, y: focal_loss(z, y),
    "weighted_bce": lambda z, y: weighted_bce(z, y, torch.full((z.shape[-1],), 10.0)),
    "mil_tokens": lambda z, y: mil_loss(z.unsqueeze(1).repeat(1, 3, 1), y),
    "mil_bag": lambda z, y: mil_loss(z, y),
    "orthogonality": lambda z, y: orthogonality_loss(z.reshape(z.shape[0], 3, 2)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["empty_batch", "all_normal", "batch_of_one"])
def test_losses_are_finite_scalars_for_degenerate_batches(name: str, case: str) -> None:
    batch = {"empty_batch": 0, "all_normal": 4, "batch_of_one": 1}[case]
    logits = torch.randn(batch, 6, generator=torch.Generator().manual_seed(7), requires_grad=True)
    targets = torch.zeros(batch, 6)
    if case == "batch_of_one":
        targets[0, 2] = 1
    loss = LOSSES[name](logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.all(torch.isfinite(logits.grad))
    if case == "empty_batch":
        assert float(loss.detach()) == 0.0
    else:
        assert float(loss.detach()) > 0
