"""EWC: explicit reference snapshot, (Fisher-weighted) penalty, Fisher estimate, safetensors state."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graftkit.align import EWC, estimate_fisher


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def perturb(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            deltas[name] = 0.1 * torch.randn(parameter.shape, generator=generator)
            parameter.add_(deltas[name])
    return deltas


def test_penalty_is_lambda_sum_of_squared_drift_with_matching_gradient() -> None:
    model = make_model()
    ewc = EWC(model.named_parameters(), lam=100.0)
    ewc.snapshot()
    assert float(ewc.penalty().detach()) == 0.0
    deltas = perturb(model)
    expected = 100.0 * sum(float((d**2).sum()) for d in deltas.values())
    penalty = ewc.penalty()
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, 200.0 * deltas[name], rtol=1e-5, atol=1e-7)


def test_snapshot_is_a_copy_taken_only_when_asked() -> None:
    model = make_model()
    ewc = EWC(model.named_parameters(), lam=1.0)
    with pytest.raises(RuntimeError, match="call snapshot"):
        ewc.penalty()
    perturb(model, seed=2)  # drift before the snapshot is not penalised
    ewc.snapshot()
    reference = {n: t.clone() for n, t in ewc.reference.items()}
    perturb(model, seed=3)
    assert all(torch.equal(ewc.reference[n], reference[n]) for n in reference)
    assert float(ewc.penalty().detach()) > 0


def test_fisher_weighting_and_subset_of_parameters() -> None:
    model = make_model()
    lora_like = {n: p for n, p in model.named_parameters() if n.startswith("2.")}
    fisher = {
        n: torch.rand(p.shape, generator=torch.Generator().manual_seed(4))
        for n, p in lora_like.items()
    }
    ewc = EWC(lora_like.items(), lam=3.0, fisher=fisher)
    ewc.snapshot()
    deltas = perturb(model)
    expected = 3.0 * sum(float((fisher[n] * deltas[n] ** 2).sum()) for n in lora_like)
    assert float(ewc.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"missing \['2.weight'\]"):
        ewc.penalty({"2.bias": model[2].bias})
    with pytest.raises(ValueError, match=r"'2\.bias' has shape"):
        EWC(lora_like.items(), fisher={"2.weight": fisher["2.weight"], "2.bias": torch.ones(5)})


def test_estimate_fisher_is_mean_squared_batch_gradient() -> None:
    torch.manual_seed(5)
    layer = nn.Linear(2, 1, bias=False)
    batches = [(torch.randn(3, 2), torch.randn(3, 1)) for _ in range(4)]

    def loss_fn(batch):
        inputs, target = batch
        return ((layer(inputs) - target) ** 2).mean()

    fisher = estimate_fisher(layer.named_parameters(), batches, loss_fn)
    expected = torch.zeros_like(layer.weight)
    for inputs, target in batches:
        residual = inputs @ layer.weight.detach().T - target
        expected += (2 * residual * inputs).mean(dim=0, keepdim=True) ** 2  # d/dw of the MSE
    assert torch.allclose(fisher["weight"], expected / 4, rtol=1e-5)
    assert layer.weight.grad is None  # .grad left untouched

    ewc = EWC(layer.named_parameters(), lam=2.0)
    ewc.estimate_fisher(batches, loss_fn)
    assert ewc.fisher is not None and torch.allclose(ewc.fisher["weight"], expected / 4, rtol=1e-5)


def test_state_dict_round_trips_through_safetensors(tmp_path) -> None:
    model = make_model()
    ewc = EWC(
        model.named_parameters(),
        lam=7.0,
        fisher={n: torch.full_like(p, 0.5) for n, p in model.named_parameters()},
    )
    ewc.snapshot()
    path = tmp_path / "ewc.safetensors"
    save_file(ewc.state_dict(), str(path))
    perturb(model)
    restored = EWC(model.named_parameters(), lam=1.0)
    restored.load_state_dict(load_file(str(path)))
    assert restored.lam == 7.0
    assert float(restored.penalty().detach()) == pytest.approx(
        float(ewc.penalty().detach()), rel=1e-6
    )
    assert float(restored.penalty().detach()) > 0
    state = ewc.state_dict()
    state.pop("reference.0.bias")
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        EWC(model.named_parameters()).load_state_dict(state)
