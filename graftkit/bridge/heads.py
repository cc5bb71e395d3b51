"""Auxiliary heads on the calibrated visual tokens Ṽ and on the LLM's last hidden state.

docs/design.md data flow: ``mean(Ṽ) → Linear→LN→GELU→Linear → z_v ∈ R^256`` (JEPA head, compared with
whitened text embeddings in phase 2), an N-class classifier on the tokens with a MIL max-pool
variant (phase 1), and the LLM-cls head on the last hidden state (phase 3, "3.0·LLM-cls").
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BridgeHeads", "JepaHead"]


class JepaHead(nn.Module):
    """``Linear(d, h) → LayerNorm → GELU → Linear(h, jepa_dim)`` applied to the last dimension."""

    def __init__(self, dim: int, jepa_dim: int = 256, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, jepa_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BridgeHeads(nn.Module):
    """The JEPA, classifier, MIL and LLM-cls heads (one parameter group, ``heads``)."""

    def __init__(
        self, dim: int, num_classes: int = 18, jepa_dim: int = 256, jepa_hidden: int | None = None
    ) -> None:
        super().__init__()
        self.dim, self.num_classes, self.jepa_dim = dim, num_classes, jepa_dim
        self.jepa_head = JepaHead(dim, jepa_dim, jepa_hidden)
        self.classifier = nn.Linear(dim, num_classes)
        self.mil_classifier = nn.Linear(dim, num_classes)
        self.llm_classifier = nn.Linear(dim, num_classes)

    def _tokens(self, tokens: Tensor, name: str) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(
                f"heads.{name}: expected tokens [B, K, {self.dim}], got {tuple(tokens.shape)}"
            )
        return tokens

    def jepa(self, tokens: Tensor) -> Tensor:
        """``[B, K, d_l] -> [B, jepa_dim]`` from the mean token."""
        return self.jepa_head(self._tokens(tokens, "jepa").mean(dim=1))

    def jepa_tokens(self, tokens: Tensor) -> Tensor:
        """``[B, K, d_l] -> [B, K, jepa_dim]``: the same head applied to every token (for MMD)."""
        return self.jepa_head(self._tokens(tokens, "jepa_tokens"))

    def cls(self, tokens: Tensor) -> Tensor:
        """``[B, K, d_l] -> [B, C]`` logits from the mean token."""
        return self.classifier(self._tokens(tokens, "cls").mean(dim=1))

    def mil(self, tokens: Tensor) -> Tensor:
        """``[B, K, d_l] -> [B, C]``: per-token logits max-pooled over the K tokens (MIL)."""
        return self.mil_classifier(self._tokens(tokens, "mil")).amax(dim=1)

    def llm_cls(self, last_hidden: Tensor) -> Tensor:
        """``[B, d_l] -> [B, C]`` logits from the LLM's last hidden state."""
        if last_hidden.dim() != 2 or last_hidden.shape[-1] != self.dim:
            raise ValueError(
                f"heads.llm_cls: expected [B, {self.dim}], got {tuple(last_hidden.shape)}"
            )
        return self.llm_classifier(last_hidden)
