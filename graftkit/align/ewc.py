"""Elastic weight consolidation for phase 4 (docs/design.md, "Four-phase curriculum": 100·Σ(θ_LoRA − θ_P3)²).

Phase 4 fine-tunes the LoRA tensors on raw radiologist text; EWC keeps them near the phase-3
solution θ* so the narrative style does not erase the findings learnt in phase 3:

    Ω(θ) = λ Σ_n Σ_e F_{n,e} (θ_{n,e} - θ*_{n,e})²

summed over the named parameter set n and its elements e, with F ≡ 1 by default (the paper's
L2-SP form, λ = 100) or a diagonal Fisher F (Kirkpatrick et al. 2017; the original's 1/2 is
absorbed into λ). θ* is copied only when :meth:`EWC.snapshot` is called, and
:meth:`EWC.state_dict` returns plain tensors (``reference.<name>``, ``fisher.<name>``, ``lam``) to
be written with safetensors next to the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from graftkit.distributed import full_tensors, shard_like


def _plain(t: Tensor) -> Tensor:
    """A contiguous CPU copy of ``t``, the full tensor where ``t`` is sharded (collective)."""
    return full_tensors(t).detach().cpu().contiguous()


NamedTensors = Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]


def _as_dict(named: NamedTensors, where: str) -> dict[str, Tensor]:
    items = list(named.items()) if isinstance(named, Mapping) else list(named)
    result: dict[str, Tensor] = {}
    for name, tensor in items:
        if name in result:
            raise ValueError(f"{where}: parameter name {name!r} appears twice")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{where}: {name!r} is a {type(tensor).__name__}, not a tensor")
        result[name] = tensor
    return result


def _check_names(expected: Mapping[str, Any], found: Mapping[str, Any], where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where}: parameter names differ from the EWC parameter set; missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )


def estimate_fisher(
    named_parameters: NamedTensors,
    batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher from per-batch gradients: F_n = 1/T Σ_t (∂L_t/∂θ_n)².

    ``loss_fn(batch)`` returns the scalar loss L_t of batch t (e.g. the phase-3 LM loss); gradients
    come from ``torch.autograd.grad`` so ``.grad`` fields are untouched. With batch size 1 this is
    the per-sample empirical Fisher; larger batches square the batch-mean gradient, a cheaper
    estimate that is smaller by the within-batch gradient variance. Parameters the loss does not
    reach get F = 0. Returns float32 tensors on the parameters' devices.
    """
    params = _as_dict(named_parameters, "estimate_fisher")
    if not params:
        raise ValueError("estimate_fisher: empty parameter set")
    names = list(params)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    steps = 0
    for index, batch in enumerate(batches):
        loss = loss_fn(batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"estimate_fisher: loss_fn must return a scalar tensor (batch {index})"
            )
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                fisher[name] += grad.detach().float().pow(2)
        steps += 1
    if steps == 0:
        raise ValueError("estimate_fisher: the batch iterable was empty")
    return {n: f / steps for n, f in fisher.items()}


class EWC:
    """EWC / L2-SP penalty Ω(θ) = λ Σ F (θ - θ*)² over a named parameter set (module docstring).

    Args:
        named_parameters: ``model.named_parameters()``-style pairs (or a dict) of the penalised
            set, e.g. the LoRA tensors; references to the live parameters are kept.
        lam: λ (paper: 100).
        fisher: optional diagonal Fisher, one non-negative tensor per name, same shapes.
    """

    def __init__(
        self,
        named_parameters: NamedTensors,
        lam: float = 100.0,
        fisher: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.params = _as_dict(named_parameters, "EWC")
        if not self.params:
            raise ValueError("EWC: empty parameter set")
        if lam < 0:
            raise ValueError(f"EWC: lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.reference: dict[str, Tensor] = {}
        self.fisher: dict[str, Tensor] | None = None
        if fisher is not None:
            self.set_fisher(fisher)

    def set_fisher(self, fisher: Mapping[str, Tensor] | None) -> None:
        """Use a diagonal Fisher weighting (``None`` returns to F ≡ 1)."""
        if fisher is None:
            self.fisher = None
            return
        fisher = dict(fisher)
        _check_names(self.params, fisher, "EWC fisher")
        for name, value in fisher.items():
            if value.shape != self.params[name].shape:
                raise ValueError(
                    f"EWC fisher: {name!r} has shape {tuple(value.shape)}, parameter has "
                    f"{tuple(self.params[name].shape)}"
                )
            if bool((value < 0).any()) or not bool(torch.isfinite(value).all()):
                raise ValueError(f"EWC fisher: {name!r} must be finite and >= 0")
        self.fisher = {n: v.detach().float().clone() for n, v in fisher.items()}

    def snapshot(self) -> None:
        """Store θ* = a detached copy of every parameter now (call at the end of phase 3)."""
        self.reference = {n: p.detach().clone() for n, p in self.params.items()}

    def estimate_fisher(
        self, batches: Iterable[Any], loss_fn: Callable[[Any], Tensor]
    ) -> dict[str, Tensor]:
        """Estimate (see :func:`estimate_fisher`) and use the diagonal Fisher at the current θ."""
        fisher = estimate_fisher(self.params, batches, loss_fn)
        self.set_fisher(fisher)
        return fisher

    def penalty(self, named_parameters: NamedTensors | None = None) -> Tensor:
        """Ω(θ) = λ Σ_n Σ_e F_{n,e} (θ_{n,e} - θ*_{n,e})², a float32 scalar with gradient w.r.t. θ."""
        if not self.reference:
            raise RuntimeError(
                "EWC.penalty: no reference: call snapshot() or load_state_dict() first"
            )
        params = (
            self.params if named_parameters is None else _as_dict(named_parameters, "EWC.penalty")
        )
        _check_names(self.reference, params, "EWC.penalty")
        total: Tensor | None = None
        for name, param in params.items():
            # a reference taken or loaded before the parameters were sharded (FSDP) is laid out
            # as the parameter once, here
            reference = self.reference[name] = shard_like(self.reference[name], param)
            reference = reference.to(device=param.device)
            if reference.shape != param.shape:
                raise ValueError(
                    f"EWC.penalty: {name!r} has shape {tuple(param.shape)}, reference has "
                    f"{tuple(reference.shape)}"
                )
            squared = (param.float() - reference.float()).pow(2)
            if self.fisher is not None:
                self.fisher[name] = shard_like(self.fisher[name], param)
                squared = squared * self.fisher[name].to(param.device)
            term = squared.sum()
            total = term if total is None else total + term
        assert total is not None
        # sharded parameters (FSDP) give a partial sum per process: the penalty is the full sum
        return self.lam * full_tensors(total)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain, contiguous CPU tensors: ``reference.<name>``, ``fisher.<name>``, ``lam``."""
        if not self.reference:
            raise RuntimeError("EWC.state_dict: no reference: call snapshot() first")
        state = {f"reference.{n}": _plain(t) for n, t in self.reference.items()}
        if self.fisher is not None:
            state.update({f"fisher.{n}": _plain(t) for n, t in self.fisher.items()})
        state["lam"] = torch.tensor(self.lam, dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore θ*, F and λ written by :meth:`state_dict` (tensors move to the parameters' devices)."""
        reference = {
            k.removeprefix("reference."): v for k, v in state.items() if k.startswith("reference.")
        }
        fisher = {k.removeprefix("fisher."): v for k, v in state.items() if k.startswith("fisher.")}
        unknown = [k for k in state if k != "lam" and not k.startswith(("reference.", "fisher."))]
        if unknown:
            raise ValueError(f"EWC.load_state_dict: unexpected key(s) {unknown[:5]}")
        _check_names(self.params, reference, "EWC.load_state_dict reference")
        for name, value in reference.items():
            if value.shape != self.params[name].shape:
                raise ValueError(
                    f"EWC.load_state_dict: reference {name!r} has shape {tuple(value.shape)}, "
                    f"parameter has {tuple(self.params[name].shape)}"
                )
        self.set_fisher(fisher or None)
        if self.fisher is not None:
            self.fisher = {
                n: shard_like(v.to(self.params[n].device), self.params[n])
                for n, v in self.fisher.items()
            }
        self.reference = {
            n: shard_like(
                v.detach().to(device=self.params[n].device, dtype=self.params[n].dtype),
                self.params[n],
            ).clone()
            for n, v in reference.items()
        }
        if "lam" in state:
            self.lam = float(state["lam"])
