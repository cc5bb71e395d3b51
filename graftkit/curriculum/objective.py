"""The phase objective: one ``forward(batch)`` that computes every loss a phase declares.

Each loss is a declared record in :data:`LOSSES`: how it is computed from the step's shared
intermediates (:class:`StepState`) and what it needs (text targets, chat tokens, the LLM, which
bridge head it trains). A phase config lists names with weights (docs/design.md, "Four-phase
curriculum"); :func:`check_losses` refuses an unknown name before any work, and ``graftkit plan``,
the batches and the evaluation read the same records. Every batch loss runs inside one module
call, so DDP sees a single forward.

Parameter penalties that do not depend on the batch (phase 4's EWC, λ·Σ(θ − θ*)²) are declared
with the objective too (:meth:`Objective.add_penalty`, by the ``ewc`` callback) and added by
:meth:`Objective.loss` to the forward's total; they are logged beside it (``train_ewc``) and are
not part of the validation total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from graftkit.align import (
    InfoNCE,
    focal_loss,
    mil_loss,
    mmd_imq,
    orthogonality_loss,
    weighted_bce,
)
from graftkit.config import ConfigError, ObjectiveConfig


@dataclass
class StepState:
    """Lazily computed intermediate tensors shared by the losses of one step."""

    objective: Objective
    batch: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def glm(self):
        return self.objective.glm

    def get(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    @property
    def encoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.batch
        return self.get("encoded", lambda: self.glm.encode(b["slices"], b["z_mm"], b["mask"]))

    @property
    def zones(self) -> torch.Tensor:
        return self.encoded[0]

    @property
    def tokens(self) -> torch.Tensor:
        return self.encoded[1]

    @property
    def cls_logits(self) -> torch.Tensor:
        return self.get("cls", lambda: self.glm.heads.cls(self.tokens))

    @property
    def lm_output(self):
        b = self.batch

        def run():
            return self.glm(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                visual_tokens=self.tokens,
                labels=b["labels_lm"],
                output_hidden_states="llm_cls" in self.objective.weights,
            )

        return self.get("lm", run)


def _llm_cls(s: StepState) -> torch.Tensor:
    """3.0·LLM-cls: the classifier on the last layer's hidden state at the sequence's last token.

    The end of the sequence (the response's end-of-turn token), not the last prompt token: there
    the same state predicts the first response token, and a classifier pulling on it was measured
    to wreck the first generated word (digits example: generation F1 0.42 -> 0.70 when moved).
    """
    hidden = s.lm_output.hidden_states[-1]
    last = s.batch["attention_mask"].long().sum(dim=1) - 1  # right-padded
    state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return weighted_bce(s.glm.heads.llm_cls(state), s.batch["labels"], s.objective.pos_weight)


def _lm(s: StepState) -> torch.Tensor:
    """The response-only LM loss; weighted per token when the batch carries ``lm_weights``
    (:func:`graftkit.curriculum.batches.finding_weights`): Σ w·CE / Σ w over response tokens."""
    weights = s.batch.get("lm_weights")
    if weights is None:
        return s.lm_output.loss
    logits = s.lm_output.logits[:, :-1].float()
    target = s.batch["labels_lm"][:, 1:].to(logits.device)
    # the model masks the placeholder positions of its labels; they never hold response tokens
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).view_as(target)
    w = weights[:, 1:].to(ce.device) * (target != -100)
    return (w * ce).sum() / w.sum().clamp_min(1e-6)


def _jepa(s: StepState) -> torch.Tensor:
    """JEPA: 1 - cos(z_v, z_t) between the predicted and the whitened text embedding."""
    z_v = s.glm.heads.jepa(s.tokens)
    return (1 - F.cosine_similarity(z_v, s.batch["text_emb"], dim=-1)).mean()


@dataclass(frozen=True)
class Loss:
    """One loss term and what it needs of a batch and the model."""

    compute: Callable[[StepState], torch.Tensor]
    #: the batch carries whitened text targets of its phase text (``cond_emb``, ``text_emb``)
    text_targets: bool = False
    #: the batch carries the phase text as chat tokens, and the LLM runs on them
    tokens: bool = False
    #: the bridge head the term trains (the evaluation scores only trained heads)
    head: str | None = None


LOSSES: dict[str, Loss] = {
    "bce": Loss(
        lambda s: weighted_bce(s.cls_logits, s.batch["labels"], s.objective.pos_weight),
        head="cls",
    ),
    "focal": Loss(
        lambda s: focal_loss(s.cls_logits, s.batch["labels"], gamma=s.objective.focal_gamma),
        head="cls",
    ),
    "mil": Loss(lambda s: mil_loss(s.glm.heads.mil(s.tokens), s.batch["labels"]), head="mil"),
    "orth": Loss(lambda s: orthogonality_loss(s.zones)),
    "mmd": Loss(
        lambda s: mmd_imq(
            s.glm.heads.jepa_tokens(s.tokens),
            s.batch["cond_emb"],
            s.batch["cond_mask"],
            s.objective.mmd_alpha,
        ),
        text_targets=True,
        head="jepa",
    ),
    "infonce": Loss(
        lambda s: s.objective.infonce(s.glm.heads.jepa(s.tokens), s.batch["text_emb"]),
        text_targets=True,
        head="jepa",
    ),
    "jepa": Loss(_jepa, text_targets=True, head="jepa"),
    "lm": Loss(_lm, tokens=True),
    "llm_cls": Loss(_llm_cls, tokens=True, head="llm_cls"),
}


def needs_text_targets(losses: Iterable[str]) -> bool:
    return any(LOSSES[name].text_targets for name in losses)


def needs_tokens(losses: Iterable[str]) -> bool:
    return any(LOSSES[name].tokens for name in losses)


def trained_heads(losses: Iterable[str]) -> set[str]:
    """The bridge heads that ``losses`` train."""
    return {LOSSES[name].head for name in losses if LOSSES[name].head is not None}


def check_losses(phases) -> None:
    """Refuse a loss name :data:`LOSSES` does not declare, in any phase of the curriculum, before
    any work, with the closest names (``phases.p3.losses: unknown loss 'lmm'; did you mean 'lm'?``).
    """
    import difflib

    for number in phases.numbers:
        for name in phases.get(number).losses:
            if name not in LOSSES:
                near = difflib.get_close_matches(name, LOSSES, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(
                    f"phases.p{number}.losses: unknown loss {name!r}; {hint}"
                    f"(losses: {', '.join(LOSSES)})"
                )


class Objective(nn.Module):
    """Wraps the grafted model, the learned InfoNCE temperature and the loss table of a phase."""

    def __init__(
        self,
        glm: nn.Module,
        infonce: InfoNCE,
        pos_weight: torch.Tensor,
        mmd_alpha: float,
        focal_gamma: float = ObjectiveConfig().focal_gamma,
    ):
        super().__init__()
        self.glm = glm
        self.infonce = infonce
        self.register_buffer("pos_weight", pos_weight.clone().float())
        self.mmd_alpha = mmd_alpha
        self.focal_gamma = focal_gamma
        self.weights: dict[str, float] = {}
        self.penalties: dict[str, Callable[[], torch.Tensor]] = {}

    def set_losses(self, weights: dict[str, float]) -> None:
        """The phase's losses with their weights (a weight of 0 switches a term off); clears the
        penalties of the phase before."""
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss(es) {unknown}; known: {sorted(LOSSES)}")
        self.weights = {k: v for k, v in weights.items() if v > 0}
        self.penalties = {}

    def add_penalty(self, name: str, penalty: Callable[[], torch.Tensor]) -> None:
        """Declare a parameter penalty of the current phase (a term that reads no batch)."""
        self.penalties[name] = penalty

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Every declared loss of the batch and their weighted ``total``."""
        state = StepState(self, batch)
        terms = {name: LOSSES[name].compute(state) for name in self.weights}
        terms["total"] = sum(self.weights[n] * terms[n] for n in self.weights)
        return terms

    def loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step's loss: the forward's ``total`` plus each penalty, recorded in ``terms``."""
        loss = terms["total"]
        for name, penalty in self.penalties.items():
            terms[name] = penalty()
            loss = loss + terms[name]
        return loss
