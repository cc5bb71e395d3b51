"""PCA whitening (streaming, float64) and the anisotropy metrics against numpy references."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from graftkit.align import PCAWhitening, anisotropy, discriminability, mean_pairwise_cosine


def anisotropic_embeddings(n: int = 400, dim: int = 48, groups: int = 4, seed: int = 0):
    """A strong shared direction + high-variance nuisance directions + weak condition signal."""
    generator = torch.Generator().manual_seed(seed)
    group = torch.arange(n) % groups
    shared = torch.randn(dim, generator=generator)
    shared = 40 * shared / shared.norm()
    nuisance = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0][:6]
    centroids = 0.6 * torch.randn(groups, dim, generator=generator)
    x = (
        shared
        + (4 * torch.randn(n, 6, generator=generator)) @ nuisance
        + centroids[group]
        + 0.3 * torch.randn(n, dim, generator=generator)
    )
    return x, group


def test_streaming_fit_matches_numpy_pca() -> None:
    x, _ = anisotropic_embeddings(n=300, dim=20)
    x = x + 1000.0  # a large offset: the float64 pairwise update must not lose the variance
    whitening = PCAWhitening(n_components=8).fit(x.split(37))
    data = x.double().numpy()
    covariance = np.cov(data, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1][:8], eigenvectors[:, ::-1][:, :8]
    assert np.allclose(whitening.mean.numpy(), data.mean(axis=0), rtol=0, atol=1e-9)
    assert np.allclose(whitening.explained_variance.numpy(), eigenvalues, rtol=1e-6)
    overlap = np.abs(np.sum(whitening.components.numpy() * eigenvectors.T, axis=1))
    assert np.allclose(overlap, 1.0, atol=1e-6)
    ratio = whitening.explained_variance_ratio
    assert ratio.shape == (8,) and torch.all(ratio[:-1] >= ratio[1:])
    assert whitening.variance_retained == pytest.approx(
        eigenvalues.sum() / np.trace(covariance), rel=1e-9
    )
    assert anisotropy.variance_retained(whitening) == whitening.variance_retained


def test_transform_gives_unit_covariance_and_batching_does_not_matter() -> None:
    x, _ = anisotropic_embeddings(n=200, dim=16)
    one_shot = PCAWhitening(n_components=10, eps=0.0).fit(x)
    streamed = PCAWhitening(n_components=10, eps=0.0)
    for chunk in x.split([1, 50, 3, 146]):
        streamed.partial_fit(chunk)
    z = one_shot.transform(x.double())
    covariance = np.cov(z.numpy(), rowvar=False)
    assert np.allclose(covariance, np.eye(10), atol=1e-8)
    assert torch.allclose(z.mean(dim=0), torch.zeros(10, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(streamed.transform(x.double()), z, atol=1e-8)
    assert one_shot.transform(x).dtype == torch.float32


def test_whitening_removes_the_shared_direction_and_raises_d_prime() -> None:
    x, group = anisotropic_embeddings()
    before_cos, before_d = mean_pairwise_cosine(x), discriminability(x, group)
    whitening = PCAWhitening(n_components=32).fit(x.split(64))
    z = whitening.transform(x)
    after_cos, after_d = mean_pairwise_cosine(z), discriminability(z, group)
    assert before_cos > 0.9
    assert abs(after_cos) < 0.02
    assert after_d > 2 * before_d > 0
    labels = torch.nn.functional.one_hot(group, 4)
    assert discriminability(z, labels) == pytest.approx(after_d, rel=1e-9)


def test_mean_pairwise_cosine_matches_pair_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=generator, dtype=torch.float64) + 0.5
    unit = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    pairs = [unit[i] @ unit[j] for i, j in itertools.combinations(range(9), 2)]
    assert mean_pairwise_cosine(x) == pytest.approx(float(np.mean(pairs)), rel=1e-12)


def numpy_d_prime(x: np.ndarray, same) -> float:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    same_values, diff_values = [], []
    for i, j in itertools.combinations(range(len(x)), 2):
        (same_values if same(i, j) else diff_values).append(unit[i] @ unit[j])
    return (np.mean(same_values) - np.mean(diff_values)) / np.sqrt(
        (np.var(same_values) + np.var(diff_values)) / 2
    )


def test_discriminability_multi_label_pairs_match_brute_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(11, 6, generator=generator, dtype=torch.float64)
    labels = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0],
         [1, 0, 1], [0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]]
    )  # fmt: skip
    y = labels.numpy()

    def share_with_normal(i: int, j: int) -> bool:
        return bool((y[i] & y[j]).any()) or (y[i].sum() == 0 and y[j].sum() == 0)

    monkeypatch.setattr(anisotropy, "_CHUNK_ROWS", 4)  # exercise the chunked pair loop
    assert discriminability(x, labels) == pytest.approx(
        numpy_d_prime(x.numpy(), share_with_normal), rel=1e-10
    )
    share_only = lambda i, j: bool((y[i] & y[j]).any())  # noqa: E731
    assert discriminability(x, labels, normal_as_condition=False) == pytest.approx(
        numpy_d_prime(x.numpy(), share_only), rel=1e-10
    )
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1])
    same_group = lambda i, j: groups[i] == groups[j]  # noqa: E731
    assert discriminability(x, groups) == pytest.approx(
        numpy_d_prime(x.numpy(), same_group), rel=1e-10
    )
    with pytest.raises(ValueError, match="no same-condition pairs"):
        discriminability(x, torch.arange(11))


def test_components_are_clamped_with_a_warning() -> None:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="n_components=256 clamped to 4"):
        whitening = PCAWhitening().fit(x)
    assert whitening.n_components_ == 4
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="clamped to 8"):
        assert PCAWhitening(n_components=20).fit(x).n_components_ == 8
    with pytest.warns(UserWarning, match="clamped to 8"):
        assert PCAWhitening(n_components=20).fit(x).variance_retained == pytest.approx(1.0)


def test_save_load_and_state_dict_round_trip(tmp_path) -> None:
    x, _ = anisotropic_embeddings(n=120, dim=12)
    whitening = PCAWhitening(n_components=5, eps=1e-4).fit(x)
    path = tmp_path / "whitening.safetensors"
    whitening.save(path)
    loaded = PCAWhitening.load(path)
    assert loaded.eps == 1e-4 and loaded.n_components == 5
    assert torch.equal(loaded.transform(x), whitening.transform(x))
    fresh = PCAWhitening(n_components=5, eps=1e-4)
    fresh.load_state_dict(whitening.state_dict())
    assert torch.equal(fresh.transform(x), whitening.transform(x))
    assert set(whitening.state_dict()) == {
        "mean", "components", "explained_variance", "total_variance", "n_samples_seen"
    }  # fmt: skip
    fresh.float()  # a dtype cast of the enclosing model must not degrade the statistics
    assert fresh.mean.dtype == torch.float64 and fresh.n_samples_seen.dtype == torch.int64
    with pytest.raises(RuntimeError, match="call fit"):
        loaded.partial_fit(x)


def test_bad_input_is_reported() -> None:
    whitening = PCAWhitening(n_components=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        whitening.transform(torch.zeros(3, 4))
    bad = torch.randn(6, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="fit batch 1 row 3"):
        whitening.fit([torch.randn(6, 4), bad])
    with pytest.raises(ValueError, match="has D=5, earlier batches had D=4"):
        whitening.fit([torch.randn(6, 4), torch.randn(6, 5)])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        whitening.fit([torch.randn(1, 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whitening.fit(torch.randn(10, 4))
    with pytest.raises(ValueError, match="last dim 3, fitted D=4"):
        whitening.transform(torch.zeros(2, 3))
