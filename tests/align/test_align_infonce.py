"""InfoNCE: equation against a numpy loop, gradcheck, temperature, and gathering across 2 processes."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from graftkit.align import InfoNCE, info_nce

HERE = Path(__file__).resolve().parent


def numpy_info_nce(a: np.ndarray, b: np.ndarray, temperature: float, symmetric: bool) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)

    def one_way(rows: np.ndarray, cols: np.ndarray) -> float:
        total = 0.0
        for i in range(len(rows)):
            logits = [float(rows[i] @ cols[j]) / temperature for j in range(len(cols))]
            total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
        return total / len(rows)

    forward = one_way(a, b)
    return (forward + one_way(b, a)) / 2 if symmetric else forward


@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_matches_numpy_loop(symmetric: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    b = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    module = InfoNCE(init_temperature=0.1, symmetric=symmetric).double()
    temperature = math.exp(-float(module.logit_scale.detach()))  # 0.1 rounded through float32
    expected = numpy_info_nce(a.numpy(), b.numpy(), temperature, symmetric)
    assert float(module(a, b).detach()) == pytest.approx(expected, rel=1e-10)
    assert module.effective_batch_size == 5


def test_gradcheck_inputs_and_log_scale() -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(math.log(1 / 0.3), dtype=torch.float64, requires_grad=True)
    for symmetric in (True, False):
        loss = lambda a, b, s, symmetric=symmetric: info_nce(a, b, s, symmetric)[0]  # noqa: E731
        assert torch.autograd.gradcheck(loss, (a, b, scale))


def test_learned_temperature_starts_at_init_and_is_clamped() -> None:
    module = InfoNCE(init_temperature=0.1, min_temperature=0.05, max_temperature=0.5)
    assert module.temperature == pytest.approx(0.1)
    assert float(module.logit_scale.detach()) == pytest.approx(math.log(10.0))
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    with torch.no_grad():
        module.logit_scale.fill_(math.log(1000.0))  # τ = 0.001, below min_temperature
    clamped = module(a, b)
    expected = numpy_info_nce(a.double().numpy(), b.double().numpy(), 0.05, True)
    assert float(clamped.detach()) == pytest.approx(expected, rel=1e-5)
    assert module.temperature == pytest.approx(0.05)
    clamped.backward()
    assert module.logit_scale.grad is not None and module.logit_scale.grad.abs() > 0


def test_temperature_bounds_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_temperature <= init_temperature"):
        InfoNCE(init_temperature=2.0, max_temperature=1.0)


def test_matching_pairs_lower_the_loss() -> None:
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(8, 16, generator=generator)
    module = InfoNCE()
    aligned = module(a, a + 0.01 * torch.randn(8, 16, generator=generator)).detach()
    shuffled = module(a, a[torch.roll(torch.arange(8), 1)]).detach()
    assert float(aligned) < 0.01 < math.log(8) < float(shuffled)


def test_degenerate_batches_are_finite() -> None:
    module = InfoNCE()
    one = torch.randn(1, 4, requires_grad=True)
    loss = module(one, torch.randn(1, 4))
    assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = module(empty, torch.zeros(0, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None
    assert module.effective_batch_size == 0
    with pytest.raises(ValueError, match=r"a and b must both be \[B, D\]"):
        module(torch.randn(2, 4), torch.randn(3, 4))


@pytest.mark.distributed
def test_gathered_infonce_matches_single_process(tmp_path: Path) -> None:
    """2 gloo processes: mean loss and DDP-averaged gradients equal one process on the full batch."""
    torchrun = shutil.which("torchrun")
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [*command, "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         str(HERE / "infonce_ddp_worker.py"), str(tmp_path)],
        check=True, timeout=120, env=env, capture_output=True,
    )  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    spec = importlib.util.spec_from_file_location(
        "infonce_ddp_worker", HERE / "infonce_ddp_worker.py"
    )
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    encoder_a, encoder_b, loss_fn, xa, xb = worker.make_problem(2)
    xa = xa.clone().requires_grad_(True)
    reference = loss_fn(encoder_a(xa), encoder_b(xb))
    reference.backward()
    modules = {"a": encoder_a, "b": encoder_b, "loss": loss_fn}
    reference_grads = {
        f"{prefix}.{name}": p.grad
        for prefix, m in modules.items()
        for name, p in m.named_parameters()
    }

    per_rank_losses = torch.stack([r["loss"] for r in ranks])
    assert not torch.allclose(per_rank_losses[0], per_rank_losses[1])  # the shards really differ
    assert torch.allclose(per_rank_losses.mean(), reference.detach(), rtol=1e-12, atol=1e-12)
    for result in ranks:
        assert torch.allclose(result["mean_loss"], reference.detach(), rtol=1e-12, atol=1e-12)
        assert result["effective_batch_size"] == 2 * worker.PER_RANK
        assert result["ungathered_effective_batch_size"] == worker.PER_RANK
        assert set(result["grads"]) == set(reference_grads)
        for name, grad in result["grads"].items():
            assert torch.allclose(grad, reference_grads[name], rtol=1e-10, atol=1e-12)
    for rank, result in enumerate(ranks):
        rows = slice(rank * worker.PER_RANK, (rank + 1) * worker.PER_RANK)
        # The all-gather backward sums every rank's column gradient into the owner: / world size.
        assert torch.allclose(result["input_grad"] / 2, xa.grad[rows], rtol=1e-10, atol=1e-12)
    # Uneven shards (4 + 2 rows: a volume skipped at load on one process) give the same mean
    # loss and gradients as one process on all rows, instead of stopping the run.
    for result in ranks:
        assert result["uneven_effective_batch_size"] == 2 * worker.PER_RANK
        assert torch.allclose(
            result["uneven_mean_loss"], reference.detach(), rtol=1e-12, atol=1e-12
        )
        for name, grad in result["uneven_grads"].items():
            assert torch.allclose(grad, reference_grads[name], rtol=1e-10, atol=1e-12)
