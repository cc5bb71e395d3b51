"""Gated cross-attention adapters and the per-call visual context (DESIGN.md, "Grafting into a
Hugging Face decoder").

An adapter at decoder layer l updates the residual stream before that layer:
``h ← h + tanh(g_l) · Attn(LN(h), LN(P_l Ṽ))`` with a per-layer projector ``P_l`` and a gate
``g_l`` that starts at 0, so a fresh graft leaves the LLM's output unchanged.

The visual K/V of each adapter depend only on the visual tokens, so they are computed once per
sequence and reused at every decode step. They live in a :class:`VisualContext` that exists only
for the duration of one ``forward``/``generate`` call (bound with :meth:`ContextSlot.bind`), in the
spirit of torchtune's deep-fusion K/V cache rather than open_flamingo's per-layer mutable state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdapterHook",
    "ContextSlot",
    "GatedCrossAttention",
    "VisualContext",
    "hooks_outside_checkpoint",
    "identity_projector",
    "match_batch",
]

KV = tuple[Tensor, Tensor]


def match_batch(tokens: Tensor, batch: int) -> Tensor:
    """Visual tokens ``[B, K, d]`` for a text batch of ``batch`` rows.

    ``generate`` expands every row ``r`` of the prompt to rows ``r·m .. r·m+m-1`` (beam search,
    ``num_return_sequences``; ``repeat_interleave``), so the visual tokens are expanded the same way.
    """
    b = tokens.shape[0]
    if b == batch:
        return tokens
    if batch % b:
        raise ValueError(
            f"visual tokens have batch {b}, which does not divide the text batch {batch} "
            "(beam/return-sequence expansion multiplies it by an integer)"
        )
    return tokens.repeat_interleave(batch // b, dim=0)


class VisualContext:
    """Visual tokens of one call and the K/V each adapter derived from them (computed once)."""

    def __init__(self, tokens: Tensor) -> None:
        if tokens.dim() != 3:
            raise ValueError(f"visual_tokens must be [B, K, d], got shape {tuple(tokens.shape)}")
        self.tokens = tokens
        self._kv: dict[tuple[int, int], KV] = {}

    def kv(self, layer: int, batch: int, compute: Callable[[Tensor], KV]) -> KV:
        key = (layer, batch)
        if key not in self._kv:
            self._kv[key] = compute(match_batch(self.tokens, batch))
        return self._kv[key]


class ContextSlot:
    """Where adapters find the :class:`VisualContext` of the call in progress (None outside)."""

    def __init__(self) -> None:
        self._stack: list[VisualContext | None] = []

    @property
    def current(self) -> VisualContext | None:
        return self._stack[-1] if self._stack else None

    @contextmanager
    def bind(self, tokens: Tensor | None) -> Iterator[VisualContext | None]:
        """Bind ``tokens`` for the body of the ``with`` block; ``None`` binds no visual input."""
        context = None if tokens is None else VisualContext(tokens)
        self._stack.append(context)
        try:
            yield context
        finally:
            self._stack.pop()


def identity_projector(dim: int) -> nn.Linear:
    """Per-layer projector ``P_l`` (Linear d_l -> d_l), initialised to the identity."""
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        layer.bias.zero_()
    return layer


class GatedCrossAttention(nn.Module):
    """``h + tanh(g) · o(Attn(q(LN(h)), k(LN(v)), v(LN(v))))`` over K visual tokens; ``g`` init 0."""

    def __init__(
        self, dim: int, num_heads: int = 8, kv_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"GatedCrossAttention: dim={dim} is not divisible by num_heads={num_heads}"
            )
        kv_dim = kv_dim or dim
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def visual_kv(self, visual: Tensor) -> KV:
        """K/V ``[B, H, K, hd]`` of the visual tokens ``[B, K, kv_dim]``."""
        b, k, _ = visual.shape
        kv = self.kv_proj(self.norm_kv(visual)).view(b, k, 2, self.num_heads, self.head_dim)
        key, value = kv.permute(2, 0, 3, 1, 4)
        return key, value

    def forward(self, hidden: Tensor, kv: KV) -> Tensor:
        """``hidden [B, T, dim]`` attends to the cached visual ``kv``; returns the updated stream."""
        b, t, _ = hidden.shape
        q = (
            self.q_proj(self.norm_q(hidden))
            .view(b, t, self.num_heads, self.head_dim)
            .transpose(1, 2)
        )
        key, value = kv
        drop = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, key.to(q.dtype), value.to(q.dtype), dropout_p=drop)
        out = self.o_proj(attn.transpose(1, 2).reshape(b, t, self.dim))
        return hidden + torch.tanh(self.gate).to(hidden.dtype) * out


def hooks_outside_checkpoint(layer: nn.Module) -> bool:
    """Whether module hooks of ``layer`` run outside its activation checkpoint: true when the layer
    keeps ``nn.Module.__call__`` (transformers 5.x checkpoints inside ``forward``), false when a
    ``__call__`` override checkpoints the whole call, hooks included."""
    return type(layer).__call__ is nn.Module.__call__


class AdapterHook:
    """Forward pre-hook on decoder layer ``layer``: run its adapter on the layer's input.

    Registered with ``register_forward_pre_hook(..., with_kwargs=True)``, so it fires on every call
    of the layer (prefill, each cached decode step, gradient-checkpointed recomputation), keeps the
    HF class and its state-dict keys untouched, and does nothing outside a bound context.
    """

    def __init__(
        self, layer: int, slot: ContextSlot, projector: nn.Module, adapter: GatedCrossAttention
    ) -> None:
        self.layer, self.slot, self.projector, self.adapter = layer, slot, projector, adapter

    def _kv(self, tokens: Tensor) -> KV:
        return self.adapter.visual_kv(self.projector(tokens))

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
        context = self.slot.current
        if context is None:
            return None
        checkpointed = getattr(module, "gradient_checkpointing", False) and module.training
        if checkpointed and torch.is_grad_enabled() and not hooks_outside_checkpoint(module):
            raise RuntimeError(
                f"decoder layer {self.layer} carries a cross-attention adapter and is checkpointed "
                "around its hooks: the recomputation would run without the visual context; enable "
                "checkpointing with GraftedLM.gradient_checkpointing_enable(), which exempts it"
            )
        hidden = args[0] if args else kwargs["hidden_states"]
        kv = context.kv(self.layer, hidden.shape[0], self._kv)
        hidden = self.adapter(hidden, kv)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}
