"""ZoneCompressor and zone_bounds (docs/design.md, "Zone-constrained cross-attention")."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from graftkit.bridge import ZoneCompressor, zone_bounds, zone_loop_reference, zone_mask


def test_zone_bounds_formula_partitions_slices():
    for n, k in [(32, 32), (100, 32), (1617, 32), (33, 8)]:
        bounds = zone_bounds(n, k)
        assert bounds == [(math.floor(i * n / k), math.floor((i + 1) * n / k)) for i in range(k)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_zone_bounds_fewer_slices_than_zones_gives_nearest_slice():
    bounds = zone_bounds(3, 8)
    for i, (start, end) in enumerate(bounds):
        formula = (i * 3 // 8, (i + 1) * 3 // 8)
        if formula[1] > formula[0]:
            assert (start, end) == formula
        else:  # empty by the formula: the slice holding the zone centre (i + 1/2)·n/k
            assert (start, end) == (int((i + 0.5) * 3 / 8), int((i + 0.5) * 3 / 8) + 1)
    assert {s for s, _ in bounds} == {0, 1, 2}
    assert zone_bounds(1, 4) == [(0, 1)] * 4


def test_zone_bounds_rejects_empty_volume():
    with pytest.raises(ValueError, match="n=0"):
        zone_bounds(0, 32)


def test_zone_mask_matches_zone_bounds_for_any_padding():
    torch.manual_seed(0)
    mask = torch.rand(6, 40) < 0.6
    mask[0] = False
    mask[0, 17] = True  # one valid slice in the middle of padding
    got = zone_mask(mask, 8)
    for b in range(6):
        valid = mask[b].nonzero().squeeze(1)
        want = torch.zeros(8, 40, dtype=torch.bool)
        for k, (s, e) in enumerate(zone_bounds(int(valid.numel()), 8)):
            want[k, valid[s:e]] = True
        assert torch.equal(got[b], want), b


def _compressor(**kw) -> ZoneCompressor:
    torch.manual_seed(0)
    return ZoneCompressor(
        16, **{"num_zones": 8, "num_heads": 4, "num_global_layers": 1, **kw}
    ).eval()


def test_matches_per_zone_loop_reference_with_mixed_lengths():
    comp = _compressor()
    lengths = [3, 8, 29, 50]
    slices = torch.randn(4, 50, 16)
    mask = torch.arange(50) < torch.tensor(lengths).unsqueeze(1)
    z = torch.cumsum(torch.rand(4, 50) * 2 + 0.5, dim=1) + 100 * torch.randn(4, 1)
    with torch.no_grad():
        got = comp(slices, z, mask)
        want = zone_loop_reference(comp, slices, z, mask)
    assert got.shape == (4, 8, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [5, 37])
def test_token_changes_iff_its_zone_changes(n):
    comp = _compressor(num_global_layers=0)
    slices = torch.randn(1, n, 16)
    bumped = slices.repeat(n, 1, 1)  # row i: slice i perturbed
    bumped[torch.arange(n), torch.arange(n)] += torch.randn(n, 16)
    with torch.no_grad():
        changed = (comp(bumped) - comp(slices)).abs().amax(dim=-1) > 1e-6  # [n, K]
    for i in range(n):
        expected = torch.tensor([s <= i < e for s, e in zone_bounds(n, 8)])
        assert torch.equal(changed[i], expected), (i, changed[i], expected)


def test_token_gradient_lives_only_on_its_zone():
    comp = _compressor(num_global_layers=0)
    n = 21
    slices = torch.randn(1, n, 16, requires_grad=True)
    tokens = comp(slices)
    probe = torch.randn(16)  # LayerNorm output sums to a constant: probe a random direction
    for k, (s, e) in enumerate(zone_bounds(n, 8)):
        (grad,) = torch.autograd.grad((tokens[0, k] * probe).sum(), slices, retain_graph=True)
        nonzero = grad[0].abs().sum(dim=-1) > 0
        assert torch.equal(nonzero, (torch.arange(n) >= s) & (torch.arange(n) < e)), k


def test_global_layer_mixes_zones():
    comp = _compressor(num_global_layers=1)
    slices = torch.randn(1, 16, 16)
    bumped = slices.clone()
    bumped[0, 0] += torch.randn(16)
    with torch.no_grad():
        delta = (comp(bumped) - comp(slices)).abs().amax(dim=-1)[0]
    assert bool((delta > 1e-6).all())


def test_mixed_batch_equals_each_item_alone():
    comp = _compressor()
    lengths = [1, 7, 30, 64]
    items = [torch.randn(n, 16) for n in lengths]
    zs = [torch.arange(n, dtype=torch.float32) * 1.5 + 40.0 for n in lengths]
    padded = torch.full((4, 64, 16), float("nan"))  # padding content must not matter
    z = torch.zeros(4, 64)
    for b, (item, zi) in enumerate(zip(items, zs)):
        padded[b, : len(item)], z[b, : len(item)] = item, zi
    mask = torch.arange(64) < torch.tensor(lengths).unsqueeze(1)
    with torch.no_grad():
        batched = comp(padded, z, mask)
        from_list = comp(items, zs)
        for b, (item, zi) in enumerate(zip(items, zs)):
            torch.testing.assert_close(batched[b], comp(item, zi)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, from_list)


def test_one_to_1617_slices_without_nan():
    comp = _compressor(num_zones=32)
    lengths = [1, 2, 31, 32, 33, 600, 1617]
    items = [torch.randn(n, 16) * 3 for n in lengths]
    with torch.no_grad():
        out = comp(items, [torch.arange(n) * 0.75 for n in lengths])
    assert out.shape == (7, 32, 16)
    assert bool(torch.isfinite(out).all())


def test_z_position_is_encoded_relative_to_first_slice():
    comp = _compressor()
    slices = torch.randn(1, 20, 16)
    z = torch.arange(20.0).unsqueeze(0) * 1.25
    with torch.no_grad():
        base = comp(slices, z)
        shifted = comp(slices, z + 317.0)
        stretched = comp(slices, z * 2.4)
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)
    assert (base - stretched).abs().max() > 1e-3


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0])
def test_position_scale_weighs_the_z_encoding(scale):
    comp = _compressor(position_scale=scale)
    slices = torch.randn(1, 20, 16)
    z = torch.arange(20.0).unsqueeze(0) * 1.25
    with torch.no_grad():
        change = (comp(slices, z) - comp(slices, z * 2.4)).abs().max()
        reference = zone_loop_reference(comp, slices, z * 2.4)
        torch.testing.assert_close(comp(slices, z * 2.4), reference, atol=1e-5, rtol=1e-5)
    if scale == 0:
        assert change < 1e-5  # geometry-free: only slice content and zone membership count
    else:
        assert change > 1e-3


def test_bad_input_names_the_batch_item():
    comp = _compressor()
    slices = torch.randn(3, 10, 16)
    slices[2, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="batch item 2 has NaN/Inf at slice 4"):
        comp(slices)
    slices[2, 4, 1] = 0.0
    slices[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="batch item 1"):
        comp(slices)
    with pytest.raises(ValueError, match="batch item 1 has shape"):
        comp([torch.randn(5, 16), torch.randn(5, 12)])
    with pytest.raises(ValueError, match="expected dim=16"):
        comp(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="batch item 0 has no valid slice"):
        comp(torch.randn(2, 5, 16), mask=torch.tensor([[False] * 5, [True] * 5]))


def test_init_queries_from_principal_directions():
    comp = _compressor(num_zones=4)
    torch.manual_seed(1)
    basis = torch.linalg.qr(torch.randn(16, 16))[0][:, :6].T  # 6 orthonormal directions
    scales = torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    data = torch.randn(4000, 6) * scales @ basis + 2.0
    queries = comp.init_queries_from(data.reshape(40, 100, 16), fit_stats=False)
    assert torch.equal(queries, comp.queries.detach())
    centred = queries - data.mean(dim=0)
    cov = torch.cov(data.T.double())
    evals, evecs = torch.linalg.eigh(cov)
    for k in range(4):
        direction = evecs[:, -1 - k].float()
        assert abs(float(centred[k] @ direction)) == pytest.approx(
            float(evals[-1 - k].sqrt()), rel=1e-2
        )
        assert float(centred[k].norm()) == pytest.approx(float(evals[-1 - k].sqrt()), rel=1e-2)
