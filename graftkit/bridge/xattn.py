"""Gated cross-attention adapters and the per-call visual context (docs/design.md, "Grafting into a
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
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdapterHook",
    "ContextSlot",
    "GatedCrossAttention",
    "VisualContext",
    "VisualKV",
    "hooks_outside_checkpoint",
    "identity_projector",
    "match_batch",
]


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

    def __init__(self, tokens: Tensor, decode_steps: bool = True) -> None:
        if tokens.dim() != 3:
            raise ValueError(f"visual_tokens must be [B, K, d], got shape {tuple(tokens.shape)}")
        self.tokens = tokens
        #: False reproduces the paper's bug (adapters skipped on single-token decode steps).
        self.decode_steps = decode_steps
        self._kv: dict[tuple[int, int], VisualKV] = {}

    def kv(self, layer: int, batch: int, compute: Callable[[Tensor], VisualKV]) -> VisualKV:
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
    def bind(
        self, tokens: Tensor | None, decode_steps: bool = True
    ) -> Iterator[VisualContext | None]:
        """Bind ``tokens`` for the body of the ``with`` block; ``None`` binds no visual input."""
        context = None if tokens is None else VisualContext(tokens, decode_steps)
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


class VisualKV(NamedTuple):
    """Cached visual K/V of one adapter: ``folded`` ``[B, H·K, dim]`` or plain ``[B, H, K, hd]``."""

    key: Tensor
    value: Tensor
    folded: bool


class GatedCrossAttention(nn.Module):
    """``h + tanh(g) · o(MHA(q(LN(h)), k(LN(v)), v(LN(v))))`` over K visual tokens; ``g`` init 0.

    :meth:`visual_kv` is computed once per sequence. When it is cheaper it also folds the query
    and output projections into the cache: per head ``q_h·k_hj = LN(h)·(W_q,hᵀ k_hj)`` and
    ``o(⊕_h p_h V_h) = Σ_h p_h (V_h W_o,hᵀ)``, so a new token costs two products with
    ``[H·K, dim]`` matrices instead of two ``dim × dim`` projections plus the attention. The folded
    cache is H times larger, so it is used when ``B·K·(H−1) < dim`` (it then reads less memory per
    step than the projection weights; e.g. d=3072, K=32, H=8: batches up to 13). Same function,
    same parameters either way.
    """

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

    def visual_kv(self, visual: Tensor, fold: bool | None = None) -> VisualKV:
        """K/V of the visual tokens ``[B, K, kv_dim]`` (``fold=None``: by the cost rule)."""
        b, k, _ = visual.shape
        h, hd = self.num_heads, self.head_dim
        if fold is None:
            fold = b * k * (h - 1) < self.dim
        key, value = self.kv_proj(self.norm_kv(visual)).view(b, k, 2, h, hd).unbind(dim=2)
        if not fold:
            return VisualKV(key.transpose(1, 2), value.transpose(1, 2), False)
        w_q = self.q_proj.weight.view(h, hd, self.dim) * hd**-0.5
        w_o = self.o_proj.weight.view(self.dim, h, hd)
        key = torch.einsum("bkhe,hed->bhkd", key, w_q).reshape(b, h * k, self.dim)
        value = torch.einsum("bkhe,dhe->bhkd", value, w_o).reshape(b, h * k, self.dim)
        return VisualKV(key, value, True)

    def forward(self, hidden: Tensor, kv: VisualKV) -> Tensor:
        """``hidden [B, T, dim]`` attends to the cached visual ``kv``; returns the updated stream."""
        b, t, _ = hidden.shape
        drop = self.dropout if self.training else 0.0
        key, value = kv.key.to(hidden.dtype), kv.value.to(hidden.dtype)
        if kv.folded:
            scores = self.norm_q(hidden) @ key.transpose(1, 2)  # [B, T, H·K]
            probs = scores.view(b, t, self.num_heads, -1).softmax(dim=-1).view(b, t, -1)
            out = F.dropout(probs, drop) @ value  # Σ_h p_h V'_h
        else:
            q = self.q_proj(self.norm_q(hidden)).view(b, t, self.num_heads, self.head_dim)
            attn = F.scaled_dot_product_attention(q.transpose(1, 2), key, value, dropout_p=drop)
            out = self.o_proj(attn.transpose(1, 2).reshape(b, t, self.dim))
        return hidden + torch.tanh(self.gate).to(hidden.dtype) * out

    def reference(self, hidden: Tensor, visual: Tensor) -> Tensor:
        """The unfolded multi-head attention (q/k/v/o projections, SDPA); tests compare with it."""
        b, t, _ = hidden.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(self.norm_q(hidden)).view(b, t, h, hd).transpose(1, 2)
        kv = self.kv_proj(self.norm_kv(visual)).view(b, visual.shape[1], 2, h, hd)
        key, value = kv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, key, value)
        out = self.o_proj(attn.transpose(1, 2).reshape(b, t, self.dim))
        return hidden + torch.tanh(self.gate) * out


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

    def _kv(self, tokens: Tensor) -> VisualKV:
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
        if not context.decode_steps and hidden.shape[1] == 1:
            return None
        kv = context.kv(self.layer, hidden.shape[0], self._kv)
        hidden = self.adapter(hidden, kv)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}
